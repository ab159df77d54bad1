"""The staff admin: every page renders, the event page reports its pipeline, API keys are
created and revoked through the services."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import timedelta

import pytest
from django.contrib import admin
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from notifications.admin.base import CappedCountPaginator
from notifications.models import (
    AggregationBatch,
    ApiKey,
    AttemptOutcome,
    Campaign,
    CampaignVariant,
    Category,
    Channel,
    DeadLetter,
    Delivery,
    DeliveryAttempt,
    DeliveryEvent,
    DeliverySchedule,
    DeliveryStatus,
    Device,
    DevicePlatform,
    DigestRun,
    DigestSetting,
    DispatchBatch,
    Event,
    FallbackCheck,
    InboxItem,
    InboxSequence,
    NotificationTemplate,
    NotificationType,
    OutboxMessage,
    Preference,
    ProviderCursor,
    Recipient,
    Reminder,
    Segment,
    Subscription,
    Suppression,
    TemplateVersion,
    Topic,
    WebhookEndpoint,
)
from notifications.services.api_keys import api_key_authenticate, api_key_create

pytestmark = pytest.mark.django_db


@dataclass
class Pipeline:
    notification_type: NotificationType
    recipient: Recipient
    topic: Topic
    event: Event
    topic_event: Event
    api_key: ApiKey
    deliveries: list[Delivery]


def _delivery(event: Event, recipient: Recipient, channel: str, status: str) -> Delivery:
    return Delivery.objects.create(event=event, recipient=recipient, channel=channel, status=status)


@pytest.fixture
def pipeline() -> Pipeline:
    notification_type = NotificationType.objects.create(
        key="order.shipped", name="Order shipped", channels=[Channel.EMAIL, Channel.SMS, Channel.INAPP]
    )
    NotificationTemplate.objects.create(
        notification_type=notification_type, channel=Channel.EMAIL, content={"subject": "Shipped {{ order }}"}
    )
    recipient = Recipient.objects.create(external_id="user-1", name="Ada", email="ada@example.com")
    other = Recipient.objects.create(external_id="user-2", name="Bob")
    third = Recipient.objects.create(external_id="user-3", name="Cy")
    Device.objects.create(recipient=recipient, platform=DevicePlatform.FCM, token="tok-" + "x" * 40)
    Preference.objects.create(
        recipient=recipient, category=Category.MARKETING, channel=Channel.EMAIL, enabled=False
    )
    DigestSetting.objects.create(recipient=recipient, category=Category.SOCIAL, frequency="daily")
    DigestRun.objects.create(
        recipient=recipient,
        category=Category.SOCIAL,
        frequency="daily",
        period_start=timezone.now() - timedelta(days=1),
        period_end=timezone.now(),
        item_count=2,
    )
    topic = Topic.objects.create(key="launches", name="Launches")
    Subscription.objects.create(topic=topic, recipient=recipient)
    Subscription.objects.create(topic=topic, recipient=other)
    api_key, _ = api_key_create(name="shop")

    event = Event.objects.create(
        notification_type=notification_type,
        api_key=api_key,
        idempotency_key="order-42",
        request_fingerprint="x",
        recipient_ids=[recipient.id],
        planned_count=1,
        data={"order": 42},
    )
    OutboxMessage.objects.create(event=event, cursor=recipient.id)
    topic_event = Event.objects.create(
        notification_type=notification_type, request_fingerprint="x", topic=topic, planned_count=1
    )

    deliveries = [
        _delivery(event, recipient, Channel.EMAIL, DeliveryStatus.SENT),
        _delivery(event, other, Channel.EMAIL, DeliveryStatus.SENT),
        _delivery(event, third, Channel.EMAIL, DeliveryStatus.FAILED),
        _delivery(event, recipient, Channel.SMS, DeliveryStatus.PENDING),
        _delivery(event, recipient, Channel.INAPP, DeliveryStatus.DELIVERED),
    ]
    # Another event's delivery must not leak into the first event's counts.
    _delivery(topic_event, other, Channel.EMAIL, DeliveryStatus.SENT)
    DeliveryAttempt.objects.create(
        delivery=deliveries[2], number=1, outcome=AttemptOutcome.PERMANENT, error="mailbox unknown"
    )
    InboxItem.objects.create(
        recipient=recipient,
        seq=1,
        delivery=deliveries[4],
        event=event,
        notification_type=notification_type.key,
        category=notification_type.category,
        title="Your order shipped",
    )
    InboxSequence.objects.create(recipient=recipient, last_seq=1)
    AggregationBatch.objects.create(
        notification_type=notification_type,
        recipient=recipient,
        channel=Channel.INAPP,
        leader=deliveries[4],
        count=3,
        closes_at=timezone.now(),
    )
    DispatchBatch.objects.create(
        channel=Channel.SMS, delivery_ids=[deliveries[3].id], leased_until=timezone.now()
    )
    DeliverySchedule.objects.create(delivery=deliveries[4], due_at=timezone.now())
    ProviderCursor.objects.create(
        provider="mailgun-bulk", next_url="http://sandbox.test/v3/news/events/abc", events=3
    )
    DeadLetter.objects.create(
        delivery=deliveries[2],
        channel=Channel.EMAIL,
        notification_type=notification_type.key,
        reason="mailbox unknown",
        attempts=1,
    )
    Suppression.objects.create(kind="email", address="gone@example.com", reason="hard_bounce")
    Reminder.objects.create(
        notification_type=notification_type,
        recipients=[recipient.external_id],
        rule="FREQ=WEEKLY;BYDAY=MO",
        starts_at="2027-01-04T09:00:00",
        next_at="2027-01-04T09:00:00",
        due_at=timezone.now(),
    )
    WebhookEndpoint.objects.create(
        recipient=recipient, kind="generic", url="https://hooks.example.com/x", secret="s3cret-value"
    )
    segment = Segment.objects.create(name="French", filters={"locales": ["fr"]})
    campaign = Campaign.objects.create(
        name="Launch", notification_type=notification_type, audience_segment=segment, data={"order": "A-1"}
    )
    CampaignVariant.objects.create(campaign=campaign, name="A", weight=100)
    TemplateVersion.objects.create(
        notification_type=notification_type,
        number=1,
        status="draft",
        templates={"en": {"email": {"subject": "Shipped {{ data.order }}"}}},
        variables={"order": {"type": "string", "example": "A-1"}},
    )
    FallbackCheck.objects.create(delivery=deliveries[3], to_channel=Channel.EMAIL, due_at=timezone.now())
    DeliveryEvent.objects.create(delivery=deliveries[0], kind="delivered", provider="mailgun")
    return Pipeline(notification_type, recipient, topic, event, topic_event, api_key, deliveries)


def _changelist_urls() -> list[str]:
    return [
        reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
        for model in admin.site._registry
    ]


def test_it_registers_every_notifications_model() -> None:
    from django.apps import apps

    registered = set(admin.site._registry)
    missing = [
        model.__name__
        for model in apps.get_app_config("notifications").get_models()
        if model not in registered
    ]

    assert missing == []


@pytest.mark.parametrize(
    "query", ["", "?q=abc", "?q=0f8fad5b-d9cb-469f-a165-70867728950e", "?q=user-1", "?q=a%20b%20c"]
)
def test_it_renders_every_changelist(admin_client: Client, pipeline: Pipeline, query: str) -> None:
    failures = {}
    for url in _changelist_urls():
        response = admin_client.get(url + query)
        if response.status_code != 200:
            failures[url + query] = response.status_code

    assert failures == {}


def test_it_renders_the_change_page_of_every_notifications_row(
    admin_client: Client, pipeline: Pipeline
) -> None:
    failures = {}
    for model in admin.site._registry:
        if model._meta.app_label != "notifications":
            continue
        obj = model._default_manager.first()
        assert obj is not None, f"the fixture has no {model.__name__}"
        url = reverse(f"admin:notifications_{model._meta.model_name}_change", args=[obj.pk])
        response = admin_client.get(url)
        if response.status_code != 200:
            failures[url] = response.status_code

    assert failures == {}


def test_it_counts_the_event_deliveries_by_channel_and_status(
    admin_client: Client, pipeline: Pipeline
) -> None:
    event = pipeline.event
    url = reverse("admin:notifications_event_change", args=[event.pk])

    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(url)

    assert response.status_code == 200
    rows = {
        row.channel: {cell.status: cell.count for cell in row.cells}
        for row in response.context["delivery_rows"]
    }
    assert [row.channel for row in response.context["delivery_rows"]] == ["In-app", "Email", "SMS"]
    assert rows["Email"] == {**dict.fromkeys(DeliveryStatus.values, 0), "sent": 2, "failed": 1}
    assert rows["SMS"] == {**dict.fromkeys(DeliveryStatus.values, 0), "pending": 1}
    assert rows["In-app"] == {**dict.fromkeys(DeliveryStatus.values, 0), "delivered": 1}
    delivery_queries = [
        q["sql"] for q in queries.captured_queries if 'FROM "notifications_delivery"' in q["sql"]
    ]
    assert len(delivery_queries) == 1
    assert "GROUP BY" in delivery_queries[0]

    changelist = reverse("admin:notifications_delivery_changelist")
    sent_link = f"{changelist}?event__exact={event.pk}&amp;channel__exact=email&amp;status__exact=sent"
    html = response.content.decode()
    assert f'<a href="{sent_link}">2</a>' in html
    assert f'<a href="{changelist}?event__exact={event.pk}&amp;channel__exact=email">3</a>' in html
    for status in DeliveryStatus.labels:
        assert f'<th scope="col" class="count">{status}</th>' in html


def test_it_links_each_count_to_exactly_those_deliveries(admin_client: Client, pipeline: Pipeline) -> None:
    event = pipeline.event
    changelist = reverse("admin:notifications_delivery_changelist")

    response = admin_client.get(
        changelist, {"event__exact": str(event.pk), "channel__exact": "email", "status__exact": "sent"}
    )

    assert response.status_code == 200
    shown = {delivery.pk for delivery in response.context["cl"].result_list}
    assert shown == {pipeline.deliveries[0].pk, pipeline.deliveries[1].pk}


def test_it_shows_fanout_progress_and_the_outbox_row(admin_client: Client, pipeline: Pipeline) -> None:
    OutboxMessage.objects.filter(event=pipeline.event).update(
        leased_until=timezone.now() + timedelta(minutes=1), attempts=2
    )

    explicit = admin_client.get(reverse("admin:notifications_event_change", args=[pipeline.event.pk]))
    by_topic = admin_client.get(reverse("admin:notifications_event_change", args=[pipeline.topic_event.pk]))

    assert explicit.context["fanout"]["audience"] == 1
    assert "1 of 1 recipients planned (100%)" in explicit.content.decode()
    assert explicit.context["outbox_state"] == "leased"
    assert f"<dd>{pipeline.recipient.id}</dd>" in explicit.content.decode()
    assert by_topic.context["fanout"]["audience"] == 2
    assert "1 of 2 recipients planned (50%)" in by_topic.content.decode()
    assert "No outbox row" in by_topic.content.decode()


def test_it_refuses_to_add_or_edit_events(admin_client: Client, pipeline: Pipeline) -> None:
    add = admin_client.get(reverse("admin:notifications_event_add"))
    edit = admin_client.post(
        reverse("admin:notifications_event_change", args=[pipeline.event.pk]), {"status": "completed"}
    )

    assert add.status_code == 403
    assert edit.status_code == 403
    pipeline.event.refresh_from_db()
    assert pipeline.event.status == "accepted"


def test_it_finds_deliveries_by_event_id_or_recipient_external_id(
    admin_client: Client, pipeline: Pipeline
) -> None:
    changelist = reverse("admin:notifications_delivery_changelist")

    by_event = admin_client.get(changelist, {"q": str(pipeline.event.pk)})
    by_recipient = admin_client.get(changelist, {"q": "user-2"})
    by_text = admin_client.get(changelist, {"q": "not-a-uuid"})

    assert {d.pk for d in by_event.context["cl"].result_list} == {d.pk for d in pipeline.deliveries}
    assert {d.recipient.external_id for d in by_recipient.context["cl"].result_list} == {"user-2"}
    assert len(by_recipient.context["cl"].result_list) == 2
    assert list(by_text.context["cl"].result_list) == []


def test_it_finds_events_by_id_or_idempotency_key(admin_client: Client, pipeline: Pipeline) -> None:
    changelist = reverse("admin:notifications_event_changelist")

    by_id = admin_client.get(changelist, {"q": str(pipeline.topic_event.pk)})
    by_key = admin_client.get(changelist, {"q": "order-42"})

    assert [e.pk for e in by_id.context["cl"].result_list] == [pipeline.topic_event.pk]
    assert [e.pk for e in by_key.context["cl"].result_list] == [pipeline.event.pk]


def test_it_caps_the_delivery_count_instead_of_counting_every_row(
    admin_client: Client, pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(CappedCountPaginator, "count_cap", 3)

    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(reverse("admin:notifications_delivery_changelist"))

    assert response.status_code == 200
    assert response.context["cl"].result_count == 3
    assert "More than 3 deliveries" in response.content.decode()
    counts = [
        q["sql"]
        for q in queries.captured_queries
        if "COUNT(" in q["sql"] and "notifications_delivery" in q["sql"]
    ]
    assert counts and all("LIMIT 4" in sql for sql in counts)


def test_it_shows_a_new_api_key_once_and_stores_only_its_hash(admin_client: Client) -> None:
    add_url = reverse("admin:notifications_apikey_add")

    form = admin_client.get(add_url).context["adminform"].form
    response = admin_client.post(add_url, {"name": "billing"}, follow=True)

    assert list(form.fields) == ["name"]
    key = ApiKey.objects.get(name="billing")
    shown = re.findall(r"nk_[A-Za-z0-9_-]+", response.content.decode())
    assert len(shown) == 1
    raw = shown[0]
    assert key.key_hash == hashlib.sha256(raw.encode()).hexdigest()
    assert raw not in {key.name, key.prefix, key.key_hash}
    assert api_key_authenticate(raw=raw) == key
    again = admin_client.get(reverse("admin:notifications_apikey_change", args=[key.pk]))
    assert raw not in again.content.decode()
    assert raw not in admin_client.get(reverse("admin:notifications_apikey_changelist")).content.decode()


def test_it_revokes_the_selected_api_keys(admin_client: Client) -> None:
    active, _ = api_key_create(name="active")
    already, _ = api_key_create(name="already")
    untouched, _ = api_key_create(name="untouched")
    ApiKey.objects.filter(pk=already.pk).update(revoked_at=timezone.now() - timedelta(days=1))
    before = ApiKey.objects.get(pk=already.pk).revoked_at

    response = admin_client.post(
        reverse("admin:notifications_apikey_changelist"),
        {"action": "revoke_selected", "_selected_action": [active.pk, already.pk]},
        follow=True,
    )

    assert response.status_code == 200
    assert ApiKey.objects.get(pk=active.pk).revoked_at is not None
    assert ApiKey.objects.get(pk=already.pk).revoked_at == before
    assert ApiKey.objects.get(pk=untouched.pk).revoked_at is None
    assert "Revoked 1 key. 1 was already revoked." in response.content.decode()


def test_it_rejects_a_template_field_the_channel_does_not_have(admin_client: Client) -> None:
    response = admin_client.post(
        reverse("admin:notifications_notificationtype_add"),
        {
            "key": "welcome",
            "name": "Welcome",
            "category": "transactional",
            "channels": ["sms"],
            "default_locale": "en",
            "quiet_hours_policy": "defer",
            "templates-TOTAL_FORMS": "1",
            "templates-INITIAL_FORMS": "0",
            "templates-0-channel": "sms",
            "templates-0-locale": "en",
            "templates-0-content": '{"subject": "Hi"}',
        },
    )

    assert response.status_code == 200
    assert "subject: unknown field; sms templates have text" in response.content.decode()
    assert not NotificationType.objects.filter(key="welcome").exists()


def test_it_creates_a_type_with_its_templates(admin_client: Client) -> None:
    response = admin_client.post(
        reverse("admin:notifications_notificationtype_add"),
        {
            "key": "welcome",
            "name": "Welcome",
            "category": "transactional",
            "channels": ["sms", "email"],
            "default_locale": "en",
            "quiet_hours_policy": "defer",
            "templates-TOTAL_FORMS": "2",
            "templates-INITIAL_FORMS": "0",
            "templates-0-channel": "sms",
            "templates-0-locale": "en",
            "templates-0-content": '{"text": "Hi {{ name }}"}',
            "templates-1-channel": "email",
            "templates-1-locale": "en",
            "templates-1-content": '{"subject": "Welcome", "text": "Hi {{ name }}"}',
        },
    )

    assert response.status_code == 302
    created = NotificationType.objects.get(key="welcome")
    assert created.channels == ["sms", "email"]
    assert {t.channel: t.content for t in created.templates.all()} == {
        "sms": {"text": "Hi {{ name }}"},
        "email": {"subject": "Welcome", "text": "Hi {{ name }}"},
    }
