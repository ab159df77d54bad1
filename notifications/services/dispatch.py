"""Handing pending deliveries to their channel's queue.

Each channel with a transport registers the task that sends it; the email, SMS, push and
webhook transports join this table in their own issue.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable

from django.db import transaction
from kombu.exceptions import KombuError, OperationalError
from redis import RedisError

log = logging.getLogger(__name__)

DISPATCH_BATCH = 2000


def _tasks() -> dict[str, object]:
    from notifications.tasks import inapp_dispatch_task

    return {"inapp": inapp_dispatch_task}


def channel_has_transport(channel: str) -> bool:
    return channel in {"inapp"}


def deliveries_enqueue(*, by_channel: dict[str, list[int]]) -> None:
    """Enqueue dispatch tasks now. A lost enqueue leaves the rows pending, and the stale
    sweep dispatches them again, so failures here are logged, not raised."""
    tasks = _tasks()
    for channel, ids in by_channel.items():
        task = tasks.get(channel)
        if task is None:
            continue
        for start in range(0, len(ids), DISPATCH_BATCH):
            batch = ids[start : start + DISPATCH_BATCH]
            try:
                task.apply_async(args=(batch,), retry=False)  # type: ignore[attr-defined]
            except (KombuError, OperationalError, RedisError, OSError) as exc:
                log.warning("dispatch of %d %s deliveries not enqueued: %s", len(batch), channel, exc)


def deliveries_enqueue_on_commit(rows: Iterable[tuple[int, str]]) -> None:
    """Enqueue (delivery_id, channel) pairs once the current transaction commits."""
    by_channel: dict[str, list[int]] = defaultdict(list)
    for delivery_id, channel in rows:
        by_channel[channel].append(delivery_id)
    if by_channel:
        transaction.on_commit(lambda: deliveries_enqueue(by_channel=dict(by_channel)), robust=True)
