"""The one door to the channel layer (CONVENTIONS 3): frames go out only after commit.

Workers publish straight into the pub/sub channel layer's Redis channels with a pipeline,
using the layer's own serializer and channel naming, instead of one ``async_to_sync``
``group_send`` per user: a page of frames costs one round trip.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, cast

import redis
from channels.layers import get_channel_layer
from channels_redis.utils import _consistent_hash
from django.conf import settings
from django.db import transaction

log = logging.getLogger(__name__)

# Channel-layer message types; the consumer has one handler each (dots become underscores).
NOTIFICATION_MESSAGE = "inbox.notification"
UNREAD_MESSAGE = "inbox.unread"

_clients: dict[str, redis.Redis] = {}


def inbox_group(recipient_id: int) -> str:
    return f"inbox.{recipient_id}"


def _group_channel(group: str) -> str:
    config: dict[str, Any] = cast(Any, settings.CHANNEL_LAYERS)["default"]["CONFIG"]
    prefix = config.get("prefix", "asgi")
    return f"{prefix}__group__{group}"


def _client_for(channel: str) -> redis.Redis:
    config: dict[str, Any] = cast(Any, settings.CHANNEL_LAYERS)["default"]["CONFIG"]
    hosts: list[Any] = config["hosts"]
    host = hosts[_consistent_hash(channel, len(hosts))]
    url = host if isinstance(host, str) else host["address"]
    if url not in _clients:
        _clients[url] = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=3)
    return _clients[url]


def realtime_publish(messages: Sequence[tuple[int, dict[str, Any]]]) -> None:
    """Publish (recipient_id, message) pairs now. At-most-once: a failure is logged, never
    raised, because the inbox rows are already committed and clients resume by seq."""
    if not messages:
        return
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        pipes: dict[int, Any] = {}
        for recipient_id, message in messages:
            channel = _group_channel(inbox_group(recipient_id))
            client = _client_for(channel)
            pipe = pipes.setdefault(id(client), client.pipeline(transaction=False))
            pipe.publish(channel, layer.serialize(message))
        for pipe in pipes.values():
            pipe.execute()
    except redis.RedisError as exc:
        log.warning("realtime frames not published (clients will resume): %s", exc)


def realtime_publish_on_commit(messages: Sequence[tuple[int, dict[str, Any]]]) -> None:
    if messages:
        batch = list(messages)
        transaction.on_commit(lambda: realtime_publish(batch))
