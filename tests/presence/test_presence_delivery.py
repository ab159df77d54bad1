"""Presence-aware delivery: a type's ``when_active`` holds back email, SMS and push for a
user online in the app, who sees the in-app copy (notifications/services/planning.py)."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.utils import timezone
from rest_framework.test import APIClient

from notifications.models import Category, Delivery, DeliveryStatus
from notifications.services.planning import ACTIVE_IN_APP, RecipientFacts, plan_page
from notifications.services.sending.claim import Claimed
from notifications.services.sending.prepare import READ_IN_APP, jobs_prepare
from realtime.redis_client import redis_async
from realtime.registry import connection_activity, connection_register
from tests.notifications.factories import NotificationTypeFactory
from tests.notifications.test_consumers import inbox_items_create, recipient_create

pytestmark = pytest.mark.django_db


def _tab(recipient_id: int, state: str) -> None:
    """An open tab of the recipient, active or idle, as the inbox socket registers it."""

    async def register() -> None:
        client = redis_async()
        await connection_register(client, recipient_id=recipient_id, connection=f"tab-{recipient_id}")
        await connection_activity(
            client, recipient_id=recipient_id, connection=f"tab-{recipient_id}", state=state
        )

    async_to_sync(register)()


def _people() -> tuple[RecipientFacts, RecipientFacts, RecipientFacts]:
    """Three recipients (ids no parallel run shares): online, idle in the app, offline."""
    active, idle, away = (RecipientFacts(random.randint(10**12, 2**62), "UTC", None, None) for _ in range(3))
    _tab(active.id, "active")
    _tab(idle.id, "idle")
    return active, idle, away


Plan = tuple[tuple[RecipientFacts, RecipientFacts, RecipientFacts], dict[tuple[int, str], Any]]


def _plan(when_active: str, **fields: Any) -> Plan:
    """(the online, idle and offline recipients, their rows by (recipient, channel))."""
    nt = NotificationTypeFactory(channels=["inapp", "push", "email"], when_active=when_active, **fields)
    people = _people()
    rows = plan_page(notification_type=nt, recipients=list(people), now=NOW)
    return people, {(row.recipient_id, row.channel): row for row in rows}


NOW = timezone.now()


def test_skip_keeps_email_and_push_from_a_user_online_in_the_app_only() -> None:
    (active, idle, away), plan = _plan("skip")
    for channel in ("push", "email"):
        assert (plan[(active.id, channel)].status, plan[(active.id, channel)].reason) == (
            "suppressed",
            ACTIVE_IN_APP,
        )
        assert plan[(idle.id, channel)].status == "pending"
        assert plan[(away.id, channel)].status == "pending"
    assert {plan[(person.id, "inapp")].status for person in (active, idle, away)} == {"pending"}


def test_delay_schedules_email_and_push_of_a_user_online_in_the_app() -> None:
    (active, idle, _away), plan = _plan("delay:300")
    row = plan[(active.id, "push")]
    assert (row.status, row.reason, row.due_at) == ("scheduled", ACTIVE_IN_APP, NOW + timedelta(seconds=300))
    assert plan[(idle.id, "push")].status == "pending"


def test_send_and_critical_types_go_out_as_usual() -> None:
    for (active, _idle, _away), plan in (_plan("send"), _plan("skip", category=Category.CRITICAL)):
        assert plan[(active.id, "push")].status == "pending"


@pytest.mark.parametrize("value", ["later", "delay:0", "delay:86401", "delay:-5", "skip "])
def test_the_api_names_a_when_active_it_cannot_take(service_client: APIClient, value: str) -> None:
    response = service_client.post(
        "/api/v1/notification-types/",
        {
            "key": "presence.when-active",
            "category": "social",
            "channels": ["inapp"],
            "templates": {"inapp": {"title": "t", "body": "b", "url": ""}},
            "when_active": value,
        },
        format="json",
    )
    assert response.status_code == 400 and "when_active" in response.json()["errors"]


def test_the_api_stores_and_shows_when_active(service_client: APIClient) -> None:
    body = {
        "key": "presence.when-active",
        "category": "social",
        "channels": ["inapp", "push"],
        "templates": {"inapp": {"title": "t", "body": "b", "url": ""}, "push": {"title": "t", "body": "b"}},
        "when_active": "delay:60",
    }
    created = service_client.post("/api/v1/notification-types/", body, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["when_active"] == "delay:60"
    shown = service_client.get("/api/v1/notification-types/presence.when-active/")
    assert shown.json()["when_active"] == "delay:60"


def test_a_user_opted_out_of_the_first_channel_is_still_held_back_on_the_next() -> None:
    from notifications.models import Preference
    from tests.notifications.factories import RecipientFactory

    nt = NotificationTypeFactory(channels=["inapp", "push", "email"], when_active="skip")
    person = RecipientFactory(id=random.randint(10**12, 2**62))
    _tab(person.id, "active")
    Preference.objects.create(recipient=person, channel="push", enabled=False)
    # Someone offline first on the page, so that push (the first channel held back) has
    # candidates without her.
    page = [
        RecipientFacts(random.randint(10**12, 2**62), "UTC", None, None),
        RecipientFacts(person.id, "UTC", None, None),
    ]
    rows = {(r.recipient_id, r.channel): r for r in plan_page(notification_type=nt, recipients=page, now=NOW)}
    assert rows[(person.id, "push")].reason == "preference: opted out"
    assert (rows[(person.id, "email")].status, rows[(person.id, "email")].reason) == (
        "suppressed",
        ACTIVE_IN_APP,
    )


def _held_push(read: bool) -> Claimed:
    """A push held back while its user was active in the app, now due, and the in-app
    copy of the same event, read or not."""
    recipient = recipient_create()
    (item,) = inbox_items_create(recipient, [1], read={1} if read else set())
    push = Delivery.objects.create(
        event=item.event,
        recipient=recipient,
        channel="push",
        status=DeliveryStatus.PENDING,
        reason=ACTIVE_IN_APP,
    )
    return Claimed(push.id, item.event_id, recipient.id, "push", 1, 0, 1)


def test_a_held_back_send_is_dropped_when_due_if_the_in_app_copy_was_read_meanwhile() -> None:
    read, unread = _held_push(read=True), _held_push(read=False)

    jobs = {job.claimed.id: job for job in jobs_prepare([read, unread])}

    assert (jobs[read.id].verdict, jobs[read.id].reason) == ("suppressed", READ_IN_APP)
    assert jobs[unread.id].reason != READ_IN_APP  # it goes on to be sent (here: no push template)
