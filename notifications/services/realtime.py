"""The one door to the channel layer (services send live frames only through here, and
only after commit).

Frames go out through the channel layer's public ``group_send``, so its channel naming
and sharding stay its own business and an upgrade cannot silently break delivery. The
layer is asynchronous and keeps its connections per event loop; sync code (Celery
workers, sync views) hands frames to one long-lived event loop per process, running in a
daemon thread, so connections are made once and reused rather than per call.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from channels.layers import get_channel_layer
from django.db import transaction

log = logging.getLogger(__name__)

# Channel-layer message types; the consumer has one handler each (dots become underscores).
NOTIFICATION_MESSAGE = "inbox.notification"
UNREAD_MESSAGE = "inbox.unread"
# An item changed (read, unread, archived, snoozed, woke) and the read-all of a user: other
# tabs and devices follow (services/inbox.py).
ITEM_MESSAGE = "inbox.item"
READ_ALL_MESSAGE = "inbox.read_all"
# How long a sender waits for its frames to be handed to Redis before it gives up on them
# (they are a nudge: clients resume by seq).
PUBLISH_TIMEOUT_SECONDS = 5.0


def inbox_group(recipient_id: int) -> str:
    return f"inbox.{recipient_id}"


class _PublishLoop:
    """An event loop in a daemon thread, created in the process that uses it (a forked
    Celery pool process makes its own: threads do not survive a fork)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="realtime-publish", daemon=True)
        self.thread.start()


_publisher: _PublishLoop | None = None
_publisher_lock = threading.Lock()


def _publish_loop() -> asyncio.AbstractEventLoop:
    global _publisher
    with _publisher_lock:
        if _publisher is None or _publisher.pid != os.getpid():
            _publisher = _PublishLoop()
        return _publisher.loop


async def _send_all(layer: Any, messages: list[tuple[int, dict[str, Any]]]) -> int:
    """Send each message to its recipient's group; returns how many failed."""
    results = await asyncio.gather(
        *(layer.group_send(inbox_group(recipient_id), message) for recipient_id, message in messages),
        return_exceptions=True,
    )
    failures = [result for result in results if isinstance(result, BaseException)]
    if failures:
        log.warning(
            "%d of %d realtime frames not published (clients will resume): %s",
            len(failures),
            len(messages),
            failures[0],
        )
    return len(failures)


def realtime_publish(messages: Sequence[tuple[int, dict[str, Any]]]) -> None:
    """Publish (recipient_id, message) pairs now. At-most-once: a failure is logged, never
    raised, because the inbox rows are already committed and clients resume by seq."""
    if not messages:
        return
    layer = get_channel_layer()
    if layer is None:
        return
    future = asyncio.run_coroutine_threadsafe(_send_all(layer, list(messages)), _publish_loop())
    try:
        future.result(timeout=PUBLISH_TIMEOUT_SECONDS)
    except FutureTimeout:
        future.cancel()
        log.warning(
            "realtime frames not published within %.0f s (clients will resume)", PUBLISH_TIMEOUT_SECONDS
        )
    except Exception as exc:  # noqa: BLE001 - a frame must never fail the write it follows
        log.warning("realtime frames not published (clients will resume): %s", exc)


def realtime_publish_on_commit(messages: Sequence[tuple[int, dict[str, Any]]]) -> None:
    if messages:
        batch = list(messages)
        transaction.on_commit(lambda: realtime_publish(batch), robust=True)
