from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from notifications.models import AggregationBatch, Delivery, DeliverySchedule, InboxItem
from notifications.services.api_keys import api_key_create
from notifications.services.ingest import event_ingest
from notifications.services.scheduling import deliveries_release_due
from tests.notifications.factories import NotificationTypeFactory, RecipientFactory

pytestmark = pytest.mark.django_db

LIKE = {
    "title": "{{ data.actor }}{% if aggregate.others %} and {{ aggregate.others }} others{% endif %} liked your photo",
    "body": "",
    "url": "",
}


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
