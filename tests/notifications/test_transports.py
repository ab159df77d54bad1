"""Each transport through its real client library against the provider sandbox (a real
process speaking the providers' wire protocols): acceptance, every magic fault's
classification, timeouts, and the idempotency key arriving at the provider."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.test import override_settings

from harness.sandbox import SandboxControl, SandboxProcess
from notifications.transports.base import Feedback, OutboundMessage, SendResult, Transport, TransportError
from notifications.transports.registry import transport_get, transports_reset
from notifications.transports.webhook import webhook_signature_verify

pytestmark = pytest.mark.xdist_group("transports")

# A held request (timeout fault) outlives the client's timeout by this much.
HOLD_MS = 3000
SHORT_TIMEOUT = 0.5


@pytest.fixture
def control(sandbox: SandboxProcess) -> Iterator[SandboxControl]:
    """The sandbox, reset, with PROVIDERS pointing at it and fresh transports."""
    sandbox.control.reset()
    providers = sandbox.providers()
    anymail = {
        "MAILGUN_API_KEY": providers["mailgun"]["api_key"],
        "MAILGUN_API_URL": providers["mailgun"]["api_url"],
    }
    transports_reset()
    with override_settings(PROVIDERS=providers, ANYMAIL=anymail):
        yield sandbox.control
    sandbox.control.clear_faults()
    transports_reset()


@pytest.fixture
def short_timeout() -> Iterator[None]:
    with override_settings(SEND_TIMEOUT_SECONDS=SHORT_TIMEOUT):
        transports_reset()
        yield
    transports_reset()


def outbound(channel: str, to: str, **overrides: Any) -> OutboundMessage:
    values: dict[str, Any] = {
        "delivery_id": 7,
        "idempotency_key": str(uuid.uuid4()),
        "channel": channel,
        "to": to,
        "notification_type": "order.shipped",
        "content": {
            "subject": "Your order shipped",
            "text": "Order 42 is on its way.",
            "html": "<p>Order <b>42</b> is on its way.</p>",
            "title": "Shipped",
            "body": "Order 42 is on its way",
        },
    }
    values.update(overrides)
    return OutboundMessage(**values)


def failure(transport: Transport, message: OutboundMessage) -> TransportError:
    with pytest.raises(TransportError) as caught:
        transport.send(message)
    return caught.value


def records(control: SandboxControl, provider: str, key: str) -> list[dict[str, Any]]:
    return [record for record in control.messages(provider) if record["key"] == key]


# --- Mailgun (django-anymail) ---------------------------------------------------------------


def test_it_sends_mail_through_mailgun_with_the_idempotency_key_as_a_variable(
    control: SandboxControl,
) -> None:
    message = outbound("email", "ana@example.com", headers={"List-Unsubscribe": "<https://p.test/u/1>"})

    result = transport_get("mailgun").send(message)

    assert result.provider == "mailgun"
    assert result.provider_message_id.startswith("<") and result.provider_message_id.endswith(">")
    [record] = control.wait_for_messages("mailgun", 1, where=lambda r: r["key"] == message.idempotency_key)
    assert record["status"] == 200
    assert record["to"] == "ana@example.com"


def test_it_classifies_mailgun_5xx_as_transient_until_the_flaky_recipient_is_accepted(
    control: SandboxControl,
) -> None:
    transport = transport_get("mailgun")
    message = outbound("email", "bo@flaky.sandbox.test")

    first, second = failure(transport, message), failure(transport, message)
    result = transport.send(message)

    assert (first.outcome, first.code) == ("transient", "500")
    assert (second.outcome, second.code) == ("transient", "500")
    assert result.provider_message_id
    assert [r["status"] for r in records(control, "mailgun", message.idempotency_key)] == [500, 500, 200]


def test_it_classifies_mailgun_429_as_rate_limited_with_retry_after(control: SandboxControl) -> None:
    control.set_fault("mailgun", status=429, retry_after=7)

    error = failure(transport_get("mailgun"), outbound("email", "ana@example.com"))

    assert (error.outcome, error.retry_after) == ("rate_limited", 7.0)


def test_it_classifies_mailgun_4xx_as_permanent(control: SandboxControl) -> None:
    control.set_fault("mailgun", status=400)

    error = failure(transport_get("mailgun"), outbound("email", "ana@example.com"))

    assert (error.outcome, error.code) == ("permanent", "400")


def test_it_classifies_a_mailgun_timeout_as_transient(control: SandboxControl, short_timeout: None) -> None:
    control.set_fault("mailgun", status=0, latency_ms=HOLD_MS)

    error = failure(transport_get("mailgun"), outbound("email", "ana@example.com"))

    assert (error.outcome, error.code) == ("transient", "timeout")


# --- SMTP -----------------------------------------------------------------------------------


def test_it_sends_mail_over_smtp_with_a_message_id_from_the_idempotency_key(control: SandboxControl) -> None:
    message = outbound("email", "ana@example.com", category="marketing", headers={"List-Unsubscribe": "<u>"})

    result = transport_get("smtp").send(message)

    assert result.provider_message_id == f"<{message.idempotency_key}@news.mg.sandbox.test>"
    [record] = control.wait_for_messages("smtp", 1, where=lambda r: r["key"] == message.idempotency_key)
    assert record["summary"]["message_id"] == result.provider_message_id
    assert record["summary"]["from"] == "news@news.mg.sandbox.test"  # EMAIL_FROM["marketing"]
    assert record["summary"]["headers"]["List-Unsubscribe"] == "<u>"


def test_it_classifies_an_smtp_550_at_rcpt_as_a_hard_bounce(control: SandboxControl) -> None:
    error = failure(transport_get("smtp"), outbound("email", "nobody@bounce.sandbox.test"))

    assert (error.outcome, error.code, error.feedback) == ("permanent", "550", Feedback.HARD_BOUNCE)
    assert "nobody@bounce.sandbox.test" in error.reason


def test_it_classifies_an_smtp_451_as_transient_and_keeps_the_connection(control: SandboxControl) -> None:
    transport = transport_get("smtp")
    message = outbound("email", "bo@flaky.sandbox.test")

    errors = [failure(transport, message), failure(transport, message)]
    result = transport.send(message)

    assert [(e.outcome, e.code, e.feedback) for e in errors] == [("transient", "451", None)] * 2
    assert result.provider_message_id
    assert len(records(control, "smtp", message.idempotency_key)) == 1


def test_it_classifies_an_smtp_timeout_as_transient_and_reconnects_after_it(
    control: SandboxControl, short_timeout: None
) -> None:
    transport = transport_get("smtp")
    transport.send(outbound("email", "warm@example.com"))  # an open connection to break
    control.set_fault("smtp", status=0, latency_ms=HOLD_MS)

    error = failure(transport, outbound("email", "ana@example.com"))
    control.clear_faults()
    after = outbound("email", "ana@example.com")
    result = transport.send(after)

    assert (error.outcome, error.code) == ("transient", "timeout")
    assert result.provider_message_id == f"<{after.idempotency_key}@mg.sandbox.test>"


def test_it_replaces_an_idle_smtp_connection_that_died_before_sending(control: SandboxControl) -> None:
    transport = transport_get("smtp")
    transport.send(outbound("email", "warm@example.com"))
    # The server has dropped the session while it sat idle (as servers do after minutes).
    state: Any = transport._local  # type: ignore[attr-defined]
    state.connection.connection.sock.shutdown(socket.SHUT_RDWR)
    state.used_at -= 60
    message = outbound("email", "ana@example.com")

    result = transport.send(message)

    assert result.provider_message_id == f"<{message.idempotency_key}@mg.sandbox.test>"
    assert len(records(control, "smtp", message.idempotency_key)) == 1


# --- Twilio ---------------------------------------------------------------------------------


def test_it_sends_an_sms_through_twilio_with_segments_and_cost(control: SandboxControl) -> None:
    message = outbound(
        "sms",
        "+1 (415) 555-2671",
        content={"text": "é" * 161},
        options={"status_callback": "http://127.0.0.1:9/providers/twilio/status/"},
    )

    result = transport_get("twilio").send(message)

    assert result.provider_message_id.startswith("SM")
    assert result.detail == {"segments": 2, "cost_estimate": 0.0158, "region": "US", "status": "queued"}
    [record] = control.wait_for_messages("twilio", 1, where=lambda r: r["key"] == message.idempotency_key)
    assert record["to"] == "+14155552671"
    assert record["summary"]["from"] == "+15005550006"


@pytest.mark.parametrize(
    ("number", "code", "feedback"),
    [
        ("+15005550001", "21211", Feedback.INVALID_NUMBER),
        ("+15005550009", "21614", Feedback.NOT_SMS_CAPABLE),
        ("+15005550004", "21610", Feedback.OPTED_OUT),
    ],
)
def test_it_classifies_twilio_destination_errors_as_permanent_with_feedback(
    control: SandboxControl, number: str, code: str, feedback: str
) -> None:
    error = failure(transport_get("twilio"), outbound("sms", number))

    assert (error.outcome, error.code, error.feedback) == ("permanent", code, feedback)
    assert error.detail["segments"] == 1


def test_it_classifies_a_number_that_replied_stop_as_opted_out(control: SandboxControl) -> None:
    control.twilio_inbound("+14155550199", "STOP", to="+15005550006")

    error = failure(transport_get("twilio"), outbound("sms", "+14155550199"))

    assert (error.outcome, error.feedback) == ("permanent", Feedback.OPTED_OUT)


def test_it_classifies_twilio_429_as_rate_limited_and_5xx_as_transient(control: SandboxControl) -> None:
    transport = transport_get("twilio")
    control.set_fault("twilio", status=429, retry_after=3)
    limited = failure(transport, outbound("sms", "+14155552671"))
    control.set_fault("twilio", status=503)
    unavailable = failure(transport, outbound("sms", "+14155552671"))

    assert (limited.outcome, limited.retry_after) == ("rate_limited", 3.0)
    assert unavailable.outcome == "transient"


def test_it_classifies_refused_twilio_credentials_as_transient(
    sandbox: SandboxProcess, control: SandboxControl
) -> None:
    providers = sandbox.providers()
    providers["twilio"] = {**providers["twilio"], "auth_token": "wrong"}
    with override_settings(PROVIDERS=providers):
        error = failure(transport_get("twilio"), outbound("sms", "+14155552671"))

    assert (error.outcome, error.code) == ("transient", "20003")


def test_it_classifies_a_twilio_timeout_as_transient(control: SandboxControl, short_timeout: None) -> None:
    control.set_fault("twilio", status=0, latency_ms=HOLD_MS)

    error = failure(transport_get("twilio"), outbound("sms", "+14155552671"))

    assert (error.outcome, error.code) == ("transient", "timeout")


# --- FCM (pyfcm + google-auth) --------------------------------------------------------------


def test_it_pushes_through_fcm_after_one_real_token_exchange(control: SandboxControl) -> None:
    transport = transport_get("fcm")
    messages = [
        outbound("push", f"device-{n}", collapse_key="order-42", data={"order": 42}) for n in range(3)
    ]

    results = [transport.send(message) for message in messages]

    assert all(result.provider_message_id.startswith("projects/") for result in results)
    fcm = control.messages("fcm")
    assert [record["key"] for record in fcm] == [message.idempotency_key for message in messages]
    assert fcm[0]["summary"]["data"] == {"order": "42", "idempotency_key": messages[0].idempotency_key}
    assert fcm[0]["summary"]["title"] == "Shipped"
    assert [record["status"] for record in control.messages("oauth")] == [200]


def test_it_classifies_fcm_unregistered_and_invalid_tokens_as_permanent(control: SandboxControl) -> None:
    transport = transport_get("fcm")

    gone = failure(transport, outbound("push", "sandbox-unregistered-1"))
    invalid = failure(transport, outbound("push", "sandbox-invalid-1"))

    assert (gone.outcome, gone.code, gone.feedback) == ("permanent", "UNREGISTERED", Feedback.UNREGISTERED)
    assert (invalid.outcome, invalid.code, invalid.feedback) == (
        "permanent",
        "INVALID_ARGUMENT",
        Feedback.BAD_TOKEN,
    )


def test_it_returns_fcm_429_as_rate_limited_without_sleeping_or_retrying(control: SandboxControl) -> None:
    transport = transport_get("fcm")
    message = outbound("push", "sandbox-ratelimited-1")

    error = failure(transport, message)
    assert len(records(control, "fcm", message.idempotency_key)) == 1  # pyfcm would have slept and re-sent
    result = transport.send(message)

    assert (error.outcome, error.code, error.retry_after) == ("rate_limited", "QUOTA_EXCEEDED", 1.0)
    assert result.provider_message_id


def test_it_returns_fcm_503_as_transient_without_the_adapter_retrying(control: SandboxControl) -> None:
    transport = transport_get("fcm")
    message = outbound("push", "sandbox-flaky-1")

    errors = [failure(transport, message), failure(transport, message)]
    result = transport.send(message)

    assert [(e.outcome, e.code) for e in errors] == [("transient", "UNAVAILABLE")] * 2
    assert result.provider_message_id
    assert [r["status"] for r in records(control, "fcm", message.idempotency_key)] == [503, 503, 200]


def test_it_classifies_an_fcm_timeout_as_transient(control: SandboxControl, short_timeout: None) -> None:
    transport = transport_get("fcm")
    transport.send(outbound("push", "warm-up"))  # the token exchange is not what times out
    control.set_fault("fcm", status=0, latency_ms=HOLD_MS)

    error = failure(transport, outbound("push", "device-1"))

    assert (error.outcome, error.code) == ("transient", "timeout")


def test_it_classifies_a_failed_fcm_token_exchange_as_transient(control: SandboxControl) -> None:
    control.set_fault("oauth", status=500)

    error = failure(transport_get("fcm"), outbound("push", "device-1"))

    assert (error.outcome, error.code) == ("transient", "credentials")
    assert control.messages("fcm") == []


# --- APNs (httpx HTTP/2 + ES256 provider token) -----------------------------------------------


def test_it_pushes_through_apns_with_the_idempotency_key_as_apns_id(control: SandboxControl) -> None:
    message = outbound("push", "a1b2c3", collapse_key="order-42")

    result = transport_get("apns").send(message)

    assert result.provider_message_id == message.idempotency_key
    [record] = control.wait_for_messages("apns", 1)
    assert record["key"] == message.idempotency_key
    assert record["status"] == 200
    summary = record["summary"]
    assert (summary["topic"], summary["push_type"], summary["priority"]) == (
        "com.example.notifications",
        "alert",
        "10",
    )
    assert summary["collapse_id"] == "order-42"
    assert summary["alert"] == {"title": "Shipped", "body": "Order 42 is on its way"}


def test_it_classifies_apns_410_as_unregistered_with_its_timestamp(control: SandboxControl) -> None:
    error = failure(transport_get("apns"), outbound("push", "sandbox-unregistered-1"))

    assert (error.outcome, error.code, error.feedback) == ("permanent", "Unregistered", Feedback.UNREGISTERED)
    assert isinstance(error.detail["unregistered_at"], int)


def test_it_classifies_apns_bad_device_token_as_permanent(control: SandboxControl) -> None:
    error = failure(transport_get("apns"), outbound("push", "sandbox-baddevice-1"))

    assert (error.outcome, error.code, error.feedback) == ("permanent", "BadDeviceToken", Feedback.BAD_TOKEN)


def test_it_classifies_apns_429_and_503_without_retrying(control: SandboxControl) -> None:
    transport = transport_get("apns")
    limited, flaky = outbound("push", "sandbox-ratelimited-1"), outbound("push", "sandbox-flaky-1")

    rate_error = failure(transport, limited)
    flaky_errors = [failure(transport, flaky), failure(transport, flaky)]
    results = [transport.send(limited), transport.send(flaky)]

    assert (rate_error.outcome, rate_error.retry_after) == ("rate_limited", 1.0)
    assert [(e.outcome, e.code) for e in flaky_errors] == [("transient", "ServiceUnavailable")] * 2
    assert [result.provider_message_id for result in results] == [
        limited.idempotency_key,
        flaky.idempotency_key,
    ]
    assert [r["status"] for r in records(control, "apns", flaky.idempotency_key)] == [503, 503, 200]


def test_it_classifies_an_apns_timeout_as_transient(control: SandboxControl, short_timeout: None) -> None:
    control.set_fault("apns", status=0, latency_ms=HOLD_MS)

    error = failure(transport_get("apns"), outbound("push", "a1b2c3"))

    assert (error.outcome, error.code) == ("transient", "timeout")


# --- Webhooks -------------------------------------------------------------------------------


def test_it_posts_slack_and_teams_messages(sandbox: SandboxProcess, control: SandboxControl) -> None:
    transport = transport_get("webhook")
    slack = outbound("webhook", f"{sandbox.http_url}/hooks/slack/T1/B1", options={"kind": "slack"})
    teams = outbound("webhook", f"{sandbox.http_url}/hooks/teams/abc", options={"kind": "teams"})

    results = [transport.send(slack), transport.send(teams)]

    assert [result.detail["status"] for result in results] == [200, 200]
    [slack_record] = records(control, "webhook", slack.idempotency_key)
    [teams_record] = records(control, "webhook", teams.idempotency_key)
    assert slack_record["summary"]["body"] == '{"text":"Order 42 is on its way."}'
    assert '"@type":"MessageCard"' in teams_record["summary"]["body"]


def test_it_signs_generic_webhooks_so_that_the_receiver_can_verify_them(
    sandbox: SandboxProcess, control: SandboxControl
) -> None:
    message = outbound(
        "webhook",
        f"{sandbox.http_url}/hooks/generic/orders",
        data={"order_id": 42},
        options={"kind": "generic", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
    )

    transport_get("webhook").send(message)

    [record] = records(control, "webhook", message.idempotency_key)
    body = record["summary"]["body"].encode()
    webhook_signature_verify(
        secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        headers=record["summary"]["headers"],
        body=body,
        tolerance_seconds=300,
    )
    with pytest.raises(Exception, match="no signature matches"):
        webhook_signature_verify(
            secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            headers=record["summary"]["headers"],
            body=body.replace(b"42", b"43"),
            tolerance_seconds=300,
        )


@pytest.mark.parametrize(
    ("path", "outcomes"),
    [
        ("/hooks/flaky/x", ["transient", "transient", "ok"]),
        ("/hooks/down/x", ["transient", "transient"]),
        ("/hooks/ratelimited/x", ["rate_limited", "ok"]),
        ("/hooks/gone/x", ["permanent"]),
    ],
)
def test_it_classifies_webhook_endpoint_answers(
    sandbox: SandboxProcess, control: SandboxControl, path: str, outcomes: list[str]
) -> None:
    transport = transport_get("webhook")
    message = outbound("webhook", f"{sandbox.http_url}{path}", options={"kind": "slack"})
    seen: list[str] = []
    retry_afters: list[float | None] = []
    for _ in outcomes:
        try:
            transport.send(message)
            seen.append("ok")
        except TransportError as error:
            seen.append(error.outcome)
            retry_afters.append(error.retry_after)

    assert seen == outcomes
    if "rate_limited" in outcomes:
        assert retry_afters == [1.0]


def test_it_classifies_a_webhook_timeout_and_a_refused_connection_as_transient(
    sandbox: SandboxProcess, control: SandboxControl, short_timeout: None
) -> None:
    control.set_fault("webhook", status=0, latency_ms=HOLD_MS)
    transport = transport_get("webhook")

    timed_out = failure(
        transport, outbound("webhook", f"{sandbox.http_url}/hooks/x", options={"kind": "slack"})
    )
    refused = failure(transport, outbound("webhook", "http://127.0.0.1:9/hook", options={"kind": "slack"}))

    assert (timed_out.outcome, timed_out.code) == ("transient", "timeout")
    assert (refused.outcome, refused.code) == ("transient", "connection")


# --- Threads --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "to"),
    [
        ("mailgun", lambda n: f"user{n}@example.com"),
        ("smtp", lambda n: f"user{n}@example.com"),
        ("twilio", lambda n: f"+1415555{n:04d}"),
        ("fcm", lambda n: f"device-{n}"),
        ("apns", lambda n: f"device{n:04x}"),
        ("webhook", lambda n: f"/hooks/slack/{n}"),
    ],
)
def test_it_sends_from_16_threads_at_once_with_each_key_arriving_once(
    sandbox: SandboxProcess, control: SandboxControl, provider: str, to: Callable[[int], str]
) -> None:
    transport = transport_get(provider)
    channel = {"mailgun": "email", "smtp": "email", "twilio": "sms", "webhook": "webhook"}.get(
        provider, "push"
    )
    options = {
        "webhook": {"kind": "slack"},
        # Twilio has no idempotency field: the key travels in the status callback URL.
        "twilio": {"status_callback": "http://127.0.0.1:9/providers/twilio/status/"},
    }.get(provider, {})
    messages = [
        outbound(channel, (sandbox.http_url + to(n)) if provider == "webhook" else to(n), options=options)
        for n in range(96)
    ]

    with ThreadPoolExecutor(max_workers=16) as pool:
        results: list[SendResult] = list(pool.map(transport.send, messages))

    assert len(results) == 96
    keys = sorted(str(record["key"]) for record in control.wait_for_messages(provider, 96))
    assert keys == sorted(message.idempotency_key for message in messages)
    if provider == "fcm":
        assert len(control.messages("oauth")) == 1  # one token shared by all threads
