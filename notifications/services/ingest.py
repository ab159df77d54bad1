"""Accepting events: validate, enforce idempotency, store the event and its outbox row in
one transaction, and relay to the fan-out queue after commit."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from notifications.models import ApiKey, Event, EventStatus, NotificationType, OutboxMessage, Recipient, Topic
from notifications.services.metrics import metrics_increment
from notifications.services.outbox import outbox_relay

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
    canonical = json.dumps(
        body,
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replay(api_key: ApiKey, idempotency_key: str, fingerprint: str) -> IngestResult | None:
    existing = Event.objects.filter(api_key=api_key, idempotency_key=idempotency_key).first()
    if existing is None:
        return None
    if existing.request_fingerprint != fingerprint:
        raise IdempotencyConflict(existing.id)
    return IngestResult(event=existing, created=False)


def event_ingest(
    *,
    api_key: ApiKey,
    type_key: str,
    recipients: list[str] | None = None,
    topic_key: str | None = None,
    data: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    send_at: datetime | None = None,
    origin_ip: str | None = None,
) -> IngestResult:
    """Store an event for fan-out. Returns the event and whether it is new; the same
    idempotency key with the same body returns the first event (created=False).

    Raises IngestError naming the field, or IdempotencyConflict. Nothing is stored unless
    the event and its outbox row both are. ``origin_ip`` is the end user's address that
    caused the event (per-IP SMS limits); it is part of the idempotency fingerprint only
    when given.
    """
    data = data or {}
    origin_ip = origin_ip or None
    fingerprint = _fingerprint(type_key, recipients, topic_key, data, send_at, origin_ip)
    if idempotency_key:
        replay = _replay(api_key, idempotency_key, fingerprint)
        if replay:
            return replay

    errors: dict[str, list[str]] = {}
    notification_type = NotificationType.objects.filter(key=type_key).first()
    if notification_type is None:
        errors["type"] = [f"unknown notification type {type_key!r}"]

    recipient_ids: list[int] | None = None
    topic: Topic | None = None
    if recipients is not None:
        wanted = list(dict.fromkeys(recipients))
        found = dict(Recipient.objects.filter(external_id__in=wanted).values_list("external_id", "id"))
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
    try:
        with transaction.atomic():
            event = Event.objects.create(
                notification_type=notification_type,
                api_key=api_key,
                idempotency_key=idempotency_key or None,
                request_fingerprint=fingerprint,
                data=data,
                recipient_ids=recipient_ids,
                topic=topic,
                send_at=send_at,
                origin_ip=origin_ip,
                status=EventStatus.SCHEDULED if deferred else EventStatus.ACCEPTED,
            )
            outbox = OutboxMessage.objects.create(
                event=event,
                available_at=send_at if deferred and send_at else now,
                # Leased to the relay below; if the enqueue is lost the sweep takes it over
                # when the lease runs out.
                leased_until=None if deferred else now + timedelta(seconds=settings.OUTBOX_LEASE_SECONDS),
            )
            if not deferred:
                outbox_id = outbox.id
                # robust: the event is stored; a failed relay must not turn the answer into a 500.
                transaction.on_commit(lambda: outbox_relay(outbox_id=outbox_id), robust=True)
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
