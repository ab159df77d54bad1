"""Handing pending deliveries to their channel's queue, durably.

Pending deliveries (or, for a large in-app page, the recipients planned for one event) are
grouped into DispatchBatch rows in the transaction that planned them; the task for each
batch is enqueued after commit. If the enqueue or the task is lost, the batch stays open
and the sweep enqueues it again when its lease runs out.
Each channel with a transport registers its task: in-app writes inbox rows, the others
call their providers (services/sending/).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from notifications.models import Channel, Delivery, DispatchBatch
from notifications.services.queues import CAMPAIGN_QUEUE, INAPP_DISPATCH, PROVIDER_DISPATCH, enqueue
from notifications.states import NO_PROVIDER

log = logging.getLogger(__name__)

DISPATCH_BATCH = 2000
# Provider sends are slow I/O: smaller batches spread a burst over every sending worker.
PROVIDER_DISPATCH_BATCH = 200


def bigint_array_literal(ids: Sequence[int]) -> str:
    """A bigint[] as PostgreSQL's text literal: several arrays of different lengths travel
    in one statement as text[] (arrays of arrays must be rectangular)."""
    return "{" + ",".join(map(str, ids)) + "}"


def channel_has_transport(channel: str) -> bool:
    return channel == Channel.INAPP or bool(settings.CHANNEL_PROVIDERS.get(channel))


def dispatch_lease() -> timedelta:
    return timedelta(seconds=settings.DELIVERY_STALE_SECONDS)


def dispatch_batches_enqueue(*, batches: Iterable[tuple[int, str]], queue: str | None = None) -> None:
    """Enqueue (batch_id, channel) tasks now, on the channel's queue or ``queue``. Failures
    are logged, not raised: the batch stays open and the sweep enqueues it again."""
    for batch_id, channel in batches:
        if channel == Channel.INAPP:
            enqueue(INAPP_DISPATCH, args=(batch_id,), queue=queue or channel)
        elif channel == Channel.EMAIL and queue == CAMPAIGN_QUEUE:
            # A campaign's email is claimed and sent a provider batch at a time.
            enqueue(PROVIDER_DISPATCH, args=(batch_id, channel, settings.SEND_BATCH_CHUNK), queue=queue)
        elif channel in Channel.values:
            enqueue(PROVIDER_DISPATCH, args=(batch_id, channel), queue=queue or channel)


def deliveries_dispatch(
    rows: Iterable[tuple[int, str]], *, now: datetime | None = None, queue: str | None = None
) -> list[int]:
    """Inside a transaction: record (delivery_id, channel) pairs as dispatch batches and
    enqueue them once it commits (on ``queue`` rather than the channels': a campaign's).
    Returns the batch ids."""
    by_channel: dict[str, list[int]] = defaultdict(list)
    stranded: list[int] = []
    for delivery_id, channel in rows:
        if channel_has_transport(channel):
            by_channel[channel].append(delivery_id)
        else:
            stranded.append(delivery_id)
    now = now or timezone.now()
    if stranded:
        # A channel whose providers were removed from settings since the delivery was
        # planned (a replay, a retry, a fallback): settle it rather than leave it pending.
        Delivery.objects.filter(id__in=stranded, status__in=NO_PROVIDER.sources).update(
            status=NO_PROVIDER.target, reason="no provider configured for this channel", updated_at=now
        )
    if not by_channel:
        return []
    channels: list[str] = []
    chunks: list[list[int]] = []
    for channel, ids in by_channel.items():
        if channel == Channel.INAPP:
            size = DISPATCH_BATCH
        elif channel == Channel.EMAIL and queue == CAMPAIGN_QUEUE:
            size = settings.SEND_BATCH_CHUNK
        else:
            size = PROVIDER_DISPATCH_BATCH
        for start in range(0, len(ids), size):
            channels.append(channel)
            chunks.append(ids[start : start + size])
    with connection.cursor() as db:
        # One statement for every batch of the page; arrays of arrays must be rectangular,
        # so each batch travels as a text literal.
        db.execute(
            f"""INSERT INTO {DispatchBatch._meta.db_table}
                    (channel, delivery_ids, planned_recipients, created_at, leased_until)
                SELECT c, i::bigint[], '{{}}', %s, %s FROM unnest(%s::text[], %s::text[]) AS t(c, i)
                RETURNING id, channel""",
            [now, now + dispatch_lease(), channels, [bigint_array_literal(c) for c in chunks]],
        )
        created = [(row[0], row[1]) for row in db.fetchall()]
    transaction.on_commit(lambda: dispatch_batches_enqueue(batches=created, queue=queue), robust=True)
    return [batch_id for batch_id, _ in created]


def inapp_planned_dispatch(
    *, event_id: Any, recipient_ids: Sequence[int], now: datetime, queue: str | None = None
) -> list[int]:
    """Inside a transaction: record the recipients of one event planned for in-app delivery
    (their delivery rows are not inserted: the dispatch inserts them delivered, see
    DispatchBatch) as batches of the in-app queue (or ``queue``: a campaign's), enqueued
    once it commits. Returns the batch ids."""
    if not recipient_ids:
        return []
    chunks = [
        list(recipient_ids[start : start + DISPATCH_BATCH])
        for start in range(0, len(recipient_ids), DISPATCH_BATCH)
    ]
    with connection.cursor() as db:
        db.execute(
            f"""INSERT INTO {DispatchBatch._meta.db_table}
                    (channel, delivery_ids, planned_event, planned_recipients, created_at, leased_until)
                SELECT %s, '{{}}', %s, r::bigint[], %s, %s FROM unnest(%s::text[]) AS t(r)
                RETURNING id""",
            [
                Channel.INAPP,
                event_id,
                now,
                now + dispatch_lease(),
                [bigint_array_literal(chunk) for chunk in chunks],
            ],
        )
        created = [(row[0], Channel.INAPP.value) for row in db.fetchall()]
    transaction.on_commit(lambda: dispatch_batches_enqueue(batches=created, queue=queue), robust=True)
    return [batch_id for batch_id, _ in created]


class ClaimedBatch(NamedTuple):
    """What a claimed batch holds: pending deliveries, or recipients planned for an event."""

    delivery_ids: list[int]
    planned_event: Any
    planned_recipients: list[int]
    created_at: datetime


def dispatch_batch_claim(*, batch_id: int, channel: str) -> ClaimedBatch | None:
    """Inside a transaction: lock an open batch and mark it done, returning what it holds;
    None when it is done already or another worker holds it. If the transaction rolls
    back, the batch is open again."""
    # One statement (the ORM's lock-then-update took two, and compiling them cost the
    # in-app worker more than running them).
    table = DispatchBatch._meta.db_table
    with connection.cursor() as db:
        db.execute(
            f"""UPDATE {table} SET done_at = %s
                WHERE id = (SELECT id FROM {table} WHERE id = %s AND channel = %s AND done_at IS NULL
                            FOR UPDATE SKIP LOCKED)
                RETURNING delivery_ids, planned_event, planned_recipients, created_at""",
            [timezone.now(), batch_id, channel],
        )
        row = db.fetchone()
    if row is None:
        return None
    return ClaimedBatch(list(row[0]), row[1], list(row[2]), row[3])


def dispatch_batches_sweep(*, limit: int = 500) -> int:
    """Enqueue again the open batches whose lease ran out (their task was lost). Returns
    how many were enqueued."""
    now = timezone.now()
    with transaction.atomic():
        rows = list(
            DispatchBatch.objects.select_for_update(skip_locked=True)
            .filter(done_at__isnull=True, leased_until__lt=now)
            .order_by("leased_until")
            .values_list("id", "channel")[:limit]
        )
        if not rows:
            return 0
        DispatchBatch.objects.filter(id__in=[r[0] for r in rows]).update(leased_until=now + dispatch_lease())
        transaction.on_commit(lambda: dispatch_batches_enqueue(batches=rows), robust=True)
    log.info("dispatch sweep enqueued %d lost batches", len(rows))
    return len(rows)
