"""The v1 API contract (README.md, "The public contract (v1)") through Django's test client."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from notifications.models import ApiKey, Delivery, Device, Event, InboxItem, OutboxMessage, Recipient
from tests.notifications.factories import NotificationTypeFactory, RecipientFactory

pytestmark = pytest.mark.django_db

TYPE_BODY = {
    "key": "order.shipped",
    "category": "transactional",
    "channels": ["inapp"],
    "templates": {
        "inapp": {"title": "Order {{ data.order_id }} shipped", "body": "", "url": "/o/{{ data.order_id }}"}
    },
}


def _errors(response: Any) -> dict[str, Any]:
    return response.json()["errors"]


def test_it_refuses_requests_without_or_with_a_bad_key(client):
    assert client.post("/api/v1/events/", {}, content_type="application/json").status_code == 401
    response = client.post(
        "/api/v1/events/", {}, content_type="application/json", HTTP_AUTHORIZATION="Api-Key nk_bad_key"
    )
    assert response.status_code == 401 and "authorization" in _errors(response)


def test_it_stores_api_keys_only_hashed(api_key):
    stored = ApiKey.objects.get()
    assert api_key not in (stored.key_hash, stored.prefix) and len(stored.key_hash) == 64


def test_it_upserts_recipients_and_normalises_the_phone(service_client):
    created = service_client.put(
        "/api/v1/recipients/u-1/",
        {"email": "a@example.com", "phone": "+1 415 555 2671", "timezone": "Europe/Lisbon"},
        format="json",
    )
    assert created.status_code == 201 and created.json()["phone"] == "+14155552671"
    updated = service_client.put("/api/v1/recipients/u-1/", {"name": "Ana"}, format="json")
    assert updated.status_code == 200
    recipient = Recipient.objects.get(external_id="u-1")
    assert (recipient.name, recipient.email, recipient.timezone) == ("Ana", "a@example.com", "Europe/Lisbon")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"phone": "12345"}, "phone"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"email": "not-an-email"}, "email"),
        ({"locale": "english please"}, "locale"),
        ({"nickname": "x"}, "nickname"),
    ],
)
def test_it_names_the_bad_recipient_field(service_client, body, field):
    response = service_client.put("/api/v1/recipients/u-2/", body, format="json")
    assert response.status_code == 400 and field in _errors(response)
    assert not Recipient.objects.filter(external_id="u-2").exists()


def test_it_registers_and_moves_devices(service_client):
    alice, bob = RecipientFactory(), RecipientFactory()
    first = service_client.post(
        f"/api/v1/recipients/{alice.external_id}/devices/", {"platform": "fcm", "token": "t1"}, format="json"
    )
    assert first.status_code == 201
    moved = service_client.post(
        f"/api/v1/recipients/{bob.external_id}/devices/", {"platform": "fcm", "token": "t1"}, format="json"
    )
    assert moved.status_code == 200 and Device.objects.get().recipient_id == bob.id
    bad = service_client.post(
        f"/api/v1/recipients/{bob.external_id}/devices/", {"platform": "pager", "token": ""}, format="json"
    )
    assert bad.status_code == 400 and set(_errors(bad)) == {"platform", "token"}


def test_it_creates_notification_types_and_validates_templates(service_client):
    created = service_client.post("/api/v1/notification-types/", TYPE_BODY, format="json")
    assert created.status_code == 201 and created.json()["templates"]["inapp"]["title"].startswith("Order")
    duplicate = service_client.post("/api/v1/notification-types/", TYPE_BODY, format="json")
    assert duplicate.status_code == 400 and "key" in _errors(duplicate)

    broken = {**TYPE_BODY, "key": "broken", "templates": {"inapp": {"title": "{{ data.x ", "body": ""}}}
    response = service_client.post("/api/v1/notification-types/", broken, format="json")
    assert response.status_code == 400
    assert "title" in _errors(response)["templates"]["inapp"]

    missing = {**TYPE_BODY, "key": "missing", "channels": ["inapp", "email"]}
    response = service_client.post("/api/v1/notification-types/", missing, format="json")
    assert "email" in _errors(response)["templates"]


def test_it_subscribes_recipients_to_a_topic_created_on_first_use(service_client):
    alice, bob = RecipientFactory(), RecipientFactory()
    response = service_client.post(
        "/api/v1/topics/news/subscribers/",
        {"recipients": [alice.external_id, bob.external_id]},
        format="json",
    )
    assert response.json() == {"topic": "news", "added": 2, "subscribers": 2}
    again = service_client.post(
        "/api/v1/topics/news/subscribers/", {"recipients": [alice.external_id]}, format="json"
    )
    assert again.json()["added"] == 0
    unknown = service_client.post(
        "/api/v1/topics/news/subscribers/", {"recipients": ["ghost"]}, format="json"
    )
    assert unknown.status_code == 400 and "ghost" in _errors(unknown)["recipients"][0]


def test_it_accepts_an_event_and_reports_its_deliveries(service_client, django_capture_on_commit_callbacks):
    nt = NotificationTypeFactory()
    alice = RecipientFactory()
    with django_capture_on_commit_callbacks(execute=True):
        response = service_client.post(
            "/api/v1/events/",
            {"type": nt.key, "recipients": [alice.external_id], "data": {"order_id": 5}},
            format="json",
        )
    assert response.status_code == 202 and response.json()["status"] == "accepted"
    event_id = response.json()["id"]

    detail = service_client.get(f"/api/v1/events/{event_id}/").json()
    assert detail["type"] == nt.key and detail["deliveries"] == {"inapp": {"delivered": 1}}
    deliveries = service_client.get(f"/api/v1/events/{event_id}/deliveries/").json()["results"]
    assert deliveries[0]["recipient"] == alice.external_id
    assert {k: deliveries[0][k] for k in ("channel", "status", "reason", "attempts")} == {
        "channel": "inapp",
        "status": "delivered",
        "reason": "",
        "attempts": 1,
    }
    assert service_client.get(f"/api/v1/events/{uuid.uuid4()}/").status_code == 404
    assert service_client.get("/api/v1/events/not-a-uuid/").status_code == 404


def test_an_accepted_event_costs_one_lookup_and_one_insert_once_key_and_type_are_cached(
    service_client, django_capture_on_commit_callbacks
):
    nt = NotificationTypeFactory()
    alice = RecipientFactory()
    body = {"type": nt.key, "recipients": [alice.external_id], "data": {"order_id": 5}}
    with django_capture_on_commit_callbacks(execute=False):
        assert service_client.post("/api/v1/events/", body, format="json").status_code == 202
        with CaptureQueriesContext(connection) as queries:
            assert service_client.post("/api/v1/events/", body, format="json").status_code == 202

    # the test's transaction adds a savepoint around the insert; a server has none
    statements = [q["sql"].split()[0] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]
    assert statements == ["SELECT", "WITH"], queries.captured_queries
    assert Event.objects.count() == OutboxMessage.objects.count() == 2


def test_it_answers_a_repeated_idempotency_key_with_200_and_a_changed_body_with_409(service_client):
    nt = NotificationTypeFactory()
    alice = RecipientFactory()
    body = {
        "type": nt.key,
        "recipients": [alice.external_id],
        "data": {"order_id": 1},
        "idempotency_key": "abc",
    }
    first = service_client.post("/api/v1/events/", body, format="json")
    again = service_client.post("/api/v1/events/", body, format="json")
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json()["id"] == again.json()["id"]
    conflict = service_client.post("/api/v1/events/", {**body, "data": {"order_id": 2}}, format="json")
    assert conflict.status_code == 409 and "idempotency_key" in _errors(conflict)
    header = service_client.post(
        "/api/v1/events/",
        {k: v for k, v in body.items() if k != "idempotency_key"},
        format="json",
        HTTP_IDEMPOTENCY_KEY="abc",
    )
    assert header.status_code == 200 and header.json()["id"] == first.json()["id"]
    assert Event.objects.count() == 1


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        ({"recipients": ["x"]}, "type", "required"),
        ({"type": "nope", "recipients": ["x"]}, "type", "nope"),
        ({"type": "T", "recipients": ["x"], "topic": "t"}, "recipients", "not both"),
        ({"type": "T"}, "recipients", "required"),
        ({"type": "T", "recipients": "x"}, "recipients", ""),
        ({"type": "T", "recipients": ["x"], "data": [1]}, "data", ""),
        ({"type": "T", "recipients": ["x"], "send_at": "tomorrow"}, "send_at", ""),
        ({"type": "T", "recipients": ["x"], "colour": "red"}, "colour", "unknown"),
        ({"type": "T", "recipients": ["ghost"]}, "recipients", "ghost"),
    ],
)
def test_it_rejects_bad_event_bodies_naming_the_field(service_client, body, field, fragment):
    nt = NotificationTypeFactory()
    RecipientFactory(external_id="x")
    if body.get("type") == "T":
        body = {**body, "type": nt.key}
    response = service_client.post("/api/v1/events/", body, format="json")
    assert response.status_code == 400, response.content
    errors = _errors(response)
    assert field in errors and fragment in " ".join(errors[field])
    assert Event.objects.count() == 0


def test_it_rejects_oversized_data(service_client, settings):
    settings.MAX_EVENT_DATA_BYTES = 300
    nt = NotificationTypeFactory()
    RecipientFactory(external_id="x")
    response = service_client.post(
        "/api/v1/events/", {"type": nt.key, "recipients": ["x"], "data": {"blob": "a" * 400}}, format="json"
    )
    assert response.status_code == 400 and "limit" in _errors(response)["data"][0]


def test_it_rejects_a_non_object_body(service_client):
    response = service_client.post("/api/v1/events/", [1, 2], format="json")
    assert response.status_code == 400


def test_it_issues_tokens_that_open_only_their_owners_inbox(
    service_client, client, django_capture_on_commit_callbacks
):
    nt = NotificationTypeFactory()
    alice, bob = RecipientFactory(), RecipientFactory()
    with django_capture_on_commit_callbacks(execute=True):
        service_client.post(
            "/api/v1/events/",
            {"type": nt.key, "recipients": [alice.external_id], "data": {"order_id": 1}},
            format="json",
        )
    alice_item = InboxItem.objects.get(recipient=alice)
    token = service_client.post(f"/api/v1/recipients/{bob.external_id}/token/").json()["token"]
    as_bob = {"HTTP_AUTHORIZATION": f"Bearer {token}"}

    assert client.get("/api/v1/inbox/", **as_bob).json()["results"] == []
    assert client.post(f"/api/v1/inbox/{alice_item.id}/read/", **as_bob).status_code == 404
    assert client.get("/api/v1/inbox/", HTTP_AUTHORIZATION="Bearer forged").status_code == 401
    # A service key is not an end-user credential.
    assert service_client.get("/api/v1/inbox/").status_code in (401, 403)


def test_it_lists_reads_and_counts_the_inbox(service_client, user_client, django_capture_on_commit_callbacks):
    nt = NotificationTypeFactory()
    alice = RecipientFactory()
    for order in range(3):
        with django_capture_on_commit_callbacks(execute=True):
            service_client.post(
                "/api/v1/events/",
                {"type": nt.key, "recipients": [alice.external_id], "data": {"order_id": order}},
                format="json",
            )
    as_alice = user_client(alice.id)

    page = as_alice.get("/api/v1/inbox/").json()
    assert (
        [i["seq"] for i in page["results"]] == [3, 2, 1]
        and page["unread_count"] == 3
        and page["last_seq"] == 3
    )
    assert [i["seq"] for i in as_alice.get("/api/v1/inbox/?after=1").json()["results"]] == [2, 3]
    assert as_alice.get("/api/v1/inbox/?after=-1").status_code == 400

    first = page["results"][-1]
    read = as_alice.post(f"/api/v1/inbox/{first['id']}/read/")
    assert read.status_code == 200 and read.json()["read"] is True
    assert Delivery.objects.get(inbox_item__id=first["id"]).status == "read"
    assert as_alice.get("/api/v1/inbox/unread-count/").json() == {"count": 2}
    assert as_alice.post("/api/v1/inbox/read-all/").json()["marked_read"] == 2
    assert as_alice.get("/api/v1/inbox/unread-count/").json() == {"count": 0}


def test_it_replaces_preferences_and_validates_them(service_client):
    nt = NotificationTypeFactory()
    alice = RecipientFactory()
    body = {
        "channels": {"email": False},
        "categories": {"marketing": {"inapp": False}},
        "types": {nt.key: {"inapp": True}},
        "quiet_hours": {"start": "22:00", "end": "07:00"},
        "digest": {"social": "daily"},
    }
    saved = service_client.put(f"/api/v1/recipients/{alice.external_id}/preferences/", body, format="json")
    assert saved.status_code == 200 and saved.json() == body
    assert service_client.get(f"/api/v1/recipients/{alice.external_id}/preferences/").json() == body

    bad = service_client.put(
        f"/api/v1/recipients/{alice.external_id}/preferences/",
        {
            "channels": {"pigeon": False},
            "types": {"nope": {"inapp": True}},
            "quiet_hours": {"start": "25:00", "end": "07:00"},
        },
        format="json",
    )
    assert bad.status_code == 400
    errors = _errors(bad)
    assert "pigeon" in errors["channels"] and "nope" in errors["types"] and "start" in errors["quiet_hours"]
    assert service_client.get(f"/api/v1/recipients/{alice.external_id}/preferences/").json() == body


def test_it_serves_the_openapi_schema(client):
    response = client.get("/api/schema/")
    assert response.status_code == 200 and b"/api/v1/events/" in response.content
