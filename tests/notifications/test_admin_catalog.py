"""The admin's notification type and template forms judge a type by the API's rules
(services/catalog.py, services/validation.py): a fallback rule, a template field or a
template that does not compile is refused with the API's message, beside the field or the
template row it concerns, and nothing is stored until the whole type passes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from notifications.models import NotificationTemplate, NotificationType
from notifications.services.catalog import notification_type_errors
from notifications.services.templating import template_check
from tests.notifications.factories import NotificationTypeFactory

pytestmark = pytest.mark.django_db

ADD = "admin:notifications_notificationtype_add"


def _type_form(
    *,
    channels: list[str],
    templates: list[tuple[str, str, dict[str, str]]],
    fallbacks: list[dict[str, Any]] | None = None,
    key: str = "order.shipped",
) -> dict[str, Any]:
    """The type's add page as a browser posts it; ``templates`` are (channel, locale, content)."""
    form: dict[str, Any] = {
        "key": key,
        "name": "Order shipped",
        "category": "transactional",
        "channels": channels,
        "default_locale": "en",
        "quiet_hours_policy": "defer",
        "fallbacks": json.dumps(fallbacks or []),
        "templates-TOTAL_FORMS": str(len(templates)),
        "templates-INITIAL_FORMS": "0",
    }
    for i, (channel, locale, content) in enumerate(templates):
        form[f"templates-{i}-channel"] = channel
        form[f"templates-{i}-locale"] = locale
        form[f"templates-{i}-content"] = json.dumps(content)
    return form


def _api_errors(
    *,
    channels: list[str],
    templates: dict[str, dict[str, str]],
    fallbacks: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """What the API answers for the same type: the service's judgement of it."""
    _, errors = notification_type_errors(
        key="order.shipped",
        fields={"category": "transactional", "channels": channels, "fallbacks": fallbacks or []},
        templates=templates,
        instance=None,
    )
    return errors


def _as_lines(errors: dict[str, list[str]]) -> list[str]:
    """Errors by API key as the admin shows them in one box: "key: message"."""
    return [f"{key}: {message}" for key, messages in errors.items() for message in messages]


def _type_errors(response: Any) -> dict[str, list[str]]:
    assert response.status_code == 200, "the admin saved what it should have refused"
    return {field: list(errors) for field, errors in response.context["adminform"].form.errors.items()}


def _template_row_errors(response: Any) -> list[dict[str, list[str]]]:
    assert response.status_code == 200, "the admin saved what it should have refused"
    formset = response.context["inline_admin_formsets"][0].formset
    return [{field: list(errors) for field, errors in form.errors.items()} for form in formset.forms]


PUSH = ("push", "en", {"title": "Shipped", "body": "Order {{ data.order_id }} is on its way"})
SMS = ("sms", "en", {"text": "Order {{ data.order_id }} shipped"})


# --- fallback rules -------------------------------------------------------------------------


def test_it_refuses_a_fallback_rule_to_an_unknown_channel_with_the_api_message(admin_client: Client) -> None:
    # given a push type whose rule falls back to a channel that does not exist
    rules = [{"from": "push", "to": "pager", "after_seconds": 60}]
    expected = _api_errors(channels=["push"], templates={"push": PUSH[2]}, fallbacks=rules)

    # when staff add it
    response = admin_client.post(
        reverse(ADD), _type_form(channels=["push"], templates=[PUSH], fallbacks=rules)
    )

    # then the rule is refused beside the fallbacks, in the API's words, and nothing is stored
    assert list(expected) == ["fallbacks[0].to"]
    assert _type_errors(response) == {"fallbacks": _as_lines(expected)}
    assert not NotificationType.objects.exists()


def test_it_refuses_a_fallback_to_a_channel_without_a_template_then_saves_it_with_one(
    admin_client: Client,
) -> None:
    # given a push type falling back to SMS, first without an SMS template, then with one
    rules = [{"from": "push", "to": "sms", "after_seconds": 60}]
    expected = _api_errors(channels=["push"], templates={"push": PUSH[2]}, fallbacks=rules)

    # when staff add it both ways
    without = admin_client.post(
        reverse(ADD), _type_form(channels=["push"], templates=[PUSH], fallbacks=rules)
    )
    with_sms = admin_client.post(
        reverse(ADD), _type_form(channels=["push"], templates=[PUSH, SMS], fallbacks=rules)
    )

    # then the first is refused with the API's message; the second is stored as the API would
    assert expected == {"fallbacks[0].to": ["channel 'sms' has no template; add templates.sms"]}
    assert _type_errors(without) == {"fallbacks": _as_lines(expected)}
    assert with_sms.status_code == 302
    stored = NotificationType.objects.get(key="order.shipped")
    assert (stored.channels, stored.fallbacks) == (["push"], rules)
    assert {t.channel: t.content for t in stored.templates.all()} == {"push": PUSH[2], "sms": SMS[2]}


# --- templates ------------------------------------------------------------------------------


def test_it_refuses_a_template_field_the_channel_does_not_have_with_the_api_message(
    admin_client: Client,
) -> None:
    content = {"subject": "Hi"}
    expected = _api_errors(channels=["sms"], templates={"sms": content})["templates"]["sms"]

    response = admin_client.post(
        reverse(ADD), _type_form(channels=["sms"], templates=[("sms", "en", content)])
    )

    assert expected["subject"] == ["unknown field; sms templates have text"]
    assert _template_row_errors(response) == [{"content": _as_lines(expected)}]
    assert not NotificationType.objects.exists()


def test_it_refuses_a_template_that_does_not_compile_with_the_api_message(admin_client: Client) -> None:
    content = {"text": "Order {{ data.order_id"}
    problem = template_check(source=content["text"])

    response = admin_client.post(
        reverse(ADD), _type_form(channels=["sms"], templates=[("sms", "en", content)])
    )

    assert problem is not None
    assert _api_errors(channels=["sms"], templates={"sms": content})["templates"] == {
        "sms": {"text": [problem]}
    }
    assert _template_row_errors(response) == [{"content": [f"text: {problem}"]}]


def test_it_refuses_a_type_without_a_template_for_one_of_its_channels(admin_client: Client) -> None:
    expected = _api_errors(channels=["push", "sms"], templates={"push": PUSH[2]})["templates"]

    response = admin_client.post(reverse(ADD), _type_form(channels=["push", "sms"], templates=[PUSH]))

    assert expected == {"sms": ["a template is required for channel 'sms'"]}
    assert _type_errors(response) == {"channels": expected["sms"]}


def test_it_stores_a_type_with_templates_in_several_locales_and_judges_each(admin_client: Client) -> None:
    # given a type with its default English template and a Portuguese one
    portuguese = ("push", "pt-BR", {"title": "Enviado", "body": "Pedido {{ data.order_id }} a caminho"})
    broken_portuguese = ("push", "pt-BR", {"title": "Enviado", "text": "Pedido"})

    # when staff add it, once with a Portuguese template the push channel does not have
    refused = admin_client.post(
        reverse(ADD), _type_form(channels=["push"], templates=[PUSH, broken_portuguese])
    )
    stored = admin_client.post(reverse(ADD), _type_form(channels=["push"], templates=[PUSH, portuguese]))

    # then the translation is judged by the same rules, and both locales are stored
    expected = _api_errors(channels=["push"], templates={"push": broken_portuguese[2]})["templates"]["push"]
    assert _template_row_errors(refused) == [{}, {"content": _as_lines(expected)}]
    assert stored.status_code == 302
    rows = NotificationTemplate.objects.filter(notification_type__key="order.shipped")
    assert {(t.channel, t.locale): t.content for t in rows} == {
        ("push", "en"): PUSH[2],
        ("push", "pt-BR"): portuguese[2],
    }


def test_it_edits_a_type_and_deletes_a_translation_through_the_service(admin_client: Client) -> None:
    # given a stored in-app type with an English and a French template
    notification_type = NotificationTypeFactory(key="digest")
    english = notification_type.templates.get()
    french = NotificationTemplate.objects.create(
        notification_type=notification_type, channel="inapp", locale="fr", content={"title": "Résumé"}
    )
    form = {
        **_type_form(key="digest", channels=["inapp"], templates=[]),
        "templates-TOTAL_FORMS": "2",
        "templates-INITIAL_FORMS": "2",
        "templates-0-id": english.pk,
        "templates-0-notification_type": notification_type.pk,
        "templates-0-channel": "inapp",
        "templates-0-locale": "en",
        "templates-0-content": json.dumps({"title": "Digest", "body": "{{ count }} new"}),
        "templates-1-id": french.pk,
        "templates-1-notification_type": notification_type.pk,
        "templates-1-channel": "inapp",
        "templates-1-locale": "fr",
        "templates-1-content": json.dumps(french.content),
        "templates-1-DELETE": "on",
    }

    # when staff rename it, rewrite the English template and delete the French one
    response = admin_client.post(
        reverse("admin:notifications_notificationtype_change", args=[notification_type.pk]), form
    )

    # then the type and its one remaining template are stored
    assert response.status_code == 302
    notification_type.refresh_from_db()
    assert notification_type.name == "Order shipped"
    assert [(t.locale, t.content) for t in notification_type.templates.all()] == [
        ("en", {"title": "Digest", "body": "{{ count }} new"})
    ]


# --- the template list -------------------------------------------------------------------------


def _template_form(
    notification_type: NotificationType, channel: str, content: dict[str, str]
) -> dict[str, Any]:
    return {
        "notification_type": notification_type.pk,
        "channel": channel,
        "locale": "en",
        "content": json.dumps(content),
    }


def test_it_judges_a_template_edited_on_its_own_page_with_its_type(admin_client: Client) -> None:
    # given an in-app type and its template
    notification_type = NotificationTypeFactory()
    template = notification_type.templates.get()
    change = reverse("admin:notifications_notificationtemplate_change", args=[template.pk])
    broken = {"title": "Order {{ data.order_id"}
    problem = template_check(source=broken["title"])

    # when staff break it, add one for a channel the type does not use, then fix the first
    refused = admin_client.post(change, _template_form(notification_type, "inapp", broken))
    stray = admin_client.post(
        reverse("admin:notifications_notificationtemplate_add"),
        _template_form(notification_type, "sms", {"text": "Hi"}),
    )
    fixed = admin_client.post(change, _template_form(notification_type, "inapp", {"title": "Shipped"}))

    # then the API's messages stand beside the content and the channel; the fix is stored
    assert _type_errors(refused) == {"content": [f"title: {problem}"]}
    assert _type_errors(stray) == {"channel": ["channel 'sms' is not in channels nor the 'to' of a fallback"]}
    assert fixed.status_code == 302
    template.refresh_from_db()
    assert template.content == {"title": "Shipped"}
    assert notification_type.templates.count() == 1


def test_it_leaves_deleting_templates_to_the_type_page(admin_client: Client) -> None:
    # A type's required template deleted on its own would leave the type breaking the rules.
    template = NotificationTypeFactory().templates.get()

    response = admin_client.post(
        reverse("admin:notifications_notificationtemplate_delete", args=[template.pk]), {"post": "yes"}
    )

    assert response.status_code == 403
    assert NotificationTemplate.objects.filter(pk=template.pk).exists()
