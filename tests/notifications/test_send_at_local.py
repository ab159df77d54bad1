"""``send_at_local``: an event goes out when it is that wall-clock time in each recipient's
timezone (notifications/services/local_time.py, planning.py), daylight saving included."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest
from django.utils import timezone

from notifications.models import Delivery, DeliverySchedule, Event, InboxItem, OutboxMessage
from notifications.services.fanout import event_fanout
from notifications.services.scheduling import deliveries_release_due
from tests.notifications.factories import NotificationTypeFactory, RecipientFactory


def _post(service_client: Any, body: dict[str, Any]) -> Any:
    return service_client.post("/api/v1/events/", body, format="json")


def test_each_recipient_gets_it_at_that_time_in_their_own_timezone(
    service_client, django_capture_on_commit_callbacks
):
    nt = NotificationTypeFactory()
    east = RecipientFactory(timezone="Etc/GMT-5")  # UTC+5: the time has passed there
    utc = RecipientFactory(timezone="UTC")
    west = RecipientFactory(timezone="Etc/GMT+5")  # UTC-5
    wall = (timezone.now() + timedelta(hours=3)).astimezone(UTC).replace(tzinfo=None, microsecond=0)

    with django_capture_on_commit_callbacks(execute=True):
        response = _post(
            service_client,
            {
                "type": nt.key,
                "recipients": [east.external_id, utc.external_id, west.external_id],
                "data": {"order_id": 1},
                "send_at_local": wall.isoformat(),
            },
        )
    assert response.status_code == 202, response.content
    event_id = response.json()["id"]

    detail = service_client.get(f"/api/v1/events/{event_id}/").json()
    assert detail["send_at_local"] == wall.isoformat()
    assert InboxItem.objects.filter(recipient=east).count() == 1, "already that time in UTC+5: sent now"
    waiting = {
        row.recipient_id: row for row in Delivery.objects.filter(event_id=event_id, recipient__in=[utc, west])
    }
    assert {row.status for row in waiting.values()} == {"scheduled"}
    assert {row.reason for row in waiting.values()} == {"local time"}
    due = {rid: DeliverySchedule.objects.get(delivery_id=row.id).due_at for rid, row in waiting.items()}
    assert due[utc.id] == wall.replace(tzinfo=UTC)
    assert due[west.id] == wall.replace(tzinfo=UTC) + timedelta(hours=5)

    DeliverySchedule.objects.filter(delivery__event_id=event_id).update(due_at=timezone.now())
    with django_capture_on_commit_callbacks(execute=True):
        assert deliveries_release_due() == 2
    assert InboxItem.objects.filter(event_id=event_id).count() == 3


def test_a_time_the_clocks_skip_moves_forward_by_the_skip(service_client):
    nt = NotificationTypeFactory()
    paris = RecipientFactory(timezone="Europe/Paris")
    # 28 March 2027: the clocks in Paris go from 02:00 to 03:00; 02:30 does not exist.
    response = _post(
        service_client,
        {
            "type": nt.key,
            "recipients": [paris.external_id],
            "data": {"order_id": 1},
            "send_at_local": "2027-03-28T02:30",
        },
    )
    assert response.status_code == 202, response.content
    event = Event.objects.get(id=response.json()["id"])
    assert event.status == "scheduled"
    assert event.send_at == datetime(2027, 3, 27, 12, 30, tzinfo=UTC), "the first timezone to reach it"

    event_fanout(outbox_id=OutboxMessage.objects.get(event=event).id)

    row = Delivery.objects.get(event=event)
    assert (row.status, row.reason) == ("scheduled", "local time")
    assert DeliverySchedule.objects.get(delivery=row).due_at == datetime(2027, 3, 28, 1, 30, tzinfo=UTC), (
        "03:30 CEST"
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"send_at_local": "2026-12-01T09:00+01:00"}, "has no offset"),
        ({"send_at_local": "2026-12-01"}, "expected a date and time"),
        ({"send_at_local": "tomorrow at nine"}, "expected a date and time"),
        ({"send_at_local": "2026-12-01T09:00", "send_at": "2026-12-01T09:00:00Z"}, "not both"),
    ],
)
def test_a_bad_send_at_local_is_refused_naming_it(
    service_client: Any, extra: dict[str, Any], message: str
) -> None:
    nt = NotificationTypeFactory()
    alice = RecipientFactory()
    response = _post(service_client, {"type": nt.key, "recipients": [alice.external_id], **extra})
    assert response.status_code == 400
    assert message in " ".join(response.json()["errors"]["send_at_local"])
    assert not Event.objects.exists()


def test_bulk_events_take_send_at_local_too(service_client, django_capture_on_commit_callbacks):
    nt = NotificationTypeFactory()
    utc = RecipientFactory(timezone="UTC")
    wall = (timezone.now() + timedelta(hours=2)).astimezone(UTC).replace(tzinfo=None, microsecond=0)
    with django_capture_on_commit_callbacks(execute=True):
        response = service_client.post(
            "/api/v1/events/bulk/",
            {
                "events": [
                    {
                        "type": nt.key,
                        "recipients": [utc.external_id],
                        "data": {"order_id": 1},
                        "send_at_local": wall.isoformat(),
                    }
                ]
            },
            format="json",
        )
    assert response.status_code == 200, response.content
    event = Event.objects.get(id=response.json()["results"][0]["id"])
    assert event.send_at_local == wall.isoformat()
    row = Delivery.objects.get(event=event)
    assert (row.status, DeliverySchedule.objects.get(delivery=row).due_at) == (
        "scheduled",
        wall.replace(tzinfo=UTC),
    )


def test_a_local_time_inside_the_recipients_quiet_hours_waits_for_their_end(
    service_client, django_capture_on_commit_callbacks
):
    nt = NotificationTypeFactory()
    night_owl = RecipientFactory(timezone="UTC", quiet_hours_start=time(22, 0), quiet_hours_end=time(7, 0))
    wall = (timezone.now() + timedelta(days=2)).replace(
        hour=23, minute=0, second=0, microsecond=0, tzinfo=None
    )

    with django_capture_on_commit_callbacks(execute=True):
        response = _post(
            service_client,
            {
                "type": nt.key,
                "recipients": [night_owl.external_id],
                "data": {"order_id": 1},
                "send_at_local": wall.isoformat(),
            },
        )
    assert response.status_code == 202, response.content
    event_fanout(outbox_id=OutboxMessage.objects.get(event_id=response.json()["id"]).id)

    delivery = Delivery.objects.get(event_id=response.json()["id"])
    morning = (wall + timedelta(days=1)).replace(hour=7, minute=0).replace(tzinfo=UTC)
    assert (delivery.status, delivery.reason) == ("scheduled", "local time")
    assert DeliverySchedule.objects.get(delivery=delivery).due_at == morning
