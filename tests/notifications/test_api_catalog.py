"""Notification types through the API: the list is read in a fixed number of queries."""

from __future__ import annotations

from typing import Any

import pytest

from notifications.models import NotificationTemplate
from tests.notifications.factories import NotificationTypeFactory

pytestmark = pytest.mark.django_db


def test_it_lists_types_with_their_templates_in_a_fixed_number_of_queries(
    service_client, django_assert_max_num_queries
):
    types = [NotificationTypeFactory(key=f"type.{i:02d}") for i in range(25)]
    # A template of another locale is not the type's default template and is not listed.
    NotificationTemplate.objects.create(
        notification_type=types[0],
        channel="inapp",
        locale="pt",
        content={"title": "Olá", "body": "", "url": ""},
    )

    # Authentication 2, types 1, their templates 1: the same for 25 types as for one.
    with django_assert_max_num_queries(4):
        response = service_client.get("/api/v1/notification-types/")

    results = response.json()["results"]
    assert [t["key"] for t in results] == [f"type.{i:02d}" for i in range(25)]
    assert results[0]["templates"] == {
        "inapp": {"title": "Order {{ data.order_id }}", "body": "shipped", "url": ""}
    }


def test_it_answers_a_type_with_its_templates(service_client):
    nt = NotificationTypeFactory()

    response = service_client.get(f"/api/v1/notification-types/{nt.key}/")

    assert response.status_code == 200
    assert response.json()["templates"]["inapp"]["body"] == "shipped"


VARIABLES = {
    "order_id": {"type": "integer", "example": 42},
    "coupon": {"type": "string", "required": False, "example": "SPRING", "description": "shown if any"},
}


def _critical_type(service_client: Any) -> dict[str, Any]:
    body = {
        "key": "account.locked",
        "category": "critical",
        "channels": ["inapp"],
        "templates": {
            "inapp": {"title": "Order {{ data.order_id }} {{ data.coupon }}", "body": "", "url": ""}
        },
        "variables": VARIABLES,
    }
    response = service_client.post("/api/v1/notification-types/", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def test_it_stores_declared_variables_and_answers_the_published_template_version(service_client):
    created = _critical_type(service_client)

    assert created["template_version"] == 1
    assert created["variables"]["order_id"] == {
        "type": "integer",
        "required": True,
        "example": 42,
        "description": "",
    }
    fetched = service_client.get("/api/v1/notification-types/account.locked/").json()
    assert fetched["variables"] == created["variables"]


def test_it_refuses_events_missing_a_required_variable_naming_it(service_client):
    _critical_type(service_client)
    service_client.put("/api/v1/recipients/ana/", {"name": "Ana"}, format="json")

    response = service_client.post(
        "/api/v1/events/",
        {"type": "account.locked", "recipients": ["ana"], "data": {"coupon": 5}},
        format="json",
    )

    assert response.status_code == 400
    assert response.json()["errors"] == {
        "data.order_id": ["required by the template: a whole number"],
        "data.coupon": ["must be text, got 5"],
    }
    bulk = service_client.post(
        "/api/v1/events/bulk/",
        {
            "events": [
                {"type": "account.locked", "recipients": ["ana"], "data": {"order_id": 1}},
                {"type": "account.locked", "recipients": ["ana"], "data": {}},
            ]
        },
        format="json",
    )
    assert [r["status"] for r in bulk.json()["results"]] == ["accepted", "error"]
    assert bulk.json()["results"][1]["errors"] == {
        "data.order_id": ["required by the template: a whole number"]
    }


@pytest.mark.parametrize(
    ("variables", "where", "fragment"),
    [
        ({"order_id": {"type": "money", "example": 1}}, "order_id", "type must be one of"),
        ({"order_id": {"type": "integer"}}, "order_id", "an example is required"),
        ({"order_id": {"type": "integer", "example": "x"}}, "order_id", "example must be a whole number"),
        ({"9lives": {"type": "integer", "example": 1}}, "9lives", "a name is letters"),
        ({"order_id": {"type": {}, "example": 1}}, "order_id", "type must be one of"),
    ],
    ids=["unknown-type", "no-example", "example-of-another-type", "bad-name", "type-not-text"],
)
def test_it_refuses_a_bad_variable_declaration_naming_it(service_client, variables, where, fragment):
    body = {
        "key": "bad.vars",
        "category": "transactional",
        "channels": ["inapp"],
        "templates": {"inapp": {"title": "Hi", "body": "", "url": ""}},
        "variables": variables,
    }
    response = service_client.post("/api/v1/notification-types/", body, format="json")
    assert response.status_code == 400
    assert fragment in response.json()["errors"]["variables"][where][0]


def test_it_refuses_a_template_using_an_undeclared_variable(service_client):
    body = {
        "key": "undeclared",
        "category": "transactional",
        "channels": ["inapp"],
        "templates": {"inapp": {"title": "{{ data.order_id }} {{ data.secret }}", "body": "", "url": ""}},
        "variables": {"order_id": {"type": "integer", "example": 1}},
    }
    response = service_client.post("/api/v1/notification-types/", body, format="json")
    assert response.status_code == 400
    assert response.json()["errors"]["templates"]["inapp"]["title"] == [
        "uses data.secret, which the variables do not declare"
    ]


def test_a_critical_types_templates_change_only_through_approval(service_client):
    created = _critical_type(service_client)
    changed = {
        **created,
        "templates": {"inapp": {"title": "Changed {{ data.order_id }}", "body": "", "url": ""}},
    }
    for name in ("created_at", "template_version", "aggregation"):
        changed.pop(name)

    response = service_client.put("/api/v1/notification-types/account.locked/", changed, format="json")

    assert response.status_code == 400
    assert "second staff member's approval" in response.json()["errors"]["templates"][0]
    unchanged = {**changed, "templates": created["templates"], "name": "Locked"}
    assert (
        service_client.put("/api/v1/notification-types/account.locked/", unchanged, format="json").status_code
        == 200
    )
