"""Storing planned deliveries, the one way fan-out and channel fallback both do it.

``deliveries_store`` inserts what the planner decided (skipping rows that exist: the
unique (event, recipient, channel) key makes every re-run harmless) and hands each
inserted row to what comes next, in the caller's transaction:

- pending: a dispatch batch for its channel's queue, or, for a small in-app page, the
  inbox at once (services/inbox.py), the row then stored delivered in the first place;
  a large in-app page of one event is not inserted here at all: its recipients go to the
  in-app queue as a planned batch, and ``inapp_dispatch_batch`` inserts the rows delivered
  with their inbox items, so each row is written once, by the in-app workers, in parallel;
- scheduled: its due-time row (services/scheduling.py);
- a channel with a fallback rule on the type: a fallback check (services/fallback.py
  answers it when due).

Only rows this call inserted go anywhere, so a page planned twice dispatches nothing twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from notifications.models import Channel, Delivery, Event, FallbackCheck, NotificationType, Recipient
from notifications.services.dispatch import deliveries_dispatch, dispatch_batch_claim
from notifications.services.inbox import inapp_dispatch, inapp_write, inapp_write_one_text
from notifications.services.planning import PlannedDelivery
from notifications.services.scheduling import deliveries_schedule
from notifications.states import INAPP_WRITTEN, DeliveryStatus

# The status a planned in-app row waits in for its inbox item.
(INAPP_WRITTEN_FROM,) = INAPP_WRITTEN.sources


class Inserted(NamedTuple):
    """A delivery row this call inserted, with the status it was planned with (an in-app
    row written at once is stored delivered, see ``deliveries_insert``)."""

    id: int
    recipient_id: int
    channel: str
    status: str
    reason: str
    due_at: datetime | None
    event_id: Any = None


def fallback_rules(notification_type: NotificationType) -> dict[str, tuple[str, int]]:
    """{from channel: (to channel, after seconds)} of the type (checked when saved, by
    services/validation.py)."""
    rules: dict[str, tuple[str, int]] = {}
    for rule in notification_type.fallbacks or []:
        if isinstance(rule, dict) and rule.get("from") and rule.get("to"):
            rules[str(rule["from"])] = (str(rule["to"]), int(rule.get("after_seconds", 0)))
    return rules


def deliveries_insert(
    *,
    event_ids: Sequence[Any],
    planned: Sequence[PlannedDelivery],
    now: datetime,
    inapp_delivered: datetime | None = None,
    inapp_version: int | None = None,
) -> list[Inserted]:
    """Insert planned deliveries (``event_ids[i]`` is the event of ``planned[i]``),
    skipping any that exist and any whose recipient is gone (checked in the statement, which
    stands in for a database key: see the Delivery model); returns the rows this call
    inserted. With ``inapp_delivered``, a time (the caller writes their inbox items in this
    same transaction, services/inbox.py's ``inapp_write``), pending in-app rows are stored
    delivered at once, as their claim would have moved them (INAPP_WRITTEN in
    notifications/states.py): each row is written once, not inserted and then updated, and
    its sent_at and updated_at say when, and its template_version the version its item
    renders (the event's own, for a test send, else ``inapp_version``, the type's)."""
    if not planned:
        return []
    direct = [
        inapp_delivered is not None and p.channel == Channel.INAPP and p.status == INAPP_WRITTEN_FROM
        for p in planned
    ]
    with connection.cursor() as db:
        db.execute(
            f"""INSERT INTO {Delivery._meta.db_table}
                    (event_id, recipient_id, channel, status, reason, attempts, due_at, sent_at, created_at,
                     updated_at, template_version)
                SELECT e, r, c, s, re, CASE WHEN w THEN 1 ELSE 0 END, d,
                       CASE WHEN w THEN %s::timestamptz END, %s, CASE WHEN w THEN %s::timestamptz ELSE %s END,
                       CASE WHEN w THEN COALESCE(
                           (SELECT v.template_version FROM {Event._meta.db_table} v WHERE v.id = t.e), %s::int)
                       END
                FROM unnest(%b::uuid[], %b::bigint[], %b::text[], %b::text[], %b::text[], %b::timestamptz[],
                            %b::bool[])
                     AS t(e, r, c, s, re, d, w)
                WHERE EXISTS (SELECT 1 FROM {Recipient._meta.db_table} x WHERE x.id = t.r)
                ON CONFLICT (event_id, recipient_id, channel) DO NOTHING
                RETURNING id, recipient_id, channel, status, reason, due_at, event_id""",
            [
                inapp_delivered,
                now,
                inapp_delivered,
                now,
                inapp_version,
                list(event_ids),
                [p.recipient_id for p in planned],
                [p.channel for p in planned],
                [INAPP_WRITTEN.target if w else p.status for p, w in zip(planned, direct, strict=True)],
                [p.reason for p in planned],
                [p.due_at for p in planned],
                direct,
            ],
        )
        rows = db.fetchall()
    if inapp_delivered is None:
        return [Inserted(*row) for row in rows]
    # Planned rows are never delivered: a delivered in-app row was planned pending.
    return [
        Inserted(*row)
        if not (row[2] == Channel.INAPP and row[3] == INAPP_WRITTEN.target)
        else Inserted(row[0], row[1], row[2], INAPP_WRITTEN_FROM, *row[4:])
        for row in rows
    ]


def fallback_checks_plan(
    *, notification_type: NotificationType, rows: Sequence[Inserted], now: datetime
) -> None:
    """A fallback check for each in-progress row whose channel has a rule on the type,
    due ``after_seconds`` after the delivery is (or becomes) due."""
    rules = fallback_rules(notification_type)
    if not rules:
        return
    checks = [
        FallbackCheck(
            delivery_id=row.id,
            to_channel=rules[row.channel][0],
            due_at=(row.due_at or now) + timedelta(seconds=rules[row.channel][1]),
        )
        for row in rows
        if row.channel in rules and row.status in (DeliveryStatus.PENDING, DeliveryStatus.SCHEDULED)
    ]
    FallbackCheck.objects.bulk_create(checks, ignore_conflicts=True)


def deliveries_store(
    *,
    notification_type: NotificationType,
    event_ids: Sequence[Any],
    planned: Sequence[PlannedDelivery],
    now: datetime,
    inline_inapp: bool = False,
    inline_max: int | None = None,
    events: dict[Any, Event] | None = None,
    queue: str | None = None,
) -> list[Inserted]:
    """Inside a transaction: insert the planned deliveries of one type and send each
    inserted row on its way (see the module docstring). With ``inline_inapp`` (from a
    fan-out page's transaction, which then commits durably), a page that planned at most
    INAPP_INLINE_MAX pending in-app deliveries writes their inbox items in this same
    transaction, and those rows are inserted delivered: no dispatch batch, no broker hop,
    no second commit, no second write of the row (the common one-recipient event).
    ``inline_max`` overrides that limit, and ``events`` (by id, with their types) spares
    the inbox reading them again; ``queue``, the queue their sends go to instead of their
    channels' (a campaign's). Returns the rows inserted."""
    limit = settings.INAPP_INLINE_MAX if inline_max is None else inline_max
    inline = (
        inline_inapp
        and 0 < sum(p.channel == Channel.INAPP and p.status == INAPP_WRITTEN_FROM for p in planned) <= limit
    )
    # The in-app rows written at once are stamped when written, not when planned.
    written_at = timezone.now() if inline else None
    inserted = deliveries_insert(
        event_ids=event_ids,
        planned=planned,
        now=now,
        inapp_delivered=written_at,
        inapp_version=notification_type.template_version or None,
    )
    pending = [(row.id, row.channel) for row in inserted if row.status == DeliveryStatus.PENDING]
    if written_at is not None:
        delivered = [
            (row.id, row.event_id, row.recipient_id)
            for row in inserted
            if row.channel == Channel.INAPP and row.status == DeliveryStatus.PENDING
        ]
        if delivered:
            inapp_write(delivered=delivered, events=events, now=written_at, versions_stamped=True)
        pending = [(delivery_id, channel) for delivery_id, channel in pending if channel != Channel.INAPP]
    deliveries_dispatch(pending, now=now, queue=queue)
    deliveries_schedule([(row.id, row.due_at) for row in inserted if row.status == DeliveryStatus.SCHEDULED])
    if notification_type.fallbacks:
        fallback_checks_plan(notification_type=notification_type, rows=inserted, now=now)
    return inserted


def inapp_dispatch_batch(*, batch_id: int) -> int:
    """Run one in-app dispatch batch (see DispatchBatch); returns the items written. The
    batch is marked done in the same transaction as its inbox items.

    A batch runs once (it is closed in the transaction that writes its rows), so the rows
    of its planned recipients are new and are inserted as such. Should one exist after all
    (a recipient planned twice), the transaction rolls back, the batch is open again, and
    it runs once more writing around the rows that exist."""
    try:
        return _inapp_dispatch_batch(batch_id, rows_are_new=True)
    except IntegrityError:
        return _inapp_dispatch_batch(batch_id, rows_are_new=False)


def _inapp_dispatch_batch(batch_id: int, *, rows_are_new: bool) -> int:
    with transaction.atomic():
        batch = dispatch_batch_claim(batch_id=batch_id, channel=Channel.INAPP)
        if batch is None:
            return 0
        written = inapp_dispatch(delivery_ids=batch.delivery_ids) if batch.delivery_ids else 0
        if batch.planned_recipients:
            written += inapp_planned_write(
                event_id=batch.planned_event,
                recipient_ids=batch.planned_recipients,
                planned_at=batch.created_at,
                rows_are_new=rows_are_new,
            )
        return written


def inapp_planned_write(
    *, event_id: Any, recipient_ids: Sequence[int], planned_at: datetime, rows_are_new: bool = False
) -> int:
    """Inside a transaction: insert the event's in-app deliveries planned for these
    recipients, delivered, and write their inbox items (rows that exist are skipped, and so
    are recipients deleted since; with ``rows_are_new``, see inapp_write_one_text, a row
    that exists raises IntegrityError). ``planned_at`` is when they were planned: the rows'
    creation time, as if inserted then. Returns the items written."""
    event = Event.objects.select_related("notification_type").filter(id=event_id).first()
    if event is None or not recipient_ids:
        return 0
    now = timezone.now()
    if not event.notification_type.fallbacks:
        # One statement when everyone reads the same text (the large page of a topic event).
        written = inapp_write_one_text(
            event=event,
            recipient_ids=recipient_ids,
            planned_at=planned_at,
            now=now,
            rows_are_new=rows_are_new,
        )
        if written is not None:
            return written
    inserted = deliveries_insert(
        event_ids=[event.id] * len(recipient_ids),
        planned=[PlannedDelivery(rid, Channel.INAPP, INAPP_WRITTEN_FROM) for rid in recipient_ids],
        now=planned_at,
        inapp_delivered=now,
    )
    if not inserted:
        return 0
    written = inapp_write(
        delivered=[(row.id, row.event_id, row.recipient_id) for row in inserted],
        events={event.id: event},
        now=now,
    )
    if event.notification_type.fallbacks:
        fallback_checks_plan(notification_type=event.notification_type, rows=inserted, now=now)
    return written
