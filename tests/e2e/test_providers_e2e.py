"""The provider channels end to end: real web, workers and beat, the provider sandbox as
a real process, driven over HTTP only. Provider receipts (Twilio status callbacks, Mailgun
tracking webhooks, an inbound STOP) travel from the sandbox back to the web server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from harness.processes import wait_until
from tests.e2e.conftest import Stack, platform_stack

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e-providers")]

TEMPLATES = {
    "email": {
        "subject": "Order {{ data.n }}",
        "html": "<p>Order {{ data.n }}</p>",
        "text": "Order {{ data.n }}",
    },
    "sms": {"text": "Order {{ data.n }} shipped"},
    "push": {"title": "Order", "body": "Order {{ data.n }} shipped"},
    "webhook": {"text": "Order {{ data.n }} shipped"},
}


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with platform_stack({"SEND_BACKOFF_BASE_SECONDS": "0.5"}, with_sandbox=True) as running:
        yield running


@pytest.fixture
def sandbox(stack: Stack) -> Any:
    assert stack.sandbox is not None
    stack.sandbox.control.reset()
    return stack.sandbox


def create_type(stack: Stack, channels: list[str], **extra: Any) -> str:
    key = f"e2e.{uuid.uuid4().hex[:8]}"
    body = {
        "key": key,
        "category": "transactional",
        "channels": channels,
        "templates": {c: TEMPLATES[c] for c in channels},
    }
    response = stack.api.post("/api/v1/notification-types/", json={**body, **extra})
    assert response.status_code == 201, response.text
    return key


def create_recipient(stack: Stack, **fields: str) -> str:
    external_id = f"p-{uuid.uuid4().hex[:10]}"
    response = stack.api.put(f"/api/v1/recipients/{external_id}/", json={"timezone": "UTC", **fields})
    assert response.status_code == 201, response.text
    return external_id


def deliveries(stack: Stack, event_id: str) -> dict[str, dict[str, Any]]:
    response = stack.api.get(f"/api/v1/events/{event_id}/deliveries/")
    assert response.status_code == 200, response.text
    return {row["channel"]: row for row in response.json()["results"]}


def wait_for_status(
    stack: Stack, event_id: str, channel: str, wanted: set[str], timeout: float = 30.0
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        row = deliveries(stack, event_id).get(channel)
        return row if row is not None and row["status"] in wanted else None

    try:
        return wait_until(reached, timeout, interval=0.2, message=f"{channel} never reached {wanted}")
    except TimeoutError as error:
        raise AssertionError(f"{error}: {deliveries(stack, event_id)}") from None


def test_it_delivers_on_every_provider_channel_and_follows_receipts(stack: Stack, sandbox: Any) -> None:
    external_id = create_recipient(stack, email="ana@example.com", phone="+14155550100")
    for platform, token in (("fcm", "e2e-fcm-token"), ("apns", "e2e-apns-token")):
        response = stack.api.post(
            f"/api/v1/recipients/{external_id}/devices/", json={"platform": platform, "token": token}
        )
        assert response.status_code in (200, 201), response.text
    response = stack.api.post(
        f"/api/v1/recipients/{external_id}/webhooks/",
        json={"kind": "slack", "url": f"{sandbox.http_url}/hooks/slack/T000/B000"},
    )
    assert response.status_code == 201, response.text
    type_key = create_type(stack, ["email", "sms", "push", "webhook"])

    event_id = stack.send(type=type_key, recipients=[external_id], data={"n": 42})

    # Twilio's "delivered" status callback and Mailgun's "delivered" webhook come back signed.
    assert wait_for_status(stack, event_id, "sms", {"delivered"})["provider"] == "twilio"
    assert wait_for_status(stack, event_id, "email", {"delivered"})["provider"] == "mailgun"
    wait_for_status(stack, event_id, "push", {"sent"})
    wait_for_status(stack, event_id, "webhook", {"delivered"})
    stats = sandbox.control.stats()["providers"]
    assert stats["fcm"]["accepted"] == 1 and stats["apns"]["accepted"] == 1
    assert stats["webhook"]["accepted"] == 1
    callbacks = sandbox.control.messages("twilio-callback") + sandbox.control.messages("mailgun-webhook")
    assert callbacks and all(200 <= int(c["status"]) < 300 for c in callbacks), callbacks


def test_it_marks_a_hard_bounce_and_suppresses_the_address(stack: Stack, sandbox: Any) -> None:
    address = f"{uuid.uuid4().hex[:8]}@bounce.sandbox.test"
    external_id = create_recipient(stack, email=address)
    type_key = create_type(stack, ["email"])

    first = stack.send(type=type_key, recipients=[external_id], data={"n": 1})
    wait_for_status(stack, first, "email", {"bounced"})
    second = stack.send(type=type_key, recipients=[external_id], data={"n": 2})

    row = wait_for_status(stack, second, "email", {"suppressed"})
    assert "suppression" in row["reason"]
    assert len(sandbox.control.messages("mailgun")) == 1


def test_it_opts_a_number_out_when_it_replies_stop(stack: Stack, sandbox: Any) -> None:
    phone = "+14155550177"
    external_id = create_recipient(stack, phone=phone)
    type_key = create_type(stack, ["sms"])

    assert sandbox.control.twilio_inbound(phone, "STOP") == 200
    event_id = stack.send(type=type_key, recipients=[external_id], data={"n": 3})

    row = wait_for_status(stack, event_id, "sms", {"suppressed"})
    assert "STOP" in row["reason"]
    assert sandbox.control.messages("twilio") == []


def test_it_retries_a_flaky_token_through_beat_until_accepted(stack: Stack, sandbox: Any) -> None:
    external_id = create_recipient(stack)
    stack.api.post(
        f"/api/v1/recipients/{external_id}/devices/", json={"platform": "fcm", "token": "sandbox-flaky-e2e"}
    )
    type_key = create_type(stack, ["push"])

    event_id = stack.send(type=type_key, recipients=[external_id], data={"n": 4})

    row = wait_for_status(stack, event_id, "push", {"sent"}, timeout=60)
    assert row["attempts"] == 3
    assert sandbox.control.stats()["providers"]["fcm"]["duplicates"] == 0


def test_it_falls_back_to_sms_when_the_push_is_not_delivered(stack: Stack, sandbox: Any) -> None:
    external_id = create_recipient(stack, phone="+14155550178")
    stack.api.post(
        f"/api/v1/recipients/{external_id}/devices/",
        json={"platform": "fcm", "token": "sandbox-unregistered-e2e"},
    )
    type_key = create_type(
        stack,
        ["push"],
        templates={"push": TEMPLATES["push"], "sms": TEMPLATES["sms"]},
        fallbacks=[{"from": "push", "to": "sms", "after_seconds": 30}],
    )

    event_id = stack.send(type=type_key, recipients=[external_id], data={"n": 5})

    wait_for_status(stack, event_id, "push", {"failed"})
    # The push failed for good, so the fallback does not wait its 30 s.
    wait_for_status(stack, event_id, "sms", {"sent", "delivered"}, timeout=15)
