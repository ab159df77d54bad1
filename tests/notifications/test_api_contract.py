"""What the schema promises about every route, checked one by one (the schemathesis run in
tests/e2e/test_api_schema.py checks them all against a live server)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from notifications.models import Recipient
from tests.notifications.factories import NotificationTypeFactory, RecipientFactory

pytestmark = pytest.mark.django_db


def _errors(response: Any) -> dict[str, Any]:
    return response.json()["errors"]


def _schema(client: Any) -> dict[str, Any]:
    return json.loads(client.get("/api/schema/?format=json").content)


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/nothing-here/",
        "/api/v1/inbox/12x/read/",
        "/api/v1/dead-letters/1%0A2/replay/",
        "/api/v1/recipients/a%00b/",
        "/api/v1/dead-letters/9999999999999999999/replay/",
    ],
)
def test_it_answers_a_path_that_names_no_route_with_a_json_404(service_client, path):
    response = service_client.post(path)

    assert response.status_code == 404 and response["Content-Type"] == "application/json"
    assert "detail" in _errors(response)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": 5}, "name"),
        ({"phone": "+1 415 555 2671*"}, "phone"),
        ({"phone": "+14155552671\n"}, "phone"),
        ({"locale": "en\n"}, "locale"),
        ({"external_id": "u-1"}, "external_id"),
    ],
)
def test_it_refuses_what_the_schema_refuses_instead_of_coercing_it(service_client, body, field):
    response = service_client.put("/api/v1/recipients/u-1/", body, format="json")

    assert response.status_code == 400 and field in _errors(response), response.content
    assert not Recipient.objects.exists()


def test_it_removes_a_suppressed_address_holding_a_slash(service_client):
    added = service_client.post(
        "/api/v1/suppressions/", {"kind": "email", "address": "team/ops@example.com"}, format="json"
    )

    removed = service_client.delete("/api/v1/suppressions/email/team%2Fops@example.com/")

    assert (added.status_code, removed.status_code) == (201, 204)


def test_it_takes_a_whole_number_written_as_3_0(service_client):
    body = {
        "key": "digest",
        "category": "social",
        "channels": ["inapp"],
        "templates": {"inapp": {"title": "Hi"}},
        "aggregation": {"window_seconds": 60.0},
    }

    response = service_client.post("/api/v1/notification-types/", body, format="json")

    assert response.status_code == 201 and response.json()["aggregation"] == {"window_seconds": 60}


@pytest.mark.parametrize("query", ["page_size=0", "page_size=1001", "page_size=ten", "page_size=%D9%A5"])
def test_it_refuses_a_page_size_out_of_range(service_client, query):
    response = service_client.get(f"/api/v1/suppressions/?{query}")

    assert response.status_code == 400 and "page_size" in _errors(response)


def test_it_answers_a_cursor_that_names_no_page_with_a_404(service_client):
    assert service_client.get("/api/v1/suppressions/?cursor=bm9wZQ").status_code == 404
    # A well-formed cursor whose position the ordering column cannot hold.
    assert service_client.get("/api/v1/suppressions/?cursor=cD1ub3QtYW4taWQ%3D").status_code == 404


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=201", "after=-1", "before=x", "after=99999999999999999999"]
)
def test_it_refuses_inbox_parameters_out_of_range(user_client, query):
    alice = RecipientFactory()

    response = user_client(alice.id).get(f"/api/v1/inbox/?{query}")

    assert response.status_code == 400, response.content


def test_it_treats_empty_filters_as_none(service_client):
    assert service_client.get("/api/v1/suppressions/?kind=&address=&page_size=").status_code == 200


def test_it_refuses_an_idempotency_key_header_over_255_characters(service_client):
    nt, alice = NotificationTypeFactory(), RecipientFactory()
    body = {"type": nt.key, "recipients": [alice.external_id], "idempotency_key": "in-the-body"}

    response = service_client.post("/api/v1/events/", body, format="json", HTTP_IDEMPOTENCY_KEY="k" * 256)

    assert response.status_code == 400 and "Idempotency-Key" in _errors(response)


def test_it_refuses_a_secret_for_an_unsigned_webhook_even_an_empty_one(service_client):
    alice = RecipientFactory()
    body = {"kind": "slack", "url": "https://hooks.example.com/x", "secret": ""}

    response = service_client.post(f"/api/v1/recipients/{alice.external_id}/webhooks/", body, format="json")

    assert response.status_code == 400 and "not signed" in _errors(response)["secret"][0]


def test_it_documents_credentials_and_database_errors_on_every_operation(client):
    schema = _schema(client)

    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            responses = operation["responses"]
            assert {"401", "503"} <= set(responses), (method, path)
            assert responses["503"]["headers"]["Retry-After"]["required"] is True
            if "{" in path:
                assert "404" in responses, (method, path)


def test_it_documents_what_the_server_enforces(client):
    schema = _schema(client)
    components = schema["components"]["schemas"]
    paths = schema["paths"]

    listing = paths["/api/v1/notification-types/"]["get"]["responses"]["200"]["content"]["application/json"]
    assert listing["schema"]["$ref"].endswith("/NotificationTypeList")
    assert "results" in components["NotificationTypeList"]["properties"]
    recipient = components["RecipientUpsertRequest"]
    assert recipient["additionalProperties"] is False
    assert "pattern" in recipient["properties"]["phone"]["anyOf"][0]
    assert "Europe/Lisbon" in components["TimezoneEnum"]["enum"]
    origin_ip = components["EventToRecipientsRequest"]["properties"]["origin_ip"]
    assert {"format": "ipv4"} in origin_ip["anyOf"] and {"format": "ipv6"} in origin_ip["anyOf"]
    subscribe = components["SubscribersRequest"]["properties"]["recipients"]
    assert subscribe["maxItems"] == 10_000
    assert components["RecipientBulkRequest"]["properties"]["recipients"]["maxItems"] == 1_000
    key = paths["/api/v1/topics/{key}/"]["get"]["parameters"][0]
    assert key["name"] == "key" and key["schema"]["pattern"].startswith("^[a-z0-9]")
    unsubscribe = paths["/api/v1/topics/{key}/subscribers/"]["delete"]["requestBody"]
    assert unsubscribe["required"] is True
