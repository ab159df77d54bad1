"""Template versions (notifications/services/template_versions.py): drafts, publishing,
the approval of a second staff member for critical and marketing types, rejection, roll
back, diffs and previews; declared variables refused at ingest; the version each
delivery rendered; locale fallback and Babel formatting in the recipient's locale."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model

from notifications.models import (
    Delivery,
    InboxItem,
    NotificationTemplate,
    NotificationType,
    TemplateVersion,
)
from notifications.services.api_keys import api_key_create
from notifications.services.catalog import notification_type_save
from notifications.services.ingest import IngestError, event_ingest
from notifications.services.template_versions import (
    VersionRefused,
    version_approve,
    version_diff,
    version_draft_create,
    version_draft_update,
    version_errors,
    version_preview,
    version_publish_request,
    version_reject,
    version_rollback,
    version_send_test,
)
from notifications.services.validation import ValidationFailed
from tests.notifications.factories import RecipientFactory

pytestmark = pytest.mark.django_db

ORDER = {
    "order_id": {"type": "integer", "required": True, "example": 42},
    "total": {"type": "number", "required": True, "example": 1234.5},
    "at": {"type": "datetime", "required": False, "example": "2026-03-29T01:30:00+00:00"},
}
INAPP = {"title": "Order {{ data.order_id }}", "body": "Total {{ data.total|currency('EUR') }}", "url": ""}


def _type(category: str = "transactional", **extra: Any) -> NotificationType:
    return notification_type_save(
        key=f"orders.{category}.{NotificationType.objects.count()}",
        fields={"category": category, "channels": ["inapp"]},
        templates={"inapp": INAPP},
        variables=ORDER,
        **extra,
    )


def _staff(name: str) -> Any:
    return get_user_model().objects.create_user(username=name, password="pw", is_staff=True)


def _edit(version: TemplateVersion, title: str) -> TemplateVersion:
    templates = {**version.templates, "en": {"inapp": {**INAPP, "title": title}}}
    return version_draft_update(version=version, templates=templates, variables=version.variables)


def test_it_records_what_the_api_stores_as_the_published_version_1() -> None:
    ntype = _type()
    [version] = TemplateVersion.objects.filter(notification_type=ntype)
    assert (version.number, version.status, ntype.template_version) == (1, "published", 1)
    assert version.templates == {"en": {"inapp": INAPP}} and version.variables["order_id"]["required"]


def test_a_draft_publishes_at_once_for_a_transactional_type_and_retires_the_version_before() -> None:
    ntype, ana = _type(), _staff("ana")
    draft = _edit(version_draft_create(notification_type=ntype, by=ana), "Your order {{ data.order_id }}")
    assert (draft.number, draft.status, draft.based_on) == (2, "draft", 1)
    # Until published, deliveries keep rendering version 1.
    assert NotificationTemplate.objects.get(notification_type=ntype).content["title"] == INAPP["title"]

    published = version_publish_request(version=draft, by=ana)

    ntype.refresh_from_db()
    assert (published.status, published.published_by, ntype.template_version) == ("published", ana, 2)
    assert NotificationTemplate.objects.get(notification_type=ntype).content["title"].startswith("Your order")
    assert TemplateVersion.objects.get(notification_type=ntype, number=1).status == "retired"


def test_a_critical_type_publishes_only_with_a_second_staff_members_approval() -> None:
    ntype, ana, bob, cy = _type("critical"), _staff("ana"), _staff("bob"), _staff("cy")
    draft = _edit(
        version_draft_create(notification_type=ntype, by=ana), "Security: order {{ data.order_id }}"
    )
    pending = version_publish_request(version=draft, by=bob)
    assert (pending.status, pending.requested_by) == ("pending", bob)
    ntype.refresh_from_db()
    assert ntype.template_version == 1  # not yet

    for who in (ana, bob):  # its author, and who asked
        with pytest.raises(VersionRefused, match="second staff member"):
            version_approve(version=pending, by=who)
    approved = version_approve(version=pending, by=cy)

    ntype.refresh_from_db()
    assert (approved.status, approved.approved_by, approved.approved_at is not None) == (
        "published",
        cy,
        True,
    )
    assert ntype.template_version == approved.number
    with pytest.raises(VersionRefused, match="not awaiting approval"):
        version_approve(version=approved, by=cy)


def test_a_rejected_version_goes_back_to_its_author_with_the_reason_and_can_be_asked_again() -> None:
    ntype, ana, bob = _type("marketing"), _staff("ana"), _staff("bob")
    pending = version_publish_request(
        version=_edit(version_draft_create(notification_type=ntype, by=ana), "Sale on {{ data.order_id }}"),
        by=ana,
    )
    with pytest.raises(ValidationFailed):
        version_reject(version=pending, by=bob, reason="  ")
    rejected = version_reject(version=pending, by=bob, reason="tone it down")
    assert rejected.status == "rejected" and "tone it down" in rejected.rejected_reason
    again = version_publish_request(version=_edit(rejected, "Offers for order {{ data.order_id }}"), by=ana)
    assert again.status == "pending"
    assert version_approve(version=again, by=bob).status == "published"


def test_a_version_asked_to_publish_no_longer_changes() -> None:
    ntype, ana = _type("critical"), _staff("ana")
    pending = version_publish_request(version=version_draft_create(notification_type=ntype, by=ana), by=ana)
    with pytest.raises(VersionRefused, match="only drafts change"):
        _edit(pending, "changed after the request")


def test_roll_back_publishes_a_copy_of_an_earlier_version() -> None:
    ntype, ana = _type(), _staff("ana")
    version_publish_request(
        version=_edit(version_draft_create(notification_type=ntype, by=ana), "v2"), by=ana
    )
    first = TemplateVersion.objects.get(notification_type=ntype, number=1)

    back = version_rollback(version=first, by=ana)

    assert (back.number, back.based_on, back.status) == (3, 1, "published")
    assert NotificationTemplate.objects.get(notification_type=ntype).content == INAPP
    with pytest.raises(VersionRefused, match="never published"):
        version_rollback(version=version_draft_create(notification_type=ntype, by=ana), by=ana)


def test_a_version_using_an_undeclared_variable_or_failing_with_its_examples_is_not_published() -> None:
    ntype, ana = _type(), _staff("ana")
    draft = version_draft_create(notification_type=ntype, by=ana)
    draft = version_draft_update(
        version=draft,
        templates={
            "en": {"inapp": {"title": "{{ data.coupon }}", "body": "{{ data.order_id|currency('EUR') }}"}}
        },
        variables={**ORDER, "bad": {"type": "colour", "example": 1}},
    )
    errors = version_errors(notification_type=ntype, templates=draft.templates, variables=draft.variables)
    assert "type must be one of" in errors["variables.bad"][0]

    draft = version_draft_update(
        version=draft,
        templates={"en": {"inapp": {"title": "{{ data.coupon }}", "body": "{{ data.total / 0 }}"}}},
        variables=ORDER,
    )
    with pytest.raises(ValidationFailed) as refused:
        version_publish_request(version=draft, by=ana)
    assert refused.value.errors["templates.en.inapp.title"] == [
        "uses data.coupon, which the variables do not declare"
    ]
    assert "fails with the variables' examples" in refused.value.errors["templates.en.inapp.body"][0]


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ data|attr('__class__') }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ data.order_id.__class__.__base__ }}",
    ],
    ids=["class", "subclasses", "attr-filter", "cycler-globals", "base"],
)
def test_template_injection_payloads_are_refused_before_publishing(source: str) -> None:
    ntype = _type()
    errors = version_errors(
        notification_type=ntype,
        templates={"en": {"inapp": {"title": source, "body": "", "url": ""}}},
        variables=ORDER,
    )
    assert "templates.en.inapp.title" in errors, errors


def test_the_diff_names_each_changed_field_with_unified_lines() -> None:
    ntype, ana = _type(), _staff("ana")
    draft = _edit(version_draft_create(notification_type=ntype, by=ana), "Your order {{ data.order_id }}")
    [part] = version_diff(TemplateVersion.objects.get(notification_type=ntype, number=1), draft)
    assert part.where == "en.inapp.title"
    assert "-Order {{ data.order_id }}" in part.lines and "+Your order {{ data.order_id }}" in part.lines


def test_the_preview_renders_each_channel_in_the_locale_it_falls_back_to_with_the_checks() -> None:
    ntype = _type()
    templates = {
        "en": {"inapp": INAPP, "sms": {"text": "Order {{ data.order_id }} " + "ł" * 400}},
        "fr": {
            "inapp": {"title": "Commande {{ data.order_id }}", "body": "{{ data.total|currency('EUR') }}"}
        },
    }
    previews = {
        p.channel: p
        for p in version_preview(
            notification_type=ntype, templates=templates, variables=ORDER, locale="fr-CA"
        )
    }
    assert previews["inapp"].locale == "fr" and previews["inapp"].fields["title"] == "Commande 42"
    assert previews["inapp"].fields["body"].replace("\u202f", " ").replace("\xa0", " ") == "1 234,50 €"
    assert previews["sms"].locale == "en"
    assert previews["sms"].facts[0] == "7 segment(s), UCS-2, 409 characters"
    assert "more than SMS_MAX_SEGMENTS" in previews["sms"].problems[0]


def test_an_event_missing_a_declared_variable_or_of_the_wrong_type_is_refused_naming_it() -> None:
    ntype, key = _type(), api_key_create(name="vars")[0]
    recipient = RecipientFactory()
    with pytest.raises(IngestError) as refused:
        event_ingest(
            api_key=key, type_key=ntype.key, recipients=[recipient.external_id], data={"order_id": "x"}
        )
    assert refused.value.errors == {
        "data.order_id": ["must be a whole number, got 'x'"],
        "data.total": ["required by the template: a number"],
    }
    # The optional one may be left out.
    event_ingest(
        api_key=key, type_key=ntype.key, recipients=[recipient.external_id], data={"order_id": 1, "total": 2}
    )


def test_each_in_app_delivery_records_the_version_it_rendered_in_the_recipients_locale(
    django_capture_on_commit_callbacks: Any,
) -> None:
    ana = _staff("ana")
    ntype = _type()
    draft = version_draft_create(notification_type=ntype, by=ana)
    version_draft_update(
        version=draft,
        templates={
            "en": {"inapp": INAPP},
            "fr": {
                "inapp": {"title": "Commande {{ data.order_id }}", "body": "le {{ data.at|date('long') }}"}
            },
        },
        variables=ORDER,
    )
    version_publish_request(version=draft, by=ana)
    quebec = RecipientFactory(locale="fr-CA", timezone="America/Toronto")
    london = RecipientFactory(locale="en-GB", timezone="Europe/London")
    key = api_key_create(name="versions")[0]
    with django_capture_on_commit_callbacks(execute=True):
        event = event_ingest(
            api_key=key,
            type_key=ntype.key,
            recipients=[quebec.external_id, london.external_id],
            data={"order_id": 7, "total": 9.5, "at": "2026-03-29T01:30:00+00:00"},
        ).event

    items = {i.recipient_id: i for i in InboxItem.objects.filter(event_id=event.id)}
    assert (items[quebec.id].title, items[quebec.id].body) == ("Commande 7", "le 28 mars 2026")
    assert (items[london.id].title, items[london.id].body) == ("Order 7", "Total €9.50")
    assert set(Delivery.objects.filter(event_id=event.id).values_list("template_version", flat=True)) == {2}


def test_a_test_send_renders_the_draft_for_the_staff_members_own_recipient(
    django_capture_on_commit_callbacks: Any,
) -> None:
    ana = _staff("ana")
    ntype = _type()
    draft = _edit(version_draft_create(notification_type=ntype, by=ana), "Draft title {{ data.order_id }}")
    with pytest.raises(VersionRefused, match="no recipient is linked"):
        version_send_test(version=draft, user=ana)
    mine = RecipientFactory(user=ana)

    with django_capture_on_commit_callbacks(execute=True):
        event = version_send_test(version=draft, user=ana)

    item = InboxItem.objects.get(event_id=event.id)
    assert (item.recipient_id, item.title) == (mine.id, "Draft title 42")
    assert Delivery.objects.get(event_id=event.id).template_version == draft.number
    ntype.refresh_from_db()
    assert ntype.template_version == 1  # a test publishes nothing


def test_the_api_path_refuses_to_change_a_critical_types_templates_without_approval() -> None:
    ntype = _type("critical")
    with pytest.raises(ValidationFailed) as refused:
        notification_type_save(
            key=ntype.key,
            fields={"category": "critical", "channels": ["inapp"]},
            templates={"inapp": {**INAPP, "title": "changed"}},
            instance=ntype,
        )
    assert "second staff member's approval" in refused.value.errors["templates"][0]
    # Fields other than templates and variables still change.
    notification_type_save(
        key=ntype.key,
        fields={"category": "critical", "channels": ["inapp"], "name": "Renamed"},
        templates={"inapp": INAPP},
        instance=ntype,
    )
    assert NotificationType.objects.get(pk=ntype.pk).name == "Renamed"
    assert TemplateVersion.objects.filter(notification_type=ntype).count() == 1
