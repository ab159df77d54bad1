"""What providers tell us back, applied: dead push tokens, bounced and complaining
addresses, STOP replies, and the delivery receipts that move a delivery forward.

Every function here is idempotent: providers repeat callbacks, and a replayed callback
must change nothing (tests/notifications/test_provider_webhooks.py).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from anymail.signals import AnymailTrackingEvent, EventType
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from notifications.models import (
    Channel,
    Delivery,
    DeliveryEvent,
    DeliveryStatus,
    Device,
    FallbackCheck,
    Suppression,
    SuppressionKind,
    SuppressionReason,
)
from notifications.services.backoff import retry_at
from notifications.services.metrics import metrics_increment
from notifications.services.scheduling import deliveries_schedule
from notifications.services.sql import join_unnest_by_hash
from notifications.services.validation import RuleViolation, ValidationFailed, suppression_address_normalise
from notifications.states import RECEIPT_DEFERRED, RECEIPTS
from notifications.transports.base import Feedback, OutboundMessage, TransportError

# Receipts that say the message did not reach the user after all.
_FAILURES = frozenset({DeliveryStatus.BOUNCED, DeliveryStatus.FAILED})

log = logging.getLogger(__name__)


def suppression_add(*, kind: str, address: str, reason: str, detail: str = "") -> bool:
    """Put an address on the suppression list, in its stored form (lower-case email, E.164
    phone). Returns False when it was there already; ValidationFailed for an address that
    is not one, or an unknown kind or reason."""
    errors: dict[str, list[str]] = {}
    try:
        address = suppression_address_normalise(kind=kind, address=address)
    except RuleViolation as exc:
        errors["kind" if kind not in SuppressionKind.values else "address"] = [str(exc)]
    if reason not in SuppressionReason.values:
        errors["reason"] = [
            f"{reason!r} is not a reason; expected one of {', '.join(SuppressionReason.values)}"
        ]
    if errors:
        raise ValidationFailed(errors)
    try:
        with transaction.atomic():
            _, created = Suppression.objects.get_or_create(
                kind=kind, address=address, defaults={"reason": reason, "detail": detail[:300]}
            )
    except IntegrityError:
        return False
    if created:
        log.info("suppressed %s %s (%s)", kind, address, reason)
    return created


def suppression_remove(*, kind: str, address: str, reasons: tuple[str, ...] | None = None) -> int:
    """Take an address off the list; returns how many entries went (0 when it was not on
    it, or is not an address at all)."""
    try:
        address = suppression_address_normalise(kind=kind, address=address)
    except RuleViolation:
        return 0
    rows = Suppression.objects.filter(kind=kind, address=address)
    if reasons:
        rows = rows.filter(reason__in=reasons)
    deleted, _ = rows.delete()
    return deleted


def device_unregistered(*, platform: str, token: str, unregistered_at: datetime | None = None) -> bool:
    """Deactivate a push token the provider no longer knows. APNs says since when the token
    is invalid: a token registered again after that moment is kept (the app reinstalled).
    Returns whether a device was deactivated."""
    now = timezone.now()
    devices = Device.objects.filter(platform=platform, token=token, active=True)
    if unregistered_at is not None:
        devices = devices.filter(last_seen_at__lte=unregistered_at)
    return devices.update(active=False, deactivated_at=now) > 0


def device_remove(*, platform: str, token: str) -> bool:
    """Forget a token that is not valid for this app at all."""
    deleted, _ = Device.objects.filter(platform=platform, token=token).delete()
    return deleted > 0


def feedback_apply(*, message: OutboundMessage, error: TransportError) -> None:
    """Act on what a failed send says about its destination. Never raises for a
    destination the rules refuse (an address stored before they existed): it runs inside
    the transaction that records sends, which must commit."""
    try:
        _feedback_apply(message=message, error=error)
    except ValidationFailed as exc:
        log.warning("provider feedback on %s not applied: %s", message.to, exc.errors)


def _feedback_apply(*, message: OutboundMessage, error: TransportError) -> None:
    kind = error.feedback
    if kind == Feedback.UNREGISTERED and message.channel == Channel.PUSH:
        at_ms = error.detail.get("unregistered_at")
        at = datetime.fromtimestamp(int(at_ms) / 1000, tz=UTC) if at_ms else None
        device_unregistered(
            platform=str(message.options.get("platform")), token=message.to, unregistered_at=at
        )
    elif kind == Feedback.BAD_TOKEN and message.channel == Channel.PUSH:
        device_remove(platform=str(message.options.get("platform")), token=message.to)
    elif kind == Feedback.HARD_BOUNCE and message.channel == Channel.EMAIL:
        suppression_add(
            kind=SuppressionKind.EMAIL,
            address=message.to,
            reason=SuppressionReason.HARD_BOUNCE,
            detail=error.reason,
        )
    elif kind == Feedback.COMPLAINT and message.channel == Channel.EMAIL:
        suppression_add(
            kind=SuppressionKind.EMAIL,
            address=message.to,
            reason=SuppressionReason.COMPLAINT,
            detail=error.reason,
        )
    elif kind in (Feedback.INVALID_NUMBER, Feedback.NOT_SMS_CAPABLE) and message.channel == Channel.SMS:
        # Twilio charges for, and carriers count, every attempt at a dead number.
        suppression_add(
            kind=SuppressionKind.PHONE,
            address=message.to,
            reason=SuppressionReason.INVALID,
            detail=error.reason,
        )
    elif kind == Feedback.OPTED_OUT and message.channel == Channel.SMS:
        suppression_add(
            kind=SuppressionKind.PHONE,
            address=message.to,
            reason=SuppressionReason.SMS_STOP,
            detail=error.reason,
        )


# Receipts move a delivery forward only (notifications/states.py): a late "delivered"
# never undoes "opened".
TRACKING_KINDS = (*RECEIPTS, "complained", "deferred", "sent")


def delivery_track(
    *,
    delivery_id: int,
    kind: str,
    provider: str,
    occurred_at: datetime | None = None,
    reason: str = "",
    detail: dict[str, Any] | None = None,
    dedupe_key: str = "",
) -> bool:
    """Record a provider's receipt for a delivery and move its status forward when the
    receipt allows. ``dedupe_key`` (the provider's event id) makes a repeated receipt a
    no-op. Returns whether anything changed."""
    if kind not in TRACKING_KINDS:
        raise ValueError(f"unknown tracking kind {kind!r}")
    now = timezone.now()
    detail = dict(detail or {})
    if dedupe_key:
        detail["dedupe_key"] = dedupe_key
    if reason:
        detail.setdefault("reason", reason)
    with transaction.atomic():
        delivery = Delivery.objects.select_for_update().filter(id=delivery_id).first()
        if delivery is None:
            return False
        if (
            dedupe_key
            and DeliveryEvent.objects.filter(delivery_id=delivery_id, detail__dedupe_key=dedupe_key).exists()
        ):
            return False
        DeliveryEvent.objects.create(
            delivery_id=delivery_id,
            kind=kind,
            provider=provider,
            occurred_at=occurred_at or now,
            detail=detail,
        )
        moved_to = ""
        if kind in RECEIPTS:
            move = RECEIPTS[kind]
            if delivery.status in move.sources:
                # The reason says why a delivery did not reach the user; a receipt that it
                # did clears it.
                failure = move.target in _FAILURES
                Delivery.objects.filter(id=delivery_id, status=delivery.status).update(
                    status=move.target, reason=reason[:200] if failure else "", updated_at=now
                )
                moved_to = move.target
                if failure:
                    # Failed for good after the provider accepted it: a fallback channel
                    # need not wait for its deadline (as when the send itself fails).
                    FallbackCheck.objects.filter(delivery_id=delivery_id).update(due_at=now)
        elif kind == "deferred" and delivery.status in RECEIPT_DEFERRED.sources:
            # A soft bounce: the mail did not arrive; send it again after a backoff.
            due = retry_at(now=now, attempt=max(1, delivery.attempts - delivery.retry_base))
            Delivery.objects.filter(id=delivery_id, status=delivery.status).update(
                status=RECEIPT_DEFERRED.target,
                reason=f"soft bounce: {reason}"[:200],
                due_at=due,
                updated_at=now,
            )
            deliveries_schedule([(delivery_id, due)])
            moved_to = RECEIPT_DEFERRED.target
        if moved_to:
            transaction.on_commit(
                lambda: metrics_increment({f"deliveries:{delivery.channel}:{moved_to}": 1}), robust=True
            )
    return bool(moved_to)


@dataclass(frozen=True)
class Receipt:
    """One provider report about one delivery, as ``delivery_track`` takes it."""

    delivery_id: int
    kind: str
    provider: str
    occurred_at: datetime | None = None
    reason: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    dedupe_key: str = ""


# anymail's normalised event types -> our tracking kinds.
ANYMAIL_KINDS = {
    EventType.DELIVERED: "delivered",
    EventType.OPENED: "opened",
    EventType.CLICKED: "clicked",
    EventType.BOUNCED: "bounced",
    EventType.COMPLAINED: "complained",
    EventType.DEFERRED: "deferred",
    EventType.REJECTED: "bounced",
    EventType.UNSUBSCRIBED: "complained",
}


def email_event_receipt(event: AnymailTrackingEvent, esp_name: str) -> Receipt | None:
    """An ESP's tracking event (a webhook's or a page of its events API, normalised by
    anymail) as a receipt, adding a bounced or complaining address to the suppression
    list first. None when it is no receipt of ours (no delivery id, a kind we ignore)."""
    kind = ANYMAIL_KINDS.get(event.event_type)
    if kind is None:
        return None
    if event.recipient and event.event_type in (EventType.BOUNCED, EventType.REJECTED):
        suppression_add(
            kind=SuppressionKind.EMAIL,
            address=event.recipient,
            reason=SuppressionReason.HARD_BOUNCE,
            detail=(event.mta_response or event.description or "")[:300],
        )
    elif event.recipient and event.event_type == EventType.COMPLAINED:
        suppression_add(
            kind=SuppressionKind.EMAIL, address=event.recipient, reason=SuppressionReason.COMPLAINT
        )
    try:
        delivery_id = int((event.metadata or {}).get("delivery_id", ""))
    except (ValueError, TypeError):
        log.info("%s tracking event without a delivery id: %s", esp_name, event.event_type)
        return None
    return Receipt(
        delivery_id=delivery_id,
        kind=kind,
        provider=esp_name.lower(),
        occurred_at=event.timestamp,
        reason=(event.mta_response or event.description or event.reject_reason or "")[:200],
        detail={"event": event.event_type, "recipient": event.recipient or "", "url": event.click_url or ""},
        dedupe_key=str(event.event_id or ""),
    )


def receipts_track(receipts: list[Receipt], *, also: Callable[[], None] | None = None) -> int:
    """``delivery_track`` for a page of receipts in a few statements (a provider's events
    API hands them over by the hundred): each stored once (by delivery and dedupe key),
    each delivery moved forward as far as its receipts allow. Returns how many moves were
    made.

    No row is locked: a receipt for a delivery whose send is still being recorded cannot
    move it here. Both sides look again after their own commit (the send's record reads
    the receipts stored by then, ``receipts_apply_early``; this reads the statuses recorded
    by then, in its second transaction), so whichever looks last sees both. ``also`` runs
    in the first transaction (a poller moves its cursor there)."""
    if not receipts:
        if also is not None:
            with transaction.atomic():
                also()
        return 0
    others = [r for r in receipts if r.kind not in RECEIPTS and r.kind != "deferred"]
    deferred = [r for r in receipts if r.kind == "deferred"]
    moving = [r for r in receipts if r.kind in RECEIPTS]
    now = timezone.now()
    moved: list[tuple[int, str, str]] = []
    waiting: list[int] = []
    with transaction.atomic():
        stored = _receipts_store([*moving, *others], now)
        # Forward moves in rank order, so a page holding "delivered" then "opened" of one
        # delivery ends at opened, and a late "delivered" never undoes "opened".
        for kind in sorted(
            {r.kind for r in stored if r.kind in RECEIPTS}, key=lambda k: _RANK.get(RECEIPTS[k].target, 0)
        ):
            move = RECEIPTS[kind]
            failure = move.target in _FAILURES
            ids = list(dict.fromkeys(r.delivery_id for r in stored if r.kind == kind))
            reasons = {r.delivery_id: r.reason for r in stored if r.kind == kind}
            with connection.cursor() as db:
                join_unnest_by_hash(db)
                db.execute(
                    f"""UPDATE {Delivery._meta.db_table} AS d
                        SET status = %s, reason = u.reason, updated_at = %s
                        FROM unnest(%b::bigint[], %b::text[]) AS u(id, reason)
                        WHERE d.id = u.id AND d.id = ANY(%b) AND d.status = ANY(%b)
                        RETURNING d.id, d.channel""",
                    [
                        move.target,
                        now,
                        ids,
                        [reasons[i][:200] if failure else "" for i in ids],
                        ids,
                        list(move.sources),
                    ],
                )
                done = db.fetchall()
            moved.extend((row[0], row[1], move.target) for row in done)
            if failure and done:
                FallbackCheck.objects.filter(delivery_id__in=[row[0] for row in done]).update(due_at=now)
        moved_ids = {row[0] for row in moved}
        waiting = list(
            {r.delivery_id for r in stored if r.kind in RECEIPTS and r.delivery_id not in moved_ids}
        )
        for receipt in deferred:
            # Soft bounces (rare): each to a retry, in the transaction that moves the cursor.
            receipt_track(receipt)
        if also is not None:
            also()
        if moved:
            counts = Counter(f"deliveries:{channel}:{status}" for _, channel, status in moved)
            transaction.on_commit(lambda: metrics_increment(counts), robust=True)
    if waiting:
        # Sends recorded while this page was being stored: their receipts now count.
        with transaction.atomic():
            receipts_apply_early(delivery_ids=waiting, now=timezone.now())
    return len(moved)


def receipt_track(receipt: Receipt) -> bool:
    """``delivery_track`` of one receipt."""
    return delivery_track(
        delivery_id=receipt.delivery_id,
        kind=receipt.kind,
        provider=receipt.provider,
        occurred_at=receipt.occurred_at,
        reason=receipt.reason,
        detail=receipt.detail,
        dedupe_key=receipt.dedupe_key,
    )


def _receipts_store(receipts: list[Receipt], now: datetime) -> list[Receipt]:
    """Insert the receipts not stored yet (by delivery and dedupe key, within the page
    too) for deliveries that exist; returns those inserted."""
    fresh: dict[tuple[int, str], Receipt] = {}
    for index, receipt in enumerate(receipts):
        fresh.setdefault((receipt.delivery_id, receipt.dedupe_key or f"#{index}"), receipt)
    keyed = [r for r in fresh.values() if r.dedupe_key]
    if keyed:
        with connection.cursor() as db:
            db.execute(
                f"""SELECT delivery_id, detail->>'dedupe_key' FROM {DeliveryEvent._meta.db_table}
                    WHERE delivery_id = ANY(%s) AND detail->>'dedupe_key' = ANY(%s)""",
                [list({r.delivery_id for r in keyed}), [r.dedupe_key for r in keyed]],
            )
            for pair in db.fetchall():
                fresh.pop((pair[0], pair[1]), None)
    if not fresh:
        return []
    rows = list(fresh.values())
    details = []
    for r in rows:
        detail = dict(r.detail)
        if r.dedupe_key:
            detail["dedupe_key"] = r.dedupe_key
        if r.reason:
            detail.setdefault("reason", r.reason)
        details.append(json.dumps(detail))
    with connection.cursor() as db:
        db.execute(
            f"""INSERT INTO {DeliveryEvent._meta.db_table} (delivery_id, kind, provider, occurred_at, detail)
                SELECT u.d, u.k, u.p, u.o, u.x::jsonb
                FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::timestamptz[], %b::text[])
                     AS u(d, k, p, o, x)
                JOIN {Delivery._meta.db_table} AS d ON d.id = u.d
                RETURNING delivery_id""",
            [
                [r.delivery_id for r in rows],
                [r.kind for r in rows],
                [r.provider for r in rows],
                [r.occurred_at or now for r in rows],
                details,
            ],
        )
        existing = {row[0] for row in db.fetchall()}
    return [r for r in rows if r.delivery_id in existing]


# How far each receipt moves a delivery, for picking the furthest of several.
_RANK: dict[str, int] = {
    DeliveryStatus.DELIVERED: 1,
    DeliveryStatus.OPENED: 2,
    DeliveryStatus.CLICKED: 3,
    DeliveryStatus.BOUNCED: 4,
    DeliveryStatus.FAILED: 4,
}


def receipts_apply_early(*, delivery_ids: list[int], now: datetime) -> int:
    """Apply receipts stored before their delivery was recorded as sent (a Twilio
    "delivered" can beat the sender's own commit, a page of Mailgun events can be read
    while the send is recorded): ``delivery_track`` and ``receipts_track`` stored them but
    could not move a delivery that was not sent yet. Each delivery moves to its furthest
    receipt. Returns how many moved. Two statements whatever the number of deliveries."""
    if not delivery_ids:
        return 0
    with connection.cursor() as db:
        db.execute(
            f"""SELECT delivery_id, kind, detail->>'reason' FROM {DeliveryEvent._meta.db_table}
                WHERE delivery_id = ANY(%s) AND kind = ANY(%s)""",
            [list(delivery_ids), list(RECEIPTS)],
        )
        rows = db.fetchall()
    if not rows:
        return 0
    furthest: dict[int, tuple[int, str, str]] = {}
    for delivery_id, kind, reason in rows:
        rank = _RANK.get(RECEIPTS[kind].target, 0)
        if delivery_id not in furthest or rank > furthest[delivery_id][0]:
            furthest[delivery_id] = (rank, kind, reason or "")
    ids = list(furthest)
    moves = [RECEIPTS[furthest[i][1]] for i in ids]
    with connection.cursor() as db:
        join_unnest_by_hash(db)
        db.execute(
            f"""UPDATE {Delivery._meta.db_table} AS d
                SET status = u.target, reason = u.reason, updated_at = %s
                FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[]) AS u(id, target, reason, sources)
                WHERE d.id = u.id AND d.id = ANY(%s) AND d.status = ANY(string_to_array(u.sources, ','))""",
            [
                now,
                ids,
                [move.target for move in moves],
                [
                    furthest[i][2][:200] if move.target in _FAILURES else ""
                    for i, move in zip(ids, moves, strict=True)
                ],
                [",".join(move.sources) for move in moves],
                ids,
            ],
        )
        return db.rowcount


STOP_WORDS = {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
START_WORDS = {"START", "UNSTOP", "YES", "OPTIN"}


def sms_inbound(*, from_number: str, body: str) -> str | None:
    """Apply an inbound SMS keyword. Returns "stop", "start" or None (not a keyword)."""
    word = body.strip().upper()
    if word in STOP_WORDS:
        suppression_add(
            kind=SuppressionKind.PHONE,
            address=from_number,
            reason=SuppressionReason.SMS_STOP,
            detail=f"replied {word}",
        )
        return "stop"
    if word in START_WORDS:
        suppression_remove(
            kind=SuppressionKind.PHONE, address=from_number, reasons=(SuppressionReason.SMS_STOP,)
        )
        return "start"
    return None
