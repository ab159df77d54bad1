"""Provider callbacks (forged or replayed provider webhooks get 4xx
and change nothing), signed exactly as Twilio and Mailgun sign them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from typing import Any
from urllib.parse import urlencode

import pytest
from django.conf import settings as django_settings
from django.http import QueryDict
from django.test import Client
from django.utils import timezone
from twilio.request_validator import RequestValidator

from notifications.models import (
    Delivery,
    DeliveryEvent,
    DeliverySchedule,
    DeliveryStatus,
    Event,
    Suppression,
    SuppressionKind,
    SuppressionReason,
)
from tests.notifications.factories import NotificationTypeFactory, RecipientFactory

pytestmark = pytest.mark.django_db

PUBLIC_URL = "https://notify.example.com"
STATUS_PATH = "/providers/twilio/status/"
INBOUND_PATH = "/providers/twilio/inbound/"
MAILGUN_PATH = "/anymail/mailgun/tracking/"


@pytest.fixture(autouse=True)
def _public_url(settings: Any) -> None:
    settings.PUBLIC_URL = PUBLIC_URL


def _sent_delivery(
    channel: str, *, email: str = "", phone: str = "", status: str = DeliveryStatus.SENT
) -> Delivery:
    recipient = RecipientFactory(email=email or f"{uuid.uuid4().hex[:8]}@example.com", phone=phone)
    nt = NotificationTypeFactory(channels=[channel])
    event = Event.objects.create(
        notification_type=nt, recipient_ids=[recipient.id], request_fingerprint="f" * 64
    )
    return Delivery.objects.create(
        event=event, recipient=recipient, channel=channel, status=status, attempts=1, sent_at=timezone.now()
    )


# --- Twilio -----------------------------------------------------------------------------


def _twilio_account() -> tuple[str, str]:
    twilio = django_settings.PROVIDERS["twilio"]
    return str(twilio["account_sid"]), str(twilio["auth_token"])


def _status_path(delivery: Delivery) -> str:
    return f"{STATUS_PATH}?{urlencode({'key': str(delivery.idempotency_key), 'd': delivery.id})}"


def _status_params(delivery: Delivery, status: str, *, error_code: str = "", sid: str = "") -> dict[str, str]:
    account_sid, _ = _twilio_account()
    params = {
        "AccountSid": account_sid,
        "MessageSid": sid or f"SM{delivery.id:032d}",
        "SmsSid": sid or f"SM{delivery.id:032d}",
        "MessageStatus": status,
        "SmsStatus": status,
        "From": "+15005550006",
        "To": "+14155552671",
        "ApiVersion": "2010-04-01",
    }
    if error_code:
        params["ErrorCode"] = error_code
    return params


def _twilio_post(
    client: Client,
    path: str,
    params: dict[str, str],
    *,
    signed_url: str | None = None,
    auth_token: str | None = None,
    signature: str | None = None,
) -> Any:
    """POST form-encoded like Twilio, with X-Twilio-Signature computed over the URL Twilio
    called (by default PUBLIC_URL + path, query string included) and the parameters."""
    if signature is None:
        token = auth_token or _twilio_account()[1]
        url = signed_url or f"{django_settings.PUBLIC_URL}{path}"
        signature = RequestValidator(token).compute_signature(url, params)
    return client.post(
        path,
        urlencode(params),
        content_type="application/x-www-form-urlencoded",
        headers={"X-Twilio-Signature": signature} if signature else {},
    )


def test_it_moves_an_sms_to_delivered_on_a_signed_status_callback(client):
    # given an SMS Twilio accepted
    delivery = _sent_delivery("sms")

    # when Twilio reports it delivered, signed for the public URL
    response = _twilio_post(client, _status_path(delivery), _status_params(delivery, "delivered"))

    # then the delivery is delivered and the receipt is kept
    assert response.status_code == 204
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.DELIVERED
    receipt = DeliveryEvent.objects.get(delivery=delivery)
    assert (receipt.kind, receipt.provider) == ("delivered", "twilio")
    assert receipt.detail["message_sid"] == f"SM{delivery.id:032d}"


@pytest.mark.parametrize(
    "forgery",
    [
        pytest.param({"auth_token": "not-the-auth-token"}, id="wrong-key"),
        pytest.param({"signature": "c2lnbmVkIGJ5IHNvbWVvbmUgZWxzZQ=="}, id="garbage-signature"),
        pytest.param({"signature": ""}, id="missing-signature"),
    ],
)
def test_it_refuses_a_forged_status_callback_and_changes_nothing(client, forgery):
    # given an SMS Twilio accepted
    delivery = _sent_delivery("sms")

    # when a callback arrives without Twilio's valid signature
    response = _twilio_post(client, _status_path(delivery), _status_params(delivery, "delivered"), **forgery)

    # then it is refused and nothing is recorded
    assert response.status_code == 403
    assert "X-Twilio-Signature" in response.json()["errors"]
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SENT
    assert not DeliveryEvent.objects.exists()


def test_it_refuses_a_callback_for_an_unknown_account(client):
    # given a callback signed with our token but naming an account we do not have
    delivery = _sent_delivery("sms")
    params = {**_status_params(delivery, "delivered"), "AccountSid": "AC" + "9" * 32}

    # when it is posted
    response = _twilio_post(client, _status_path(delivery), params)

    # then it is refused
    assert response.status_code == 403
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SENT and not DeliveryEvent.objects.exists()


def test_it_refuses_a_callback_whose_parameters_were_changed_after_signing(client):
    # given a valid signature over an "undelivered" report
    delivery = _sent_delivery("sms")
    path = _status_path(delivery)
    genuine = _status_params(delivery, "undelivered", error_code="30003")
    signature = RequestValidator(_twilio_account()[1]).compute_signature(f"{PUBLIC_URL}{path}", genuine)

    # when someone replays it with the status changed to "delivered"
    response = _twilio_post(client, path, {**genuine, "MessageStatus": "delivered"}, signature=signature)

    # then it is refused
    assert response.status_code == 403
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SENT


def test_it_refuses_a_callback_whose_delivery_id_was_changed_after_signing(client):
    # given a valid callback for one delivery
    delivery, other = _sent_delivery("sms"), _sent_delivery("sms")
    params = _status_params(delivery, "undelivered", error_code="30003")
    signature = RequestValidator(_twilio_account()[1]).compute_signature(
        f"{PUBLIC_URL}{_status_path(delivery)}", params
    )

    # when the signed body is sent to another delivery's callback URL
    response = _twilio_post(client, _status_path(other), params, signature=signature)

    # then it is refused: the query string is part of what Twilio signs
    assert response.status_code == 403
    other.refresh_from_db()
    assert other.status == DeliveryStatus.SENT


def test_it_accepts_a_callback_signed_for_the_public_url_behind_a_proxy(client):
    # given PUBLIC_URL https://notify.example.com while the request reaches Django as
    # http://testserver (TLS ended at the proxy)
    delivery = _sent_delivery("sms")
    path = _status_path(delivery)

    # when Twilio signs for the public https URL it called
    response = _twilio_post(
        client, path, _status_params(delivery, "delivered"), signed_url=f"https://notify.example.com{path}"
    )

    # then it is accepted
    assert response.status_code == 204
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.DELIVERED


def test_it_accepts_a_callback_signed_for_the_url_django_sees(client):
    # given a deployment reached directly (the URL Django builds is the one Twilio called)
    delivery = _sent_delivery("sms")
    path = _status_path(delivery)

    # when Twilio signs for http://testserver/...
    response = _twilio_post(
        client, path, _status_params(delivery, "delivered"), signed_url=f"http://testserver{path}"
    )

    # then it is accepted
    assert response.status_code == 204
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.DELIVERED


def test_it_refuses_a_callback_signed_for_another_url(client):
    # given a signature made for somebody else's endpoint
    delivery = _sent_delivery("sms")
    path = _status_path(delivery)

    # when it is posted here
    response = _twilio_post(
        client, path, _status_params(delivery, "delivered"), signed_url=f"https://evil.example.com{path}"
    )

    # then it is refused
    assert response.status_code == 403
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SENT and not DeliveryEvent.objects.exists()


def test_it_answers_a_replayed_callback_but_records_it_once(client):
    # given a delivered callback already applied
    delivery = _sent_delivery("sms")
    path, params = _status_path(delivery), _status_params(delivery, "delivered")
    assert _twilio_post(client, path, params).status_code == 204
    delivery.refresh_from_db()
    updated_at = delivery.updated_at

    # when Twilio (or anyone) posts the very same callback again
    again = _twilio_post(client, path, params)

    # then it is acknowledged (so Twilio stops retrying) and changes nothing
    assert again.status_code == 204
    delivery.refresh_from_db()
    assert (delivery.status, delivery.updated_at) == (DeliveryStatus.DELIVERED, updated_at)
    assert DeliveryEvent.objects.filter(delivery=delivery).count() == 1


def test_it_fails_an_undelivered_sms_with_twilios_error_code(client):
    # given an SMS Twilio accepted
    delivery = _sent_delivery("sms")

    # when Twilio reports it undelivered with 30003 (unreachable handset)
    response = _twilio_post(
        client, _status_path(delivery), _status_params(delivery, "undelivered", error_code="30003")
    )

    # then the delivery failed and says why
    assert response.status_code == 204
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED and "30003" in delivery.reason
    assert DeliveryEvent.objects.get(delivery=delivery).detail["error_code"] == "30003"
    assert not Suppression.objects.exists()


def test_it_suppresses_the_number_on_error_21610(client):
    # given an SMS to a number that had replied STOP to the sending number
    delivery = _sent_delivery("sms")
    params = _status_params(delivery, "failed", error_code="21610")

    # when Twilio reports 21610
    response = _twilio_post(client, _status_path(delivery), params)

    # then the number is suppressed as opted out and the delivery failed
    assert response.status_code == 204
    suppression = Suppression.objects.get()
    assert (suppression.kind, suppression.address, suppression.reason) == (
        SuppressionKind.PHONE,
        params["To"],
        SuppressionReason.SMS_STOP,
    )
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED


def test_it_records_nothing_for_intermediate_statuses(client):
    # given an SMS Twilio accepted
    delivery = _sent_delivery("sms")

    # when Twilio reports "queued" and "sending"
    for status in ("queued", "sending"):
        assert (
            _twilio_post(client, _status_path(delivery), _status_params(delivery, status)).status_code == 204
        )

    # then nothing is recorded
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SENT and not DeliveryEvent.objects.exists()


def test_it_names_a_missing_delivery_id(client):
    # given a signed callback whose URL lost its d= parameter
    delivery = _sent_delivery("sms")

    # when it is posted
    response = _twilio_post(client, f"{STATUS_PATH}?key=abc", _status_params(delivery, "delivered"))

    # then the error names the parameter
    assert response.status_code == 400 and "d" in response.json()["errors"]


def _inbound_params(body: str, from_number: str = "+14155552671") -> dict[str, str]:
    return {
        "AccountSid": _twilio_account()[0],
        "MessageSid": f"SM{uuid.uuid4().hex}",
        "From": from_number,
        "To": "+15005550006",
        "Body": body,
        "NumMedia": "0",
    }


def test_it_suppresses_a_number_that_replies_stop_and_lifts_it_on_start(client):
    # given a number that replies STOP
    stop = _twilio_post(client, INBOUND_PATH, _inbound_params("Stop "))

    # then it is on the suppression list, and Twilio gets an empty TwiML answer
    assert stop.status_code == 200 and stop["Content-Type"].startswith("text/xml")
    assert b"<Response></Response>" in stop.content
    suppression = Suppression.objects.get()
    assert (suppression.kind, suppression.address, suppression.reason) == (
        SuppressionKind.PHONE,
        "+14155552671",
        SuppressionReason.SMS_STOP,
    )

    # when it replies START
    start = _twilio_post(client, INBOUND_PATH, _inbound_params("START"))

    # then it is lifted
    assert start.status_code == 200
    assert not Suppression.objects.exists()


def test_it_validates_every_value_of_a_repeated_parameter(client):
    # given an inbound message with a parameter repeated, signed over all its values as
    # Twilio does
    params = QueryDict(mutable=True)
    for name, value in _inbound_params("STOP").items():
        params[name] = value
    params.setlist("MediaContentType", ["image/png", "image/jpeg"])
    signature = RequestValidator(_twilio_account()[1]).compute_signature(
        f"{PUBLIC_URL}{INBOUND_PATH}", params
    )

    # when it is posted
    response = client.post(
        INBOUND_PATH,
        params.urlencode(),
        content_type="application/x-www-form-urlencoded",
        headers={"X-Twilio-Signature": signature},
    )

    # then it is accepted
    assert response.status_code == 200 and Suppression.objects.count() == 1


def test_it_ignores_inbound_messages_that_are_not_keywords(client):
    response = _twilio_post(client, INBOUND_PATH, _inbound_params("please stop by tomorrow"))

    assert response.status_code == 200 and not Suppression.objects.exists()


def test_it_refuses_a_forged_stop(client):
    # given a STOP not signed by Twilio
    response = _twilio_post(client, INBOUND_PATH, _inbound_params("STOP"), auth_token="forged")

    # then it is refused and nobody is opted out
    assert response.status_code == 403
    assert not Suppression.objects.exists()


def test_it_refuses_get_on_provider_callbacks(client):
    assert client.get(STATUS_PATH).status_code == 405
    assert client.get(INBOUND_PATH).status_code == 405
    assert client.get(MAILGUN_PATH).status_code == 405


# --- Mailgun ----------------------------------------------------------------------------


def _mailgun_body(
    delivery: Delivery,
    event: str,
    *,
    token: str | None = None,
    timestamp: float | None = None,
    signing_key: str | None = None,
    **event_data: Any,
) -> dict[str, Any]:
    """A Mailgun tracking webhook body: the signature block is hex HMAC-SHA256 of
    timestamp + token under the webhook signing key."""
    ts = str(int(timestamp if timestamp is not None else time.time()))
    token = token or uuid.uuid4().hex + uuid.uuid4().hex[:18]  # Mailgun's tokens are 50 hex chars
    key = signing_key or str(django_settings.ANYMAIL["MAILGUN_WEBHOOK_SIGNING_KEY"])
    signature = hmac.new(key.encode(), f"{ts}{token}".encode(), hashlib.sha256).hexdigest()
    return {
        "signature": {"timestamp": ts, "token": token, "signature": signature},
        "event-data": {
            "id": uuid.uuid4().hex[:22],
            "event": event,
            "timestamp": time.time(),
            "recipient": delivery.recipient.email,
            "message": {"headers": {"message-id": f"{delivery.idempotency_key}@mg.sandbox.test"}},
            "user-variables": {
                "delivery_id": str(delivery.id),
                "idempotency_key": str(delivery.idempotency_key),
            },
            **event_data,
        },
    }


def _basic_auth(secret: str | None = None) -> str:
    secret = secret or str(django_settings.ANYMAIL["WEBHOOK_SECRET"])
    return "Basic " + base64.b64encode(secret.encode()).decode()


def _mailgun_post(client: Client, body: dict[str, Any], *, auth: str | None = None) -> Any:
    return client.post(
        MAILGUN_PATH, body, content_type="application/json", HTTP_AUTHORIZATION=auth or _basic_auth()
    )


PERMANENT_FAILURE: dict[str, Any] = {
    "severity": "permanent",
    "reason": "bounce",
    "delivery-status": {"code": 550, "message": "5.1.1 The email account does not exist", "description": ""},
}
TEMPORARY_FAILURE: dict[str, Any] = {
    "severity": "temporary",
    "reason": "generic",
    "delivery-status": {"code": 452, "message": "4.2.2 Mailbox full", "description": ""},
}


@pytest.mark.parametrize(("event", "status"), [("delivered", "delivered"), ("opened", "opened")])
def test_it_moves_an_email_forward_on_a_signed_tracking_webhook(client, event, status):
    # given an email Mailgun accepted
    delivery = _sent_delivery("email")

    # when Mailgun reports it
    response = _mailgun_post(client, _mailgun_body(delivery, event))

    # then the delivery moves forward and the receipt is kept
    assert response.status_code == 200
    delivery.refresh_from_db()
    assert delivery.status == status
    receipt = DeliveryEvent.objects.get(delivery=delivery)
    assert (receipt.kind, receipt.provider) == (status, "mailgun")


def test_it_suppresses_a_hard_bounced_address(client):
    # given an email Mailgun accepted (address in mixed case)
    delivery = _sent_delivery("email", email="Gone@Bounce.Sandbox.Test")

    # when Mailgun reports a permanent failure
    response = _mailgun_post(client, _mailgun_body(delivery, "failed", **PERMANENT_FAILURE))

    # then the delivery bounced and the address is suppressed, normalised
    assert response.status_code == 200
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.BOUNCED and "does not exist" in delivery.reason
    suppression = Suppression.objects.get()
    assert (suppression.kind, suppression.address, suppression.reason) == (
        SuppressionKind.EMAIL,
        "gone@bounce.sandbox.test",
        SuppressionReason.HARD_BOUNCE,
    )


def test_it_suppresses_an_address_that_complained(client):
    # given an email that was delivered
    delivery = _sent_delivery("email", email="angry@complaint.sandbox.test", status=DeliveryStatus.DELIVERED)

    # when Mailgun reports a spam complaint
    response = _mailgun_post(client, _mailgun_body(delivery, "complained"))

    # then the address is suppressed; the delivery keeps its status
    assert response.status_code == 200
    suppression = Suppression.objects.get()
    assert (suppression.address, suppression.reason) == (
        "angry@complaint.sandbox.test",
        SuppressionReason.COMPLAINT,
    )
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.DELIVERED
    assert DeliveryEvent.objects.get(delivery=delivery).kind == "complained"


def test_it_retries_an_email_after_a_temporary_failure(client):
    # given an email Mailgun accepted
    delivery = _sent_delivery("email")
    before = timezone.now()

    # when Mailgun reports a temporary failure (a soft bounce)
    response = _mailgun_post(client, _mailgun_body(delivery, "failed", **TEMPORARY_FAILURE))

    # then the delivery goes back to retrying, with a durable due time, and nothing is suppressed
    assert response.status_code == 200
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.RETRYING and delivery.reason.startswith("soft bounce")
    schedule = DeliverySchedule.objects.get(delivery=delivery)
    assert schedule.due_at > before and schedule.due_at == delivery.due_at
    assert DeliveryEvent.objects.get(delivery=delivery).kind == "deferred"
    assert not Suppression.objects.exists()


def test_it_refuses_a_forged_mailgun_signature_and_changes_nothing(client):
    # given a webhook signed with a key that is not ours
    delivery = _sent_delivery("email")
    body = _mailgun_body(delivery, "failed", signing_key="not-our-signing-key", **PERMANENT_FAILURE)

    # when it is posted with the right basic auth
    response = _mailgun_post(client, body)

    # then it is refused and nothing changes
    assert response.status_code == 403
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SENT
    assert not DeliveryEvent.objects.exists() and not Suppression.objects.exists()


def test_it_refuses_a_non_ascii_signature_without_a_server_error(client):
    delivery = _sent_delivery("email")
    body = _mailgun_body(delivery, "delivered")
    body["signature"]["signature"] = "é" * 64

    response = _mailgun_post(client, body)

    assert response.status_code == 403
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SENT


def test_it_refuses_a_webhook_older_than_the_tolerance(client, settings):
    # given a correctly signed webhook from longer ago than the tolerance
    settings.WEBHOOK_SIGNATURE_TOLERANCE_SECONDS = 300
    delivery = _sent_delivery("email")
    body = _mailgun_body(delivery, "delivered", timestamp=time.time() - 301)

    # when it is posted
    response = _mailgun_post(client, body)

    # then it is refused as a possible replay
    assert response.status_code == 400
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SENT and not DeliveryEvent.objects.exists()


def test_it_refuses_a_token_used_twice(client):
    # given a webhook accepted once
    delivery = _sent_delivery("email")
    body = _mailgun_body(delivery, "opened")
    assert _mailgun_post(client, body).status_code == 200

    # when the very same webhook comes again
    again = _mailgun_post(client, body)

    # then it is refused and recorded once
    assert again.status_code == 409
    assert DeliveryEvent.objects.filter(delivery=delivery).count() == 1


def test_it_refuses_wrong_basic_auth_and_still_accepts_the_genuine_request_later(client):
    # given a correctly signed webhook
    delivery = _sent_delivery("email")
    body = _mailgun_body(delivery, "failed", **PERMANENT_FAILURE)

    # when it arrives with the wrong basic-auth credentials
    refused = _mailgun_post(client, body, auth=_basic_auth("sandbox:wrong-password"))

    # then it is refused and nothing changes
    assert 400 <= refused.status_code < 500
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SENT
    assert not DeliveryEvent.objects.exists() and not Suppression.objects.exists()

    # and the refused attempt did not burn the token: the genuine request is still applied
    assert _mailgun_post(client, body).status_code == 200
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.BOUNCED


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"event-data": {"event": "delivered"}}, id="no-signature-block"),
        pytest.param(["not", "an", "object"], id="not-an-object"),
        pytest.param({"signature": {"timestamp": "1", "token": "t"}}, id="no-signature"),
    ],
)
def test_it_names_a_malformed_signature_block(client, body):
    response = _mailgun_post(client, body)

    assert response.status_code == 400 and "signature" in response.json()["errors"]


def test_it_refuses_a_signed_nan_timestamp(client):
    # given a signature block whose timestamp is "nan", signed with the real key (NaN
    # compares false with every bound, so a naive window check lets it through)
    delivery = _sent_delivery("email")
    body = _mailgun_body(delivery, "delivered")
    key = str(django_settings.ANYMAIL["MAILGUN_WEBHOOK_SIGNING_KEY"]).encode()
    token = body["signature"]["token"]
    body["signature"] = {
        "timestamp": "nan",
        "token": token,
        "signature": hmac.new(key, f"nan{token}".encode(), hashlib.sha256).hexdigest(),
    }

    # when it is posted
    response = _mailgun_post(client, body)

    # then it is refused
    assert response.status_code == 400
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SENT


def test_it_acknowledges_tracking_without_a_delivery_id(client):
    # given a tracking event for a mail we did not tag (user-variables missing or null)
    delivery = _sent_delivery("email")
    body = _mailgun_body(delivery, "delivered")
    body["event-data"]["user-variables"] = {"delivery_id": None}

    # when it is posted
    response = _mailgun_post(client, body)

    # then it is acknowledged and changes nothing
    assert response.status_code == 200
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SENT and not DeliveryEvent.objects.exists()
