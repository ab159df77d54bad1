"""``DELETE /api/v1/events/{id}/`` and ``DELETE /api/v1/events/?idempotency_key=``: an event
that has not gone out is cancelled and nothing of it is ever delivered; once its fan-out
has begun the cancel is refused, and the two can never both happen
(notifications/services/cancellation.py)."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from django.db import close_old_connections, connection, transaction
from django.utils import timezone

from notifications.models import Delivery, Event, InboxItem, OutboxMessage
from notifications.services.fanout import event_fanout
from notifications.services.outbox import outbox_sweep
from tests.notifications.factories import NotificationTypeFactory, RecipientFactory


def _schedule(service_client: Any, **extra: Any) -> tuple[str, Any]:
    nt = NotificationTypeFactory()
    alice = RecipientFactory()
    body = {
        "type": nt.key,
        "recipients": [alice.external_id],
        "data": {"order_id": 1},
        "send_at": (timezone.now() + timedelta(hours=1)).isoformat(),
        **extra,
    }
    response = service_client.post("/api/v1/events/", body, format="json")
    assert response.status_code == 202, response.content
    return response.json()["id"], alice


def _come_due(event_id: str) -> None:
    OutboxMessage.objects.filter(event_id=event_id).update(available_at=timezone.now())


def test_a_scheduled_send_is_cancelled_and_never_delivered(
    service_client, django_capture_on_commit_callbacks
):
    event_id, alice = _schedule(service_client)

    assert service_client.delete(f"/api/v1/events/{event_id}/").status_code == 204

    detail = service_client.get(f"/api/v1/events/{event_id}/").json()
    assert detail["status"] == "cancelled"
    _come_due(event_id)
    with django_capture_on_commit_callbacks(execute=True):
        assert outbox_sweep() == 0, "the cancelled row is never handed to a fan-out"
    outbox = OutboxMessage.objects.get(event_id=event_id)
    event_fanout(outbox_id=outbox.id)  # a fan-out task that was already queued
    assert not Delivery.objects.filter(event_id=event_id).exists()
    assert not InboxItem.objects.filter(recipient=alice).exists()
    assert service_client.delete(f"/api/v1/events/{event_id}/").status_code == 204, "again: no change"


def test_a_send_whose_fan_out_has_begun_is_not_cancelled(service_client, django_capture_on_commit_callbacks):
    event_id, alice = _schedule(service_client)
    _come_due(event_id)
    with django_capture_on_commit_callbacks(execute=True):
        assert outbox_sweep() == 1

    response = service_client.delete(f"/api/v1/events/{event_id}/")

    assert response.status_code == 409
    assert "fan-out has begun" in response.json()["errors"]["status"][0]
    assert InboxItem.objects.filter(recipient=alice).count() == 1
    assert Event.objects.get(id=event_id).status == "completed"


def test_it_cancels_by_idempotency_key_of_the_same_api_key_only(service_client, client):
    event_id, _ = _schedule(service_client, idempotency_key="reminder-42")

    other = service_client.delete("/api/v1/events/?idempotency_key=reminder-41")
    assert other.status_code == 404
    assert service_client.delete("/api/v1/events/?idempotency_key=reminder-42").status_code == 204
    assert Event.objects.get(id=event_id).status == "cancelled"


@pytest.mark.parametrize(
    ("query", "message"),
    [("", "required"), ("?idempotency_key=", "required"), ("?idempotency_key=" + "k" * 300, "at most")],
)
def test_a_cancel_by_key_names_a_missing_or_bad_key(service_client: Any, query: str, message: str) -> None:
    response = service_client.delete(f"/api/v1/events/{query}")
    assert response.status_code == 400
    assert message in response.json()["errors"]["idempotency_key"][0]


@pytest.mark.parametrize("event_id", ["0193a0f0-0000-7000-8000-000000000001", "not-a-uuid"])
def test_an_unknown_event_is_a_404(service_client: Any, event_id: str) -> None:
    assert service_client.delete(f"/api/v1/events/{event_id}/").status_code == 404


def test_a_cancel_needs_an_api_key(client, service_client):
    event_id, _ = _schedule(service_client)
    assert client.delete(f"/api/v1/events/{event_id}/").status_code == 401
    assert Event.objects.get(id=event_id).status == "scheduled"


@pytest.mark.django_db(transaction=True)
def test_a_cancel_waits_for_a_page_being_stored_and_then_refuses(service_client):
    """A fan-out storing its first page holds the outbox row; the cancel waits for it and,
    once the page is stored, is refused: never both."""
    event_id, _ = _schedule(service_client)
    outbox_id = OutboxMessage.objects.get(event_id=event_id).id
    locked, release = threading.Event(), threading.Event()

    def storing_a_page() -> None:
        try:
            with transaction.atomic():
                OutboxMessage.objects.select_for_update().get(id=outbox_id)
                locked.set()
                release.wait(10)
                OutboxMessage.objects.filter(id=outbox_id).update(cursor=1)
        finally:
            close_old_connections()
            connection.close()

    fan_out = threading.Thread(target=storing_a_page)
    fan_out.start()
    assert locked.wait(10)
    answers: list[int] = []

    def cancelling() -> None:
        try:
            answers.append(service_client.delete(f"/api/v1/events/{event_id}/").status_code)
        finally:
            connection.close()

    cancel = threading.Thread(target=cancelling)
    cancel.start()
    cancel.join(0.5)
    assert cancel.is_alive(), "the cancel waits for the row"
    release.set()
    fan_out.join(10)
    cancel.join(10)
    assert answers == [409]
    assert Event.objects.get(id=event_id).status == "scheduled"
