from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone

from notifications.models import AggregationBatch, Delivery, DeliverySchedule, InboxItem, OutboxMessage
from notifications.services.api_keys import api_key_create
from notifications.services.fanout import event_fanout
from notifications.services.ingest import event_ingest
from notifications.services.scheduling import deliveries_release_due
from project.processes.waiting import wait_until
from tests.notifications.factories import NotificationTypeFactory, RecipientFactory

pytestmark = pytest.mark.django_db

LIKE = {
    "title": "{{ data.actor }}{% if aggregate.others %} and {{ aggregate.others }} others{% endif %} liked your photo",
    "body": "",
    "url": "",
}
# Who liked, named from each event's data.actor, each once.
NAMED = {"title": "{{ aggregate.actors|join(', ') }}: {{ aggregate.count }} likes", "body": "", "url": ""}


def _like(key: Any, capture: Any, type_key: str, recipient: str, actor: str) -> None:
    with capture(execute=True):
        event_ingest(api_key=key, type_key=type_key, recipients=[recipient], data={"actor": actor})


def test_it_collapses_events_within_the_window_into_one_delivery(django_capture_on_commit_callbacks):
    key = api_key_create(name="agg")[0]
    likes = NotificationTypeFactory(category="social", aggregation_window_seconds=60, inapp_template=LIKE)
    alice, bob = RecipientFactory(), RecipientFactory()
    for actor in ("Ana", "Ben", "Cy"):
        _like(key, django_capture_on_commit_callbacks, likes.key, alice.external_id, actor)
    _like(key, django_capture_on_commit_callbacks, likes.key, bob.external_id, "Dee")

    leaders = Delivery.objects.filter(reason="aggregating", status="scheduled")
    assert leaders.count() == 2
    members = Delivery.objects.filter(recipient=alice, status="suppressed")
    assert members.count() == 2 and all(m.reason.startswith("aggregated into delivery") for m in members)
    assert AggregationBatch.objects.get(recipient=alice).count == 3
    assert InboxItem.objects.count() == 0

    DeliverySchedule.objects.filter(delivery__in=leaders).update(due_at=timezone.now() - timedelta(seconds=1))
    with django_capture_on_commit_callbacks(execute=True):
        assert deliveries_release_due() == 2

    assert InboxItem.objects.get(recipient=alice).title == "Ana and 2 others liked your photo"
    assert InboxItem.objects.get(recipient=bob).title == "Dee liked your photo"
    leader = Delivery.objects.get(recipient=alice, status="delivered")
    assert leader.aggregate_count == 3
    assert AggregationBatch.objects.get(recipient=alice).closed_at is not None

    # After the window closed, the next like starts a new batch.
    _like(key, django_capture_on_commit_callbacks, likes.key, alice.external_id, "Eve")
    assert AggregationBatch.objects.filter(recipient=alice, closed_at__isnull=True).count() == 1


def _scheduled_like(key: Any, type_key: str, recipient: str, actor: str, **extra: Any) -> Any:
    """A like stored for later, so that the test runs its fan-out when it wants."""
    later = timezone.now() + timedelta(hours=1)
    return event_ingest(
        api_key=key, type_key=type_key, recipients=[recipient], data={"actor": actor}, send_at=later, **extra
    ).event


def _release_all(capture: Any) -> int:
    DeliverySchedule.objects.update(due_at=timezone.now() - timedelta(seconds=1))
    with capture(execute=True):
        return deliveries_release_due()


def _waiting_on_a_lock() -> bool:
    with connection.cursor() as db:
        db.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        row = db.fetchone()
    return bool(row and row[0])


@pytest.mark.django_db(transaction=True)
def test_two_likes_fanned_out_at_once_make_one_message_that_counts_and_names_both():
    """Neither page sees the other's batch (neither has committed), so both plan a leader;
    the second waits on the first's batch row, is counted into it and becomes a member."""
    key = api_key_create(name="agg-race")[0]
    likes = NotificationTypeFactory(category="social", aggregation_window_seconds=60, inapp_template=NAMED)
    alice = RecipientFactory()
    first_like = _scheduled_like(key, likes.key, alice.external_id, "Ana")
    second_like = _scheduled_like(key, likes.key, alice.external_id, "Ben")
    outboxes = [OutboxMessage.objects.get(event_id=e.id).id for e in (first_like, second_like)]
    stored, release = threading.Event(), threading.Event()

    def first() -> None:
        try:
            with transaction.atomic():
                event_fanout(outbox_id=outboxes[0])
                stored.set()
                release.wait(10)
        finally:
            connection.close()

    def second() -> None:
        try:
            event_fanout(outbox_id=outboxes[1])
        finally:
            connection.close()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    assert stored.wait(10)
    threads[1].start()
    wait_until(_waiting_on_a_lock, 10, message="the second page never waited for the first's batch")
    release.set()
    for thread in threads:
        thread.join(10)

    leader = Delivery.objects.get(event_id=first_like.id)
    member = Delivery.objects.get(event_id=second_like.id)
    assert (leader.status, leader.reason) == ("scheduled", "aggregating")
    assert (member.status, member.reason) == ("suppressed", f"aggregated into delivery {leader.id}")
    batch = AggregationBatch.objects.get(recipient=alice)
    assert batch.count == 2 and [s["actor"] for s in batch.samples] == ["Ana", "Ben"]
    assert list(DeliverySchedule.objects.values_list("delivery_id", flat=True)) == [leader.id]


def test_a_like_after_the_window_but_before_the_release_goes_out_with_the_batch(
    django_capture_on_commit_callbacks,
):
    key = api_key_create(name="agg-late")[0]
    likes = NotificationTypeFactory(category="social", aggregation_window_seconds=60, inapp_template=NAMED)
    alice = RecipientFactory()
    _like(key, django_capture_on_commit_callbacks, likes.key, alice.external_id, "Ana")
    AggregationBatch.objects.update(
        closes_at=timezone.now() - timedelta(seconds=5)
    )  # window over, not released
    _like(key, django_capture_on_commit_callbacks, likes.key, alice.external_id, "Ben")
    _like(key, django_capture_on_commit_callbacks, likes.key, alice.external_id, "Ana")

    assert _release_all(django_capture_on_commit_callbacks) == 1
    assert InboxItem.objects.get(recipient=alice).title == "Ana, Ben: 3 likes"
    assert Delivery.objects.get(recipient=alice, status="delivered").aggregate_count == 3


def test_a_replayed_like_or_a_fan_out_run_again_counts_nothing(django_capture_on_commit_callbacks):
    key = api_key_create(name="agg-dup")[0]
    likes = NotificationTypeFactory(category="social", aggregation_window_seconds=60, inapp_template=NAMED)
    alice = RecipientFactory()
    for _ in range(2):  # the same idempotency key twice: one event
        with django_capture_on_commit_callbacks(execute=True):
            event_ingest(
                api_key=key,
                type_key=likes.key,
                recipients=[alice.external_id],
                data={"actor": "Ana"},
                idempotency_key="like-1",
            )
    _like(key, django_capture_on_commit_callbacks, likes.key, alice.external_id, "Ben")
    for event_id in Delivery.objects.values_list("event_id", flat=True):
        event_fanout(outbox_id=OutboxMessage.objects.get(event_id=event_id).id)  # a task delivered twice

    assert AggregationBatch.objects.get(recipient=alice).count == 2
    assert _release_all(django_capture_on_commit_callbacks) == 1
    assert InboxItem.objects.get(recipient=alice).title == "Ana, Ben: 2 likes"
