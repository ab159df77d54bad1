"""Events in bulk (POST /api/v1/events/bulk/, README.md, "The public contract (v1)") through Django's test
client, with the fan-out tasks run eagerly: per-item results in input order, partial
failure, idempotency per item, the limits, and small events fanned out together."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import override_settings

from notifications.models import Delivery, Event, InboxItem, OutboxMessage
from notifications.services.fanout import events_fanout_many
from tests.notifications.factories import NotificationTypeFactory, RecipientFactory

pytestmark = pytest.mark.django_db

BULK = "/api/v1/events/bulk/"


def _post(client: Any, events: list[Any], capture: Any) -> Any:
    with capture(execute=True):
        return client.post(BULK, {"events": events}, format="json")


def test_it_accepts_each_event_and_delivers_it_in_app_answering_in_input_order(
    service_client, django_capture_on_commit_callbacks
):
    nt = NotificationTypeFactory()
    users = [RecipientFactory() for _ in range(3)]
    events = [
        {"type": nt.key, "recipients": [user.external_id], "data": {"order_id": n}}
        for n, user in enumerate(users)
    ]

    response = _post(service_client, events, django_capture_on_commit_callbacks)

    assert response.status_code == 200, response.content
    results = response.json()["results"]
    assert [(r["index"], r["status"]) for r in results] == [(0, "accepted"), (1, "accepted"), (2, "accepted")]
    stored = {str(e.id): e for e in Event.objects.all()}
    assert set(stored) == {r["id"] for r in results}
    for result, user in zip(results, users, strict=True):
        assert stored[result["id"]].status == "completed" and stored[result["id"]].planned_count == 1
        item = InboxItem.objects.get(event_id=result["id"])
        assert item.recipient_id == user.id and item.title == f"Order {result['index']}"
    assert set(Delivery.objects.values_list("status", flat=True)) == {"delivered"}
    assert not OutboxMessage.objects.filter(processed_at__isnull=True).exists()


def test_one_bad_item_never_rejects_or_half_stores_the_others(
    service_client, django_capture_on_commit_callbacks
):
    nt = NotificationTypeFactory()
    alice = RecipientFactory()
    events = [
        {"type": nt.key, "recipients": [alice.external_id], "data": {"order_id": 1}},
        {"type": "no.such.type", "recipients": [alice.external_id]},
        {"type": nt.key, "recipients": ["ghost"]},
        {"type": nt.key},
        {"type": nt.key, "topic": "no-such-topic"},
        {"type": nt.key, "recipients": [alice.external_id], "data": "not an object"},
        {"type": nt.key, "recipients": [alice.external_id], "colour": "red"},
        {"type": nt.key, "recipients": [alice.external_id], "data": {"order_id": 2}},
    ]

    results = _post(service_client, events, django_capture_on_commit_callbacks).json()["results"]

    assert [r["status"] for r in results] == ["accepted"] + ["error"] * 6 + ["accepted"]
    named = [next(iter(r["errors"])) for r in results[1:7]]
    assert named == ["type", "recipients", "recipients", "topic", "data", "colour"]
    assert "no.such.type" in results[1]["errors"]["type"][0]
    assert "ghost" in results[2]["errors"]["recipients"][0]
    assert Event.objects.count() == 2 and OutboxMessage.objects.count() == 2
    assert InboxItem.objects.filter(recipient=alice).count() == 2


def test_each_item_is_idempotent_on_its_own_here_and_across_calls(
    service_client, django_capture_on_commit_callbacks
):
    nt = NotificationTypeFactory()
    alice = RecipientFactory()
    body = {
        "type": nt.key,
        "recipients": [alice.external_id],
        "data": {"order_id": 1},
        "idempotency_key": "k-1",
    }
    other = {**body, "data": {"order_id": 9}}

    first = _post(service_client, [body, body, other], django_capture_on_commit_callbacks).json()["results"]
    again = _post(service_client, [other, body], django_capture_on_commit_callbacks).json()["results"]
    single = service_client.post("/api/v1/events/", body, format="json")

    assert [r["status"] for r in first] == ["accepted", "duplicate", "error"]
    assert first[1]["id"] == first[0]["id"]
    assert "index 0" in first[2]["errors"]["idempotency_key"][0]
    assert [r["status"] for r in again] == ["error", "duplicate"]
    assert again[1]["id"] == first[0]["id"] and first[0]["id"] in again[0]["errors"]["idempotency_key"][0]
    assert (single.status_code, single.json()["id"]) == (200, first[0]["id"])
    assert Event.objects.count() == 1 and InboxItem.objects.filter(recipient=alice).count() == 1


def test_it_refuses_1001_events_naming_the_limit_and_stores_nothing(service_client):
    nt = NotificationTypeFactory()
    alice = RecipientFactory()
    events = [{"type": nt.key, "recipients": [alice.external_id], "data": {"order_id": 1}}] * 1001

    response = service_client.post(BULK, {"events": events}, format="json")

    assert response.status_code == 400
    assert response.json()["errors"]["events"] == ["at most 1000 events per call"]
    assert not Event.objects.exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [({}, "events"), ({"events": "x"}, "events"), ({"events": [1]}, "events"), ({"events": [], "x": 1}, "x")],
)
def test_it_refuses_a_body_that_is_not_a_list_of_event_objects(service_client, body, field):
    response = service_client.post(BULK, body, format="json")

    assert response.status_code == 400 and field in response.json()["errors"]


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=4096)
def test_it_refuses_a_body_over_the_size_limit_with_a_clear_error(service_client):
    nt = NotificationTypeFactory()
    alice = RecipientFactory()
    events = [{"type": nt.key, "recipients": [alice.external_id], "data": {"pad": "x" * 100}}] * 100

    response = service_client.post(BULK, {"events": events}, format="json")

    assert response.status_code == 413
    assert "4096" in str(response.json()["errors"])
    assert not Event.objects.exists()


def test_it_fans_out_many_small_events_in_one_transaction_with_few_queries(
    service_client, django_capture_on_commit_callbacks, django_assert_max_num_queries
):
    nt = NotificationTypeFactory()
    users = [RecipientFactory() for _ in range(50)]
    events = [
        {"type": nt.key, "recipients": [u.external_id], "data": {"order_id": n}} for n, u in enumerate(users)
    ]
    with django_capture_on_commit_callbacks(execute=False):
        results = service_client.post(BULK, {"events": events}, format="json").json()["results"]
    outbox_ids = list(OutboxMessage.objects.values_list("id", flat=True))

    with django_assert_max_num_queries(30):
        progress = events_fanout_many(outbox_ids=outbox_ids)

    assert progress.recipients == 50 and progress.finished
    assert InboxItem.objects.count() == 50
    # and a second run finds nothing to do, so it stores nothing twice
    assert events_fanout_many(outbox_ids=outbox_ids).recipients == 0
    assert InboxItem.objects.count() == 50 and Delivery.objects.count() == 50
    assert {str(e) for e in InboxItem.objects.values_list("event_id", flat=True)} == {
        r["id"] for r in results
    }


def test_a_recipient_in_several_small_events_gets_each_and_rate_caps_count_each(
    service_client, django_capture_on_commit_callbacks, settings
):
    settings.RATE_CAPS = {**settings.RATE_CAPS, "inapp": "2/3600"}
    from notifications.services.ratelimits import rate_cap

    rate_cap.cache_clear()
    try:
        nt = NotificationTypeFactory()
        alice = RecipientFactory()
        events = [
            {"type": nt.key, "recipients": [alice.external_id], "data": {"order_id": n}} for n in range(3)
        ]

        results = _post(service_client, events, django_capture_on_commit_callbacks).json()["results"]
    finally:
        rate_cap.cache_clear()

    assert [r["status"] for r in results] == ["accepted"] * 3
    statuses = sorted(Delivery.objects.filter(recipient=alice).values_list("status", flat=True))
    assert statuses == ["delivered", "delivered", "suppressed"]
