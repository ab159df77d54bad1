"""One Redis pub/sub subscription a process holds for good: subscribed again with backoff
whenever it is lost, so a Redis restart costs its readers the messages published while
it was down, never the subscription. Used by the inbox hub (realtime/hub.py) and the IoT
page's live feed (iot/consumers.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import redis
import redis.asyncio as aioredis
from django.conf import settings

log = logging.getLogger(__name__)

# Waits between attempts to subscribe again after the subscription was lost.
RESUBSCRIBE_BACKOFF_SECONDS = (0.1, 0.5, 1.0, 2.0, 5.0)


async def read_channel_forever(
    channel: str,
    *,
    client_name: str,
    ready: asyncio.Future[None],
    on_message: Callable[[bytes], None],
    on_resumed: Callable[[], None],
    what: str,
) -> None:
    """Subscribe to ``channel`` and hand every message to ``on_message`` until cancelled.
    ``ready`` is resolved once the first subscription is confirmed (from then on every
    publish reaches this process), or gets the first failure's exception. After a lost
    subscription is restored, ``on_resumed`` is called: what was published meanwhile is
    gone. ``what`` names the subscription in the log."""
    attempt = 0
    while True:
        # A client of its own: the subscription holds its connection for good.
        client = aioredis.Redis.from_url(
            settings.REDIS_URL, socket_connect_timeout=1, socket_keepalive=True, client_name=client_name
        )
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(channel)
            # The confirmation: from here on, every publish reaches this process.
            while True:
                confirmation = await pubsub.get_message(timeout=5.0)
                if confirmation is not None and confirmation["type"] == "subscribe":
                    break
            if ready.done():
                on_resumed()
            else:
                ready.set_result(None)
            attempt = 0
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is not None and message["type"] == "message":
                    on_message(message["data"])
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - Redis errors, and anything else: never a silent end
            if not ready.done():
                # Whoever waits for the first subscription hears why it failed.
                ready.set_exception(exc)
                return
            delay = RESUBSCRIBE_BACKOFF_SECONDS[min(attempt, len(RESUBSCRIBE_BACKOFF_SECONDS) - 1)]
            attempt += 1
            log.warning("%s subscription lost (%s); subscribing again in %.1f s", what, exc, delay)
            await asyncio.sleep(delay)
        finally:
            with contextlib.suppress(redis.RedisError, OSError, asyncio.CancelledError):
                await asyncio.shield(pubsub.aclose())
                await asyncio.shield(client.aclose())
