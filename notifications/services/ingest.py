"""Accepting events: validate, enforce idempotency, store the event and its outbox row
together (one statement for a single event, one transaction for a bulk call), and hand
them on after commit: a single event to the fan-out of the process that accepted it
(services/fanout_nearby.py), a bulk call's to fan-out tasks."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from notifications.models import ApiKey, Event, EventStatus, NotificationType, OutboxMessage, Recipient, Topic
from notifications.models.events import time_ordered_uuid
from notifications.services.fanout_nearby import event_fanout_soon
from notifications.services.local_time import wall_time_earliest
from notifications.services.lookups import notification_type_by_key
from notifications.services.metrics import metrics_increment
from notifications.services.outbox import outbox_relay_many
from notifications.services.template_variables import data_variables_errors

log = logging.getLogger(__name__)


class IngestError(Exception):
    """Bad input that only the database can judge (unknown type, recipients or topic)."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__(errors)
        self.errors = errors


class IdempotencyConflict(Exception):
    """The idempotency key was used before with a different body."""

    def __init__(self, event_id: Any) -> None:
        super().__init__(f"idempotency key already used for event {event_id} with a different body")
        self.event_id = event_id


@dataclass(frozen=True)
class IngestResult:
    event: Event
    created: bool


def _fingerprint(
    type_key: str,
    recipients: list[str] | None,
    topic_key: str | None,
    data: dict[str, Any],
    send_at: datetime | None,
    origin_ip: str | None = None,
    send_at_local: datetime | None = None,
) -> str:
    body: dict[str, Any] = {
        "type": type_key,
        "recipients": recipients,
        "topic": topic_key,
        "data": data,
        "send_at": send_at.isoformat() if send_at else None,
    }
    # Only when given: fingerprints stored before origin_ip existed must still match.
    if origin_ip:
        body["origin_ip"] = origin_ip
    if send_at_local:
        body["send_at_local"] = send_at_local.isoformat()
    canonical = json.dumps(
        body,
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replay(api_key: ApiKey | None, idempotency_key: str, fingerprint: str) -> IngestResult | None:
    existing = Event.objects.filter(api_key=api_key, idempotency_key=idempotency_key).first()
    if existing is None:
        return None
    if existing.request_fingerprint != fingerprint:
        raise IdempotencyConflict(existing.id)
    return IngestResult(event=existing, created=False)


def event_ingest(
    *,
    api_key: ApiKey | None,
    type_key: str,
    recipients: list[str] | None = None,
    topic_key: str | None = None,
    data: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    send_at: datetime | None = None,
    origin_ip: str | None = None,
    send_at_local: datetime | None = None,
    template_version: int | None = None,
    campaign_id: int | None = None,
) -> IngestResult:
    """Store an event for fan-out. Returns the event and whether it is new; the same
    idempotency key with the same body returns the first event (created=False).

    Raises IngestError naming the field, or IdempotencyConflict. Nothing is stored unless
    the event and its outbox row both are. ``origin_ip`` is the end user's address that
    caused the event (per-IP SMS limits); it is part of the idempotency fingerprint only
    when given. ``template_version``: a staff member's test of a version not published
    (notifications/services/template_versions.py), whose data is its examples; or a
    campaign variant's (notifications/services/campaigns.py). ``campaign_id``: the campaign
    whose status and throttle its fan-out follows.
    """
    data = data or {}
    origin_ip = origin_ip or None
    send_at = _send_at(send_at, send_at_local)
    fingerprint = _fingerprint(type_key, recipients, topic_key, data, send_at, origin_ip, send_at_local)
    if idempotency_key:
        replay = _replay(api_key, idempotency_key, fingerprint)
        if replay:
            return replay

    errors: dict[str, list[str]] = {}
    notification_type = notification_type_by_key(type_key)
    if notification_type is None:
        errors["type"] = [f"unknown notification type {type_key!r}"]
    elif template_version is None:
        errors.update(data_variables_errors(notification_type.variables, data))

    recipient_ids: list[int] | None = None
    topic: Topic | None = None
    if recipients is not None:
        wanted = list(dict.fromkeys(recipients))
        found = _recipient_ids(wanted)
        missing = [external_id for external_id in wanted if external_id not in found]
        if missing:
            shown = ", ".join(repr(m) for m in missing[:20])
            more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
            errors["recipients"] = [
                f"unknown recipients: {shown}{more}; create them with PUT /api/v1/recipients/{{id}}/"
            ]
        recipient_ids = sorted(found.values())
    elif topic_key is not None:
        topic = Topic.objects.filter(key=topic_key).first()
        if topic is None:
            errors["topic"] = [f"unknown topic {topic_key!r}"]
    if errors:
        raise IngestError(errors)
    assert notification_type is not None

    now = timezone.now()
    deferred = send_at is not None and send_at > now
    event = Event(
        id=time_ordered_uuid(),
        notification_type=notification_type,
        api_key=api_key,
        idempotency_key=idempotency_key or None,
        request_fingerprint=fingerprint,
        data=data,
        recipient_ids=recipient_ids,
        topic=topic,
        send_at=send_at,
        send_at_local=send_at_local.isoformat() if send_at_local else "",
        origin_ip=origin_ip,
        template_version=template_version,
        campaign_id=campaign_id,
        status=EventStatus.SCHEDULED if deferred else EventStatus.ACCEPTED,
        created_at=now,
    )
    # Once stored, this instance stands for the row (saving it again would update, not insert).
    event._state.adding = False
    event._state.db = "default"
    try:
        # One statement stores the event and its outbox row, atomic on its own: no
        # transaction block around it, no ORM objects to prepare. Inside a caller's
        # transaction it gets a savepoint, so that a lost idempotency race (below) leaves
        # that transaction usable.
        with transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext():
            outbox_id = _insert_event(event, lease=None if deferred else now + _lease())
        if not deferred:
            # robust: the event is stored; a failed relay must not turn the answer into a 500.
            # If the fan-out is lost, the sweep takes the row over when its lease runs out.
            transaction.on_commit(lambda: event_fanout_soon(outbox_id=outbox_id, event=event), robust=True)
    except IntegrityError:
        # Two requests with one idempotency key raced; the loser answers like a replay.
        if idempotency_key:
            replay = _replay(api_key, idempotency_key, fingerprint)
            if replay:
                return replay
        raise
    metrics_increment({"events_accepted": 1})
    log.info("event accepted", extra={"event_id": str(event.id), "type": type_key})
    return IngestResult(event=event, created=True)


# --- Many events in one call ----------------------------------------------------------------

EVENTS_BULK_MAX = 1000


@dataclass(frozen=True)
class EventSpec:
    """One event of a bulk call, its fields already checked one by one (the API's
    serializer); what only the database can judge is judged here."""

    type_key: str
    recipients: list[str] | None = None
    topic_key: str | None = None
    data: dict[str, Any] | None = None
    idempotency_key: str | None = None
    send_at: datetime | None = None
    origin_ip: str | None = None
    send_at_local: datetime | None = None


@dataclass(frozen=True)
class BulkEventResult:
    """``status`` is "accepted" (stored now), "duplicate" (its idempotency key was used
    before with the same body: ``event_id`` is the first event) or "error"."""

    index: int
    status: str
    event_id: Any = None
    errors: dict[str, list[str]] | None = None


@dataclass
class _Pending:
    index: int
    spec: EventSpec
    fingerprint: str
    event_id: uuid.UUID | None = None  # set once the item is to be stored
    recipient_ids: list[int] | None = None


def _recipient_ids(external_ids: list[str]) -> dict[str, int]:
    """{external_id: id} of the recipients among ``external_ids`` that exist."""
    with connection.cursor() as db:
        db.execute(
            f"SELECT external_id, id FROM {Recipient._meta.db_table} WHERE external_id = ANY(%s)",
            [external_ids],
        )
        return dict(db.fetchall())


def _lease() -> timedelta:
    return timedelta(seconds=settings.OUTBOX_LEASE_SECONDS)


def _send_at(send_at: datetime | None, send_at_local: datetime | None) -> datetime | None:
    """When the event's fan-out starts: ``send_at``, or for a wall-clock time in each
    recipient's timezone the first instant any timezone reaches it (each recipient's
    deliveries then wait for their own, services/planning.py)."""
    return wall_time_earliest(send_at_local) if send_at_local is not None else send_at


def _insert_event(event: Event, *, lease: datetime | None) -> int:
    """Store one event and its outbox row in one statement (atomic without a transaction
    block); ``lease``: the row's lease for the fan-out about to take it, None when the
    event waits for its send_at. Returns the outbox row's id."""
    with connection.cursor() as db:
        db.execute(
            f"""WITH e AS (
                    INSERT INTO {Event._meta.db_table}
                        (id, notification_type_id, api_key_id, idempotency_key, request_fingerprint,
                         data, recipient_ids, topic_id, send_at, send_at_local, origin_ip, status,
                         planned_count, created_at, template_version, campaign_id)
                    VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s::bigint[], %s, %s, %s, %s::inet, %s, 0, %s, %s, %s)
                    RETURNING id
                )
                INSERT INTO {OutboxMessage._meta.db_table}
                    (event_id, available_at, leased_until, cursor, attempts, created_at)
                SELECT id, %s, %s, 0, 0, %s FROM e
                RETURNING id""",
            [
                event.id,
                event.notification_type_id,
                event.api_key_id,
                event.idempotency_key,
                event.request_fingerprint,
                json.dumps(event.data),
                event.recipient_ids,
                event.topic_id,
                event.send_at,
                event.send_at_local,
                event.origin_ip,
                event.status,
                event.created_at,
                event.template_version,
                event.campaign_id,
                event.send_at if lease is None else event.created_at,
                lease,
                event.created_at,
            ],
        )
        row = db.fetchone()
        assert row is not None
        return int(row[0])


def _insert_events(
    api_key: ApiKey,
    rows: list[_Pending],
    types: dict[str, NotificationType],
    topics: dict[str, Topic],
    now: datetime,
) -> list[int]:
    """The events and their outbox rows, one INSERT ... SELECT FROM unnest(...) each (the
    ORM's bulk_create spent more time preparing values than PostgreSQL spent storing them).
    Returns the outbox ids to relay now (the others wait for their send_at)."""
    send_ats = [_send_at(p.spec.send_at, p.spec.send_at_local) for p in rows]
    deferred = [send_at is not None and send_at > now for send_at in send_ats]
    with connection.cursor() as db:
        db.execute(
            f"""INSERT INTO {Event._meta.db_table}
                    (id, notification_type_id, api_key_id, idempotency_key, request_fingerprint, data,
                     recipient_ids, topic_id, send_at, send_at_local, origin_ip, status, planned_count,
                     created_at)
                SELECT id, nt, %s, ik, fp, d::jsonb, r::bigint[], tp, sa, sl, ip::inet, st, 0, %s
                FROM unnest(%b::uuid[], %b::bigint[], %b::text[], %b::text[], %b::text[], %b::text[],
                            %b::bigint[], %b::timestamptz[], %b::text[], %b::text[], %b::text[])
                     AS t(id, nt, ik, fp, d, r, tp, sa, sl, ip, st)""",
            [
                api_key.id,
                now,
                [p.event_id for p in rows],
                [types[p.spec.type_key].id for p in rows],
                [p.spec.idempotency_key or None for p in rows],
                [p.fingerprint for p in rows],
                [json.dumps(p.spec.data or {}) for p in rows],
                [
                    None if p.recipient_ids is None else "{" + ",".join(map(str, p.recipient_ids)) + "}"
                    for p in rows
                ],
                [topics[p.spec.topic_key].id if p.spec.topic_key is not None else None for p in rows],
                send_ats,
                [p.spec.send_at_local.isoformat() if p.spec.send_at_local else "" for p in rows],
                [p.spec.origin_ip or None for p in rows],
                [EventStatus.SCHEDULED if later else EventStatus.ACCEPTED for later in deferred],
            ],
        )
        lease = now + _lease()
        db.execute(
            f"""INSERT INTO {OutboxMessage._meta.db_table}
                    (event_id, available_at, leased_until, cursor, attempts, created_at)
                SELECT e, a, l, 0, 0, %s FROM unnest(%b::uuid[], %b::timestamptz[], %b::timestamptz[])
                     AS t(e, a, l)
                RETURNING id, leased_until IS NOT NULL""",
            [
                now,
                [p.event_id for p in rows],
                [send_at if later else now for send_at, later in zip(send_ats, deferred, strict=True)],
                [None if later else lease for later in deferred],
            ],
        )
        return [outbox_id for outbox_id, relay in db.fetchall() if relay]


def _unknown(kind: str, missing: list[str], hint: str = "") -> list[str]:
    shown = ", ".join(repr(m) for m in missing[:20])
    more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
    return [f"unknown {kind}: {shown}{more}{hint}"]


def events_ingest_many(
    *, api_key: ApiKey, items: list[EventSpec | dict[str, list[str]]]
) -> list[BulkEventResult]:
    """Store up to EVENTS_BULK_MAX events for fan-out; ``items`` holds an EventSpec per
    good item and the field errors of each bad one. Returns one result per item, in input
    order. Each item is validated and idempotent on its own: a bad item, or one whose
    idempotency key was used with another body (here or before), is an "error" result and
    never stops or half-stores the others. The accepted events and their outbox rows are
    written in one transaction with one statement per table (types, recipients, topics and
    earlier keys are read with one query each), and their fan-out is enqueued after commit
    as tasks of many small events each (services/outbox.py)."""
    if len(items) > EVENTS_BULK_MAX:
        raise IngestError({"events": [f"at most {EVENTS_BULK_MAX} events per call, got {len(items)}"]})
    try:
        return _ingest_many(api_key, items)
    except IntegrityError:
        # A concurrent call stored one of these idempotency keys first; judged again, that
        # item is now a duplicate (or a conflict) and the rest are stored.
        return _ingest_many(api_key, items)


def _ingest_many(api_key: ApiKey, items: list[EventSpec | dict[str, list[str]]]) -> list[BulkEventResult]:
    results: list[BulkEventResult | None] = [None] * len(items)
    pending: list[_Pending] = []
    for index, item in enumerate(items):
        if isinstance(item, EventSpec):
            fingerprint = _fingerprint(
                item.type_key,
                item.recipients,
                item.topic_key,
                item.data or {},
                _send_at(item.send_at, item.send_at_local),
                item.origin_ip or None,
                item.send_at_local,
            )
            pending.append(_Pending(index, item, fingerprint))
        else:
            results[index] = BulkEventResult(index, "error", errors=item)

    # Idempotency: keys used before (one query), then keys repeated inside this call.
    keys = {p.spec.idempotency_key for p in pending if p.spec.idempotency_key}
    earlier = (
        {
            key: (event_id, fingerprint)
            for key, event_id, fingerprint in Event.objects.filter(
                api_key=api_key, idempotency_key__in=keys
            ).values_list("idempotency_key", "id", "request_fingerprint")
        }
        if keys
        else {}
    )
    first_with_key: dict[str, _Pending] = {}
    repeats: list[tuple[_Pending, _Pending]] = []
    fresh: list[_Pending] = []
    for p in pending:
        key = p.spec.idempotency_key
        if key and key in earlier:
            event_id, fingerprint = earlier[key]
            results[p.index] = (
                BulkEventResult(p.index, "duplicate", event_id=event_id)
                if fingerprint == p.fingerprint
                else BulkEventResult(
                    p.index,
                    "error",
                    errors={"idempotency_key": [str(IdempotencyConflict(event_id))]},
                )
            )
        elif key and key in first_with_key:
            first = first_with_key[key]
            if first.fingerprint == p.fingerprint:
                repeats.append((p, first))
            else:
                results[p.index] = BulkEventResult(
                    p.index,
                    "error",
                    errors={
                        "idempotency_key": [f"already used at index {first.index} with a different body"]
                    },
                )
        else:
            if key:
                first_with_key[key] = p
            fresh.append(p)

    # What only the database can judge: one query per kind.
    type_keys = {p.spec.type_key for p in fresh}
    types = {t.key: t for t in NotificationType.objects.filter(key__in=type_keys)} if type_keys else {}
    wanted = {eid for p in fresh for eid in p.spec.recipients or []}
    recipient_ids = (
        dict(Recipient.objects.filter(external_id__in=wanted).values_list("external_id", "id"))
        if wanted
        else {}
    )
    topic_keys = {p.spec.topic_key for p in fresh if p.spec.topic_key is not None}
    topics = {t.key: t for t in Topic.objects.filter(key__in=topic_keys)} if topic_keys else {}

    now = timezone.now()
    rows: list[_Pending] = []
    for p in fresh:
        spec = p.spec
        errors: dict[str, list[str]] = {}
        if spec.type_key not in types:
            errors["type"] = [f"unknown notification type {spec.type_key!r}"]
        else:
            errors.update(data_variables_errors(types[spec.type_key].variables, spec.data or {}))
        ids: list[int] | None = None
        if spec.recipients is not None:
            unique = list(dict.fromkeys(spec.recipients))
            missing = [eid for eid in unique if eid not in recipient_ids]
            if missing:
                errors["recipients"] = _unknown(
                    "recipients", missing, "; create them with PUT /api/v1/recipients/{id}/ or in bulk"
                )
            ids = sorted(recipient_ids[eid] for eid in unique if eid in recipient_ids)
        elif spec.topic_key is not None and spec.topic_key not in topics:
            errors["topic"] = [f"unknown topic {spec.topic_key!r}"]
        if errors:
            results[p.index] = BulkEventResult(p.index, "error", errors=errors)
            continue
        p.event_id = time_ordered_uuid()
        p.recipient_ids = ids
        rows.append(p)

    if rows:
        with transaction.atomic():
            relayed = _insert_events(api_key, rows, types, topics, now)
            if relayed:
                transaction.on_commit(lambda: outbox_relay_many(outbox_ids=relayed), robust=True)
        metrics_increment({"events_accepted": len(rows)})
        log.info("events accepted in bulk", extra={"events": len(rows)})
    for p in rows:
        results[p.index] = BulkEventResult(p.index, "accepted", event_id=p.event_id)
    for p, first in repeats:
        if first.event_id is not None:
            results[p.index] = BulkEventResult(p.index, "duplicate", event_id=first.event_id)
        else:
            results[p.index] = BulkEventResult(
                p.index,
                "error",
                errors={"idempotency_key": [f"the item at index {first.index} with this key was refused"]},
            )
    return [result for result in results if result is not None]
