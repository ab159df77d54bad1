"""What providers tell us back, applied: dead push tokens, bounced and complaining
addresses, STOP replies, and the delivery receipts that move a delivery forward.

Every function here is idempotent: providers repeat callbacks, and a replayed callback
must change nothing (tests/notifications/test_provider_webhooks.py).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from django.db import IntegrityError, transaction
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


# How far each receipt moves a delivery, for picking the furthest of several.
_RANK: dict[str, int] = {
    DeliveryStatus.DELIVERED: 1,
    DeliveryStatus.OPENED: 2,
    DeliveryStatus.CLICKED: 3,
    DeliveryStatus.BOUNCED: 4,
    DeliveryStatus.FAILED: 4,
}


def receipts_apply_early(*, delivery_ids: list[int], now: datetime) -> int:
    """Inside the transaction that records sends as sent: apply receipts that arrived
    while the sender was still in flight (a Twilio "delivered" can beat the sender's own
    commit). ``delivery_track`` stored them but could not move a delivery that was not
    sent yet. Returns how many deliveries moved."""
    if not delivery_ids:
        return 0
    furthest: dict[int, tuple[int, str, str]] = {}
    for delivery_id, kind, detail in DeliveryEvent.objects.filter(
        delivery_id__in=delivery_ids, kind__in=list(RECEIPTS)
    ).values_list("delivery_id", "kind", "detail"):
        rank = _RANK.get(RECEIPTS[kind].target, 0)
        if delivery_id not in furthest or rank > furthest[delivery_id][0]:
            reason = str((detail or {}).get("reason", "")) if isinstance(detail, dict) else ""
            furthest[delivery_id] = (rank, kind, reason)
    moved = 0
    for delivery_id, (_, kind, reason) in furthest.items():
        move = RECEIPTS[kind]
        failure = move.target in _FAILURES
        moved += Delivery.objects.filter(id=delivery_id, status__in=move.sources).update(
            status=move.target, reason=reason[:200] if failure else "", updated_at=now
        )
    return moved


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
