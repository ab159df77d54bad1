"""Daily and weekly digests (notifications/services/digests.py): a category gathered into a
digest is not emailed one by one; at the recipient's local digest time one email lists
what they left unread; two sweeps never send one twice; missed digests go out once."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from notifications.models import Delivery, DigestRun, DigestSetting, Event, InboxItem
from notifications.services.api_keys import api_key_create
from notifications.services.catalog import notification_type_save
from notifications.services.digests import DIGEST_TEMPLATES, digest_due_after, digests_run_due
from notifications.services.ingest import event_ingest
from notifications.services.templating import template_render
from tests.notifications.factories import RecipientFactory

pytestmark = pytest.mark.django_db


def _social_type() -> Any:
    return notification_type_save(
        key=f"social.like.{DigestSetting.objects.count()}.{Event.objects.count()}",
        fields={"category": "social", "channels": ["inapp", "email"]},
        templates={
            "inapp": {"title": "{{ data.actor }} liked your photo", "body": "", "url": "/photos/1"},
            "email": {"subject": "{{ data.actor }} liked your photo", "text": "Liked"},
        },
    )


def _like(capture: Any, type_key: str, recipients: list[Any], actor: str) -> Event:
    key = api_key_create(name="digests")[0]
    with capture(execute=True):
        return event_ingest(
            api_key=key,
            type_key=type_key,
            recipients=[r.external_id for r in recipients],
            data={"actor": actor},
        ).event


def test_a_category_gathered_into_a_digest_keeps_its_in_app_copy_and_is_not_emailed(
    django_capture_on_commit_callbacks,
):
    likes = _social_type()
    alice = RecipientFactory(email="alice@example.com")
    bob = RecipientFactory(email="bob@example.com")
    DigestSetting.objects.create(recipient=alice, category="social", frequency="daily")

    event = _like(django_capture_on_commit_callbacks, likes.key, [alice, bob], "Ana")

    rows = {(d.recipient_id, d.channel): d for d in Delivery.objects.filter(event=event)}
    assert (rows[(alice.id, "email")].status, rows[(alice.id, "email")].reason) == (
        "suppressed",
        "in the daily digest",
    )
    assert rows[(alice.id, "inapp")].status == "delivered"
    assert rows[(bob.id, "email")].status != "suppressed"


@pytest.mark.parametrize(
    ("frequency", "zone", "after", "expected"),
    [
        ("daily", "Europe/Paris", "2026-03-28T07:30:00+00:00", "2026-03-29T06:00:00+00:00"),  # CET then CEST
        ("daily", "Europe/Paris", "2026-03-28T06:59:00+00:00", "2026-03-28T07:00:00+00:00"),
        (
            "daily",
            "America/New_York",
            "2026-11-01T12:00:00+00:00",
            "2026-11-01T13:00:00+00:00",
        ),  # 08:00 EST, the day EDT ends
        (
            "weekly",
            "Asia/Tokyo",
            "2026-12-01T00:00:00+00:00",
            "2026-12-06T23:00:00+00:00",
        ),  # Monday 08:00 JST
        ("daily", "Not/AZone", "2026-12-01T09:00:00+00:00", "2026-12-02T08:00:00+00:00"),  # UTC
    ],
    ids=[
        "paris-spring-forward",
        "paris-same-day",
        "new-york-fall-back",
        "tokyo-weekly-monday",
        "unknown-zone",
    ],
)
def test_the_digest_time_is_the_local_time_in_the_recipients_timezone(frequency, zone, after, expected):
    due = digest_due_after(frequency=frequency, timezone_name=zone, after=datetime.fromisoformat(after))
    assert due == datetime.fromisoformat(expected)


def test_a_digest_time_the_clocks_skip_moves_forward_by_the_skip(settings):
    settings.DIGEST_LOCAL_TIME = "02:30"
    due = digest_due_after(
        frequency="daily", timezone_name="Europe/Paris", after=datetime(2026, 3, 28, 12, 0, tzinfo=UTC)
    )
    assert due == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)  # 03:30 CEST


def _due_now(setting: DigestSetting) -> datetime:
    """Make the setting's digest due a moment from now; returns a time just after it."""
    due = timezone.now() + timedelta(seconds=1)
    DigestSetting.objects.filter(id=setting.id).update(next_at=due)
    return due + timedelta(seconds=1)


def test_the_digest_lists_only_what_was_left_unread_and_the_next_one_is_a_day_later(
    django_capture_on_commit_callbacks,
):
    likes = _social_type()
    alice = RecipientFactory(email="alice@example.com", timezone="America/New_York")
    setting = DigestSetting.objects.create(recipient=alice, category="social", frequency="daily")
    for actor in ("Ana", "Ben", "Cy"):
        _like(django_capture_on_commit_callbacks, likes.key, [alice], actor)
    InboxItem.objects.filter(recipient=alice, title__startswith="Ben").update(read_at=timezone.now())
    InboxItem.objects.filter(recipient=alice, title__startswith="Cy").update(archived_at=timezone.now())

    assert digests_run_due() == 0, "the first sweep only schedules it"
    setting.refresh_from_db()
    assert setting.next_at is not None and setting.next_at > timezone.now()
    now = _due_now(setting)
    with django_capture_on_commit_callbacks(execute=True):
        assert digests_run_due(now=now) == 1

    run = DigestRun.objects.get(recipient=alice)
    assert (run.category, run.frequency, run.item_count) == ("social", "daily", 1)
    assert run.event_id is not None
    digest = Event.objects.get(id=run.event_id)
    assert digest.notification_type.key == "platform.digest"
    assert [entry["title"] for entry in digest.data["entries"]] == ["Ana liked your photo"]
    assert digest.data["entries"][0]["url"].endswith("/photos/1") and digest.data["entries"][0][
        "url"
    ].startswith("http")
    setting.refresh_from_db()
    assert setting.next_at == digest_due_after(frequency="daily", timezone_name="America/New_York", after=now)
    assert digests_run_due(now=now) == 0

    text = template_render(source=DIGEST_TEMPLATES["email"]["text"], context={"data": digest.data})
    assert text.startswith("1 unread social notification:\n- Ana liked your photo http")
    subject = template_render(source=DIGEST_TEMPLATES["email"]["subject"], context={"data": digest.data})
    assert subject == "Your daily digest: 1 unread social notification"
    html = template_render(
        source=DIGEST_TEMPLATES["email"]["html"], context={"data": {**digest.data, "more": 4}}, html=True
    )
    assert "<a href=" in html and "and 4 more in your inbox" in html


def test_nothing_unread_sends_nothing_and_missed_digests_go_out_once(django_capture_on_commit_callbacks):
    likes = _social_type()
    alice = RecipientFactory(email="alice@example.com")
    setting = DigestSetting.objects.create(
        recipient=alice, category="social", frequency="daily", next_at=timezone.now() - timedelta(days=3)
    )
    assert digests_run_due() == 1
    assert DigestRun.objects.get(recipient=alice).event_id is None
    setting.refresh_from_db()
    assert setting.next_at is not None and setting.next_at > timezone.now(), "three missed days: one run"

    _like(django_capture_on_commit_callbacks, likes.key, [alice], "Ana")
    with django_capture_on_commit_callbacks(execute=True):
        assert digests_run_due(now=_due_now(setting)) == 1
    assert DigestRun.objects.filter(recipient=alice, event_id__isnull=False).count() == 1


@pytest.mark.django_db(transaction=True)
def test_two_sweeps_at_once_send_one_digest():
    likes = _social_type()
    alice = RecipientFactory(email="alice@example.com")
    key = api_key_create(name="digests")[0]
    event_ingest(api_key=key, type_key=likes.key, recipients=[alice.external_id], data={"actor": "Ana"})
    setting = DigestSetting.objects.create(recipient=alice, category="social", frequency="daily")
    now = _due_now(setting)
    start = threading.Barrier(2)
    handled: list[int] = []

    def sweep() -> None:
        try:
            start.wait(5)
            handled.append(digests_run_due(now=now))
        finally:
            connection.close()

    threads = [threading.Thread(target=sweep) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)

    assert sorted(handled) == [0, 1]
    assert DigestRun.objects.count() == 1
    assert Event.objects.filter(notification_type__key="platform.digest").count() == 1
    # The same period claimed again (a sweep whose setting row was not yet moved on): refused.
    DigestSetting.objects.filter(id=setting.id).update(next_at=DigestRun.objects.get().period_end)
    assert digests_run_due(now=now) == 0
    assert Event.objects.filter(notification_type__key="platform.digest").count() == 1
