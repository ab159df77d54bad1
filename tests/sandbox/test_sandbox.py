"""The provider sandbox as a real process, driven by the real client libraries: google-auth
and pyfcm, httpx over HTTP/2 for APNs, twilio, django-anymail's Mailgun backend, smtplib.

A stdlib HTTP server in this process stands in for the platform, so the sandbox's status
callbacks and tracking webhooks can be checked with the providers' own validators.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import smtplib
import ssl
import time
from collections.abc import Iterator
from email.message import EmailMessage as MimeMessage
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from harness.processes import wait_until
from harness.sandbox import SandboxControl, SandboxProcess
from sandbox.credentials import sandbox_credentials_ensure
from sandbox.state import SandboxState
from tests.sandbox.standin import PlatformStandIn, tracking_events

pytestmark = pytest.mark.xdist_group("sandbox")


# --- The stand-in platform -------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _clean(sandbox: SandboxProcess, platform: PlatformStandIn) -> None:
    # Callbacks of the previous test must land before the slate is wiped, not in this test.
    wait_until(lambda: sandbox.control.info()["pending_callbacks"] == 0, 10.0, message="callbacks pending")
    sandbox.control.reset()
    platform.clear()


@pytest.fixture
def control(sandbox: SandboxProcess) -> SandboxControl:
    return sandbox.control


@pytest.fixture
def providers(sandbox: SandboxProcess) -> dict[str, dict[str, Any]]:
    return sandbox.providers()


# --- Credentials -------------------------------------------------------------------------------


def test_it_generates_credentials_the_clients_can_use(sandbox: SandboxProcess) -> None:
    account = json.loads((sandbox.directory / "fcm-service-account.json").read_text())
    assert account["type"] == "service_account"
    assert account["token_uri"] == f"{sandbox.http_url}/oauth2/token"
    apns_key = ec_key(sandbox.directory / "apns-key.p8")
    assert apns_key.curve.name == "secp256r1"
    ca = x509.load_pem_x509_certificate((sandbox.directory / "tls" / "ca.pem").read_bytes())
    server = x509.load_pem_x509_certificate((sandbox.directory / "tls" / "server.pem").read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}


def test_it_keeps_keys_and_rewrites_the_token_uri_on_restart(tmp_path: Path) -> None:
    sandbox_credentials_ensure(tmp_path, http_base_url="http://127.0.0.1:1111")
    first = json.loads((tmp_path / "fcm-service-account.json").read_text())
    apns_key = (tmp_path / "apns-key.p8").read_bytes()
    ca = (tmp_path / "tls" / "ca.pem").read_bytes()

    sandbox_credentials_ensure(tmp_path, http_base_url="http://127.0.0.1:2222")

    second = json.loads((tmp_path / "fcm-service-account.json").read_text())
    assert second["token_uri"] == "http://127.0.0.1:2222/oauth2/token"
    assert second["private_key"] == first["private_key"]
    assert (tmp_path / "apns-key.p8").read_bytes() == apns_key
    assert (tmp_path / "tls" / "ca.pem").read_bytes() == ca


# --- Google OAuth and FCM ------------------------------------------------------------------------


def test_it_issues_access_tokens_to_google_auth(sandbox: SandboxProcess, control: SandboxControl) -> None:
    import google.auth.transport.requests
    from google.oauth2 import service_account

    credentials = service_account.Credentials.from_service_account_file(
        str(sandbox.directory / "fcm-service-account.json"),
        scopes=["https://www.googleapis.com/auth/firebase.messaging"],
    )

    credentials.refresh(google.auth.transport.requests.Request())

    assert credentials.token.startswith("sandbox-")
    assert credentials.valid
    assert control.stats()["providers"]["oauth"]["accepted"] == 1


def test_it_refuses_an_assertion_signed_with_another_key(sandbox: SandboxProcess) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    assertion = jwt.encode(
        {
            "iss": "sandbox@sandbox-project.iam.gserviceaccount.com",
            "aud": f"{sandbox.http_url}/oauth2/token",
            "iat": now,
            "exp": now + 3600,
        },
        stranger,
        algorithm="RS256",
    )

    response = httpx.post(
        f"{sandbox.http_url}/oauth2/token",
        data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion},
    )

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def pyfcm_client(sandbox: SandboxProcess) -> Any:
    from pyfcm import FCMNotification

    client = FCMNotification(
        service_account_file=str(sandbox.directory / "fcm-service-account.json"), project_id="sandbox-project"
    )
    client.FCM_END_POINT_BASE = f"{sandbox.http_url}/fcm/v1/projects"
    return client


def fcm_access_token(sandbox: SandboxProcess) -> str:
    import google.auth.transport.requests
    from google.oauth2 import service_account

    credentials = service_account.Credentials.from_service_account_file(
        str(sandbox.directory / "fcm-service-account.json"),
        scopes=["https://www.googleapis.com/auth/firebase.messaging"],
    )
    credentials.refresh(google.auth.transport.requests.Request())
    token: str = credentials.token
    return token


def fcm_post(sandbox: SandboxProcess, token: str, message: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{sandbox.http_url}/fcm/v1/projects/sandbox-project/messages:send",
        json={"message": message},
        headers={"Authorization": f"Bearer {token}"},
    )


def test_it_accepts_an_fcm_message_sent_by_pyfcm(sandbox: SandboxProcess, control: SandboxControl) -> None:
    client = pyfcm_client(sandbox)

    result = client.notify(
        fcm_token="device-token-1",
        notification_title="Hello",
        notification_body="World",
        data_payload={"idempotency_key": "fcm-key-1"},
    )

    assert result["name"].startswith("projects/sandbox-project/messages/")
    [record] = control.messages("fcm")
    assert record["status"] == 200
    assert record["key"] == "fcm-key-1"
    assert record["to"] == "device-token-1"
    assert record["summary"]["title"] == "Hello"


def test_it_answers_unregistered_fcm_tokens_with_fcms_not_found(sandbox: SandboxProcess) -> None:
    from pyfcm.errors import FCMNotRegisteredError

    with pytest.raises(FCMNotRegisteredError):
        pyfcm_client(sandbox).notify(fcm_token="sandbox-unregistered-1", notification_title="Hi")

    response = fcm_post(sandbox, fcm_access_token(sandbox), {"token": "sandbox-unregistered-2"})
    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "code": 404,
            "message": "Requested entity was not found.",
            "status": "NOT_FOUND",
            "details": [
                {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}
            ],
        }
    }


def test_it_fails_flaky_fcm_tokens_twice_then_accepts(
    sandbox: SandboxProcess, control: SandboxControl
) -> None:
    # pyfcm's urllib3 retry resends 503s by itself: it succeeds on the third attempt.
    result = pyfcm_client(sandbox).notify(fcm_token="sandbox-flaky-1", notification_title="Hi")

    assert result["name"].startswith("projects/sandbox-project/messages/")
    assert [record["status"] for record in control.messages("fcm")] == [503, 503, 200]


def test_it_rate_limits_an_fcm_token_once_with_retry_after(sandbox: SandboxProcess) -> None:
    token = fcm_access_token(sandbox)

    first = fcm_post(sandbox, token, {"token": "sandbox-ratelimited-1"})
    second = fcm_post(sandbox, token, {"token": "sandbox-ratelimited-1"})

    assert first.status_code == 429
    assert first.headers["Retry-After"] == "1"
    assert first.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert first.json()["error"]["details"][0]["errorCode"] == "QUOTA_EXCEEDED"
    assert second.status_code == 200


def test_it_refuses_fcm_calls_without_an_issued_token(sandbox: SandboxProcess) -> None:
    response = fcm_post(sandbox, "made-up", {"token": "device-1"})

    assert response.status_code == 401
    assert response.json()["error"]["status"] == "UNAUTHENTICATED"


def test_it_refuses_invalid_and_oversized_fcm_messages(sandbox: SandboxProcess) -> None:
    token = fcm_access_token(sandbox)

    invalid = fcm_post(sandbox, token, {"token": "sandbox-invalid-1"})
    too_big = fcm_post(sandbox, token, {"token": "device-1", "data": {"blob": "x" * 5000}})

    assert invalid.status_code == 400
    assert invalid.json()["error"]["details"][0]["errorCode"] == "INVALID_ARGUMENT"
    assert too_big.status_code == 400
    assert "message too big" in too_big.json()["error"]["message"]


# --- APNs ---------------------------------------------------------------------------------------


def ec_key(path: Path) -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


@pytest.fixture
def apns(sandbox: SandboxProcess, providers: dict[str, dict[str, Any]]) -> Iterator[httpx.Client]:
    settings = providers["apns"]
    token = jwt.encode(
        {"iss": settings["team_id"], "iat": int(time.time())},
        ec_key(Path(str(settings["key_file"]))),
        algorithm="ES256",
        headers={"kid": settings["key_id"]},
    )
    tls = ssl.create_default_context(cafile=str(settings["ca_file"]))
    with httpx.Client(
        http2=True,
        verify=tls,
        base_url=str(settings["url"]),
        headers={"authorization": f"bearer {token}", "apns-topic": str(settings["topic"])},
    ) as client:
        yield client


APNS_BODY = {"aps": {"alert": {"title": "Hi", "body": "there"}}}


def test_it_accepts_an_apns_push_over_http2_and_echoes_the_apns_id(
    apns: httpx.Client, control: SandboxControl
) -> None:
    apns_id = "2c9a2cd4-6c3e-4b9e-9d6a-1c1f0e5e0a01"

    response = apns.post(
        "/3/device/abcdef0123", json=APNS_BODY, headers={"apns-id": apns_id, "apns-collapse-id": "order-7"}
    )

    assert response.http_version == "HTTP/2"
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["apns-id"] == apns_id
    [record] = control.messages("apns")
    assert record["key"] == apns_id
    assert record["summary"]["collapse_id"] == "order-7"


def test_it_answers_apns_magic_tokens_like_apple(apns: httpx.Client) -> None:
    unregistered = apns.post("/3/device/sandbox-unregistered-1", json=APNS_BODY)
    bad_device = apns.post("/3/device/sandbox-baddevice-1", json=APNS_BODY)
    limited = [apns.post("/3/device/sandbox-ratelimited-1", json=APNS_BODY) for _ in range(2)]
    flaky = [apns.post("/3/device/sandbox-flaky-1", json=APNS_BODY).status_code for _ in range(3)]

    assert unregistered.status_code == 410
    assert unregistered.json()["reason"] == "Unregistered"
    assert unregistered.json()["timestamp"] > (time.time() - 60) * 1000
    assert bad_device.status_code == 400
    assert bad_device.json() == {"reason": "BadDeviceToken"}
    assert limited[0].status_code == 429
    assert limited[0].json() == {"reason": "TooManyRequests"}
    assert limited[0].headers["retry-after"] == "1"
    assert limited[1].status_code == 200
    assert flaky == [503, 503, 200]


def test_it_refuses_apns_requests_without_a_valid_provider_token_or_topic(
    apns: httpx.Client, providers: dict[str, dict[str, Any]]
) -> None:
    settings = providers["apns"]
    stale = jwt.encode(
        {"iss": settings["team_id"], "iat": int(time.time()) - 7200},
        ec_key(Path(str(settings["key_file"]))),
        algorithm="ES256",
        headers={"kid": settings["key_id"]},
    )
    stranger = jwt.encode(
        {"iss": settings["team_id"], "iat": int(time.time())},
        ec.generate_private_key(ec.SECP256R1()),
        algorithm="ES256",
        headers={"kid": settings["key_id"]},
    )

    expired = apns.post("/3/device/abc", json=APNS_BODY, headers={"authorization": f"bearer {stale}"})
    forged = apns.post("/3/device/abc", json=APNS_BODY, headers={"authorization": f"bearer {stranger}"})
    no_topic = apns.post("/3/device/abc", json=APNS_BODY, headers={"apns-topic": ""})
    too_large = apns.post("/3/device/abc", json={"aps": {"alert": "x" * 5000}})

    assert (expired.status_code, expired.json()["reason"]) == (403, "ExpiredProviderToken")
    assert (forged.status_code, forged.json()["reason"]) == (403, "InvalidProviderToken")
    assert (no_topic.status_code, no_topic.json()["reason"]) == (400, "MissingTopic")
    assert (too_large.status_code, too_large.json()["reason"]) == (413, "PayloadTooLarge")


# --- Twilio ---------------------------------------------------------------------------------------


def twilio_client(sandbox: SandboxProcess, account: dict[str, Any]) -> Any:
    from twilio.rest import Client

    client = Client(str(account["account_sid"]), str(account["auth_token"]))
    client.api.base_url = f"{sandbox.http_url}/twilio"
    return client


def test_it_accepts_an_sms_and_reports_delivery_with_signed_callbacks(
    sandbox: SandboxProcess,
    platform: PlatformStandIn,
    providers: dict[str, dict[str, Any]],
    control: SandboxControl,
) -> None:
    from twilio.request_validator import RequestValidator

    account = providers["twilio"]
    callback_url = f"{platform.url}/providers/twilio/status/?key=sms-key-1"

    message = twilio_client(sandbox, account).messages.create(
        to="+15551230001",
        from_=str(account["from_number"]),
        body="Your code is 1234",
        status_callback=callback_url,
    )

    assert message.sid.startswith("SM") and len(message.sid) == 34
    assert message.status == "queued"
    assert message.num_segments == "1"
    callbacks = platform.wait_for(2, lambda item: item.path.startswith("/providers/twilio/status/"))
    assert [item.form()["MessageStatus"] for item in callbacks] == ["sent", "delivered"]
    validator = RequestValidator(str(account["auth_token"]))
    for item in callbacks:
        assert item.url == callback_url
        assert item.form()["MessageSid"] == message.sid
        assert validator.validate(item.url, item.form(), item.headers["x-twilio-signature"])
    assert control.messages("twilio")[0]["key"] == "sms-key-1"
    assert [record["status"] for record in control.wait_for_messages("twilio-callback", 2)] == [200, 200]


def test_it_counts_sms_segments_like_twilio(
    sandbox: SandboxProcess, providers: dict[str, dict[str, Any]]
) -> None:
    client = twilio_client(sandbox, providers["twilio"])
    sender = str(providers["twilio"]["from_number"])

    long_gsm = client.messages.create(to="+15551230002", from_=sender, body="a" * 161)
    unicode = client.messages.create(to="+15551230002", from_=sender, body="é€ ok ✓" * 11)  # 77 UCS-2 units

    assert long_gsm.num_segments == "2"
    assert unicode.num_segments == "2"


def test_it_refuses_twilios_magic_numbers_and_bad_credentials(
    sandbox: SandboxProcess, providers: dict[str, dict[str, Any]]
) -> None:
    from twilio.base.exceptions import TwilioRestException

    account = providers["twilio"]
    client = twilio_client(sandbox, account)
    sender = str(account["from_number"])
    codes = {}
    for to in ("+15005550001", "+15005550009", "5551234"):
        with pytest.raises(TwilioRestException) as caught:
            client.messages.create(to=to, from_=sender, body="hi")
        codes[to] = (caught.value.status, caught.value.code)
    backup = twilio_client(sandbox, providers["twilio-backup"]).messages.create(
        to="+15551230003", from_=sender, body="hi"
    )
    wrong = twilio_client(sandbox, {**account, "auth_token": "wrong"})
    with pytest.raises(TwilioRestException) as unauthorised:
        wrong.messages.create(to="+15551230003", from_=sender, body="hi")

    assert codes == {"+15005550001": (400, 21211), "+15005550009": (400, 21614), "5551234": (400, 21211)}
    assert backup.account_sid == providers["twilio-backup"]["account_sid"]
    assert (unauthorised.value.status, unauthorised.value.code) == (401, 20003)


def test_it_delivers_a_signed_inbound_stop_and_opts_the_number_out(
    sandbox: SandboxProcess,
    platform: PlatformStandIn,
    providers: dict[str, dict[str, Any]],
    control: SandboxControl,
) -> None:
    from twilio.base.exceptions import TwilioRestException
    from twilio.request_validator import RequestValidator

    account = providers["twilio"]

    status = control.twilio_inbound("+15557654321", "STOP")

    assert status == 200
    [inbound] = platform.wait_for(1, lambda item: item.path == "/providers/twilio/inbound/")
    form = inbound.form()
    assert (form["From"], form["Body"], form["OptOutType"]) == ("+15557654321", "STOP", "STOP")
    assert form["To"] == account["from_number"]
    assert RequestValidator(str(account["auth_token"])).validate(
        inbound.url, form, inbound.headers["x-twilio-signature"]
    )
    assert control.stats()["opted_out"] == ["+15557654321"]
    with pytest.raises(TwilioRestException) as caught:
        twilio_client(sandbox, account).messages.create(to="+15557654321", from_=form["To"], body="hi")
    assert caught.value.code == 21610

    platform.status = 403
    assert control.twilio_inbound("+15557654321", "START") == 403
    assert control.stats()["opted_out"] == []


# --- Mailgun --------------------------------------------------------------------------------------


def mailgun_send(sandbox: SandboxProcess, to: str, *, key: str, api_key: str | None = None) -> Any:
    from anymail.message import AnymailMessage
    from django.conf import settings
    from django.core.mail import get_connection

    connection = get_connection(
        "anymail.backends.mailgun.EmailBackend",
        api_key=api_key or settings.PROVIDERS["mailgun"]["api_key"],
        api_url=f"{sandbox.http_url}/mailgun/v3",
    )
    message = AnymailMessage(
        subject="Your order shipped",
        body="It is on its way.",
        from_email="Shop <notify@mg.sandbox.test>",
        to=[to],
        connection=connection,
    )
    message.attach_alternative("<p>It is on its way.</p>", "text/html")
    message.metadata = {"idempotency_key": key}
    message.tags = ["transactional"]
    message.extra_headers = {"List-Unsubscribe": "<https://example.test/u/1>"}
    message.send()
    return message.anymail_status


def test_it_accepts_mail_from_anymail_and_reports_delivery(
    sandbox: SandboxProcess, platform: PlatformStandIn, control: SandboxControl
) -> None:
    status = mailgun_send(sandbox, "ada@example.com", key="mail-key-1")

    assert status.status == {"queued"}
    assert status.message_id.endswith("@mg.sandbox.test>")
    [record] = control.messages("mailgun")
    assert record["key"] == "mail-key-1"
    assert record["summary"]["headers"] == {"List-Unsubscribe": "<https://example.test/u/1>"}
    assert record["summary"]["tags"] == ["transactional"]
    [event] = tracking_events(platform, 1)
    assert event.event_type == "delivered"
    assert event.recipient == "ada@example.com"
    assert event.message_id == status.message_id
    assert event.metadata == {"idempotency_key": "mail-key-1"}
    assert event.tags == ["transactional"]


def test_it_reports_bounces_complaints_and_soft_bounces(
    sandbox: SandboxProcess, platform: PlatformStandIn
) -> None:
    mailgun_send(sandbox, "gone@bounce.sandbox.test", key="b")
    mailgun_send(sandbox, "angry@complaint.sandbox.test", key="c")
    mailgun_send(sandbox, "full@softbounce.sandbox.test", key="s")

    events = tracking_events(platform, 4)

    by_recipient: dict[str, list[tuple[str, str | None]]] = {}
    for event in events:
        by_recipient.setdefault(event.recipient, []).append((event.event_type, event.reject_reason))
    assert by_recipient == {
        "gone@bounce.sandbox.test": [("bounced", "bounced")],
        "angry@complaint.sandbox.test": [("delivered", None), ("complained", None)],
        "full@softbounce.sandbox.test": [("deferred", "other")],
    }
    bounce = next(event for event in events if event.recipient == "gone@bounce.sandbox.test")
    assert bounce.mta_response == "5.1.1 mailbox does not exist"


def test_it_fails_flaky_mail_domains_twice_then_accepts(
    sandbox: SandboxProcess, control: SandboxControl
) -> None:
    from anymail.exceptions import AnymailAPIError

    statuses = []
    for _ in range(2):
        with pytest.raises(AnymailAPIError) as caught:
            mailgun_send(sandbox, "x@flaky.sandbox.test", key="f")
        statuses.append(caught.value.status_code)
    accepted = mailgun_send(sandbox, "x@flaky.sandbox.test", key="f")

    assert statuses == [500, 500]
    assert accepted.status == {"queued"}
    assert [record["status"] for record in control.messages("mailgun")] == [500, 500, 200]


def test_it_refuses_mail_with_a_wrong_api_key(sandbox: SandboxProcess) -> None:
    from anymail.exceptions import AnymailAPIError

    with pytest.raises(AnymailAPIError) as caught:
        mailgun_send(sandbox, "ada@example.com", key="k", api_key="wrong")

    assert caught.value.status_code == 401


def test_it_signs_tracking_webhooks_with_the_signing_key(
    sandbox: SandboxProcess, platform: PlatformStandIn
) -> None:
    from django.conf import settings

    mailgun_send(sandbox, "ada@example.com", key="sig")

    [item] = platform.wait_for(1, lambda item: item.path == "/anymail/mailgun/tracking/")
    signature = item.json()["signature"]
    expected = hmac.new(
        str(settings.ANYMAIL["MAILGUN_WEBHOOK_SIGNING_KEY"]).encode(),
        f"{signature['timestamp']}{signature['token']}".encode(),
        hashlib.sha256,
    ).hexdigest()
    assert signature["signature"] == expected
    assert len(signature["token"]) == 50
    user, password = base64.b64decode(item.headers["authorization"].split()[1]).decode().split(":", 1)
    assert f"{user}:{password}" == settings.ANYMAIL["WEBHOOK_SECRET"]


# --- SMTP -----------------------------------------------------------------------------------------


def smtp_message(to: str, key: str) -> MimeMessage:
    message = MimeMessage()
    message["From"] = "notify@example.test"
    message["To"] = to
    message["Subject"] = "Hello"
    message["Message-ID"] = f"<{key}@example.test>"
    message["X-Idempotency-Key"] = key
    message.set_content("Hi there")
    return message


def test_it_records_mail_accepted_over_smtp(sandbox: SandboxProcess, control: SandboxControl) -> None:
    with smtplib.SMTP(sandbox.host, sandbox.smtp_port, timeout=10) as client:
        refused = client.send_message(smtp_message("ada@example.com", "smtp-key-1"))

    assert refused == {}
    [record] = control.messages("smtp")
    assert (record["status"], record["key"], record["to"]) == (250, "smtp-key-1", "ada@example.com")
    assert record["summary"]["subject"] == "Hello"
    assert record["summary"]["message_id"] == "<smtp-key-1@example.test>"
    assert record["summary"]["headers"]["X-Idempotency-Key"] == "smtp-key-1"


def test_it_refuses_bouncing_and_flaky_smtp_recipients(
    sandbox: SandboxProcess, control: SandboxControl
) -> None:
    with smtplib.SMTP(sandbox.host, sandbox.smtp_port, timeout=10) as client:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as bounced:
            client.send_message(smtp_message("gone@bounce.sandbox.test", "b"))
        flaky_codes = []
        for _ in range(2):
            with pytest.raises(smtplib.SMTPRecipientsRefused) as deferred:
                client.send_message(smtp_message("x@flaky.sandbox.test", "f"))
            flaky_codes.append(deferred.value.recipients["x@flaky.sandbox.test"][0])
        accepted = client.send_message(smtp_message("x@flaky.sandbox.test", "f"))

    assert bounced.value.recipients["gone@bounce.sandbox.test"] == (550, b"5.1.1 mailbox does not exist")
    assert flaky_codes == [451, 451]
    assert accepted == {}
    assert [record["status"] for record in control.messages("smtp")] == [550, 451, 451, 250]


# --- Webhook receiver -----------------------------------------------------------------------------


def test_it_receives_webhooks_and_answers_like_slack_and_teams(
    sandbox: SandboxProcess, control: SandboxControl
) -> None:
    slack = httpx.post(f"{sandbox.http_url}/hooks/slack/T1/B2", json={"text": "hi"})
    teams = httpx.post(f"{sandbox.http_url}/hooks/teams/abc", json={"text": "hi"})
    generic = httpx.post(
        f"{sandbox.http_url}/hooks/orders", json={"id": 1}, headers={"webhook-id": "msg_1", "x-extra": "yes"}
    )

    assert (slack.status_code, slack.text) == (200, "ok")
    assert (teams.status_code, teams.text) == (200, "1")
    assert (generic.status_code, generic.json()) == (200, {"ok": True})
    record = control.messages("webhook")[-1]
    assert record["key"] == "msg_1"
    assert record["summary"]["method"] == "POST"
    assert record["summary"]["path"] == "/hooks/orders"
    assert json.loads(record["summary"]["body"]) == {"id": 1}
    assert record["summary"]["headers"]["x-extra"] == "yes"


def test_it_provokes_webhook_faults_by_path(sandbox: SandboxProcess) -> None:
    def statuses(path: str, times: int) -> list[int]:
        return [httpx.post(f"{sandbox.http_url}/hooks/{path}", json={}).status_code for _ in range(times)]

    limited = httpx.post(f"{sandbox.http_url}/hooks/a/ratelimited/x", json={})

    assert statuses("a/flaky/x", 3) == [503, 503, 200]
    assert statuses("a/down/x", 3) == [500, 500, 500]
    assert statuses("a/gone/x", 1) == [410]
    assert (limited.status_code, limited.headers["Retry-After"]) == (429, "1")
    assert statuses("a/ratelimited/x", 1) == [200]


# --- Control API ----------------------------------------------------------------------------------


def test_it_answers_a_fault_until_it_expires(sandbox: SandboxProcess, control: SandboxControl) -> None:
    from anymail.exceptions import AnymailAPIError

    fault = control.set_fault("mailgun", status=503, rate=1.0, seconds=1)
    with pytest.raises(AnymailAPIError) as caught:
        mailgun_send(sandbox, "ada@example.com", key="during")

    assert fault["status"] == 503
    assert caught.value.status_code == 503
    wait_until(lambda: not control.faults(), 5.0, message="fault still active")
    assert mailgun_send(sandbox, "ada@example.com", key="after").status == {"queued"}
    assert [record["status"] for record in control.messages("mailgun")] == [503, 200]


def test_it_answers_faults_in_each_providers_own_shape(
    sandbox: SandboxProcess, control: SandboxControl, apns: httpx.Client
) -> None:
    control.set_fault("fcm", status=429, retry_after=7)
    control.set_fault("apns", status=500)
    control.set_fault("smtp", status=503)

    fcm = fcm_post(sandbox, "any", {"token": "device-1"})
    apple = apns.post("/3/device/abc", json=APNS_BODY)
    with smtplib.SMTP(sandbox.host, sandbox.smtp_port, timeout=10) as client:
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            client.send_message(smtp_message("ada@example.com", "k"))

    assert (fcm.status_code, fcm.headers["Retry-After"]) == (429, "7")
    assert fcm.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert (apple.status_code, apple.json()) == (500, {"reason": "InternalServerError"})
    assert refused.value.smtp_code == 421


def test_it_holds_requests_under_a_timeout_fault(sandbox: SandboxProcess, control: SandboxControl) -> None:
    control.set_fault("webhook", status=0, latency_ms=2000)

    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{sandbox.http_url}/hooks/slow", json={}, timeout=0.3)

    [record] = control.messages("webhook")
    assert record["status"] == 0
    assert record["summary"]["fault"] == "timeout"


def test_it_refuses_a_fault_for_an_unknown_provider(sandbox: SandboxProcess) -> None:
    response = httpx.post(f"{sandbox.http_url}/_sandbox/api/faults", json={"provider": "pigeon", "status": 7})

    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"provider", "status"}


def test_it_counts_duplicate_idempotency_keys(sandbox: SandboxProcess, control: SandboxControl) -> None:
    client = pyfcm_client(sandbox)
    for key in ("dup-1", "dup-1", "dup-2"):
        client.notify(fcm_token="device-1", notification_title="Hi", data_payload={"idempotency_key": key})

    fcm = control.stats()["providers"]["fcm"]

    assert (fcm["requests"], fcm["accepted"], fcm["keys"], fcm["duplicates"]) == (3, 3, 2, 1)


def test_it_filters_messages_by_provider_and_time(sandbox: SandboxProcess, control: SandboxControl) -> None:
    httpx.post(f"{sandbox.http_url}/hooks/one", json={})
    first = control.messages("webhook")[0]
    httpx.post(f"{sandbox.http_url}/hooks/two", json={})

    later = control.messages("webhook", since=first["received_at"])

    assert [record["to"] for record in later] == ["/hooks/two"]
    assert control.messages("fcm") == []


def test_it_resets_recordings_counters_faults_and_opt_outs(
    sandbox: SandboxProcess, control: SandboxControl
) -> None:
    httpx.post(f"{sandbox.http_url}/hooks/one", json={})
    control.set_fault("fcm", status=503)
    control.twilio_inbound("+15550000001", "STOP")

    control.reset()

    stats = control.stats()
    assert control.messages() == []
    assert control.faults() == []
    assert stats["opted_out"] == []
    assert all(counts["requests"] == 0 for counts in stats["providers"].values())


def test_it_pages_recordings_by_sequence_number() -> None:
    state = SandboxState()
    for index in range(5):
        state.record("webhook", status=200, key=f"k{index}")

    first = state.messages(limit=2)
    rest = state.messages(after=first[-1]["seq"], limit=10)

    assert [record["key"] for record in first] == ["k0", "k1"]
    assert [record["key"] for record in rest] == ["k2", "k3", "k4"]


def test_it_finds_a_slow_request_recorded_after_a_faster_one() -> None:
    state = SandboxState()
    now = time.time()
    state.record("fcm", status=200, key="fast", received_at=now - 1)
    state.record("fcm", status=200, key="slow", received_at=now - 5)  # held 5 s by a fault

    found = state.messages(provider="fcm", since=now - 6)

    assert [record["key"] for record in found] == ["fast", "slow"]


def test_it_leaves_the_sandboxs_own_callbacks_out_of_the_global_error_rate() -> None:
    state = SandboxState(error_rate=1.0)

    assert state.fault_for("fcm") is not None
    assert state.fault_for("fcm").status == 503  # type: ignore[union-attr]
    assert state.fault_for("mailgun-webhook") is None


def test_it_renders_the_staff_page_with_everything_escaped(sandbox: SandboxProcess) -> None:
    httpx.post(
        f"{sandbox.http_url}/hooks/x",
        content=b"<script>alert(1)</script>",
        headers={"webhook-id": "<b>id</b>"},
    )

    page = httpx.get(f"{sandbox.http_url}/_sandbox/")

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "<script>" not in page.text
    assert "&lt;b&gt;id&lt;/b&gt;" in page.text
    assert "<h2>webhook</h2>" in page.text


def test_it_shares_a_directory_with_a_second_sandbox_and_stops_on_sigterm(
    sandbox: SandboxProcess, platform: PlatformStandIn
) -> None:
    second = SandboxProcess(
        directory=sandbox.directory, platform_url=platform.url, extra_args=["--error-rate", "1.0"]
    ).start()
    try:
        # --error-rate 1.0: every provider request is answered 503; the control API is not.
        assert httpx.post(f"{second.http_url}/hooks/x", json={}).status_code == 503
        assert second.control.stats()["providers"]["webhook"]["rejected"] == 1
        tls = ssl.create_default_context(cafile=str(sandbox.directory / "tls" / "ca.pem"))
        with httpx.Client(http2=True, verify=tls) as client:
            # Both serve a certificate the shared CA vouches for.
            assert client.post(f"{second.apns_url}/3/device/x").status_code == 503
            assert client.post(f"{sandbox.apns_url}/3/device/x").status_code == 403
    finally:
        assert second.process is not None
        second.process.terminate()
        code = second.process.wait(10.0)
        second.stop()
        # The second one pointed the shared service account's token_uri at itself.
        sandbox_credentials_ensure(sandbox.directory, http_base_url=sandbox.http_url)
    assert code == 0
