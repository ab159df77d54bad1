"""The transports' pure parts: SMS segments and numbers, Retry-After, webhook signatures,
payload limits, error classification tables and the registry. No network."""

from __future__ import annotations

import json
import smtplib
import uuid
from email.utils import formatdate
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from anymail.exceptions import (
    AnymailError,
    AnymailInvalidAddress,
    AnymailRecipientsRefused,
    AnymailRequestsAPIError,
    AnymailSerializationError,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from twilio.base.exceptions import TwilioRestException

from notifications.transports import push_apns
from notifications.transports.base import Feedback, OutboundMessage, TransportError
from notifications.transports.email import MailgunTransport, SmtpTransport, mailgun_error, smtp_error
from notifications.transports.push_apns import (
    ApnsTransport,
    _ProviderToken,
    apns_error,
    apns_id,
    apns_payload,
)
from notifications.transports.push_fcm import FcmTransport, fcm_error
from notifications.transports.registry import transport_get, transports_reset
from notifications.transports.retry_after import RETRY_AFTER_CAP_SECONDS, retry_after_parse
from notifications.transports.sms import (
    InvalidPhoneNumber,
    TwilioTransport,
    sms_cost_estimate,
    sms_normalise,
    sms_segments,
    status_callback_with_key,
    twilio_error,
)
from notifications.transports.webhook import (
    WebhookSignatureError,
    WebhookTransport,
    webhook_error,
    webhook_signature,
    webhook_signature_verify,
)


def message(**overrides: Any) -> OutboundMessage:
    values: dict[str, Any] = {
        "delivery_id": 1,
        "idempotency_key": str(uuid.uuid4()),
        "channel": "push",
        "to": "device-token",
        "notification_type": "order.shipped",
        "content": {"title": "Shipped", "body": "Your order is on its way", "text": "Your order shipped"},
    }
    values.update(overrides)
    return OutboundMessage(**values)


# --- SMS segments -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "segments"),
    [
        ("", 0),
        ("a", 1),
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("{" * 80, 1),  # extension characters take two septets: 160
        ("{" * 81, 2),
        ("é" * 160, 1),  # in the GSM-7 basic table
        ("ж" * 70, 1),  # UCS-2
        ("ж" * 71, 2),
        ("ж" * 134, 2),
        ("ж" * 135, 3),
        ("😀" * 35, 1),  # outside the BMP: two UTF-16 code units each
        ("😀" * 36, 2),
        ("a" * 69 + "ж", 1),  # one non-GSM character turns the whole text into UCS-2
        ("a" * 70 + "ж", 2),
        ("a" * 160 + "ж", 3),
    ],
)
def test_it_counts_sms_segments_by_encoding(text: str, segments: int) -> None:
    assert sms_segments(text) == segments


def test_it_never_splits_an_extension_character_across_parts() -> None:
    # 306 septets fit two parts of 153 arithmetically, but the euro sign (escape + septet)
    # cannot start at the last septet of the first part, so everything after it moves on.
    text = "a" * 152 + "€" + "a" * 152
    assert sms_segments(text) == 3


def test_it_never_splits_a_surrogate_pair_across_parts() -> None:
    text = "ж" * 66 + "😀" + "ж" * 66  # 134 code units
    assert sms_segments(text) == 3


# --- Phone numbers and cost ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "e164", "region"),
    [
        ("+1 415-555-2671", "+14155552671", "US"),
        ("+44 20 7183 8750", "+442071838750", "GB"),
        ("+49 151 12345678", "+4915112345678", "DE"),
        ("+15005550009", "+15005550009", "US"),
    ],
)
def test_it_normalises_numbers_to_e164_with_their_region(number: str, e164: str, region: str) -> None:
    assert sms_normalise(number) == (e164, region)


@pytest.mark.parametrize("number", ["+15555555555", "4155552671", "not a number", "+1", ""])
def test_it_refuses_invalid_numbers_naming_them(number: str) -> None:
    with pytest.raises(InvalidPhoneNumber) as caught:
        sms_normalise(number)
    assert repr(number) in str(caught.value)


def test_it_estimates_cost_from_the_regional_price_table() -> None:
    assert sms_cost_estimate("+14155552671", 2) == pytest.approx(0.0158)
    assert sms_cost_estimate("+442071838750", 1) == pytest.approx(0.04)
    assert sms_cost_estimate("+4915112345678", 3) == pytest.approx(0.225)
    assert sms_cost_estimate("+81312345678", 1) == pytest.approx(0.05)  # not in the table
    assert sms_cost_estimate("+14155552671", 0) == 0


def test_it_refuses_an_invalid_number_before_calling_twilio() -> None:
    # Given a transport pointed at a port nothing listens on
    transport = TwilioTransport(
        "twilio",
        {
            "kind": "twilio",
            "channel": "sms",
            "api_url": "http://127.0.0.1:9",
            "account_sid": "AC" + "0" * 32,
            "auth_token": "x",
            "from_number": "+15005550006",
        },
    )
    # When it is asked to text a number that does not exist
    with pytest.raises(TransportError) as caught:
        transport.send(message(channel="sms", to="+15555555555"))
    # Then it fails permanently without a connection attempt (which would be transient)
    assert caught.value.permanent
    assert caught.value.code == "invalid_number"
    assert caught.value.feedback == Feedback.INVALID_NUMBER
    assert "+15555555555" in caught.value.reason


@pytest.mark.parametrize(
    ("status", "code", "outcome", "feedback"),
    [
        (400, 21211, "permanent", Feedback.INVALID_NUMBER),
        (400, 21614, "permanent", Feedback.NOT_SMS_CAPABLE),
        (400, 21610, "permanent", Feedback.OPTED_OUT),
        (429, 20429, "rate_limited", None),
        (400, 20429, "rate_limited", None),
        (500, 20500, "transient", None),
        (503, None, "transient", None),
        (401, 20003, "transient", None),
        (400, 21602, "permanent", None),
        (404, 20404, "permanent", None),
    ],
)
def test_it_classifies_twilio_errors(
    status: int, code: int | None, outcome: str, feedback: str | None
) -> None:
    error = TwilioRestException(status, "/Messages.json", "refused", code, "POST")
    classified = twilio_error(error, e164="+14155552671", detail={"segments": 1}, retry_after_header="3")
    assert classified.outcome == outcome
    assert classified.feedback == feedback
    assert classified.detail["segments"] == 1
    if outcome == "rate_limited":
        assert classified.retry_after == 3.0


def test_it_carries_the_idempotency_key_in_the_status_callback() -> None:
    assert status_callback_with_key(None, "k1") is None
    assert (
        status_callback_with_key("https://p.test/twilio/status/", "k1")
        == "https://p.test/twilio/status/?key=k1"
    )
    assert status_callback_with_key("https://p.test/s?d=7", "k 1") == "https://p.test/s?d=7&key=k+1"
    assert status_callback_with_key("https://p.test/s?key=mine", "k1") == "https://p.test/s?key=mine"


# --- Retry-After --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1", 1.0),
        (" 120 ", 120.0),
        ("1.5", 1.5),
        ("0", 0.0),
        (None, None),
        ("", None),
        ("soon", None),
        ("-5", None),
        ("nan", None),
        ("inf", None),
        ("99999999", RETRY_AFTER_CAP_SECONDS),
    ],
)
def test_it_reads_retry_after_seconds(value: str | None, seconds: float | None) -> None:
    assert retry_after_parse(value) == seconds


def test_it_reads_retry_after_http_dates_relative_to_now() -> None:
    now = 1_700_000_000.0
    assert retry_after_parse(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30.0)
    assert retry_after_parse(formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert retry_after_parse(formatdate(now + 10 * 86_400, usegmt=True), now=now) == RETRY_AFTER_CAP_SECONDS
    assert retry_after_parse("Wed, 32 Foo 2015 07:28:00 GMT", now=now) is None


# --- Webhook signatures -------------------------------------------------------------------


def test_it_signs_webhooks_like_the_standard_webhooks_reference() -> None:
    # The test vector of the Standard Webhooks specification's reference libraries.
    signature = webhook_signature(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def signed_headers(secret: str, body: bytes, timestamp: int, msg_id: str = "msg_1") -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": webhook_signature(secret, msg_id, timestamp, body),
    }


def test_it_accepts_an_authentic_fresh_webhook_with_any_header_case() -> None:
    body = b'{"id": "x"}'
    headers = {key.title(): value for key, value in signed_headers("s3cret", body, 1_000_000).items()}
    webhook_signature_verify(
        secret="s3cret", headers=headers, body=body, tolerance_seconds=300, now=1_000_010
    )
    # ...and the same headers over another body are refused: the check above checked.
    with pytest.raises(WebhookSignatureError):
        webhook_signature_verify(
            secret="s3cret", headers=headers, body=b"{}", tolerance_seconds=300, now=1_000_010
        )


def test_it_accepts_any_matching_signature_among_several() -> None:
    # given a header carrying, in the middle of others, the one signature made with our
    # secret (a sender rotating its secret signs with the old and the new one)
    body = b"{}"
    headers = signed_headers("new-secret", body, 1_000_000)
    matching = headers["webhook-signature"]
    others = [signed_headers("old-secret", body, 1_000_000)["webhook-signature"], "v1,AAAA"]
    with_match = {**headers, "webhook-signature": f"{others[0]} {matching} {others[1]}"}
    without_match = {**headers, "webhook-signature": " ".join(others)}

    # when it is verified, then it is accepted: verification returns (it raises
    # WebhookSignatureError to refuse, and returns nothing else)
    webhook_signature_verify(
        secret="new-secret", headers=with_match, body=body, tolerance_seconds=300, now=1_000_000
    )
    # and the same headers without the matching signature are refused, so the acceptance
    # above came from that one signature, not from the header's other entries
    with pytest.raises(WebhookSignatureError, match="no signature matches"):
        webhook_signature_verify(
            secret="new-secret", headers=without_match, body=body, tolerance_seconds=300, now=1_000_000
        )


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_it_refuses_a_webhook_missing_a_header(missing: str) -> None:
    headers = signed_headers("s3cret", b"{}", 1_000_000)
    del headers[missing]
    with pytest.raises(WebhookSignatureError, match=missing):
        webhook_signature_verify(
            secret="s3cret", headers=headers, body=b"{}", tolerance_seconds=300, now=1_000_000
        )


@pytest.mark.parametrize("age", [301, -301, 86_400])
def test_it_refuses_a_replayed_or_future_dated_webhook(age: int) -> None:
    # An authentic request, captured and sent again later (or stamped ahead).
    headers = signed_headers("s3cret", b"{}", 1_000_000)
    with pytest.raises(WebhookSignatureError, match="tolerance"):
        webhook_signature_verify(
            secret="s3cret", headers=headers, body=b"{}", tolerance_seconds=300, now=1_000_000 + age
        )


@pytest.mark.parametrize(
    ("secret", "body", "timestamp_header"),
    [
        ("s3cret", b'{"amount": 1000}', None),  # body changed in flight
        ("other", b"{}", None),  # signed with another secret
        ("s3cret", b"{}", "1000001"),  # timestamp changed to dodge the replay window
    ],
)
def test_it_refuses_a_forged_webhook(secret: str, body: bytes, timestamp_header: str | None) -> None:
    headers = signed_headers("s3cret", b"{}", 1_000_000)
    if timestamp_header:
        headers["webhook-timestamp"] = timestamp_header
    with pytest.raises(WebhookSignatureError, match="no signature matches"):
        webhook_signature_verify(
            secret=secret, headers=headers, body=body, tolerance_seconds=300, now=1_000_000
        )


def test_it_refuses_a_webhook_timestamp_that_is_not_a_number() -> None:
    headers = signed_headers("s3cret", b"{}", 1_000_000)
    headers["webhook-timestamp"] = "yesterday"
    with pytest.raises(WebhookSignatureError, match="Unix seconds"):
        webhook_signature_verify(
            secret="s3cret", headers=headers, body=b"{}", tolerance_seconds=300, now=1_000_000
        )


# --- Webhook transport refusals (before any request) --------------------------------------


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/hook", "file:///etc/passwd", "javascript:alert(1)", "http://", "example.com/hook"],
)
def test_it_refuses_webhook_urls_that_are_not_http(url: str) -> None:
    transport = WebhookTransport("webhook", {"kind": "webhook", "channel": "webhook"})
    with pytest.raises(TransportError) as caught:
        transport.send(message(channel="webhook", to=url, options={"kind": "slack"}))
    assert caught.value.permanent
    assert caught.value.code == "bad_url"


def test_it_refuses_a_generic_webhook_without_secret_and_an_unknown_kind() -> None:
    transport = WebhookTransport("webhook", {"kind": "webhook", "channel": "webhook"})
    with pytest.raises(TransportError) as no_secret:
        transport.send(message(channel="webhook", to="http://127.0.0.1:9/h", options={"kind": "generic"}))
    with pytest.raises(TransportError) as bad_kind:
        transport.send(message(channel="webhook", to="http://127.0.0.1:9/h", options={"kind": "irc"}))
    assert (no_secret.value.permanent, no_secret.value.code) == (True, "missing_secret")
    assert (bad_kind.value.permanent, bad_kind.value.code) == (True, "bad_kind")


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(429, "rate_limited"), (408, "transient"), (500, "transient"), (503, "transient"), (410, "permanent"),
     (404, "permanent"), (401, "permanent"), (301, "permanent")],
)  # fmt: skip
def test_it_classifies_webhook_answers(status: int, outcome: str) -> None:
    classified = webhook_error(status, "7", "https://hooks.example.com/x")
    assert classified.outcome == outcome
    if outcome == "rate_limited":
        assert classified.retry_after == 7.0


# --- Push payloads ------------------------------------------------------------------------


def test_it_refuses_an_apns_payload_over_4096_bytes_before_sending() -> None:
    small = apns_payload(message(data={"order": "42"}))
    assert json.loads(small) == {
        "aps": {"alert": {"title": "Shipped", "body": "Your order is on its way"}, "sound": "default"},
        "order": "42",
    }
    with pytest.raises(TransportError) as caught:
        apns_payload(message(data={"blob": "x" * 4096}))
    assert caught.value.permanent
    assert caught.value.code == "payload_too_large"
    assert "limit 4096" in caught.value.reason


def test_it_keeps_the_aps_dictionary_out_of_reach_of_data() -> None:
    body = json.loads(apns_payload(message(data={"aps": {"badge": 99}})))
    assert body["aps"]["alert"]["title"] == "Shipped"
    assert "badge" not in body["aps"]


def test_it_uses_the_idempotency_key_as_apns_id() -> None:
    key = uuid.uuid4()
    assert apns_id(str(key).upper()) == str(key)
    derived = apns_id("event:1:recipient:2:push")
    assert uuid.UUID(derived).version == 5
    assert apns_id("event:1:recipient:2:push") == derived


def write_fcm_service_account(directory: Path) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    path = directory / "service-account.json"
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "unit-project",
                "private_key_id": "k1",
                "private_key": pem,
                "client_email": "push@unit-project.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": "http://127.0.0.1:9/token",
            }
        )
    )
    return path


def test_it_refuses_an_fcm_payload_over_4096_bytes_before_sending(tmp_path: Path) -> None:
    transport = FcmTransport(
        "fcm",
        {
            "kind": "fcm",
            "channel": "push",
            "endpoint_base": "http://127.0.0.1:9/fcm/v1/projects",
            "service_account_file": str(write_fcm_service_account(tmp_path)),
        },
    )
    body = json.loads(transport.payload(message(collapse_key="order-42", data={"order": 42})))
    assert body["message"]["token"] == "device-token"
    assert body["message"]["data"]["order"] == "42"
    assert body["message"]["android"] == {"collapse_key": "order-42", "priority": "high"}
    assert body["message"]["apns"] == {"headers": {"apns-collapse-id": "order-42"}}
    with pytest.raises(TransportError) as caught:
        transport.send(message(data={"blob": "x" * 4096}))
    assert caught.value.permanent
    assert "payload too large" in caught.value.reason
    assert "limit 4096" in caught.value.reason


def test_it_reports_an_unusable_fcm_service_account_as_transient(tmp_path: Path) -> None:
    transport = FcmTransport(
        "fcm",
        {
            "kind": "fcm",
            "endpoint_base": "http://127.0.0.1:9",
            "service_account_file": str(tmp_path / "none.json"),
        },
    )
    with pytest.raises(TransportError) as caught:
        transport.send(message())
    assert (caught.value.outcome, caught.value.code) == ("transient", "credentials")


def unregistered(code: str) -> dict[str, Any]:
    return {"error": {"code": 0, "message": "m", "status": "x", "details": [{"errorCode": code}]}}


@pytest.mark.parametrize(
    ("status", "body", "outcome", "feedback"),
    [
        (404, unregistered("UNREGISTERED"), "permanent", Feedback.UNREGISTERED),
        (404, None, "permanent", Feedback.UNREGISTERED),
        (400, unregistered("INVALID_ARGUMENT"), "permanent", Feedback.BAD_TOKEN),
        (403, unregistered("SENDER_ID_MISMATCH"), "permanent", Feedback.BAD_TOKEN),
        (429, unregistered("QUOTA_EXCEEDED"), "rate_limited", None),
        (503, unregistered("UNAVAILABLE"), "transient", None),
        (500, unregistered("INTERNAL"), "transient", None),
        (502, "<html>bad gateway</html>", "transient", None),
        (401, unregistered("THIRD_PARTY_AUTH_ERROR"), "transient", None),
        (403, {"error": {"status": "PERMISSION_DENIED"}}, "transient", None),
    ],
)
def test_it_classifies_fcm_errors(status: int, body: Any, outcome: str, feedback: str | None) -> None:
    classified = fcm_error(status, body, "2")
    assert classified.outcome == outcome
    assert classified.feedback == feedback
    if outcome != "permanent":
        assert classified.retry_after == 2.0


def test_it_does_not_blame_the_token_for_an_fcm_payload_field_error() -> None:
    body = {
        "error": {
            "status": "INVALID_ARGUMENT",
            "details": [
                {"errorCode": "INVALID_ARGUMENT"},
                {"fieldViolations": [{"field": "message.android.ttl", "description": "bad"}]},
            ],
        }
    }
    classified = fcm_error(400, body, None)
    assert classified.permanent
    assert classified.feedback is None


@pytest.mark.parametrize(
    ("status", "reason", "outcome", "feedback"),
    [
        (410, "Unregistered", "permanent", Feedback.UNREGISTERED),
        (400, "BadDeviceToken", "permanent", Feedback.BAD_TOKEN),
        (400, "DeviceTokenNotForTopic", "permanent", Feedback.BAD_TOKEN),
        (400, "BadCollapseId", "permanent", None),
        (413, "PayloadTooLarge", "permanent", None),
        (429, "TooManyRequests", "rate_limited", None),
        (503, "ServiceUnavailable", "transient", None),
        (500, "InternalServerError", "transient", None),
        (403, "ExpiredProviderToken", "transient", None),
        (403, "InvalidProviderToken", "transient", None),
    ],
)
def test_it_classifies_apns_errors(status: int, reason: str, outcome: str, feedback: str | None) -> None:
    classified = apns_error(status, {"reason": reason, "timestamp": 1700000000000}, "5")
    assert (classified.outcome, classified.feedback, classified.code) == (outcome, feedback, reason)
    if status == 410:
        assert classified.detail["unregistered_at"] == 1700000000000


def write_apns_key(directory: Path) -> tuple[Path, ec.EllipticCurvePublicKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    path = directory / "apns-key.p8"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path, key.public_key()


def test_it_makes_an_es256_provider_token_and_reuses_it_for_50_minutes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file, public_key = write_apns_key(tmp_path)
    clock = [1_700_000_000.0]
    monkeypatch.setattr(push_apns.time, "time", lambda: clock[0])
    tokens = _ProviderToken(key_file=str(key_file), key_id="KEY123", team_id="TEAM456")

    first = tokens.get()
    assert jwt.get_unverified_header(first) == {"alg": "ES256", "kid": "KEY123", "typ": "JWT"}
    assert jwt.decode(first, public_key, algorithms=["ES256"]) == {"iss": "TEAM456", "iat": 1_700_000_000}

    clock[0] += 49 * 60
    assert tokens.get() == first
    clock[0] += 60
    second = tokens.get()
    assert second != first
    assert jwt.decode(second, public_key, algorithms=["ES256"])["iat"] == 1_700_000_000 + 50 * 60


def test_it_rebuilds_the_provider_token_at_once_when_apple_calls_it_expired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file, _ = write_apns_key(tmp_path)
    clock = [1_700_000_000.0]
    monkeypatch.setattr(push_apns.time, "time", lambda: clock[0])
    tokens = _ProviderToken(key_file=str(key_file), key_id="K", team_id="T")
    first = tokens.get()
    clock[0] += 1
    tokens.expire("some older token")  # another thread's stale report changes nothing
    assert tokens.get() == first
    tokens.expire(first)
    assert tokens.get() != first


def test_it_refuses_a_collapse_key_over_64_bytes(tmp_path: Path) -> None:
    key_file, _ = write_apns_key(tmp_path)
    transport = ApnsTransport(
        "apns",
        {
            "url": "https://127.0.0.1:9",
            "topic": "t",
            "ca_file": None,
            "key_file": str(key_file),
            "key_id": "K",
            "team_id": "T",
        },
    )
    with pytest.raises(TransportError) as caught:
        transport.send(message(collapse_key="c" * 65))
    assert (caught.value.permanent, caught.value.code) == (True, "collapse_key_too_long")


# --- Mailgun classification ---------------------------------------------------------------


def mailgun_answer(status: int, retry_after: str | None = None) -> AnymailRequestsAPIError:
    response = requests.Response()
    response.status_code = status
    response._content = b'{"message": "sandbox"}'
    if retry_after is not None:
        response.headers["Retry-After"] = retry_after
    return AnymailRequestsAPIError("Mailgun API response", response=response)


def mailgun_unreachable(cause: Exception) -> AnymailRequestsAPIError:
    try:
        raise AnymailRequestsAPIError("Error posting") from cause
    except AnymailRequestsAPIError as error:
        return error


@pytest.mark.parametrize(
    ("error", "outcome", "code", "feedback"),
    [
        (AnymailRecipientsRefused(), "permanent", "recipient_refused", Feedback.HARD_BOUNCE),
        (AnymailInvalidAddress("Invalid email address 'x@'"), "permanent", "invalid_address", None),
        (mailgun_answer(429, "12"), "rate_limited", "429", None),
        (mailgun_answer(500), "transient", "500", None),
        (mailgun_answer(503, "Wed, 21 Oct 2015 07:28:00 GMT"), "transient", "503", None),
        (mailgun_answer(401), "transient", "401", None),
        (mailgun_answer(400), "permanent", "400", None),
        (mailgun_answer(404), "permanent", "404", None),
        (mailgun_answer(200), "transient", "unreadable_response", None),
        (mailgun_unreachable(requests.ConnectTimeout("slow")), "transient", "timeout", None),
        (mailgun_unreachable(requests.ConnectionError("refused")), "transient", "connection", None),
        (AnymailSerializationError("not JSON"), "permanent", "rejected", None),
    ],
)
def test_it_classifies_mailgun_errors(
    error: AnymailError, outcome: str, code: str, feedback: str | None
) -> None:
    classified = mailgun_error(error, message(channel="email", to="a@x.test"))
    assert (classified.outcome, classified.code, classified.feedback) == (outcome, code, feedback)
    if outcome == "rate_limited":
        assert classified.retry_after == 12.0


# --- SMTP classification ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "outcome", "feedback"),
    [
        (
            smtplib.SMTPRecipientsRefused({"a@x.test": (550, b"no such user")}),
            "permanent",
            Feedback.HARD_BOUNCE,
        ),
        (smtplib.SMTPRecipientsRefused({"a@x.test": (451, b"try later")}), "transient", None),
        (smtplib.SMTPDataError(554, b"rejected"), "permanent", None),
        (smtplib.SMTPDataError(452, b"storage"), "transient", None),
        (smtplib.SMTPSenderRefused(553, b"bad sender", "n@x.test"), "permanent", None),
        (smtplib.SMTPAuthenticationError(535, b"bad credentials"), "transient", None),
        (smtplib.SMTPServerDisconnected("gone"), "transient", None),
        (ConnectionRefusedError(111, "refused"), "transient", None),
        (TimeoutError("timed out"), "transient", None),
        (OSError("network unreachable"), "transient", None),
    ],
)
def test_it_classifies_smtp_errors(error: Exception, outcome: str, feedback: str | None) -> None:
    classified = smtp_error(error, message(channel="email", to="a@x.test"))
    assert (classified.outcome, classified.feedback) == (outcome, feedback)


def test_it_reports_an_unreachable_smtp_server_as_transient() -> None:
    transport = SmtpTransport("smtp", {"host": "127.0.0.1", "port": 9})
    with pytest.raises(TransportError) as caught:
        transport.send(message(channel="email", to="a@example.com", content={"subject": "s", "text": "t"}))
    assert (caught.value.outcome, caught.value.code) == ("transient", "connection")


# --- Registry -----------------------------------------------------------------------------


def test_it_builds_each_kind_once_and_anew_when_the_configuration_changes(tmp_path: Path) -> None:
    transports_reset()
    mailgun = transport_get("mailgun")
    assert isinstance(mailgun, MailgunTransport)
    assert transport_get("mailgun") is mailgun
    assert isinstance(transport_get("smtp"), SmtpTransport)
    assert isinstance(transport_get("twilio"), TwilioTransport)
    assert isinstance(transport_get("fcm"), FcmTransport)
    assert isinstance(transport_get("apns"), ApnsTransport)
    assert isinstance(transport_get("webhook"), WebhookTransport)

    from django.conf import settings

    changed = {
        **settings.PROVIDERS,
        "mailgun": {**settings.PROVIDERS["mailgun"], "api_url": "http://127.0.0.1:9/v3"},
    }
    with override_settings(PROVIDERS=changed):
        assert transport_get("mailgun") is not mailgun
    with override_settings(SEND_TIMEOUT_SECONDS=0.5):
        assert transport_get("smtp")._timeout == 0.5  # type: ignore[attr-defined]

    transports_reset()
    assert transport_get("mailgun") is not mailgun


def test_it_refuses_an_unknown_provider_name_or_kind() -> None:
    with pytest.raises(ImproperlyConfigured, match="no provider 'pigeon'"):
        transport_get("pigeon")
    with override_settings(PROVIDERS={"pigeon": {"kind": "carrier-pigeon"}}):
        with pytest.raises(ImproperlyConfigured, match="carrier-pigeon"):
            transport_get("pigeon")


def test_it_exchanges_the_fcm_token_again_once_after_access_token_expired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a token FCM has started to refuse as expired (the sandbox's tokens live an hour,
    # so this one path is driven with canned answers)
    transport = FcmTransport(
        "fcm",
        {
            "endpoint_base": "http://127.0.0.1:9/fcm/v1/projects",
            "service_account_file": str(write_fcm_service_account(tmp_path)),
        },
    )
    fcm = transport._client()
    issued = iter(["old-token", "new-token"])

    def refresh(request: Any) -> None:
        fcm.credentials.token = next(issued)
        fcm.credentials.expiry = None

    monkeypatch.setattr(fcm.credentials, "refresh", refresh)
    sent_with: list[str] = []

    def answer(status: int, body: dict[str, Any]) -> requests.Response:
        response = requests.Response()
        response.status_code = status
        response._content = json.dumps(body).encode()
        return response

    def post(url: str, *, data: Any, timeout: Any, headers: dict[str, str]) -> requests.Response:
        token = headers["Authorization"].removeprefix("Bearer ")
        sent_with.append(token)
        if token == "old-token":
            expired = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "ACCESS_TOKEN_EXPIRED"}
            return answer(401, {"error": {"code": 401, "status": "UNAUTHENTICATED", "details": [expired]}})
        return answer(200, {"name": "projects/unit-project/messages/1"})

    session = requests.Session()
    monkeypatch.setattr(session, "post", post)
    fcm.thread_local.requests_session = session
    fcm.thread_local.token_expiry = float("inf")

    # When a push is sent
    result = transport.send(message())

    # Then the request is made again, once, with a newly exchanged token
    assert result.provider_message_id == "projects/unit-project/messages/1"
    assert sent_with == ["old-token", "new-token"]


def test_it_reads_the_environment_once_per_session_unless_a_proxy_is_set(monkeypatch):
    import requests

    from notifications.transports import http_env

    for name in (
        "http_proxy",
        "HTTPS_PROXY",
        "no_proxy",
        "ALL_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "NO_PROXY",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    http_env._environment.cache_clear()
    plain = http_env.session_tune(requests.Session())
    assert plain.trust_env is False and plain.verify == "/etc/ssl/certs/ca-certificates.crt"

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    http_env._environment.cache_clear()
    proxied = http_env.session_tune(requests.Session())
    http_env._environment.cache_clear()
    assert proxied.trust_env is True and proxied.verify is True
