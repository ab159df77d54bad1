"""GET|PUT /api/v1/recipients/{external_id}/preferences/: the digest frequencies per
category beside the overrides and quiet hours."""

from __future__ import annotations

from typing import Any

import pytest

from notifications.models import DigestSetting, Preference
from tests.notifications.factories import RecipientFactory

pytestmark = pytest.mark.django_db


def _path(external_id: str) -> str:
    return f"/api/v1/recipients/{external_id}/preferences/"


def test_it_answers_an_empty_digest_for_a_recipient_who_chose_none(service_client):
    recipient = RecipientFactory()

    response = service_client.get(_path(recipient.external_id))

    assert response.status_code == 200
    assert response.json() == {
        "channels": {},
        "categories": {},
        "types": {},
        "quiet_hours": None,
        "digest": {},
    }


def test_it_stores_and_returns_a_digest_frequency_per_category(service_client):
    recipient = RecipientFactory()

    saved = service_client.put(
        _path(recipient.external_id),
        {"digest": {"social": "daily", "marketing": "weekly", "transactional": "off"}},
        format="json",
    )

    assert saved.status_code == 200
    digest = {"marketing": "weekly", "social": "daily", "transactional": "off"}
    assert saved.json()["digest"] == digest
    assert service_client.get(_path(recipient.external_id)).json()["digest"] == digest
    assert set(DigestSetting.objects.values_list("recipient_id", "category", "frequency")) == {
        (recipient.id, "social", "daily"),
        (recipient.id, "marketing", "weekly"),
        (recipient.id, "transactional", "off"),
    }


def test_it_replaces_the_digest_like_everything_else_on_put(service_client):
    recipient = RecipientFactory()
    path = _path(recipient.external_id)
    service_client.put(path, {"digest": {"social": "daily", "marketing": "weekly"}}, format="json")

    replaced = service_client.put(path, {"digest": {"marketing": "daily"}}, format="json")
    cleared = service_client.put(path, {"channels": {"email": False}}, format="json")

    assert replaced.json()["digest"] == {"marketing": "daily"}
    assert cleared.json()["digest"] == {} and not DigestSetting.objects.exists()


@pytest.mark.parametrize(
    ("digest", "field", "message"),
    [
        ({"social": "hourly"}, "social", "must be one of off, daily, weekly, got 'hourly'"),
        ({"social": 1}, "social", "must be one of off, daily, weekly, got 1"),
        ({"critical": "daily"}, "critical", "critical notifications are always sent at once"),
        (
            {"pigeons": "daily"},
            "pigeons",
            "unknown category; expected one of transactional, social, marketing",
        ),
    ],
)
def test_it_refuses_a_bad_digest_naming_the_category_and_changes_nothing(
    service_client, digest, field, message
):
    # given a recipient with stored preferences and a digest
    recipient = RecipientFactory()
    path = _path(recipient.external_id)
    before = {
        "channels": {"sms": False},
        "categories": {},
        "types": {},
        "quiet_hours": None,
        "digest": {"social": "weekly"},
    }
    assert service_client.put(path, before, format="json").status_code == 200

    # when a PUT carries good overrides and one bad digest entry
    response = service_client.put(path, {"channels": {"email": False}, "digest": digest}, format="json")

    # then it is a 400 naming the digest's category, and nothing changed
    assert response.status_code == 400
    errors: dict[str, Any] = response.json()["errors"]
    assert list(errors) == ["digest"]
    assert message in errors["digest"][field][0]
    assert service_client.get(path).json() == before
    assert list(Preference.objects.values_list("channel", "enabled")) == [("sms", False)]


def test_it_refuses_a_digest_that_is_not_an_object(service_client):
    recipient = RecipientFactory()

    response = service_client.put(_path(recipient.external_id), {"digest": "daily"}, format="json")

    assert response.status_code == 400 and "digest" in response.json()["errors"]


def test_it_documents_the_digest_in_the_schema(client):
    schema = client.get("/api/schema/?format=json").json()

    digest = schema["components"]["schemas"]["PreferencesRequest"]["properties"]["digest"]
    assert digest["additionalProperties"] is False
    assert set(digest["properties"]) == {"transactional", "social", "marketing"}
    assert digest["properties"]["social"]["enum"] == ["off", "daily", "weekly"]
