"""Recurring reminders (notifications/services/reminders.py, api/reminders.py): an event at
each occurrence of an RFC 5545 rule, in wall-clock time across daylight saving, stored once
per occurrence however many sweeps run, cancellable, and refused with the field named when
wrong."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from notifications.models import Event, Reminder
from notifications.services.api_keys import api_key_create
from notifications.services.reminders import reminder_create, reminders_run_due
from tests.notifications.factories import NotificationTypeFactory, RecipientFactory
from tests.notifications.test_scheduling_exactly_once import at_once


def _come_due(reminder_id: Any) -> None:
    Reminder.objects.filter(id=reminder_id).update(due_at=timezone.now())


def _post(service_client: Any, body: dict[str, Any]) -> Any:
    return service_client.post("/api/v1/reminders/", body, format="json")


def test_each_occurrence_becomes_one_event_in_each_recipients_local_time(service_client):
    nt = NotificationTypeFactory()
    alice = RecipientFactory(timezone="Asia/Tokyo")
    starts = (
        (timezone.now() + timedelta(days=2))
        .astimezone(UTC)
        .replace(tzinfo=None, hour=9, minute=0, second=0, microsecond=0)
    )
    response = _post(
        service_client,
        {
            "type": nt.key,
            "recipients": [alice.external_id],
            "data": {"order_id": 7},
            "rule": "FREQ=WEEKLY;COUNT=3",
            "starts_at": starts.isoformat(),
        },
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["status"], body["next_at"], body["sent"]) == ("active", starts.isoformat(), 0)
    reminder = Reminder.objects.get(id=body["id"])
    assert reminder.due_at == starts.replace(tzinfo=UTC) - timedelta(hours=14), (
        "when the first timezone reaches it"
    )

    assert reminders_run_due() == 0, "not due yet"
    for week in range(3):
        _come_due(reminder.id)
        assert reminders_run_due() == 1
        event = Event.objects.get(
            idempotency_key=f"reminder:{reminder.id}:{(starts + timedelta(weeks=week)).isoformat()}"
        )
        assert event.send_at_local == (starts + timedelta(weeks=week)).isoformat()
        assert event.recipient_ids == [alice.id] and event.data == {"order_id": 7}
    detail = service_client.get(f"/api/v1/reminders/{reminder.id}/").json()
    assert (detail["status"], detail["next_at"], detail["sent"]) == ("finished", None, 3), "COUNT=3"
    _come_due(reminder.id)
    assert reminders_run_due() == 0


def test_a_daily_reminder_in_a_timezone_keeps_its_wall_time_across_daylight_saving(api_key_row):
    nt = NotificationTypeFactory()
    alice = RecipientFactory()
    # 27-29 March 2027 in Paris: 09:00 is 08:00 UTC before the clocks change, 07:00 after.
    reminder = reminder_create(
        api_key=api_key_row,
        type_key=nt.key,
        rule="FREQ=DAILY;COUNT=3",
        starts_at=datetime(2027, 3, 27, 9, 0),
        recipients=[alice.external_id],
        data={"order_id": 1},
        timezone_name="Europe/Paris",
    )
    instants = []
    for _ in range(3):
        reminder.refresh_from_db()
        instants.append(reminder.due_at)
        _come_due(reminder.id)
        assert reminders_run_due() == 1
    assert instants == [
        datetime(2027, 3, 27, 8, 0, tzinfo=UTC),
        datetime(2027, 3, 28, 7, 0, tzinfo=UTC),
        datetime(2027, 3, 29, 7, 0, tzinfo=UTC),
    ]
    sends = sorted(  # type: ignore[type-var]
        Event.objects.filter(idempotency_key__startswith=f"reminder:{reminder.id}:").values_list(
            "send_at", flat=True
        )
    )
    assert sends == instants, "each event is for its occurrence's instant"


def test_occurrences_missed_while_nothing_ran_are_sent_once(api_key_row):
    nt = NotificationTypeFactory()
    alice = RecipientFactory()
    start = (timezone.now() + timedelta(hours=1)).astimezone(UTC).replace(tzinfo=None, microsecond=0)
    reminder = reminder_create(
        api_key=api_key_row,
        type_key=nt.key,
        rule="FREQ=HOURLY",
        starts_at=start,
        recipients=[alice.external_id],
        data={"order_id": 1},
        timezone_name="UTC",
    )
    # The platform was down for ten hours: the first occurrence is due, nine more passed.
    later = start + timedelta(hours=10)
    Reminder.objects.filter(id=reminder.id).update(due_at=timezone.now() - timedelta(hours=10))
    reminder.refresh_from_db()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            "notifications.services.reminders.timezone.now",
            lambda: later.replace(tzinfo=UTC) + timedelta(minutes=30),
        )
        assert reminders_run_due() == 1
    reminder.refresh_from_db()
    assert reminder.sent == 1
    assert reminder.next_at == (start + timedelta(hours=11)).isoformat(), "the first one still ahead"


@pytest.mark.django_db(transaction=True)
def test_two_sweeps_at_once_store_each_occurrence_once(api_key_row):
    nt = NotificationTypeFactory()
    alice = RecipientFactory()
    start = (timezone.now() + timedelta(hours=1)).astimezone(UTC).replace(tzinfo=None, microsecond=0)
    reminders = [
        reminder_create(
            api_key=api_key_row,
            type_key=nt.key,
            rule="FREQ=DAILY",
            starts_at=start,
            recipients=[alice.external_id],
            data={"order_id": n},
            timezone_name="UTC",
        )
        for n in range(30)
    ]
    Reminder.objects.update(due_at=timezone.now())

    stored = at_once(reminders_run_due)

    assert sum(stored) == len(reminders)
    assert Event.objects.filter(idempotency_key__startswith="reminder:").count() == len(reminders)
    assert set(Reminder.objects.values_list("sent", flat=True)) == {1}


def test_a_cancelled_reminder_stores_nothing_more(service_client, api_key_row):
    nt = NotificationTypeFactory()
    alice = RecipientFactory()
    start = (timezone.now() + timedelta(hours=1)).astimezone(UTC).replace(tzinfo=None, microsecond=0)
    reminder = reminder_create(
        api_key=api_key_row,
        type_key=nt.key,
        rule="FREQ=DAILY",
        starts_at=start,
        recipients=[alice.external_id],
        data={"order_id": 1},
    )
    assert service_client.delete(f"/api/v1/reminders/{reminder.id}/").status_code == 204
    assert service_client.delete(f"/api/v1/reminders/{reminder.id}/").status_code == 204, "again: no change"
    _come_due(reminder.id)
    assert reminders_run_due() == 0
    assert service_client.get(f"/api/v1/reminders/{reminder.id}/").json()["status"] == "cancelled"
    assert service_client.delete("/api/v1/reminders/0193a0f0-0000-7000-8000-000000000002/").status_code == 404


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"rule": "FREQ=MINUTELY"}, "rule", "at most hourly"),
        ({"rule": "FREQ=DAILY;INTERVAL=0"}, "rule", "INTERVAL must be a whole number of at least 1"),
        ({"rule": "FREQ=DAILY;INTERVAL=-2"}, "rule", "INTERVAL must be a whole number of at least 1"),
        ({"rule": "FREQ=SOMETIMES"}, "rule", "not an RFC 5545 RRULE"),
        ({"rule": "DTSTART:20270101T090000\nRRULE:FREQ=DAILY"}, "rule", "only the RRULE itself"),
        ({"rule": "FREQ=DAILY;UNTIL=20200101T000000"}, "rule", "no occurrence of it is still ahead"),
        ({"starts_at": "2027-01-01T09:00+01:00"}, "starts_at", "no offset"),
        ({"starts_at": "next monday"}, "starts_at", "expected a date and time"),
        ({"timezone": "Mars/Olympus"}, "timezone", "unknown timezone"),
        ({"type": "no-such-type"}, "type", "unknown notification type"),
        ({"recipients": ["nobody-here"]}, "recipients", "unknown recipients"),
        ({"topic": "news"}, "recipients", "not both"),
    ],
)
def test_a_bad_reminder_is_refused_naming_the_field(
    service_client: Any, change: dict[str, Any], field: str, message: str
) -> None:
    nt = NotificationTypeFactory()
    alice = RecipientFactory()
    body = {
        "type": nt.key,
        "recipients": [alice.external_id],
        "rule": "FREQ=DAILY",
        "starts_at": "2027-01-01T09:00",
        **change,
    }
    response = _post(service_client, body)
    assert response.status_code == 400, response.content
    assert message in " ".join(response.json()["errors"][field])
    assert not Reminder.objects.exists()


@pytest.fixture
def api_key_row(db: Any) -> Any:
    return api_key_create(name="reminders")[0]


def test_staff_see_reminders_and_cancel_them_in_the_admin(admin_client: Any, api_key_row: Any) -> None:
    nt = NotificationTypeFactory()
    alice = RecipientFactory()
    start = (timezone.now() + timedelta(hours=1)).astimezone(UTC).replace(tzinfo=None, microsecond=0)
    reminder = reminder_create(
        api_key=api_key_row,
        type_key=nt.key,
        rule="FREQ=WEEKLY;BYDAY=MO",
        starts_at=start,
        recipients=[alice.external_id],
        data={"order_id": 1},
    )
    page = admin_client.get("/admin/notifications/reminder/")
    assert page.status_code == 200 and b"FREQ=WEEKLY;BYDAY=MO" in page.content
    assert admin_client.get(f"/admin/notifications/reminder/{reminder.id}/change/").status_code == 200

    response = admin_client.post(
        "/admin/notifications/reminder/",
        {"action": "cancel", "_selected_action": [str(reminder.id)]},
        follow=True,
    )
    assert b"1 reminder(s) cancelled." in response.content
    reminder.refresh_from_db()
    assert reminder.status == "cancelled"
