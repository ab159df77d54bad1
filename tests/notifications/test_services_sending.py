"""Sending through the real provider clients against the provider sandbox (a real process):
classification, retries as durable rows, dead letters, breakers, failover, feedback.

Celery runs eagerly here, so an event is fanned out and sent inside the test; retries are
released by calling the sweep after moving their due time, never by sleeping.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from harness.sandbox import SandboxProcess
from notifications.models import (
    DeadLetter,
    Delivery,
    DeliveryAttempt,
    DeliverySchedule,
    Device,
    DispatchBatch,
    Event,
    FallbackCheck,
    NotificationType,
    OutboxMessage,
    Recipient,
    Suppression,
    WebhookEndpoint,
)
from notifications.services.api_keys import api_key_create
from notifications.services.backoff import retry_delay
from notifications.services.catalog import notification_type_save
from notifications.services.deadletters import deadletters_replay
from notifications.services.fallback import fallback_checks_due
from notifications.services.ingest import event_ingest
from notifications.services.provider_health import breaker_record, breaker_reset, provider_gate
from notifications.services.scheduling import deliveries_release_due
from notifications.services.sending.claim import deliveries_claim
from notifications.services.sending.send import deliveries_send
from notifications.transports.registry import transports_reset
from notifications.transports.webhook import webhook_signature_verify
from realtime.redis_client import redis_async
from realtime.registry import connection_activity, connection_register
from tests.notifications.factories import RecipientFactory

pytestmark = [pytest.mark.django_db, pytest.mark.xdist_group("sending")]

TEMPLATES = {
    "email": {
        "subject": "Order {{ data.order_id }}",
        "html": "<p>Order {{ data.order_id }}</p>",
        "text": "Order",
    },
    "sms": {"text": "Order {{ data.order_id }} shipped"},
    "push": {"title": "Order", "body": "Order {{ data.order_id }} shipped"},
    "webhook": {"text": "Order {{ data.order_id }} shipped"},
    "inapp": {"title": "Order {{ data.order_id }}"},
}


@pytest.fixture
def providers(sandbox: SandboxProcess, settings: Any) -> Iterator[SandboxProcess]:
    sandbox.control.reset()
    settings.PROVIDERS = sandbox.providers()
    settings.ANYMAIL = {**settings.ANYMAIL, "MAILGUN_API_URL": settings.PROVIDERS["mailgun"]["api_url"]}
    settings.SEND_BACKOFF_BASE_SECONDS = 0.5
    settings.SEND_TIMEOUT_SECONDS = 2.0
    settings.BREAKER_MIN_CALLS = 3
    settings.RATE_CAPS = {}
    settings.SMS_DAILY_SPEND_CAP = 1000.0
    transports_reset()
    for name in settings.PROVIDERS:
        breaker_reset(provider=name)
    yield sandbox
    transports_reset()
    for name in settings.PROVIDERS:
        breaker_reset(provider=name)


@pytest.fixture
def key() -> Any:
    return api_key_create(name="sending")[0]


def _type(channels: list[str], *, category: str = "transactional", **fields: Any) -> NotificationType:
    return notification_type_save(
        key=f"t{NotificationType.objects.count()}.{'-'.join(channels)}",
        fields={"category": category, "channels": channels, **fields},
        templates={c: TEMPLATES[c] for c in channels + [f["to"] for f in fields.get("fallbacks", [])]},
    )


def _send(key: Any, capture: Any, nt: NotificationType, recipients: list[Recipient], **kwargs: Any) -> Event:
    with capture(execute=True):
        result = event_ingest(
            api_key=key,
            type_key=nt.key,
            recipients=[r.external_id for r in recipients],
            data={"order_id": 7},
            **kwargs,
        )
    return result.event


def _delivery(event: Event, channel: str) -> Delivery:
    return Delivery.objects.get(event=event, channel=channel)


def _retry_now(capture: Any) -> None:
    """Make every retry due and run the sweep, as beat would once the backoff passes."""
    DeliverySchedule.objects.update(due_at=timezone.now() - timedelta(seconds=1))
    Delivery.objects.filter(due_at__isnull=False).update(due_at=timezone.now() - timedelta(seconds=1))
    with capture(execute=True):
        deliveries_release_due()


def _device(recipient: Recipient, token: str, platform: str = "fcm") -> Device:
    return Device.objects.create(recipient=recipient, platform=platform, token=token)


def test_it_sends_an_email_through_mailgun_with_its_idempotency_key(
    providers, key, django_capture_on_commit_callbacks
):
    alice = RecipientFactory(email="alice@example.com")
    event = _send(key, django_capture_on_commit_callbacks, _type(["email"]), [alice])

    delivery = _delivery(event, "email")
    assert (delivery.status, delivery.provider, delivery.attempts) == ("sent", "mailgun", 1)
    [message] = providers.control.messages("mailgun")
    assert message["key"] == str(delivery.idempotency_key)
    attempt = DeliveryAttempt.objects.get(delivery=delivery)
    assert attempt.outcome == "success" and attempt.provider_message_id


def test_it_adds_one_click_unsubscribe_headers_to_marketing_mail_only(
    providers, key, django_capture_on_commit_callbacks
):
    alice = RecipientFactory(email="alice@example.com")
    _send(key, django_capture_on_commit_callbacks, _type(["email"], category="marketing"), [alice])
    _send(key, django_capture_on_commit_callbacks, _type(["email"], category="transactional"), [alice])

    marketing, transactional = providers.control.messages("mailgun")
    headers = {k.lower(): v for k, v in marketing["summary"]["headers"].items()}
    assert headers["list-unsubscribe-post"] == "List-Unsubscribe=One-Click"
    assert headers["list-unsubscribe"].startswith("<http") and "/unsubscribe/" in headers["list-unsubscribe"]
    assert "list-unsubscribe" not in {k.lower() for k in transactional["summary"]["headers"]}


def test_it_retries_a_flaky_push_token_with_durable_backoff_until_accepted(
    providers, key, django_capture_on_commit_callbacks
):
    alice = RecipientFactory()
    _device(alice, "sandbox-flaky-1")
    event = _send(key, django_capture_on_commit_callbacks, _type(["push"]), [alice])

    delivery = _delivery(event, "push")
    assert delivery.status == "retrying" and delivery.attempts == 1
    schedule = DeliverySchedule.objects.get(delivery=delivery)
    assert schedule.due_at > timezone.now()

    _retry_now(django_capture_on_commit_callbacks)
    assert _delivery(event, "push").status == "retrying"
    _retry_now(django_capture_on_commit_callbacks)

    delivery = _delivery(event, "push")
    assert (delivery.status, delivery.attempts) == ("sent", 3)
    outcomes = list(
        DeliveryAttempt.objects.filter(delivery=delivery).order_by("number").values_list("outcome", flat=True)
    )
    assert outcomes == ["transient", "transient", "success"]
    assert providers.control.stats()["providers"]["fcm"]["duplicates"] == 0


def test_it_honours_retry_after_of_a_rate_limited_push(providers, key, django_capture_on_commit_callbacks):
    alice = RecipientFactory()
    _device(alice, "sandbox-ratelimited-1", platform="fcm")
    before = timezone.now()
    event = _send(key, django_capture_on_commit_callbacks, _type(["push"]), [alice])

    delivery = _delivery(event, "push")
    assert delivery.status == "retrying"
    assert DeliverySchedule.objects.get(delivery=delivery).due_at >= before + timedelta(seconds=1)
    attempt = DeliveryAttempt.objects.get(delivery=delivery)
    assert attempt.outcome == "rate_limited"

    _retry_now(django_capture_on_commit_callbacks)
    assert _delivery(event, "push").status == "sent"


def test_it_deactivates_unregistered_tokens_and_does_not_retry(
    providers, key, django_capture_on_commit_callbacks
):
    alice = RecipientFactory()
    fcm = _device(alice, "sandbox-unregistered-fcm", platform="fcm")
    apns = _device(alice, "sandbox-unregistered-apns", platform="apns")
    Device.objects.filter(id=apns.id).update(last_seen_at=timezone.now() - timedelta(days=1))
    event = _send(key, django_capture_on_commit_callbacks, _type(["push"]), [alice])

    delivery = _delivery(event, "push")
    assert delivery.status == "failed" and not DeliverySchedule.objects.filter(delivery=delivery).exists()
    fcm.refresh_from_db()
    apns.refresh_from_db()
    assert not fcm.active and not apns.active


def test_it_keeps_an_apns_token_registered_again_after_the_410_timestamp(
    providers, key, django_capture_on_commit_callbacks
):
    alice = RecipientFactory()
    # Registered "in the future" relative to the sandbox's 410 timestamp (now).
    device = _device(alice, "sandbox-unregistered-again", platform="apns")
    Device.objects.filter(id=device.id).update(last_seen_at=timezone.now() + timedelta(minutes=5))
    _send(key, django_capture_on_commit_callbacks, _type(["push"]), [alice])

    device.refresh_from_db()
    assert device.active


def test_it_removes_a_bad_apns_device_token(providers, key, django_capture_on_commit_callbacks):
    alice = RecipientFactory()
    _device(alice, "sandbox-baddevice-1", platform="apns")
    event = _send(key, django_capture_on_commit_callbacks, _type(["push"]), [alice])

    assert _delivery(event, "push").status == "failed"
    assert not Device.objects.filter(token="sandbox-baddevice-1").exists()


@pytest.mark.parametrize(
    ("phone", "code"),
    [("+15005550001", "21211"), ("+15005550009", "21614")],
    ids=["invalid", "not-sms-capable"],
)
def test_it_fails_twilio_test_numbers_permanently_with_their_error_code(
    providers, key, django_capture_on_commit_callbacks, phone, code
):
    alice = RecipientFactory(phone=phone)
    event = _send(key, django_capture_on_commit_callbacks, _type(["sms"]), [alice])

    delivery = _delivery(event, "sms")
    assert delivery.status == "failed" and delivery.attempts == 1
    assert DeliveryAttempt.objects.get(delivery=delivery).detail.get("code") == code
    assert Suppression.objects.get(kind="phone", address=phone).reason == "invalid"

    again = _send(key, django_capture_on_commit_callbacks, _type(["sms"]), [alice])
    assert _delivery(again, "sms").reason == "suppression list: number cannot receive SMS"
    assert len(providers.control.messages("twilio")) == 1


def test_it_records_segments_and_cost_of_an_accepted_sms(providers, key, django_capture_on_commit_callbacks):
    alice = RecipientFactory(phone="+14155552671")
    event = _send(key, django_capture_on_commit_callbacks, _type(["sms"]), [alice])

    delivery = _delivery(event, "sms")
    assert (delivery.status, delivery.provider, delivery.template_version) == ("sent", "twilio", 1)
    detail = DeliveryAttempt.objects.get(delivery=delivery).detail
    assert detail["segments"] == 1 and detail["cost_estimate"] > 0


def test_it_fails_an_sms_longer_than_its_segment_maximum_before_calling_twilio(
    providers, key, django_capture_on_commit_callbacks, settings
):
    settings.SMS_MAX_SEGMENTS = 2
    alice = RecipientFactory(phone="+14155552671")
    long_type = notification_type_save(
        key="sms.long",
        fields={"category": "transactional", "channels": ["sms"]},
        templates={"sms": {"text": "Order {{ data.order_id }}: " + "ł" * 140}},
    )
    event = _send(key, django_capture_on_commit_callbacks, long_type, [alice])

    delivery = _delivery(event, "sms")
    assert delivery.status == "failed"
    assert (
        delivery.reason == "SMS text takes 3 segments (UCS-2, 149 characters), more than SMS_MAX_SEGMENTS (2)"
    )
    assert providers.control.messages("twilio") == []


def test_it_fails_a_push_over_4_kb_before_calling_a_provider(
    providers, key, django_capture_on_commit_callbacks
):
    alice = RecipientFactory()
    _device(alice, "tok-big")
    big = notification_type_save(
        key="push.big",
        fields={"category": "transactional", "channels": ["push"]},
        templates={"push": {"title": "Big", "body": "{{ data.order_id }}" + "x" * 4100}},
    )
    event = _send(key, django_capture_on_commit_callbacks, big, [alice])

    delivery = _delivery(event, "push")
    assert delivery.status == "failed" and delivery.reason.startswith("push payload is 4")
    assert providers.control.messages("fcm") == []


def test_an_email_always_has_a_text_part_and_records_its_template_version(
    providers, key, django_capture_on_commit_callbacks
):
    alice = RecipientFactory(email="alice@example.com")
    html_only = notification_type_save(
        key="email.html-only",
        fields={"category": "transactional", "channels": ["email"]},
        templates={
            "email": {
                "subject": "Order {{ data.order_id }}",
                "html": "<h1>Order {{ data.order_id }}</h1><p>Track it <a href='https://x.test/7'>here</a>"
                "<br>Thanks</p><style>p{}</style>",
            }
        },
    )
    event = _send(key, django_capture_on_commit_callbacks, html_only, [alice])

    [message] = providers.control.messages("mailgun")
    assert message["summary"]["text"] == "Order 7\n\nTrack it here (https://x.test/7)\nThanks"
    assert _delivery(event, "email").template_version == 1


def test_it_suppresses_sms_to_a_number_that_replied_stop_without_calling_twilio(
    providers, key, django_capture_on_commit_callbacks
):
    alice = RecipientFactory(phone="+14155552671")
    Suppression.objects.create(kind="phone", address="+14155552671", reason="sms_stop")
    event = _send(key, django_capture_on_commit_callbacks, _type(["sms"]), [alice])

    assert _delivery(event, "sms").status == "suppressed"
    assert providers.control.messages("twilio") == []


def test_it_enforces_sms_velocity_per_destination(
    providers, key, django_capture_on_commit_callbacks, settings
):
    settings.SMS_LIMIT_PER_DESTINATION = "2/3600"
    alice = RecipientFactory(phone="+14155550123")
    nt = _type(["sms"])
    events = [_send(key, django_capture_on_commit_callbacks, nt, [alice]) for _ in range(3)]

    statuses = [_delivery(e, "sms").status for e in events]
    assert statuses == ["sent", "sent", "suppressed"]
    assert "destination" in _delivery(events[2], "sms").reason


def test_it_enforces_sms_velocity_per_originating_ip(
    providers, key, django_capture_on_commit_callbacks, settings
):
    settings.SMS_LIMIT_PER_IP = "1/3600"
    nt = _type(["sms"])
    first = _send(
        key,
        django_capture_on_commit_callbacks,
        nt,
        [RecipientFactory(phone="+14155550124")],
        origin_ip="203.0.113.9",
    )
    second = _send(
        key,
        django_capture_on_commit_callbacks,
        nt,
        [RecipientFactory(phone="+14155550125")],
        origin_ip="203.0.113.9",
    )

    assert _delivery(first, "sms").status == "sent"
    assert _delivery(second, "sms").status == "suppressed" and "IP" in _delivery(second, "sms").reason


def test_it_fails_an_sms_to_a_malformed_number_without_calling_twilio(
    providers, key, django_capture_on_commit_callbacks
):
    event = _send(key, django_capture_on_commit_callbacks, _type(["sms"]), [RecipientFactory(phone="+1234")])

    delivery = _delivery(event, "sms")
    assert delivery.status == "failed" and "+1234" in delivery.reason
    assert providers.control.messages("twilio") == []


def test_it_refuses_sms_to_countries_outside_the_allow_list(
    providers, key, django_capture_on_commit_callbacks, settings
):
    settings.SMS_ALLOWED_COUNTRIES = ["US"]
    event = _send(
        key, django_capture_on_commit_callbacks, _type(["sms"]), [RecipientFactory(phone="+33612345678")]
    )

    delivery = _delivery(event, "sms")
    assert delivery.status == "failed" and "FR" in delivery.reason


def test_it_defers_sms_past_the_daily_spend_cap_to_the_next_day(
    providers, key, django_capture_on_commit_callbacks, settings
):
    settings.SMS_DAILY_SPEND_CAP = 0.0
    event = _send(
        key, django_capture_on_commit_callbacks, _type(["sms"]), [RecipientFactory(phone="+14155550126")]
    )

    delivery = _delivery(event, "sms")
    assert delivery.status == "retrying" and "spend cap" in delivery.reason
    assert delivery.attempts == 0  # no provider call was made
    due = DeliverySchedule.objects.get(delivery=delivery).due_at
    # The next UTC midnight after the send (either side of a midnight the test straddled),
    # plus at most one backoff base of jitter: not any time after midnight, not noon.
    midnights = {
        (moment + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        for moment in (delivery.created_at, timezone.now())
    }
    jitter = timedelta(seconds=settings.SEND_BACKOFF_BASE_SECONDS)
    assert any(midnight <= due <= midnight + jitter for midnight in midnights), (due, midnights)


def test_it_fails_over_to_smtp_when_mailgun_answers_5xx_and_opens_its_breaker(
    providers, key, django_capture_on_commit_callbacks
):
    providers.control.set_fault("mailgun", status=503, rate=1.0)
    nt = _type(["email"])
    events = [
        _send(key, django_capture_on_commit_callbacks, nt, [RecipientFactory(email=f"u{i}@example.com")])
        for i in range(6)
    ]

    assert {(_delivery(e, "email").status, _delivery(e, "email").provider) for e in events} == {
        ("sent", "smtp")
    }
    mailgun_calls = len(providers.control.messages("mailgun"))
    # The breaker opened after BREAKER_MIN_CALLS failures; later sends skipped mailgun.
    assert 3 <= mailgun_calls < 6
    assert len(providers.control.messages("smtp")) == 6


def test_it_dead_letters_after_the_last_attempt_and_replays_it(
    providers, key, django_capture_on_commit_callbacks, settings
):
    settings.SEND_MAX_ATTEMPTS = 2
    settings.CHANNEL_PROVIDERS = {**settings.CHANNEL_PROVIDERS, "email": ["mailgun"]}
    settings.BREAKER_MIN_CALLS = 100
    providers.control.set_fault("mailgun", status=500, rate=1.0)
    event = _send(
        key, django_capture_on_commit_callbacks, _type(["email"]), [RecipientFactory(email="d@example.com")]
    )
    _retry_now(django_capture_on_commit_callbacks)

    delivery = _delivery(event, "email")
    assert (delivery.status, delivery.attempts) == ("dead", 2)
    letter = DeadLetter.objects.get(delivery=delivery)
    assert "retries exhausted" in letter.reason and letter.replayed_at is None

    providers.control.clear_faults()
    with django_capture_on_commit_callbacks(execute=True):
        assert deadletters_replay(delivery_ids=[delivery.id]) == 1

    delivery.refresh_from_db()
    letter.refresh_from_db()
    assert delivery.status == "sent" and delivery.attempts == 3 and letter.replayed_at is not None


def test_it_classifies_a_provider_timeout_as_transient(
    providers, key, django_capture_on_commit_callbacks, settings
):
    settings.SEND_TIMEOUT_SECONDS = 0.5
    transports_reset()
    providers.control.set_fault("fcm", status=0, rate=1.0, latency_ms=3000)
    alice = RecipientFactory()
    _device(alice, "token-timeout", platform="fcm")
    event = _send(key, django_capture_on_commit_callbacks, _type(["push"]), [alice])

    delivery = _delivery(event, "push")
    assert delivery.status == "retrying"
    assert DeliveryAttempt.objects.get(delivery=delivery).outcome == "transient"


def test_it_fails_a_hard_bounce_at_smtp_and_suppresses_the_address(
    providers, key, django_capture_on_commit_callbacks, settings
):
    settings.CHANNEL_PROVIDERS = {**settings.CHANNEL_PROVIDERS, "email": ["smtp"]}
    nt = _type(["email"])
    first = _send(
        key, django_capture_on_commit_callbacks, nt, [RecipientFactory(email="gone@bounce.sandbox.test")]
    )
    assert _delivery(first, "email").status == "failed"
    assert Suppression.objects.filter(
        kind="email", address="gone@bounce.sandbox.test", reason="hard_bounce"
    ).exists()

    again = _send(
        key, django_capture_on_commit_callbacks, nt, [Recipient.objects.get(email="gone@bounce.sandbox.test")]
    )
    assert _delivery(again, "email").status == "suppressed"


def test_it_posts_signed_generic_webhooks_that_receivers_can_verify(
    providers, key, django_capture_on_commit_callbacks
):
    alice = RecipientFactory()
    secret = "s3cret-s3cret-s3cret"
    WebhookEndpoint.objects.create(
        recipient=alice, kind="generic", url=f"{providers.http_url}/hooks/acme", secret=secret
    )
    WebhookEndpoint.objects.create(
        recipient=alice, kind="slack", url=f"{providers.http_url}/hooks/slack/T1/B1"
    )
    event = _send(key, django_capture_on_commit_callbacks, _type(["webhook"]), [alice])

    assert _delivery(event, "webhook").status == "delivered"
    messages = providers.control.messages("webhook")
    generic = next(m for m in messages if m["summary"]["path"].endswith("/hooks/acme"))
    headers = generic["summary"]["headers"]
    webhook_signature_verify(
        secret=secret, headers=headers, body=generic["summary"]["body"].encode(), tolerance_seconds=300
    )
    assert len(messages) == 2


def test_it_lets_only_one_sender_claim_a_delivery(
    providers, key, django_capture_on_commit_callbacks, settings
):
    settings.CHANNEL_PROVIDERS = {**settings.CHANNEL_PROVIDERS, "email": []}
    event = _send(
        key, django_capture_on_commit_callbacks, _type(["email"]), [RecipientFactory(email="r@example.com")]
    )
    ids = list(Delivery.objects.filter(event=event).values_list("id", flat=True))
    Delivery.objects.filter(id__in=ids).update(status="pending", attempts=0, reason="")
    settings.CHANNEL_PROVIDERS = {**settings.CHANNEL_PROVIDERS, "email": ["mailgun"]}

    _, first = deliveries_claim(delivery_ids=ids, now=timezone.now())
    _, second = deliveries_claim(delivery_ids=ids, now=timezone.now())

    assert [c.id for c in first] == ids and second == []
    settled, busy_until = deliveries_send(delivery_ids=ids)
    assert settled == 0 and busy_until is not None  # still claimed by the first sender
    assert providers.control.messages("mailgun") == []


def test_it_falls_back_to_sms_when_the_push_cannot_be_delivered(
    providers, key, django_capture_on_commit_callbacks
):
    alice = RecipientFactory(phone="+14155550127")  # no device: the push fails at once
    nt = _type(["push"], fallbacks=[{"from": "push", "to": "sms", "after_seconds": 60}])
    event = _send(key, django_capture_on_commit_callbacks, nt, [alice])

    assert _delivery(event, "push").status == "failed"
    assert FallbackCheck.objects.get(delivery=_delivery(event, "push")).due_at <= timezone.now()
    with django_capture_on_commit_callbacks(execute=True):
        assert fallback_checks_due() == 1

    assert _delivery(event, "sms").status == "sent"


def test_it_skips_the_fallback_when_the_user_read_the_in_app_copy(
    providers, key, django_capture_on_commit_callbacks
):
    alice = RecipientFactory(phone="+14155550128")
    _device(alice, "token-ok-1")
    nt = _type(["push", "inapp"], fallbacks=[{"from": "push", "to": "sms", "after_seconds": 60}])
    event = _send(key, django_capture_on_commit_callbacks, nt, [alice])
    alice_item = alice.inbox_items.get()
    alice_item.read_at = timezone.now()
    alice_item.save(update_fields=["read_at"])
    FallbackCheck.objects.update(due_at=timezone.now())

    with django_capture_on_commit_callbacks(execute=True):
        assert fallback_checks_due() == 0
    assert not Delivery.objects.filter(event=event, channel="sms").exists()


def test_it_skips_the_fallback_for_a_user_active_in_the_app_and_sends_it_to_one_idle_there(
    providers, key, django_capture_on_commit_callbacks
):
    # given two users whose push is answered by nobody, each with a tab open: one active
    # in it, one whose tab reported inactivity (presence/services.py)
    active, idle = RecipientFactory(phone="+14155550131"), RecipientFactory(phone="+14155550132")
    for person, token in ((active, "token-ok-31"), (idle, "token-ok-32")):
        _device(person, token)
    nt = _type(["push", "inapp"], fallbacks=[{"from": "push", "to": "sms", "after_seconds": 60}])
    event = _send(key, django_capture_on_commit_callbacks, nt, [active, idle])

    async def tabs() -> None:
        client = redis_async()
        for person, state in ((active, "active"), (idle, "idle")):
            await connection_register(client, recipient_id=person.id, connection=f"tab-{person.id}")
            await connection_activity(
                client, recipient_id=person.id, connection=f"tab-{person.id}", state=state
            )

    async_to_sync(tabs)()
    FallbackCheck.objects.update(due_at=timezone.now())

    # when the fallback checks come due, then only the idle one gets the SMS
    with django_capture_on_commit_callbacks(execute=True):
        assert fallback_checks_due() == 1
    assert list(
        Delivery.objects.filter(event=event, channel="sms").values_list("recipient_id", flat=True)
    ) == [idle.id]


def test_retry_delay_is_jittered_capped_and_honours_retry_after(settings):
    settings.SEND_BACKOFF_BASE_SECONDS = 2.0
    settings.SEND_BACKOFF_CAP_SECONDS = 60.0
    delays = [retry_delay(attempt=10) for _ in range(200)]
    assert max(delays) <= 60.0 and len({round(d, 3) for d in delays}) > 100
    assert all(1.0 <= retry_delay(attempt=1) <= 2.0 for _ in range(50))
    assert all(retry_delay(attempt=1, retry_after=30) >= 30 for _ in range(50))


def test_it_applies_a_delivery_receipt_that_arrived_before_the_send_was_recorded(
    providers, key, django_capture_on_commit_callbacks, monkeypatch
):
    from notifications.services import feedback
    from notifications.services.sending import call

    alice = RecipientFactory(phone="+14155550129")
    original = call.job_run

    def run_then_receipt(job: Any) -> Any:
        # The provider's "delivered" callback lands while the sender is still in flight.
        done = original(job)
        feedback.delivery_track(
            delivery_id=job.claimed.id, kind="delivered", provider="twilio", dedupe_key="cb-1"
        )
        return done

    monkeypatch.setattr(call, "job_run", run_then_receipt)
    event = _send(key, django_capture_on_commit_callbacks, _type(["sms"]), [alice])

    assert _delivery(event, "sms").status == "delivered"


def test_it_pushes_to_every_active_device_with_a_key_per_device(
    providers, key, django_capture_on_commit_callbacks
):
    alice = RecipientFactory()
    _device(alice, "phone-a", platform="fcm")
    _device(alice, "phone-b", platform="fcm")
    _device(alice, "tablet", platform="apns")
    event = _send(key, django_capture_on_commit_callbacks, _type(["push"]), [alice])

    delivery = _delivery(event, "push")
    assert delivery.status == "sent"
    assert DeliveryAttempt.objects.filter(delivery=delivery, outcome="success").count() == 3
    stats = providers.control.stats()["providers"]
    assert (stats["fcm"]["accepted"], stats["fcm"]["duplicates"], stats["apns"]["accepted"]) == (2, 0, 1)


def _open_breaker(provider: str, calls: int) -> None:
    for _ in range(calls):
        breaker_record(provider=provider, ok=False, latency_ms=1)
    provider_gate().flush()
    # The sender believes a closed breaker for a moment (ProviderGate): forget that.
    provider_gate()._closed_until.clear()


def test_it_never_pushes_twice_to_a_device_that_accepted_before_another_was_deferred(
    providers, key, django_capture_on_commit_callbacks, settings
):
    # given a user with two devices, the second one's provider (APNs) behind an open breaker
    alice = RecipientFactory()
    _device(alice, "phone-fcm", platform="fcm")
    _device(alice, "tablet-apns", platform="apns")
    _open_breaker("apns", settings.BREAKER_MIN_CALLS)

    # when the push goes out, the phone accepts and the tablet is deferred
    event = _send(key, django_capture_on_commit_callbacks, _type(["push"]), [alice])
    delivery = _delivery(event, "push")
    assert delivery.status == "retrying" and "breaker" in delivery.reason
    assert delivery.attempts == 1  # a provider was called: the attempt counts

    # and when the breaker has closed and the retry runs
    breaker_reset(provider="apns")
    provider_gate()._closed_until.clear()
    _retry_now(django_capture_on_commit_callbacks)

    # then each device was pushed exactly once, and every call is in the attempt history
    delivery = _delivery(event, "push")
    assert delivery.status == "sent"
    pushed = [m["to"] for m in providers.control.messages("fcm") + providers.control.messages("apns")]
    assert sorted(pushed) == ["phone-fcm", "tablet-apns"]
    history = list(
        DeliveryAttempt.objects.filter(delivery=delivery)
        .order_by("number")
        .values_list("number", "target", "outcome")
    )
    assert history == [(1, "phone-fcm", "success"), (2, "tablet-apns", "success")]


def test_it_does_not_push_again_to_a_device_that_accepted_before_a_retry(
    providers, key, django_capture_on_commit_callbacks, settings
):
    settings.BREAKER_MIN_CALLS = 100  # two failures in three calls would open it here
    alice = RecipientFactory()
    _device(alice, "steady-device", platform="fcm")
    _device(alice, "sandbox-flaky-multi", platform="fcm")
    event = _send(key, django_capture_on_commit_callbacks, _type(["push"]), [alice])
    assert _delivery(event, "push").status == "retrying"

    _retry_now(django_capture_on_commit_callbacks)
    _retry_now(django_capture_on_commit_callbacks)

    assert _delivery(event, "push").status == "sent"
    steady = [m for m in providers.control.messages("fcm") if m["to"] == "steady-device"]
    assert len(steady) == 1


def test_it_sends_one_aggregated_email_for_a_window_of_events(
    providers, key, django_capture_on_commit_callbacks
):
    alice = RecipientFactory(email="agg@example.com")
    nt = notification_type_save(
        key="post.liked.email",
        fields={"category": "social", "channels": ["email"], "aggregation_window_seconds": 60},
        templates={
            "email": {"subject": "{{ aggregate.count }} likes", "text": "and {{ aggregate.others }} others"}
        },
    )
    events = [_send(key, django_capture_on_commit_callbacks, nt, [alice]) for _ in range(3)]
    assert providers.control.messages("mailgun") == []  # the window is still open

    _retry_now(django_capture_on_commit_callbacks)

    [message] = providers.control.messages("mailgun")
    assert message["summary"]["subject"] == "3 likes"
    assert [_delivery(e, "email").status for e in events] == ["sent", "suppressed", "suppressed"]


def _queries_to_send(capture: Any, deliveries: list[int]) -> int:
    with CaptureQueriesContext(connection) as queries, capture(execute=True):
        deliveries_send(delivery_ids=deliveries)
    return len(queries)


def test_it_sends_a_chunk_in_a_number_of_queries_that_does_not_grow_with_it(
    providers, key, django_capture_on_commit_callbacks, settings
):
    from notifications.services.fanout import event_fanout

    # given chunks of 2 and of 20 pending deliveries of each provider channel
    settings.INAPP_INLINE_MAX = 0
    Suppression.objects.create(kind="phone", address="+14155550999", reason="sms_stop")
    counts: dict[int, int] = {}
    for size in (2, 20):
        people = [
            RecipientFactory(email=f"q{size}-{i}@example.com", phone=f"+1415555{size:02d}{i:02d}")
            for i in range(size)
        ]
        for person in people:
            _device(person, f"token-{person.id}")
            WebhookEndpoint.objects.create(
                recipient=person, kind="slack", url=f"http://127.0.0.1:9/{person.id}"
            )
        nt = _type(["email", "sms", "push", "webhook"])
        with django_capture_on_commit_callbacks(execute=False):
            event = event_ingest(
                api_key=key, type_key=nt.key, recipients=[p.external_id for p in people], data={"order_id": 7}
            ).event
            event_fanout(outbox_id=event.outbox.id)
        ids = list(Delivery.objects.filter(event=event).values_list("id", flat=True))
        # when the chunk is sent
        counts[size] = _queries_to_send(django_capture_on_commit_callbacks, ids)
        statuses = set(Delivery.objects.filter(event=event).values_list("status", flat=True))
        assert statuses <= {"sent", "delivered", "suppressed", "retrying"}, statuses

    # then ten times the deliveries cost no more queries
    assert counts[20] == counts[2], counts
    assert counts[20] <= 30, counts


def test_it_answers_fallback_checks_in_a_number_of_queries_that_does_not_grow_with_them(
    providers, key, django_capture_on_commit_callbacks
):
    nt = _type(["push"], fallbacks=[{"from": "push", "to": "sms", "after_seconds": 60}])
    counts: dict[int, int] = {}
    for size in (3, 30):
        # one event each (a sweep answers checks of many events at once), no devices
        for i in range(size):
            _send(
                key,
                django_capture_on_commit_callbacks,
                nt,
                [RecipientFactory(phone=f"+1415556{size:02d}{i:02d}")],
            )
        FallbackCheck.objects.update(due_at=timezone.now() - timedelta(seconds=1))
        with CaptureQueriesContext(connection) as queries:
            assert fallback_checks_due() == size
        counts[size] = len(queries)

    assert counts[30] == counts[3] <= 16, counts


def test_it_fans_out_and_dispatches_again_without_a_second_provider_send(
    providers, key, django_capture_on_commit_callbacks, settings
):
    # given a push fanned out to 30 users, each with one device
    settings.FANOUT_PAGE_SIZE = 7
    from notifications.services.fanout import event_fanout
    from notifications.services.sending.send import provider_dispatch_batch

    people = [RecipientFactory() for _ in range(30)]
    for person in people:
        _device(person, f"again-{person.id}")
    nt = _type(["push"])
    with django_capture_on_commit_callbacks(execute=False):
        event = event_ingest(
            api_key=key, type_key=nt.key, recipients=[p.external_id for p in people], data={"order_id": 7}
        ).event
        event_fanout(outbox_id=event.outbox.id)
    batches = list(DispatchBatch.objects.values_list("id", "delivery_ids"))

    # when the fan-out runs again from the start, and every batch is run twice
    OutboxMessage.objects.filter(event=event).update(processed_at=None, cursor=0)
    with django_capture_on_commit_callbacks(execute=False):
        event_fanout(outbox_id=event.outbox.id)
    for _ in range(2):
        for batch_id, _ids in batches:
            DispatchBatch.objects.filter(id=batch_id).update(done_at=None)
            provider_dispatch_batch(batch_id=batch_id, channel="push")

    # then no batch, delivery, attempt or provider send exists twice
    assert list(DispatchBatch.objects.values_list("id", "delivery_ids")) == batches
    assert sorted(i for _, ids in batches for i in ids) == sorted(
        Delivery.objects.filter(event=event).values_list("id", flat=True)
    )
    assert Delivery.objects.filter(event=event, status="sent").count() == 30
    assert DeliveryAttempt.objects.filter(delivery__event=event).count() == 30
    stats = providers.control.stats()["providers"]["fcm"]
    assert (stats["accepted"], stats["duplicates"]) == (30, 0)
