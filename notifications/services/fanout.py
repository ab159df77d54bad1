"""Fan-out: walk an event's audience in keyset pages, plan each page and insert its
deliveries in one transaction together with the progress cursor.

Re-running any part is harmless: a page is planned inside the transaction that moves the
cursor, delivery rows are inserted with ``ON CONFLICT DO NOTHING`` on their deterministic
key, and only rows actually inserted are dispatched. The audience is never loaded whole.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from notifications.models import (
    Delivery,
    DeliveryStatus,
    Event,
    EventStatus,
    NotificationType,
    OutboxMessage,
    Recipient,
    Subscription,
)
from notifications.services.aggregation import aggregation_plan, aggregation_record
from notifications.services.dispatch import deliveries_dispatch
from notifications.services.durability import relax_commit_durability
from notifications.services.fallback import fallback_checks_plan
from notifications.services.inbox import inapp_dispatch
from notifications.services.metrics import metrics_increment
from notifications.services.outbox import outbox_relay
from notifications.services.planning import PlannedDelivery, RecipientFacts, plan_page
from notifications.services.scheduling import deliveries_schedule

log = logging.getLogger(__name__)

_FACTS_COLUMNS = "r.id, r.timezone, r.quiet_hours_start, r.quiet_hours_end"


@dataclass(frozen=True)
class FanoutProgress:
    pages: int
    recipients: int
    finished: bool


def _topic_page(topic_id: int, cursor: int, size: int) -> tuple[list[RecipientFacts], int | None, bool]:
    with connection.cursor() as db:
        db.execute(
            f"""SELECT {_FACTS_COLUMNS}
                FROM {Subscription._meta.db_table} s
                JOIN {Recipient._meta.db_table} r ON r.id = s.recipient_id
                WHERE s.topic_id = %s AND s.recipient_id > %s
                ORDER BY s.recipient_id
                LIMIT %s""",
            [topic_id, cursor, size],
        )
        facts = [RecipientFacts(*row) for row in db.fetchall()]
    return facts, (facts[-1].id if facts else None), len(facts) < size


def _explicit_page(
    recipient_ids: list[int], cursor: int, size: int
) -> tuple[list[RecipientFacts], int | None, bool]:
    start = bisect.bisect_right(recipient_ids, cursor)
    chunk = recipient_ids[start : start + size]
    if not chunk:
        return [], None, True
    with connection.cursor() as db:
        db.execute(
            f"SELECT {_FACTS_COLUMNS} FROM {Recipient._meta.db_table} r WHERE r.id = ANY(%b) ORDER BY r.id",
            [chunk],
        )
        facts = [RecipientFacts(*row) for row in db.fetchall()]
    # A recipient deleted since ingest is skipped; the cursor still moves past it.
    return facts, chunk[-1], start + size >= len(recipient_ids)


def deliveries_insert(
    *, event_id: Any, planned: list[PlannedDelivery], now: datetime
) -> list[tuple[int, int, str, str, str]]:
    """Insert planned deliveries, skipping any that exist; returns (id, recipient_id,
    channel, status, reason) of the rows this call inserted."""
    if not planned:
        return []
    with connection.cursor() as db:
        db.execute(
            f"""INSERT INTO {Delivery._meta.db_table}
                    (event_id, recipient_id, channel, status, reason, attempts, due_at, created_at, updated_at)
                SELECT %s, r, c, s, re, 0, d, %s, %s
                FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::text[], %b::timestamptz[])
                     AS t(r, c, s, re, d)
                ON CONFLICT (event_id, recipient_id, channel) DO NOTHING
                RETURNING id, recipient_id, channel, status, reason""",
            [
                event_id,
                now,
                now,
                [p.recipient_id for p in planned],
                [p.channel for p in planned],
                [p.status for p in planned],
                [p.reason for p in planned],
                [p.due_at for p in planned],
            ],
        )
        return list(db.fetchall())


def _fanout_page(outbox_id: int) -> tuple[int, bool] | None:
    """Plan one page under the outbox row's lock. Returns (recipients, finished), or None
    when the row is done or another worker holds it (that worker carries on)."""
    now = timezone.now()
    with transaction.atomic():
        relax_commit_durability()
        # of=("self",): lock the outbox row only. Without it PostgreSQL also locks the joined
        # event and type rows FOR UPDATE, which conflicts with the KEY SHARE locks that every
        # delivery and inbox insert referencing the event takes, so pages were skipped.
        outbox = (
            OutboxMessage.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("event", "event__notification_type")
            .filter(id=outbox_id, processed_at__isnull=True)
            .first()
        )
        if outbox is None:
            return None
        event: Event = outbox.event
        notification_type: NotificationType = event.notification_type
        size = settings.FANOUT_PAGE_SIZE
        if event.topic_id is not None:
            facts, next_cursor, last = _topic_page(event.topic_id, outbox.cursor, size)
        else:
            facts, next_cursor, last = _explicit_page(event.recipient_ids or [], outbox.cursor, size)

        if next_cursor is None:
            _finish(outbox, event, now)
            return 0, True

        planned = plan_page(notification_type=notification_type, recipients=facts, now=now)
        planned, members = aggregation_plan(notification_type=notification_type, planned=planned, now=now)
        inserted = deliveries_insert(event_id=event.id, planned=planned, now=now)
        if notification_type.aggregation_window_seconds:
            aggregation_record(
                notification_type=notification_type,
                inserted=inserted,
                members=members,
                data=event.data,
                now=now,
            )
        pending = [(row[0], row[2]) for row in inserted if row[3] == DeliveryStatus.PENDING]
        inline = [delivery_id for delivery_id, channel in pending if channel == "inapp"]
        if inline and len(inline) <= settings.INAPP_INLINE_MAX:
            # A small page (the common one-recipient event) writes its inbox items in this
            # same transaction: no dispatch batch, no broker hop, no second commit. Larger
            # pages go to the in-app queue, whose workers scale on their own.
            inapp_dispatch(delivery_ids=inline)
            pending = [(delivery_id, channel) for delivery_id, channel in pending if channel != "inapp"]
        deliveries_dispatch(pending, now=now)
        due = {(p.recipient_id, p.channel): p.due_at for p in planned if p.status == DeliveryStatus.SCHEDULED}
        deliveries_schedule(
            [(row[0], due[(row[1], row[2])]) for row in inserted if row[3] == DeliveryStatus.SCHEDULED]
        )
        if notification_type.fallbacks:
            fallback_checks_plan(
                notification_type=notification_type,
                rows=[
                    (row[0], row[2], due.get((row[1], row[2])))
                    for row in inserted
                    if row[3] in (DeliveryStatus.PENDING, DeliveryStatus.SCHEDULED)
                ],
                now=now,
            )
        event.planned_count += len(facts)
        if last:
            # The short last page finishes the fan-out in its own transaction.
            _finish(outbox, event, now)
        else:
            OutboxMessage.objects.filter(id=outbox.id).update(
                cursor=next_cursor, leased_until=now + timedelta(seconds=settings.OUTBOX_LEASE_SECONDS)
            )
            Event.objects.filter(id=event.id).update(
                planned_count=event.planned_count, status=EventStatus.PROCESSING
            )
        counts: Counter[str] = Counter(f"deliveries:{row[2]}:{row[3]}" for row in inserted)
        counts["fanout_recipients"] = len(facts)
        transaction.on_commit(lambda: metrics_increment(counts), robust=True)
    return len(facts), last


def _finish(outbox: OutboxMessage, event: Event, now: datetime) -> None:
    OutboxMessage.objects.filter(id=outbox.id).update(processed_at=now, leased_until=None)
    Event.objects.filter(id=event.id).update(
        status=EventStatus.COMPLETED, completed_at=now, planned_count=event.planned_count
    )
    log.info("fan-out finished", extra={"event_id": str(event.id), "recipients": event.planned_count})


def event_fanout(*, outbox_id: int, slice_seconds: float | None = None) -> FanoutProgress:
    """Fan out the outbox row's event for up to ``slice_seconds``, then hand the rest to a
    fresh task. Safe to call twice at once or again after a crash."""
    budget = settings.FANOUT_SLICE_SECONDS if slice_seconds is None else slice_seconds
    started = time.monotonic()
    pages = recipients = 0
    while True:
        result = _fanout_page(outbox_id)
        if result is None:
            return FanoutProgress(pages, recipients, finished=True)
        count, finished = result
        if count:
            pages += 1
            recipients += count
        if finished:
            return FanoutProgress(pages, recipients, finished=True)
        if time.monotonic() - started >= budget:
            outbox_relay(outbox_id=outbox_id)
            return FanoutProgress(pages, recipients, finished=False)
