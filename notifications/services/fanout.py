"""Fan-out: walk an event's audience in keyset pages; plan each page, then store its
deliveries in one transaction together with the progress cursor.

Re-running any part is harmless: a page is stored only by the transaction that moves the
cursor past it, delivery rows are inserted with ``ON CONFLICT DO NOTHING`` on their
deterministic key, and only rows actually inserted are dispatched (services/deliveries.py).
Planning (preferences, quiet hours, rate caps in Redis) happens before the outbox row is
locked, so no Redis call ever runs while rows are locked. The audience is never loaded whole.
"""

from __future__ import annotations

import bisect
import copy
import logging
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import JSONField
from django.utils import timezone

from notifications.models import (
    Campaign,
    CampaignStatus,
    CampaignVariant,
    Channel,
    DeliveryStatus,
    Event,
    EventStatus,
    NotificationType,
    OutboxMessage,
    Recipient,
    Subscription,
)
from notifications.services.aggregation import aggregation_plan, aggregation_record
from notifications.services.deliveries import INAPP_WRITTEN_FROM, deliveries_store
from notifications.services.dispatch import inapp_planned_dispatch
from notifications.services.durability import relax_commit_durability
from notifications.services.metrics import metrics_increment
from notifications.services.outbox import outbox_relay, outbox_relay_each
from notifications.services.planning import PlannedDelivery, RecipientFacts, event_local_wall, plan_page
from notifications.services.queues import CAMPAIGN_QUEUE

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


class _Page(NamedTuple):
    """A page planned outside any transaction, to be stored under the outbox row's lock."""

    cursor: int
    facts: list[RecipientFacts]
    next_cursor: int | None
    last: bool
    planned: list[PlannedDelivery]


def _plan_next_page(outbox: OutboxMessage, event: Event, now: datetime, gate: _Gate | None = None) -> _Page:
    """Read and plan the page after the outbox row's cursor. Runs outside any transaction:
    the rate caps it consumes live in Redis, and a Redis call must never sit inside a
    section that holds row locks (a hiccup there would stall or roll back other work)."""
    size = gate.page_size if gate is not None else settings.FANOUT_PAGE_SIZE
    if event.topic_id is not None:
        facts, next_cursor, last = _topic_page(event.topic_id, outbox.cursor, size)
    else:
        facts, next_cursor, last = _explicit_page(event.recipient_ids or [], outbox.cursor, size)
    wall = event_local_wall(event)
    notification_type = event.notification_type
    if gate is not None and gate.channels:
        # A campaign sends on some of its type's channels.
        notification_type = copy.copy(notification_type)
        notification_type.channels = [c for c in notification_type.channels if c in gate.channels]
    planned = (
        plan_page(
            notification_type=notification_type,
            recipients=facts,
            now=now,
            local_walls=[wall] * len(facts) if wall is not None else None,
        )
        if facts
        else []
    )
    return _Page(outbox.cursor, facts, next_cursor, last, planned)


class _Stored(NamedTuple):
    """What _fanout_page did: recipients stored, whether the fan-out is finished, and the
    outbox row as the page left it (its cursor moved on, its event counted), for the next
    page to start from without reading it again: storing checks, under the row's lock,
    that the cursor is still where the page was planned from. ``pace``: for a throttled
    campaign, the seconds the next page waits."""

    recipients: int
    finished: bool
    outbox: OutboxMessage | None
    pace: float | None = None


# --- Campaigns: their events fan out while the campaign runs, at its pace -----------------

_RUNNABLE = (CampaignStatus.RUNNING, CampaignStatus.SCHEDULED)
# A paused campaign's rows wait here until its resume makes them available again.
_PARKED = timedelta(days=3650)


class _Gate(NamedTuple):
    """A campaign event's campaign as its fan-out sees it: status, the channels it sends
    on (empty: all of the type's), and the variant's share of the throttle."""

    status: str
    channels: list[str]
    rate: float

    @property
    def page_size(self) -> int:
        # About one second of sends per page, so the pace is even.
        return max(1, min(settings.FANOUT_PAGE_SIZE, math.ceil(self.rate)))


def _campaign_gate(event: Event, now: datetime) -> _Gate | None:
    if event.campaign_id is None:
        return None
    with connection.cursor() as db:
        db.execute(
            f"""SELECT c.status, c.channels, c.throttle_per_second::float * v.weight
                       / (SELECT sum(weight) FROM {CampaignVariant._meta.db_table} WHERE campaign_id = c.id)
                FROM {Campaign._meta.db_table} c
                JOIN {CampaignVariant._meta.db_table} v ON v.campaign_id = c.id AND v.event_id = %s
                WHERE c.id = %s""",
            [event.id, event.campaign_id],
        )
        row = db.fetchone()
        if row is None:
            return None
        if row[0] == CampaignStatus.SCHEDULED:
            # Its send_at came (the row was due): it runs from now.
            db.execute(
                f"""UPDATE {Campaign._meta.db_table} SET status = %s, started_at = %s
                    WHERE id = %s AND status = %s""",
                [CampaignStatus.RUNNING, now, event.campaign_id, CampaignStatus.SCHEDULED],
            )
    return _Gate(row[0], list(row[1] or []), max(float(row[2] or 1.0), 0.001))


def _campaign_runs(campaign_id: int) -> bool:
    """Inside the page's transaction: whether the campaign still runs, its row share-locked
    until commit, so that a pause (which locks it to update) waits for this page and then
    holds its deliveries too."""
    with connection.cursor() as db:
        db.execute(f"SELECT status FROM {Campaign._meta.db_table} WHERE id = %s FOR SHARE", [campaign_id])
        row = db.fetchone()
    return row is not None and row[0] in _RUNNABLE


def _park(outbox_id: int, now: datetime) -> None:
    """A paused or cancelled campaign's row: no sweep takes it until a resume."""
    OutboxMessage.objects.filter(id=outbox_id, processed_at__isnull=True).update(
        leased_until=None, available_at=now + _PARKED
    )


# What _fanout_page says when it stored nothing because the page moved under it.
_AGAIN = _Stored(0, False, None)


def _fanout_page(outbox_id: int, known: OutboxMessage | None = None) -> _Stored | None:
    """Plan one page, then store it under the outbox row's lock; None when the row is done
    or another worker holds it (that worker carries on). ``known``: the row as the
    previous page left it (see _Stored)."""
    now = timezone.now()
    outbox = known or (
        OutboxMessage.objects.select_related("event", "event__notification_type")
        .filter(id=outbox_id, processed_at__isnull=True)
        .first()
    )
    if outbox is None:
        return None
    event: Event = outbox.event
    notification_type: NotificationType = event.notification_type
    gate = _campaign_gate(event, now)
    if gate is not None and gate.status not in _RUNNABLE:
        _park(outbox.id, now)
        return None
    page = _plan_next_page(outbox, event, now, gate)
    with transaction.atomic():
        # The row is locked only if it is still where the page was planned from: another
        # worker that stored this page first moved the cursor, and this plan is dropped
        # (its rate-cap counts err towards suppressing, as a rolled-back page's would).
        locked = (
            OutboxMessage.objects.select_for_update(skip_locked=True)
            .filter(id=outbox_id, processed_at__isnull=True, cursor=page.cursor)
            .values_list("id", flat=True)
            .first()
        )
        if locked is None:
            moved = OutboxMessage.objects.filter(id=outbox_id, processed_at__isnull=True).exclude(
                cursor=page.cursor
            )
            return _AGAIN if moved.exists() else None
        if gate is not None and event.campaign_id is not None and not _campaign_runs(event.campaign_id):
            _park(outbox.id, now)
            return None
        if page.next_cursor is None:
            _finish(outbox, event, now)
            return _Stored(0, True, None)
        planned, members = aggregation_plan(
            notification_type=notification_type, planned=page.planned, now=now
        )
        planned, deferred = _inapp_deferred(notification_type, planned)
        inserted = deliveries_store(
            notification_type=notification_type,
            event_ids=[event.id] * len(planned),
            planned=planned,
            now=now,
            inline_inapp=True,
            queue=CAMPAIGN_QUEUE if gate is not None else None,
        )
        inapp_planned_dispatch(
            event_id=event.id,
            recipient_ids=deferred,
            now=now,
            queue=CAMPAIGN_QUEUE if gate is not None else None,
        )
        if notification_type.aggregation_window_seconds:
            aggregation_record(
                notification_type=notification_type,
                inserted=inserted,
                members=members,
                data=event.data,
                now=now,
            )
        event.planned_count += len(page.facts)
        if page.last:
            # The short last page finishes the fan-out in its own transaction.
            _finish(outbox, event, now)
        else:
            # Both rows in one statement: a round trip less per page, and on a busy machine
            # each one waits its turn for the CPU.
            with connection.cursor() as db:
                db.execute(
                    f"""WITH o AS (UPDATE {OutboxMessage._meta.db_table} SET cursor = %s, leased_until = %s
                                   WHERE id = %s)
                        UPDATE {Event._meta.db_table} SET planned_count = %s, status = %s WHERE id = %s""",
                    [
                        page.next_cursor,
                        now + timedelta(seconds=settings.OUTBOX_LEASE_SECONDS),
                        outbox.id,
                        event.planned_count,
                        EventStatus.PROCESSING,
                        event.id,
                    ],
                )
            outbox.cursor = page.next_cursor
        counts: Counter[str] = Counter(f"deliveries:{row.channel}:{row.status}" for row in inserted)
        # Deferred rows are written (and their frames sent) by the in-app dispatch, whose
        # durable commit flushes this one's too.
        _relax_unless_inapp(counts)
        counts[f"deliveries:{Channel.INAPP}:{INAPP_WRITTEN_FROM}"] += len(deferred)
        counts["fanout_recipients"] = len(page.facts)
        transaction.on_commit(lambda: metrics_increment(counts), robust=True)
    pace = len(page.facts) / gate.rate if gate is not None and page.facts else None
    return _Stored(len(page.facts), page.last, None if page.last else outbox, pace)


def _inapp_deferred(
    notification_type: NotificationType, planned: list[PlannedDelivery]
) -> tuple[list[PlannedDelivery], list[int]]:
    """(the page's rows to insert now, the recipients whose in-app rows the in-app queue
    inserts). A page planning more pending in-app rows than are written inline
    (INAPP_INLINE_MAX) hands them over as planned recipients (DispatchBatch): inserted
    pending here and updated to delivered there, each row cost two writes, both in the
    fan-out's single sequence of pages; inserted there, it costs one, spread over the
    in-app workers (docs/benchmarks.md, P1). Not for aggregated types, whose open window
    must find the rows it gathers."""
    if notification_type.aggregation_window_seconds:
        return planned, []
    deferred = [
        p.recipient_id for p in planned if p.channel == Channel.INAPP and p.status == INAPP_WRITTEN_FROM
    ]
    if len(deferred) <= settings.INAPP_INLINE_MAX:
        return planned, []
    if len(deferred) == len(planned):
        return [], deferred
    return [
        p for p in planned if not (p.channel == Channel.INAPP and p.status == INAPP_WRITTEN_FROM)
    ], deferred


def _relax_unless_inapp(counts: Counter[str]) -> None:
    """A page that planned no pending in-app delivery commits without waiting for the WAL
    flush; one that did may have written their inbox items, whose frames go out right after
    the commit, so it commits durably (services/durability.py)."""
    if not counts[f"deliveries:{Channel.INAPP}:{DeliveryStatus.PENDING}"]:
        relax_commit_durability()


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
    known: OutboxMessage | None = None
    while True:
        result = _fanout_page(outbox_id, known)
        if result is None:
            return FanoutProgress(pages, recipients, finished=True)
        # The row as this page left it serves the next page; after a page that stored
        # nothing (another worker moved the cursor) it is read again. So within one slice
        # (FANOUT_SLICE_SECONDS) the event's type is the one read at its start.
        count, finished, known, pace = result
        if count:
            pages += 1
            recipients += count
        if finished:
            return FanoutProgress(pages, recipients, finished=True)
        if pace:
            # A throttled campaign: the next page after its share of a second per recipient,
            # by a task due then; the row's lease covers the wait, so no sweep takes it meanwhile.
            lease = timedelta(seconds=pace + settings.OUTBOX_LEASE_SECONDS)
            OutboxMessage.objects.filter(id=outbox_id).update(leased_until=timezone.now() + lease)
            outbox_relay(outbox_id=outbox_id, countdown=pace, queue=CAMPAIGN_QUEUE)
            return FanoutProgress(pages, recipients, finished=False)
        if time.monotonic() - started >= budget:
            campaign = known is not None and known.event.campaign_id is not None
            outbox_relay(outbox_id=outbox_id, queue=CAMPAIGN_QUEUE if campaign else None)
            return FanoutProgress(pages, recipients, finished=False)


# --- Small events, many at once ------------------------------------------------------------


def fanout_is_small(event: Event, cursor: int) -> bool:
    """Whether the event fans out in one page with nothing carried between events: explicit
    recipients (at most a page), not started, no aggregation window."""
    return (
        event.topic_id is None
        and cursor == 0
        and len(event.recipient_ids or []) <= settings.FANOUT_PAGE_SIZE
        and not event.notification_type.aggregation_window_seconds
    )


def _facts_of(recipient_ids: list[int]) -> dict[int, RecipientFacts]:
    if not recipient_ids:
        return {}
    with connection.cursor() as db:
        db.execute(
            f"SELECT {_FACTS_COLUMNS} FROM {Recipient._meta.db_table} r WHERE r.id = ANY(%b)",
            [recipient_ids],
        )
        return {row[0]: RecipientFacts(*row) for row in db.fetchall()}


class _Undone(NamedTuple):
    """An outbox row not yet fanned out, with its event (and the event's type)."""

    id: int
    event: Event
    cursor: int

    @property
    def event_id(self) -> Any:
        return self.event.id


class _SmallPlan(NamedTuple):
    notification_type: NotificationType
    owners: list[int]  # the outbox row of each planned row
    event_ids: list[object]  # the event of each planned row
    planned: list[PlannedDelivery]
    counts: dict[int, int]  # outbox id -> recipients planned


def _plan_small(outboxes: Sequence[_Undone], now: datetime) -> list[_SmallPlan]:
    """Plan small events type by type: one recipient query for all of them, then one
    preference query and one rate-cap call per channel for each type (plan_page plans
    the concatenated recipients of a type's events entry by entry)."""
    facts = _facts_of(sorted({rid for o in outboxes for rid in o.event.recipient_ids or []}))
    by_type: dict[int, list[_Undone]] = {}
    for outbox in outboxes:
        by_type.setdefault(outbox.event.notification_type_id, []).append(outbox)
    plans: list[_SmallPlan] = []
    for members in by_type.values():
        notification_type = members[0].event.notification_type
        entries: list[RecipientFacts] = []
        walls: list[datetime | None] = []
        owners: list[_Undone] = []
        counts: dict[int, int] = {}
        for outbox in members:
            # A recipient deleted since ingest is skipped, as on the paged path.
            mine = [facts[rid] for rid in outbox.event.recipient_ids or [] if rid in facts]
            entries.extend(mine)
            walls.extend([event_local_wall(outbox.event)] * len(mine))
            owners.extend([outbox] * len(mine))
            counts[outbox.id] = len(mine)
        planned = (
            plan_page(
                notification_type=notification_type,
                recipients=entries,
                now=now,
                local_walls=walls if any(wall is not None for wall in walls) else None,
            )
            if entries
            else []
        )
        # planned[c * width + i] belongs to entries[i] (plan_page's order)
        width = len(entries)
        row_owners = [owners[index % width] for index in range(len(planned))] if width else []
        plans.append(
            _SmallPlan(
                notification_type,
                [o.id for o in row_owners],
                [o.event_id for o in row_owners],
                planned,
                counts,
            )
        )
    return plans


# Session advisory locks on the outbox rows a batch of small events is planning, in a key
# space of their own: two fan-out tasks that would take along the same waiting events must
# not both plan them, or both would count them against the recipients' rate caps.
_CLAIM_SPACE = 1 << 62


def _claim_small(outbox_ids: Sequence[int]) -> list[int]:
    """Take the claims nobody else holds; returns the ids claimed. Claims are session
    locks, not row locks: nothing else waits on them, planning (Redis) runs while they are
    held, and a worker that dies drops them with its connection. Rows are read again once
    claimed (``_load_outboxes``): a batch that held one until a moment ago stored it. (A
    row whose event the caller holds is not read: if another fan-out stored it meanwhile,
    its plan is dropped when stored, as ``_store_small`` locks only rows still undone.)"""
    if not outbox_ids:
        return []
    with connection.cursor() as db:
        db.execute(
            "SELECT id FROM unnest(%b::bigint[]) AS t(id) WHERE pg_try_advisory_lock(%s + id)",
            [list(outbox_ids), _CLAIM_SPACE],
        )
        return [row[0] for row in db.fetchall()]


def _release_small(claimed: list[int]) -> None:
    if not claimed:
        return
    try:
        with connection.cursor() as db:
            db.execute(
                "SELECT pg_advisory_unlock(%s + id) FROM unnest(%b::bigint[]) AS t(id)",
                [_CLAIM_SPACE, claimed],
            )
    except DatabaseError:  # the connection is gone, and its locks with it
        log.warning("fan-out claims not released", exc_info=True)


def _fanout_small(
    outbox_ids: Sequence[int], now: datetime, events: Mapping[int, Event] | None = None
) -> tuple[int, list[_Undone]]:
    """Claim the rows no other fan-out is planning and read them under the claim (those of
    ``events``, by outbox id, just stored with their types by the caller, are not read);
    plan the small events among them outside any transaction, then store them a page of
    recipients at a time (``_store_small``). Returns (recipients planned, the claimed rows
    that are not small events: large, started or aggregated, for the caller to send on)."""
    claimed = _claim_small(outbox_ids)
    try:
        known = events or {}
        outboxes = [_Undone(i, known[i], 0) for i in claimed if i in known]
        outboxes += _load_outboxes([i for i in claimed if i not in known])
        small = [o for o in outboxes if fanout_is_small(o.event, o.cursor)]
        others = [o for o in outboxes if not fanout_is_small(o.event, o.cursor)]
        return sum(_store_small(group, now) for group in _page_sized(small)), others
    finally:
        _release_small(claimed)


def _store_small(outboxes: Sequence[_Undone], now: datetime) -> int:
    plans = _plan_small(outboxes, now)
    with transaction.atomic():
        locked = set(
            OutboxMessage.objects.select_for_update(skip_locked=True)
            .filter(id__in=[o.id for o in outboxes], processed_at__isnull=True, cursor=0)
            .values_list("id", flat=True)
        )
        if not locked:
            return 0
        event_of = {o.id: o.event_id for o in outboxes}
        events = {o.event_id: o.event for o in outboxes}
        counts: Counter[str] = Counter()
        planned_count: dict[int, int] = {}
        for plan in plans:
            keep = [index for index, owner in enumerate(plan.owners) if owner in locked]
            inserted = deliveries_store(
                notification_type=plan.notification_type,
                event_ids=[plan.event_ids[i] for i in keep],
                planned=[plan.planned[i] for i in keep],
                now=now,
                inline_inapp=True,
                # The in-app items of a batch of small events are written in this same
                # transaction: a dispatch batch would only read the same rows again.
                inline_max=settings.FANOUT_MANY_MAX,
                events=events,
            )
            counts.update(f"deliveries:{row.channel}:{row.status}" for row in inserted)
            planned_count.update({oid: n for oid, n in plan.counts.items() if oid in locked})
        done = sorted(locked)
        with connection.cursor() as db:
            # The outbox rows and their events marked done in one statement.
            db.execute(
                f"""WITH o AS (
                        UPDATE {OutboxMessage._meta.db_table} SET processed_at = %s, leased_until = NULL
                        WHERE id = ANY(%b)
                    )
                    UPDATE {Event._meta.db_table} e
                    SET status = %s, completed_at = %s, planned_count = t.n
                    FROM unnest(%b::uuid[], %b::int[]) AS t(id, n)
                    WHERE e.id = t.id""",
                [
                    now,
                    done,
                    EventStatus.COMPLETED,
                    now,
                    [event_of[oid] for oid in done],
                    [planned_count.get(oid, 0) for oid in done],
                ],
            )
        _relax_unless_inapp(counts)
        counts["fanout_recipients"] = sum(planned_count.values())
        transaction.on_commit(lambda: metrics_increment(counts), robust=True)
    return counts["fanout_recipients"]


# The event's and its type's columns in their models' order, so that a row read by hand
# becomes model instances the way the ORM makes them (Model.from_db).
_EVENT_FIELDS = [f.attname for f in Event._meta.concrete_fields]
_TYPE_FIELDS = [f.attname for f in NotificationType._meta.concrete_fields]
_COLUMNS = ", ".join(
    [f"e.{f.column}" for f in Event._meta.concrete_fields]
    + [f"t.{f.column}" for f in NotificationType._meta.concrete_fields]
)


def _load_outboxes(outbox_ids: Sequence[int]) -> list[_Undone]:
    """The undone rows among ``outbox_ids`` with their events and types, in one statement.
    Read by hand rather than through a queryset with select_related (which cost more than
    the fan-out's writes for a batch of small events, docs/benchmarks.md); each type is
    made once, not once per event."""
    if not outbox_ids:
        return []
    with connection.cursor() as db:
        db.execute(
            f"""SELECT o.id, o.cursor, {_COLUMNS}
                FROM {OutboxMessage._meta.db_table} o
                JOIN {Event._meta.db_table} e ON e.id = o.event_id
                JOIN {NotificationType._meta.db_table} t ON t.id = e.notification_type_id
                WHERE o.id = ANY(%b) AND o.processed_at IS NULL""",
            [list(outbox_ids)],
        )
        rows = db.fetchall()
    converters = _json_converters(Event, 2) + _json_converters(NotificationType, 2 + len(_EVENT_FIELDS))
    types: dict[int, NotificationType] = {}
    undone: list[_Undone] = []
    for row in rows:
        values = list(row)
        for at, convert in converters:
            values[at] = convert(values[at])
        type_values = values[2 + len(_EVENT_FIELDS) :]
        notification_type = types.get(type_values[0])
        if notification_type is None:
            notification_type = NotificationType.from_db(connection.alias, _TYPE_FIELDS, type_values)
            types[type_values[0]] = notification_type
        event = Event.from_db(connection.alias, _EVENT_FIELDS, values[2 : 2 + len(_EVENT_FIELDS)])
        event.notification_type = notification_type
        undone.append(_Undone(row[0], event, row[1]))
    return undone


def _json_converters(model: type[Any], offset: int) -> list[tuple[int, Any]]:
    """(position in the row, conversion) of the model's JSON columns, which the database
    driver hands over as text for Django to decode (its JSONField.from_db_value)."""
    converters: list[tuple[int, Any]] = []
    for index, field in enumerate(model._meta.concrete_fields):
        if isinstance(field, JSONField):
            column = field.get_col(model._meta.db_table)
            converters.append(
                (offset + index, lambda v, f=field, c=column: f.from_db_value(v, c, connection))
            )
    return converters


def events_fanout_many(
    *, outbox_ids: Sequence[int], events: Mapping[int, Event] | None = None
) -> FanoutProgress:
    """Fan out several events in one go: the small ones (``fanout_is_small``) planned and
    stored together, one transaction per page of recipients (FANOUT_PAGE_SIZE), so the
    per-task and per-commit costs are paid once for many of them; each other one is
    relayed to a fan-out task of its own. Rows another fan-out holds are left to it. Safe
    to run twice, or alongside ``event_fanout`` of the same rows. ``events``: the events
    of some of the rows (by outbox id, with their types), as the caller just stored them,
    so that those rows are not read again."""
    recipients, others = _fanout_small(outbox_ids, timezone.now(), events)
    if others:
        outbox_relay_each(outbox_ids=[o.id for o in others])
    return FanoutProgress(pages=1 if recipients else 0, recipients=recipients, finished=not others)


def _page_sized(outboxes: Sequence[_Undone]) -> list[list[_Undone]]:
    """The events in groups of at most FANOUT_PAGE_SIZE recipients in all (an event alone
    may fill a group), so that one transaction never writes more than a page does."""
    groups: list[list[_Undone]] = []
    size = 0
    for outbox in outboxes:
        count = len(outbox.event.recipient_ids or [])
        if not groups or size + count > settings.FANOUT_PAGE_SIZE:
            groups.append([])
            size = 0
        groups[-1].append(outbox)
        size += count
    return groups


def _small_events_waiting(*, besides: int, limit: int, room: int, now: datetime) -> list[int]:
    """Outbox rows of other small events that are due and not started (most have a fan-out
    task of their own queued behind this one), oldest first: at most ``limit`` of them and
    ``room`` recipients in all."""
    if limit <= 0 or room <= 0:
        return []
    with connection.cursor() as db:
        db.execute(
            f"""SELECT o.id, cardinality(e.recipient_ids)
                FROM {OutboxMessage._meta.db_table} o
                JOIN {Event._meta.db_table} e ON e.id = o.event_id
                JOIN {NotificationType._meta.db_table} t ON t.id = e.notification_type_id
                WHERE o.processed_at IS NULL AND o.available_at <= %s AND o.cursor = 0 AND o.id <> %s
                  AND e.topic_id IS NULL AND cardinality(e.recipient_ids) <= %s
                  AND COALESCE(t.aggregation_window_seconds, 0) = 0
                ORDER BY o.available_at
                LIMIT %s""",
            [now, besides, settings.FANOUT_PAGE_SIZE, limit],
        )
        rows = db.fetchall()
    taken: list[int] = []
    for outbox_id, count in rows:
        if count > room:
            break
        taken.append(outbox_id)
        room -= count
    return taken


def event_fanout_next(*, outbox_id: int) -> FanoutProgress:
    """The fan-out task of one outbox row. A large event is fanned out page by page
    (``event_fanout``). A small one takes along up to FANOUT_MANY_MAX - 1 other small events
    that are waiting, as many as one page of recipients holds in all (FANOUT_PAGE_SIZE), and
    all are stored in one transaction: under load the per-task and
    per-commit costs are paid once per batch (the tasks of the rows taken along then find
    them done), while an event that comes alone goes alone, as fast as before."""
    outboxes = _load_outboxes([outbox_id])
    if not outboxes:
        return FanoutProgress(0, 0, finished=True)
    own = outboxes[0]
    if not fanout_is_small(own.event, own.cursor):
        return event_fanout(outbox_id=outbox_id)
    now = timezone.now()
    others = _small_events_waiting(
        besides=outbox_id,
        limit=settings.FANOUT_MANY_MAX - 1,
        room=settings.FANOUT_PAGE_SIZE - len(own.event.recipient_ids or []),
        now=now,
    )
    recipients, started = _fanout_small([outbox_id, *others], now)
    if any(o.id == outbox_id for o in started):  # it was started by another task meanwhile
        return event_fanout(outbox_id=outbox_id)
    return FanoutProgress(pages=1, recipients=recipients, finished=True)
