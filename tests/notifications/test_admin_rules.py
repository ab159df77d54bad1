"""The admin's recipient, device, suppression and webhook forms judge and store values by the
API's rules: they save through the same services (services/recipients.py,
services/feedback.py), so a value the API refuses is refused here with the same message,
beside the field it concerns, and a value is stored in the same normalised form."""

from __future__ import annotations

from collections.abc import Callable
from datetime import time
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from notifications.models import Device, DevicePlatform, Recipient, Suppression, WebhookEndpoint
from notifications.services.feedback import suppression_add
from notifications.services.recipients import recipient_upsert, webhook_endpoint_add
from notifications.services.validation import ValidationFailed
from tests.notifications.factories import RecipientFactory

pytestmark = pytest.mark.django_db

LONDON = "+44 (0)20 7946 0958"
LONDON_E164 = "+442079460958"


def _refusal(call: Callable[[], object]) -> dict[str, Any]:
    """What the service behind the API answers for a value: its errors by field."""
    with pytest.raises(ValidationFailed) as refused:
        call()
    return refused.value.errors


def _form_errors(response: Any) -> dict[str, list[str]]:
    assert response.status_code == 200, "the admin saved what it should have refused"
    return {field: list(errors) for field, errors in response.context["adminform"].form.errors.items()}


# --- suppressions ---------------------------------------------------------------------------


def test_it_stores_a_suppressed_phone_number_as_the_api_does(
    admin_client: Client, service_client: APIClient
) -> None:
    # given a number written the way people write it, with the trunk prefix in brackets
    add = reverse("admin:notifications_suppression_add")

    # when staff suppress it
    response = admin_client.post(add, {"kind": "phone", "address": LONDON, "reason": "manual"})

    # then it is stored in E.164, and the API finds it as the row it would have stored itself
    assert response.status_code == 302
    assert list(Suppression.objects.values_list("address", flat=True)) == [LONDON_E164]
    again = service_client.post("/api/v1/suppressions/", {"kind": "phone", "address": LONDON}, format="json")
    assert again.status_code == 200 and again.json()["address"] == LONDON_E164


def test_it_refuses_a_suppressed_phone_number_with_the_api_message(admin_client: Client) -> None:
    expected = _refusal(lambda: suppression_add(kind="phone", address="12345", reason="manual"))

    response = admin_client.post(
        reverse("admin:notifications_suppression_add"),
        {"kind": "phone", "address": "12345", "reason": "manual"},
    )

    assert _form_errors(response) == {"address": expected["address"]}
    assert "'12345'" in expected["address"][0]
    assert not Suppression.objects.exists()


# --- recipients -------------------------------------------------------------------------------


def _recipient_form(**fields: str) -> dict[str, Any]:
    return {
        "external_id": "ada",
        "name": "Ada",
        "email": "",
        "phone": "",
        "locale": "en",
        "timezone": "UTC",
        "devices-TOTAL_FORMS": "0",
        "devices-INITIAL_FORMS": "0",
        "preferences-TOTAL_FORMS": "0",
        "preferences-INITIAL_FORMS": "0",
        **fields,
    }


def test_it_stores_a_recipient_phone_in_e164_as_the_api_does(
    admin_client: Client, service_client: APIClient
) -> None:
    # given the same number written with spaces and a bracketed trunk prefix
    via_api = service_client.put("/api/v1/recipients/bob/", {"phone": LONDON}, format="json")

    # when staff add a recipient with it
    response = admin_client.post(reverse("admin:notifications_recipient_add"), _recipient_form(phone=LONDON))

    # then both doors store the one E.164 form
    assert via_api.status_code == 201
    assert response.status_code == 302
    assert Recipient.objects.get(external_id="ada").phone == LONDON_E164
    assert Recipient.objects.get(external_id="bob").phone == LONDON_E164


def test_it_refuses_a_recipient_phone_with_the_api_message(admin_client: Client) -> None:
    # given a recipient with a good number, and what the API says of "12345"
    recipient = RecipientFactory(phone=LONDON_E164)
    expected = _refusal(lambda: recipient_upsert(external_id="ada", fields={"phone": "12345"}))
    change = reverse("admin:notifications_recipient_change", args=[recipient.pk])

    # when staff add a recipient, or change the existing one, with that number
    added = admin_client.post(reverse("admin:notifications_recipient_add"), _recipient_form(phone="12345"))
    changed = admin_client.post(change, _recipient_form(external_id=recipient.external_id, phone="12345"))

    # then both are refused beside the phone field, naming the number, and nothing changes
    assert _form_errors(added) == {"phone": expected["phone"]}
    assert _form_errors(changed) == {"phone": expected["phone"]}
    assert "'12345'" in expected["phone"][0]
    assert not Recipient.objects.filter(external_id="ada").exists()
    recipient.refresh_from_db()
    assert recipient.phone == LONDON_E164


def test_it_refuses_a_recipient_time_zone_with_the_api_message(admin_client: Client) -> None:
    expected = _refusal(lambda: recipient_upsert(external_id="ada", fields={"timezone": "Mars/Olympus"}))

    response = admin_client.post(
        reverse("admin:notifications_recipient_add"), _recipient_form(timezone="Mars/Olympus")
    )

    assert _form_errors(response) == {"timezone": expected["timezone"]}


def test_it_moves_a_known_push_token_to_the_recipient_as_the_api_does(admin_client: Client) -> None:
    # given a token registered to one recipient, and another recipient's page
    first = RecipientFactory()
    second = RecipientFactory()
    Device.objects.create(recipient=first, platform=DevicePlatform.FCM, token="tok-shared", active=False)
    change = reverse("admin:notifications_recipient_change", args=[second.pk])

    # when staff add that token on the second recipient's page
    response = admin_client.post(
        change,
        _recipient_form(
            external_id=second.external_id,
            **{
                "devices-TOTAL_FORMS": "1",
                "devices-0-platform": "fcm",
                "devices-0-token": "tok-shared",
                "devices-0-active": "on",
            },
        ),
    )

    # then the token moves and is active again (device_register), instead of "already exists"
    assert response.status_code == 302
    device = Device.objects.get(token="tok-shared")
    assert (device.recipient_id, device.active) == (second.pk, True)


# --- webhook endpoints --------------------------------------------------------------------------


def _webhook_form(recipient: Recipient, **fields: str) -> dict[str, Any]:
    return {"recipient": recipient.pk, "kind": "generic", "url": "https://hooks.example.com/a", **fields}


def test_it_refuses_a_plain_http_webhook_url_with_the_api_message(admin_client: Client) -> None:
    # given a recipient with an endpoint, and what the API says of a plain http URL
    recipient = RecipientFactory()
    endpoint, _ = webhook_endpoint_add(
        recipient=recipient, kind="generic", url="https://hooks.example.com/a", secret="s" * 16
    )
    expected = _refusal(
        lambda: webhook_endpoint_add(
            recipient=recipient, kind="generic", url="http://example.com/hook", secret="s" * 16
        )
    )
    bad = {"url": "http://example.com/hook", "new_secret": "s" * 16}

    # when staff add such an endpoint, or move the existing one to that URL
    added = admin_client.post(
        reverse("admin:notifications_webhookendpoint_add"), _webhook_form(recipient, **bad)
    )
    changed = admin_client.post(
        reverse("admin:notifications_webhookendpoint_change", args=[endpoint.pk]),
        _webhook_form(recipient, url="http://example.com/hook", active="on"),
    )

    # then both are refused beside the URL, and the endpoint keeps its https URL
    assert _form_errors(added) == {"url": expected["url"]}
    assert _form_errors(changed) == {"url": expected["url"]}
    assert list(WebhookEndpoint.objects.values_list("url", flat=True)) == ["https://hooks.example.com/a"]


def test_it_accepts_plain_http_to_this_machine_as_the_api_does(admin_client: Client) -> None:
    recipient = RecipientFactory()

    response = admin_client.post(
        reverse("admin:notifications_webhookendpoint_add"),
        _webhook_form(recipient, url="http://127.0.0.1:9000/hook", new_secret="s" * 16),
    )

    assert response.status_code == 302
    assert WebhookEndpoint.objects.get().url == "http://127.0.0.1:9000/hook"


def test_it_refuses_a_short_generic_webhook_secret_with_the_api_message(admin_client: Client) -> None:
    recipient = RecipientFactory()
    expected = _refusal(
        lambda: webhook_endpoint_add(
            recipient=recipient, kind="generic", url="https://hooks.example.com/a", secret="short"
        )
    )

    response = admin_client.post(
        reverse("admin:notifications_webhookendpoint_add"), _webhook_form(recipient, new_secret="short")
    )

    assert _form_errors(response) == {"new_secret": expected["secret"]}
    assert "got 5" in expected["secret"][0]
    assert not WebhookEndpoint.objects.exists()


def test_it_refuses_to_keep_a_secret_on_an_unsigned_webhook_kind(admin_client: Client) -> None:
    # given a generic endpoint with its secret, and what the API says of a signed Slack hook
    recipient = RecipientFactory()
    endpoint, _ = webhook_endpoint_add(
        recipient=recipient, kind="generic", url="https://hooks.example.com/a", secret="s" * 16
    )
    expected = _refusal(
        lambda: webhook_endpoint_add(
            recipient=recipient, kind="slack", url="https://hooks.example.com/a", secret="s" * 16
        )
    )
    change = reverse("admin:notifications_webhookendpoint_change", args=[endpoint.pk])

    # when staff turn it into a Slack hook, first keeping the secret, then removing it
    kept = admin_client.post(change, _webhook_form(recipient, kind="slack", active="on"))
    cleared = admin_client.post(
        change, _webhook_form(recipient, kind="slack", active="on", clear_secret="on")
    )

    # then the stored secret is named beside the box that removes it; removed, it saves
    assert _form_errors(kept) == {"clear_secret": expected["secret"]}
    assert cleared.status_code == 302
    endpoint.refresh_from_db()
    assert (endpoint.kind, endpoint.secret) == ("slack", "")


def test_it_offers_the_api_defaults_on_the_new_recipient_page(admin_client: Client) -> None:
    form = admin_client.get(reverse("admin:notifications_recipient_add")).context["adminform"].form

    assert (form["locale"].value(), form["timezone"].value()) == ("en", "UTC")


def test_it_refuses_half_of_quiet_hours_and_stores_both_ends_through_the_service(admin_client):
    recipient = RecipientFactory()
    url = reverse("admin:notifications_recipient_change", args=[recipient.pk])
    base = {
        "name": recipient.name,
        "email": "",
        "phone": "",
        "locale": "en",
        "timezone": "UTC",
        "devices-TOTAL_FORMS": "0",
        "devices-INITIAL_FORMS": "0",
        "preferences-TOTAL_FORMS": "0",
        "preferences-INITIAL_FORMS": "0",
    }

    refused = admin_client.post(url, {**base, "quiet_hours_start": "22:00"})
    assert refused.status_code == 200
    assert "Give both ends of quiet hours" in refused.content.decode()
    recipient.refresh_from_db()
    assert recipient.quiet_hours_start is None

    stored = admin_client.post(url, {**base, "quiet_hours_start": "22:00", "quiet_hours_end": "07:00"})
    assert stored.status_code == 302, stored.content.decode()[:2000]
    saved = Recipient.objects.get(pk=recipient.pk)
    assert (saved.quiet_hours_start, saved.quiet_hours_end) == (time(22, 0), time(7, 0))
