"""Template versions in the admin (notifications/admin/template_versions.py): a draft from
the published version, the live preview endpoint, the diff, publish, a second staff
member's approval, reject, roll back, test sends; a critical type's templates read-only
on its type page."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from notifications.models import Event, NotificationTemplate, NotificationType, TemplateVersion
from notifications.services.catalog import notification_type_save
from tests.notifications.factories import RecipientFactory

pytestmark = pytest.mark.django_db

INAPP = {"title": "Order {{ data.order_id }}", "body": "Total {{ data.total|currency('EUR') }}", "url": ""}
VARIABLES = {
    "order_id": {"type": "integer", "example": 42},
    "total": {"type": "number", "example": 9.5},
}


def _type(category: str) -> NotificationType:
    return notification_type_save(
        key=f"admin.{category}",
        fields={"category": category, "channels": ["inapp"]},
        templates={"inapp": INAPP},
        variables=VARIABLES,
    )


def _staff_client(name: str) -> tuple[Any, Client]:
    user = get_user_model().objects.create_superuser(username=name, password="pw", email=f"{name}@x.test")
    client = Client()
    client.force_login(user)
    return user, client


def _add_draft(client: Client, ntype: NotificationType) -> TemplateVersion:
    response = client.post(
        reverse("admin:notifications_templateversion_add"),
        {"notification_type": ntype.pk, "note": "friendlier title"},
    )
    assert response.status_code == 302, response.content
    return TemplateVersion.objects.get(notification_type=ntype, status="draft")


def _change(client: Client, version: TemplateVersion, action: str, **fields: Any) -> Any:
    version.refresh_from_db()
    # What the page posts: the fields of a draft, only the button otherwise.
    editable = {
        "templates": json.dumps(version.templates),
        "variables": json.dumps(version.variables),
        "note": version.note,
    }
    data = {**(editable if version.editable else {}), action: "1", **fields}
    return client.post(
        reverse("admin:notifications_templateversion_change", args=[version.pk]), data, follow=True
    )


def _messages(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_a_draft_starts_as_a_copy_of_the_published_version_and_its_page_shows_preview_and_diff() -> None:
    ntype = _type("transactional")
    _, client = _staff_client("ana")
    draft = _add_draft(client, ntype)
    assert (draft.number, draft.based_on, draft.templates) == (2, 1, {"en": {"inapp": INAPP}})

    templates = {"en": {"inapp": {**INAPP, "title": "Your order {{ data.order_id }}"}}}
    _change(client, draft, "_continue", templates=json.dumps(templates))
    page = client.get(reverse("admin:notifications_templateversion_change", args=[draft.pk]))

    html = page.content.decode()
    assert page.status_code == 200
    assert 'id="tv-preview"' in html and "template-preview.js" in html
    assert "en.inapp.title" in html and "<ins>+Your order {{ data.order_id }}</ins>" in html


def test_the_preview_endpoint_renders_what_the_page_holds_with_its_problems() -> None:
    ntype = _type("transactional")
    _, client = _staff_client("ana")
    draft = _add_draft(client, ntype)
    url = reverse("admin:notifications_templateversion_preview", args=[draft.pk])
    templates = {
        "en": {"inapp": INAPP},
        "fr": {"inapp": {"title": "Commande {{ data.order_id }}", "body": "{{ data.missing }}"}},
    }

    answer = client.post(
        url,
        {"templates": json.dumps(templates), "variables": json.dumps(VARIABLES), "locale": "fr-CA"},
        content_type="application/json",
    ).json()

    assert answer["errors"] == {
        "templates.fr.inapp.body": ["uses data.missing, which the variables do not declare"]
    }
    [inapp] = answer["previews"]
    assert inapp["locale"] == "fr" and "missing" in inapp["error"]
    broken = client.post(
        url, {"templates": "{not json", "variables": ""}, content_type="application/json"
    ).json()
    assert broken["errors"]["templates"][0].startswith("not JSON")
    assert client.get(url).status_code == 405
    assert Client().post(url, {}, content_type="application/json").status_code == 302  # to the login


def test_publishing_a_transactional_draft_applies_it_at_once() -> None:
    ntype = _type("transactional")
    _, client = _staff_client("ana")
    draft = _add_draft(client, ntype)
    templates = {"en": {"inapp": {**INAPP, "title": "Shipped {{ data.order_id }}"}}}
    _change(client, draft, "_continue", templates=json.dumps(templates))

    response = _change(client, draft, "_publish")

    assert "Version 2 is published." in _messages(response)
    assert (
        NotificationTemplate.objects.get(notification_type=ntype).content["title"]
        == "Shipped {{ data.order_id }}"
    )


def test_a_critical_draft_needs_a_second_staff_member_who_approves_or_rejects() -> None:
    ntype = _type("critical")
    _, ana = _staff_client("ana")
    _, bob = _staff_client("bob")
    draft = _add_draft(ana, ntype)
    _change(ana, draft, "_continue", templates=json.dumps({"en": {"inapp": {**INAPP, "title": "Alert"}}}))

    asked = _change(ana, draft, "_publish")
    assert "Version 2 awaits the approval of a second staff member." in _messages(asked)
    assert 'id="tv-approve"' not in asked.content.decode()
    refused = _change(ana, draft, "_approve")
    assert any("second staff member must approve" in m for m in _messages(refused))

    rejected = _change(bob, draft, "_reject", reject_reason="say which account")
    assert "Version 2 went back to its author." in _messages(rejected)
    _change(ana, draft, "_publish")
    page = bob.get(reverse("admin:notifications_templateversion_change", args=[draft.pk]))
    assert 'id="tv-approve"' in page.content.decode()
    approved = _change(bob, draft, "_approve")

    assert "Approved: version 2 is published." in _messages(approved)
    draft.refresh_from_db()
    assert draft.approved_by is not None and draft.requested_by is not None
    assert (draft.status, draft.approved_by.username, draft.requested_by.username) == (
        "published",
        "bob",
        "ana",
    )
    assert NotificationTemplate.objects.get(notification_type=ntype).content["title"] == "Alert"


def test_publishing_a_version_that_breaks_the_rules_lists_every_problem() -> None:
    ntype = _type("transactional")
    _, client = _staff_client("ana")
    draft = _add_draft(client, ntype)
    _change(client, draft, "_continue", templates=json.dumps({"en": {"inapp": {"title": "{{ data.nope }}"}}}))

    response = _change(client, draft, "_publish")

    assert "templates.en.inapp.title: uses data.nope, which the variables do not declare" in _messages(
        response
    )
    draft.refresh_from_db()
    assert draft.status == "draft"


def test_roll_back_and_send_a_test_from_the_page(django_capture_on_commit_callbacks: Any) -> None:
    ntype = _type("transactional")
    ana_user, ana = _staff_client("ana")
    draft = _add_draft(ana, ntype)
    _change(ana, draft, "_continue", templates=json.dumps({"en": {"inapp": {**INAPP, "title": "v2"}}}))
    _change(ana, draft, "_publish")
    first = TemplateVersion.objects.get(notification_type=ntype, number=1)

    rolled = _change(ana, first, "_rollback")
    assert "Version 3, a copy of version 1, published." in _messages(rolled)

    no_recipient = _change(ana, draft, "_send_test")
    assert any("no recipient is linked to your user" in m for m in _messages(no_recipient))
    RecipientFactory(user=ana_user)
    with django_capture_on_commit_callbacks(execute=True):
        sent = _change(ana, draft, "_send_test")
    assert any(m.startswith("Test sent to you") for m in _messages(sent))
    assert (
        Event.objects.get(notification_type=ntype, template_version=2).deliveries.get().template_version == 2
    )


def test_a_critical_types_templates_are_read_only_on_its_type_page() -> None:
    critical, social = _type("critical"), _type("social")
    _, client = _staff_client("ana")

    for ntype, editable in ((critical, False), (social, True)):
        page = client.get(
            reverse("admin:notifications_notificationtype_change", args=[ntype.pk])
        ).content.decode()
        assert ('name="templates-0-content"' in page) is editable


def test_a_draft_whose_templates_or_variables_are_not_objects_is_refused_beside_the_field() -> None:
    ntype = _type("transactional")
    _, client = _staff_client("ana")
    draft = _add_draft(client, ntype)

    response = _change(client, draft, "_continue", templates="[1, 2]", variables='"x"')

    assert response.status_code == 200
    form = response.context["adminform"].form
    assert "must be an object" in form.errors["templates"][0]
    assert "must be an object" in form.errors["variables"][0]
    draft.refresh_from_db()
    assert draft.templates == {"en": {"inapp": INAPP}}
