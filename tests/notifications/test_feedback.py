"""What providers tell us back (notifications.services.feedback): dead push tokens,
suppression, STOP keywords and the forward-only receipt machine."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from notifications.models import (
    Delivery,
    DeliveryEvent,
    DeliverySchedule,
    DeliveryStatus,
    Device,
    Event,
    FallbackCheck,
    Suppression,
    SuppressionKind,
    SuppressionReason,
)
from notifications.services.feedback import (
    delivery_track,
    device_remove,
    device_unregistered,
    feedback_apply,
    sms_inbound,
    suppression_add,
    suppression_remove,
)
from notifications.transports.base import Feedback, OutboundMessage, TransportError
from tests.notifications.factories import NotificationTypeFactory, RecipientFactory

pytestmark = pytest.mark.django_db


def _device(*, platform: str = "apns", last_seen_at: datetime | None = None) -> Device:
    return Device.objects.create(
        recipient=RecipientFactory(),
        platform=platform,
        token=uuid.uuid4().hex * 2,
        last_seen_at=last_seen_at or timezone.now(),
    )


def _delivery(status: str = DeliveryStatus.SENT, channel: str = "email") -> Delivery:
    recipient = RecipientFactory(email="someone@example.com")
    nt = NotificationTypeFactory(channels=[channel])
    event = Event.objects.create(
        notification_type=nt, recipient_ids=[recipient.id], request_fingerprint="f" * 64
    )
    return Delivery.objects.create(
        event=event, recipient=recipient, channel=channel, status=status, attempts=1
    )


def _status(delivery: Delivery) -> str:
    delivery.refresh_from_db()
    return delivery.status


# --- push tokens ------------------------------------------------------------------------


def test_it_deactivates_a_token_last_seen_before_apns_says_it_became_invalid():
    # given a device last seen two hours ago
    device = _device(last_seen_at=timezone.now() - timedelta(hours=2))

    # when APNs says the token has been invalid since an hour ago
    changed = device_unregistered(
        platform="apns", token=device.token, unregistered_at=timezone.now() - timedelta(hours=1)
    )

    # then it is deactivated
    device.refresh_from_db()
    assert changed is True and device.active is False and device.deactivated_at is not None


def test_it_keeps_a_token_registered_again_after_apns_says_it_became_invalid():
    # given a device whose app was reinstalled (seen again) after the token became invalid
    device = _device(last_seen_at=timezone.now())

    # when APNs reports the old invalidation timestamp
    changed = device_unregistered(
        platform="apns", token=device.token, unregistered_at=timezone.now() - timedelta(hours=1)
    )

    # then the device stays active
    device.refresh_from_db()
    assert changed is False and device.active is True and device.deactivated_at is None


def test_it_deactivates_an_fcm_token_without_a_timestamp():
    device = _device(platform="fcm")

    assert device_unregistered(platform="fcm", token=device.token) is True

    device.refresh_from_db()
    assert device.active is False
    # a second report changes nothing
    assert device_unregistered(platform="fcm", token=device.token) is False


def test_it_applies_the_apns_410_timestamp_from_a_transport_error():
    # given two APNs devices: one seen before the invalidation, one registered again after
    invalid_since = timezone.now() - timedelta(minutes=30)
    stale = _device(last_seen_at=invalid_since - timedelta(minutes=1))
    fresh = _device(last_seen_at=invalid_since + timedelta(minutes=1))
    error = TransportError(
        "410 Unregistered",
        permanent=True,
        feedback=Feedback.UNREGISTERED,
        detail={"unregistered_at": int(invalid_since.timestamp() * 1000)},
    )

    # when the send of each fails with APNs' 410 and its timestamp in milliseconds
    for device in (stale, fresh):
        message = OutboundMessage(
            delivery_id=1, idempotency_key="k", channel="push", to=device.token, options={"platform": "apns"}
        )
        feedback_apply(message=message, error=error)

    # then only the stale one is deactivated
    stale.refresh_from_db()
    fresh.refresh_from_db()
    assert (stale.active, fresh.active) == (False, True)


def test_it_removes_a_token_that_is_not_valid_for_the_app():
    # given a device and another platform's device with the same token text
    device = _device(platform="apns")
    other = Device.objects.create(recipient=device.recipient, platform="fcm", token=device.token)

    # when the token is removed for APNs
    assert device_remove(platform="apns", token=device.token) is True

    # then only that device is gone, and removing again reports nothing to do
    assert not Device.objects.filter(id=device.id).exists()
    assert Device.objects.filter(id=other.id).exists()
    assert device_remove(platform="apns", token=device.token) is False


def test_it_removes_a_bad_token_from_a_transport_error():
    device = _device(platform="fcm")
    message = OutboundMessage(
        delivery_id=1, idempotency_key="k", channel="push", to=device.token, options={"platform": "fcm"}
    )

    feedback_apply(
        message=message, error=TransportError("INVALID_ARGUMENT", permanent=True, feedback=Feedback.BAD_TOKEN)
    )

    assert not Device.objects.filter(id=device.id).exists()


# --- suppression ------------------------------------------------------------------------


def test_it_suppresses_an_email_address_once_normalised():
    assert suppression_add(kind="email", address=" Ana@Example.COM ", reason=SuppressionReason.HARD_BOUNCE)
    assert not suppression_add(kind="email", address="ana@example.com", reason=SuppressionReason.COMPLAINT)

    suppression = Suppression.objects.get()
    assert (suppression.address, suppression.reason) == ("ana@example.com", SuppressionReason.HARD_BOUNCE)


@pytest.mark.parametrize(
    ("feedback", "channel", "to", "kind", "reason"),
    [
        (Feedback.HARD_BOUNCE, "email", "X@Bounce.Sandbox.Test", "email", SuppressionReason.HARD_BOUNCE),
        (Feedback.COMPLAINT, "email", "x@complaint.sandbox.test", "email", SuppressionReason.COMPLAINT),
        (Feedback.OPTED_OUT, "sms", "+14155552671", "phone", SuppressionReason.SMS_STOP),
    ],
)
def test_it_suppresses_destinations_a_failed_send_reports(feedback, channel, to, kind, reason):
    message = OutboundMessage(delivery_id=1, idempotency_key="k", channel=channel, to=to)

    feedback_apply(message=message, error=TransportError("said no", permanent=True, feedback=feedback))

    suppression = Suppression.objects.get()
    assert (suppression.kind, suppression.address, suppression.reason) == (
        kind,
        to.lower() if kind == "email" else to,
        reason,
    )
    assert suppression.detail == "said no"


def test_it_applies_stop_and_start_keywords():
    # when a number replies " stop " (any case, surrounding space)
    assert sms_inbound(from_number="+14155552671", body=" stop ") == "stop"
    # then it is suppressed
    assert (
        Suppression.objects.filter(kind=SuppressionKind.PHONE, reason=SuppressionReason.SMS_STOP).count() == 1
    )

    # when it replies something else, nothing changes
    assert sms_inbound(from_number="+14155552671", body="stop it please") is None
    assert Suppression.objects.count() == 1

    # when it replies UNSTOP, it is lifted
    assert sms_inbound(from_number="+14155552671", body="UNSTOP") == "start"
    assert not Suppression.objects.exists()


def test_it_lifts_only_stop_suppressions_on_start():
    # given a number suppressed by staff
    suppression_add(kind=SuppressionKind.PHONE, address="+14155552671", reason=SuppressionReason.MANUAL)

    # when it replies START
    sms_inbound(from_number="+14155552671", body="START")

    # then the staff suppression stays
    assert Suppression.objects.get().reason == SuppressionReason.MANUAL
    assert suppression_remove(kind=SuppressionKind.PHONE, address="+14155552671") == 1


# --- receipts ---------------------------------------------------------------------------


def test_it_moves_a_delivery_forward_and_never_back():
    # given a sent email
    delivery = _delivery()

    # when it is delivered, then opened
    assert delivery_track(delivery_id=delivery.id, kind="delivered", provider="mailgun") is True
    assert delivery_track(delivery_id=delivery.id, kind="opened", provider="mailgun") is True
    assert _status(delivery) == DeliveryStatus.OPENED

    # when a late "delivered" or a "bounced" arrives after the open
    assert delivery_track(delivery_id=delivery.id, kind="delivered", provider="mailgun") is False
    assert delivery_track(delivery_id=delivery.id, kind="bounced", provider="mailgun") is False

    # then the status stays opened, while every receipt is kept as history
    assert _status(delivery) == DeliveryStatus.OPENED
    assert list(
        DeliveryEvent.objects.filter(delivery=delivery).order_by("id").values_list("kind", flat=True)
    ) == [
        "delivered",
        "opened",
        "delivered",
        "bounced",
    ]

    # and a click still moves it on
    assert delivery_track(delivery_id=delivery.id, kind="clicked", provider="mailgun") is True
    assert _status(delivery) == DeliveryStatus.CLICKED


@pytest.mark.parametrize(
    "status", [DeliveryStatus.PENDING, DeliveryStatus.SUPPRESSED, DeliveryStatus.FAILED, DeliveryStatus.DEAD]
)
def test_it_does_not_move_a_delivery_that_was_never_sent(status):
    delivery = _delivery(status=status)

    assert delivery_track(delivery_id=delivery.id, kind="delivered", provider="twilio") is False

    assert _status(delivery) == status


def test_it_ignores_a_repeated_receipt_with_the_same_dedupe_key():
    # given a receipt recorded once
    delivery = _delivery()
    assert delivery_track(delivery_id=delivery.id, kind="opened", provider="mailgun", dedupe_key="evt-1")

    # when the same receipt comes again
    again = delivery_track(delivery_id=delivery.id, kind="opened", provider="mailgun", dedupe_key="evt-1")

    # then nothing is recorded twice
    assert again is False
    assert DeliveryEvent.objects.filter(delivery=delivery).count() == 1
    # while another receipt of the same kind (another open) is kept
    delivery_track(delivery_id=delivery.id, kind="opened", provider="mailgun", dedupe_key="evt-2")
    assert DeliveryEvent.objects.filter(delivery=delivery).count() == 2


def test_it_schedules_a_retry_on_a_soft_bounce():
    # given a sent email
    delivery = _delivery()
    before = timezone.now()

    # when the provider defers it
    changed = delivery_track(
        delivery_id=delivery.id, kind="deferred", provider="mailgun", reason="mailbox full"
    )

    # then it is retrying with a durable due row
    assert changed is True
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.RETRYING
    assert delivery.reason == "soft bounce: mailbox full"
    assert delivery.due_at is not None and delivery.due_at > before
    assert DeliverySchedule.objects.get(delivery=delivery).due_at == delivery.due_at


def test_it_does_not_retry_a_deferral_reported_after_delivery():
    delivery = _delivery(status=DeliveryStatus.DELIVERED)

    assert delivery_track(delivery_id=delivery.id, kind="deferred", provider="mailgun") is False

    assert _status(delivery) == DeliveryStatus.DELIVERED
    assert not DeliverySchedule.objects.filter(delivery=delivery).exists()


def test_it_brings_a_fallback_forward_when_a_sent_message_fails_later():
    # given an SMS with a fallback check due in an hour
    delivery = _delivery(channel="sms")
    FallbackCheck.objects.create(
        delivery=delivery, to_channel="email", due_at=timezone.now() + timedelta(hours=1)
    )

    # when the carrier reports it undelivered
    delivery_track(delivery_id=delivery.id, kind="failed", provider="twilio", reason="twilio error 30003")

    # then the fallback is due now
    assert _status(delivery) == DeliveryStatus.FAILED
    assert FallbackCheck.objects.get(delivery=delivery).due_at <= timezone.now()


def test_it_ignores_receipts_for_unknown_deliveries():
    assert delivery_track(delivery_id=2**62, kind="delivered", provider="twilio") is False
    assert not DeliveryEvent.objects.exists()


def test_it_raises_on_an_unknown_tracking_kind():
    delivery = _delivery()

    with pytest.raises(ValueError, match="teleported"):
        delivery_track(delivery_id=delivery.id, kind="teleported", provider="mailgun")

    assert not DeliveryEvent.objects.exists()
