"""Notification types through the API: the list is read in a fixed number of queries."""

from __future__ import annotations

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
