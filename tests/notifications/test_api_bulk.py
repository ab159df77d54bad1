"""Bulk recipients (POST /api/v1/recipients/bulk/, README.md, "The public contract (v1)") and topic
subscription of many recipients at once, through Django's test client."""

from __future__ import annotations

from typing import Any

import pytest

from notifications.models import Recipient, Subscription, Topic
from notifications.services.recipients import recipients_bulk_upsert
from tests.notifications.factories import RecipientFactory

pytestmark = pytest.mark.django_db

BULK = "/api/v1/recipients/bulk/"


def _errors(response: Any) -> dict[str, Any]:
    return response.json()["errors"]


def test_it_creates_and_updates_recipients_and_answers_per_item_in_input_order(service_client):
    RecipientFactory(external_id="u-2", name="Old", email="old@example.com")
    body = {
        "recipients": [
            {"external_id": "u-1", "phone": "+1 415 555 2671", "timezone": "Europe/Lisbon"},
            {"external_id": "u-2", "name": "New"},
            {"external_id": "u-3", "phone": "12345"},
        ]
    }

    response = service_client.post(BULK, body, format="json")

    assert response.status_code == 200
    results = response.json()["results"]
    assert results[0] == {"index": 0, "status": "created", "id": "u-1"}
    assert results[1] == {"index": 1, "status": "updated", "id": "u-2"}
    assert results[2]["index"] == 2 and results[2]["status"] == "error"
    assert "12345" in results[2]["errors"]["phone"][0]
    created = Recipient.objects.get(external_id="u-1")
    assert (created.phone, created.timezone, created.locale) == ("+14155552671", "Europe/Lisbon", "en")
    updated = Recipient.objects.get(external_id="u-2")
    assert (updated.name, updated.email) == ("New", "old@example.com")
    assert not Recipient.objects.filter(external_id="u-3").exists()


def test_it_refuses_a_repeated_external_id_in_the_later_item_only(service_client):
    body = {
        "recipients": [{"external_id": "twin", "name": "First"}, {"external_id": "twin", "name": "Second"}]
    }

    results = service_client.post(BULK, body, format="json").json()["results"]

    assert results[0] == {"index": 0, "status": "created", "id": "twin"}
    assert results[1]["status"] == "error" and "index 0" in results[1]["errors"]["external_id"][0]
    assert Recipient.objects.get(external_id="twin").name == "First"


@pytest.mark.parametrize(
    ("item", "field"),
    [
        ({"name": "no id"}, "external_id"),
        ({"external_id": 7}, "external_id"),
        ({"external_id": "x" * 201}, "external_id"),
        ({"external_id": "team/alice"}, "external_id"),
        ({"external_id": "ok", "nickname": "x"}, "nickname"),
        ({"external_id": "ok", "name": 5}, "name"),
        ({"external_id": "ok", "timezone": "Mars/Olympus"}, "timezone"),
        ({"external_id": "ok", "name": "nul\x00"}, "name"),
    ],
)
def test_it_names_what_is_wrong_with_a_bad_item_and_stores_the_others(service_client, item, field):
    body = {"recipients": [item, {"external_id": "fine"}]}

    response = service_client.post(BULK, body, format="json")

    assert response.status_code == 200
    bad, good = response.json()["results"]
    assert bad["status"] == "error" and field in bad["errors"], bad
    assert good == {"index": 1, "status": "created", "id": "fine"}
    assert list(Recipient.objects.values_list("external_id", flat=True)) == ["fine"]


@pytest.mark.parametrize(
    "body",
    [
        {"recipients": [{"external_id": f"u-{i}"} for i in range(1001)]},
        {"recipients": {"external_id": "u-1"}},
        {"recipients": [{"external_id": "u-1"}, "u-2"]},
        {"people": [{"external_id": "u-1"}]},
        [{"external_id": "u-1"}],
        {},
    ],
)
def test_it_refuses_a_body_that_is_not_up_to_1000_recipients_as_a_whole(service_client, body):
    response = service_client.post(BULK, body, format="json")

    assert response.status_code == 400 and _errors(response)
    assert not Recipient.objects.exists()


def test_it_upserts_1000_recipients_in_a_fixed_number_of_queries(
    service_client, django_assert_max_num_queries
):
    Recipient.objects.bulk_create([Recipient(external_id=f"u-{i}", name="Old") for i in range(0, 1000, 2)])
    items = [{"external_id": f"u-{i}", "name": f"User {i}", "locale": "pt-BR"} for i in range(1000)]
    # One item with another set of fields: one more INSERT, still no query per recipient.
    items[7] = {"external_id": "u-7", "email": "seven@example.com"}

    with django_assert_max_num_queries(8):
        response = service_client.post(BULK, {"recipients": items}, format="json")

    statuses = [result["status"] for result in response.json()["results"]]
    assert statuses == ["updated" if i % 2 == 0 else "created" for i in range(1000)]
    assert Recipient.objects.count() == 1000
    assert Recipient.objects.get(external_id="u-998").name == "User 998"
    assert Recipient.objects.get(external_id="u-7").email == "seven@example.com"


def test_it_leaves_existing_recipients_unchanged_for_an_item_without_fields():
    RecipientFactory(external_id="kept", name="Kept")

    results = recipients_bulk_upsert(items=[{"external_id": "kept"}, {"external_id": "new"}])

    assert [(r.status, r.external_id) for r in results] == [("updated", "kept"), ("created", "new")]
    assert Recipient.objects.get(external_id="kept").name == "Kept"


# --- Topic subscription in bulk -----------------------------------------------------------------


def test_it_subscribes_10000_recipients_in_a_fixed_number_of_queries(
    service_client, django_assert_max_num_queries
):
    Recipient.objects.bulk_create([Recipient(external_id=f"r-{i}") for i in range(10_000)])
    body = {"recipients": [f"r-{i}" for i in range(10_000)]}

    # Authentication 2, recipient ids 1, topic get-or-create 4, INSERT 1, count 1, savepoint 2.
    with django_assert_max_num_queries(12):
        first = service_client.post("/api/v1/topics/launch/subscribers/", body, format="json")
    again = service_client.post("/api/v1/topics/launch/subscribers/", body, format="json")

    assert first.status_code == 200 and first.json() == {
        "topic": "launch",
        "added": 10_000,
        "subscribers": 10_000,
    }
    assert again.json() == {"topic": "launch", "added": 0, "subscribers": 10_000}
    assert Subscription.objects.filter(topic__key="launch").count() == 10_000


def test_it_refuses_more_than_10000_subscribers_and_unknown_ones_without_storing_anything(service_client):
    alice = RecipientFactory()

    too_many = service_client.post(
        "/api/v1/topics/big/subscribers/", {"recipients": [alice.external_id] * 10_001}, format="json"
    )
    unknown = service_client.post(
        "/api/v1/topics/big/subscribers/", {"recipients": [alice.external_id, "ghost"]}, format="json"
    )

    assert too_many.status_code == 400 and "recipients" in _errors(too_many)
    assert unknown.status_code == 400 and "ghost" in _errors(unknown)["recipients"][0]
    assert not Topic.objects.filter(key="big").exists() and not Subscription.objects.exists()


def test_it_unsubscribes_many_recipients_in_one_call(service_client, django_assert_max_num_queries):
    Recipient.objects.bulk_create([Recipient(external_id=f"r-{i}") for i in range(2_000)])
    body = {"recipients": [f"r-{i}" for i in range(2_000)]}
    service_client.post("/api/v1/topics/launch/subscribers/", body, format="json")

    with django_assert_max_num_queries(8):
        response = service_client.delete(
            "/api/v1/topics/launch/subscribers/",
            {"recipients": [*body["recipients"][:1_500], "ghost"]},
            format="json",
        )

    assert response.json() == {"topic": "launch", "removed": 1_500, "subscribers": 500}
