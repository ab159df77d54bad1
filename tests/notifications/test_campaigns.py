"""Campaigns (notifications/services/campaigns.py) and segments (services/segments.py):
creation judged field by field, a start refused until the data satisfies the template,
the audience snapshotted into stable A/B variants, pause holding what is not yet sent,
resume releasing it, cancel suppressing it, progress, marketing caps, the API, the admin
and the command."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from notifications.models import (
    Campaign,
    CampaignStatus,
    CampaignVariant,
    Delivery,
    DeliverySchedule,
    Device,
    InboxItem,
    OutboxMessage,
    Subscription,
    Topic,
)
from notifications.services.campaigns import (
    CampaignRefused,
    campaign_cancel,
    campaign_create,
    campaign_pause,
    campaign_progress,
    campaign_resume,
    campaign_start,
    campaign_timeline,
)
from notifications.services.catalog import notification_type_save
from notifications.services.fanout import event_fanout
from notifications.services.scheduling import deliveries_release_due
from notifications.services.segments import segment_count, segment_save
from notifications.services.validation import ValidationFailed
from tests.notifications.factories import RecipientFactory

pytestmark = pytest.mark.django_db

OFFER = {
    "inapp": {"title": "{{ data.headline }}", "body": "Code {{ data.code }}", "url": ""},
    "email": {"subject": "{{ data.headline }}", "text": "Code {{ data.code }}"},
}
VARIABLES = {
    "headline": {"type": "string", "example": "Winter sale"},
    "code": {"type": "string", "example": "SNOW"},
}


def _marketing_type(channels: list[str] | None = None) -> Any:
    channels = channels or ["inapp"]
    return notification_type_save(
        key=f"offers.{'-'.join(channels)}.{Campaign.objects.count()}.{Topic.objects.count()}",
        fields={"category": "marketing", "channels": channels},
        templates={c: OFFER[c] for c in channels},
        variables=VARIABLES,
    )


def _audience(count: int, **fields: Any) -> Topic:
    topic = Topic.objects.create(key=f"audience.{Topic.objects.count()}.{count}")
    for _ in range(count):
        Subscription.objects.create(topic=topic, recipient=RecipientFactory(**fields))
    return topic


def _campaign(topic: Topic, ntype: Any = None, **extra: Any) -> Campaign:
    return campaign_create(
        name="Winter sale",
        type_key=(ntype or _marketing_type()).key,
        audience={"topic": topic.key},
        data={"headline": "Winter sale", "code": "SNOW"},
        **extra,
    )


def test_creation_names_every_wrong_field_and_stores_nothing() -> None:
    inapp = _marketing_type()
    with pytest.raises(ValidationFailed) as refused:
        campaign_create(
            name="",
            type_key=inapp.key,
            audience={"topic": "nope"},
            channels=["sms"],
            throttle_per_second=0,
            variants=[{"name": "A", "weight": 0}, {"name": "A", "template_version": 99}],
        )
    errors = refused.value.errors
    assert set(errors) == {
        "name",
        "audience.topic",
        "channels",
        "throttle_per_second",
        "variants[0].weight",
        "variants[1].name",
        "variants[1].template_version",
    }
    assert "not channels of" in errors["channels"][0]
    assert Campaign.objects.count() == 0
    with pytest.raises(ValidationFailed) as bad_audience:
        campaign_create(name="x", type_key="missing", audience={"segment": 12345})
    assert set(bad_audience.value.errors) == {"type", "audience.segment"}


def test_a_start_is_refused_until_the_data_satisfies_the_template() -> None:
    topic = _audience(2)
    campaign = campaign_create(
        name="Incomplete", type_key=_marketing_type().key, audience={"topic": topic.key}, data={"headline": 5}
    )
    with pytest.raises(ValidationFailed) as refused:
        campaign_start(campaign=campaign)
    assert refused.value.errors == {
        "data.headline": ["must be text, got 5"],
        "data.code": ["required by the template: text"],
    }
    campaign.refresh_from_db()
    assert campaign.status == "draft" and not OutboxMessage.objects.exists()


def test_a_b_variants_split_the_audience_stably_by_weight_and_each_gets_its_own_data(
    django_capture_on_commit_callbacks: Any,
) -> None:
    topic = _audience(200)
    campaign = _campaign(
        topic,
        throttle_per_second=10_000,
        variants=[
            {"name": "A", "weight": 1, "data": {"headline": "Save 10%"}},
            {"name": "B", "weight": 3, "data": {"headline": "Save 20%"}},
        ],
    )
    with django_capture_on_commit_callbacks(execute=True):
        started = campaign_start(campaign=campaign)

    assert (started.status, started.audience_count) == ("running", 200)
    variants = {v.name: v for v in CampaignVariant.objects.filter(campaign=campaign)}
    assert variants["A"].audience_count + variants["B"].audience_count == 200
    assert 25 <= variants["A"].audience_count <= 75, "about a quarter"
    # The variant of a recipient is a function of the campaign and the recipient alone.
    with connection.cursor() as db:
        db.execute(
            """SELECT s.recipient_id, s.topic_id,
                      mod(mod(hashtextextended(%s || ':' || s.recipient_id, 0), 4) + 4, 4)
               FROM notifications_subscription s WHERE s.topic_id = ANY(%s)""",
            [f"campaign:{campaign.id}", [variants["A"].topic_id, variants["B"].topic_id]],
        )
        for _, topic_id, bucket in db.fetchall():
            assert topic_id == (variants["A"].topic_id if bucket < 1 else variants["B"].topic_id)
    titles = {
        i.recipient_id: i.title for i in InboxItem.objects.filter(recipient__subscriptions__topic=topic)
    }
    assert len(titles) == 200 and set(titles.values()) == {"Save 10%", "Save 20%"}

    total, per_variant = campaign_progress(campaign=started)
    assert (total.audience, total.sent, total.delivered, total.failed, total.suppressed) == (
        200,
        200,
        200,
        0,
        0,
    )
    assert per_variant["A"].sent == variants["A"].audience_count
    started.refresh_from_db()
    assert started.status == "completed" and started.finished_at is not None
    # The chart over time counts every send once, in its bucket.
    starts, timeline = campaign_timeline(campaign=started)
    assert starts and sum(timeline["sent"]) == 200 and sum(timeline["delivered"]) == 200
    assert sum(timeline["failed"]) == sum(timeline["clicked"]) == 0


def test_a_pause_holds_what_is_not_yet_sent_and_a_resume_releases_it_once() -> None:
    email = _marketing_type(["email"])
    topic = _audience(12, email="someone@example.com")
    campaign = _campaign(topic, email, throttle_per_second=5)
    campaign_start(campaign=campaign)  # its fan-out is not run: the test runs it
    outbox = OutboxMessage.objects.get(event__campaign=campaign)

    event_fanout(outbox_id=outbox.id)  # page by page (tasks run eagerly here), each at 5 per second
    assert Delivery.objects.filter(event__campaign=campaign, status="pending").count() == 12

    campaign_pause(campaign=campaign)
    held = Delivery.objects.filter(event__campaign=campaign)
    assert {(d.status, d.reason) for d in held} == {("scheduled", "campaign paused")}
    assert campaign_progress(campaign=campaign)[0].held == 12
    with pytest.raises(CampaignRefused, match="only a running or scheduled one pauses"):
        campaign_pause(campaign=campaign)

    campaign_resume(campaign=campaign)
    assert {(d.status, d.reason) for d in held.all()} == {("pending", "")}
    assert held.count() == 12

    campaign_cancel(campaign=campaign)
    assert {(d.status, d.reason) for d in held.all()} == {("suppressed", "campaign cancelled")}
    total, _ = campaign_progress(campaign=campaign)
    assert (total.suppressed, total.sent) == (12, 0)
    with pytest.raises(CampaignRefused, match="cancelled already"):
        campaign_cancel(campaign=campaign)


def test_a_paused_campaign_stores_no_page_and_resumes_where_it_stopped(
    django_capture_on_commit_callbacks: Any,
) -> None:
    topic = _audience(30)
    campaign = _campaign(topic, throttle_per_second=10)
    campaign_start(campaign=campaign)
    outbox = OutboxMessage.objects.get(event__campaign=campaign)
    campaign_pause(campaign=campaign)

    event_fanout(outbox_id=outbox.id)  # a fan-out task already queued

    assert not Delivery.objects.filter(event__campaign=campaign).exists()
    outbox.refresh_from_db()
    assert outbox.available_at > timezone.now() + timedelta(days=365), "parked until a resume"
    with django_capture_on_commit_callbacks(execute=True):
        campaign_resume(campaign=campaign)
    assert Delivery.objects.filter(event__campaign=campaign).count() == 30
    assert InboxItem.objects.filter(recipient__subscriptions__topic=topic).count() == 30


def test_marketing_caps_stop_a_second_marketing_message_the_same_day(
    django_capture_on_commit_callbacks: Any, settings: Any
) -> None:
    settings.MARKETING_CAPS = "1/86400,5/604800"
    topic = _audience(3)
    for name in ("first", "second"):
        campaign = campaign_create(
            name=name,
            type_key=_marketing_type().key,
            audience={"topic": topic.key},
            data={"headline": name, "code": "X"},
        )
        with django_capture_on_commit_callbacks(execute=True):
            campaign_start(campaign=campaign)
    second = Delivery.objects.filter(event__campaign__name="second")
    assert {(d.status, d.reason) for d in second} == {("suppressed", "marketing cap: 1 per day")}
    assert Delivery.objects.filter(event__campaign__name="first", status="delivered").count() == 3


def test_segments_match_on_attributes_topics_and_recent_activity() -> None:
    launches = Topic.objects.create(key="launches")
    quebec = RecipientFactory(locale="fr-CA", email="a@shop.example")
    paris = RecipientFactory(locale="fr", email="b@other.example")
    RecipientFactory(locale="en", email="c@shop.example")
    Subscription.objects.create(topic=launches, recipient=quebec)
    Device.objects.create(recipient=paris, platform="fcm", token="t-1")

    assert segment_count({"locales": ["fr"]}) == 2
    assert segment_count({"locales": ["fr"], "email_domain": "shop.example"}) == 1
    assert segment_count({"topics": ["launches"]}) == 1
    assert segment_count({"has": ["device"]}) == 1
    assert segment_count({"active_within_days": 30}) == 0
    with pytest.raises(ValidationFailed) as refused:
        segment_count(
            {"locales": "fr", "has": ["fax"], "topics": ["nope"], "mood": 1, "active_within_days": 0}
        )
    assert set(refused.value.errors) == {
        "filters.locales",
        "filters.has",
        "filters.topics",
        "filters.mood",
        "filters.active_within_days",
    }


def test_a_campaign_to_a_segment_sends_to_those_matching_when_it_starts(
    django_capture_on_commit_callbacks: Any,
) -> None:
    french = [RecipientFactory(locale="fr") for _ in range(3)]
    RecipientFactory(locale="en")
    segment = segment_save(name="French", filters={"locales": ["fr"]})
    campaign = campaign_create(
        name="Soldes",
        type_key=_marketing_type().key,
        audience={"segment": segment.id},
        data={"headline": "Soldes", "code": "HIVER"},
    )
    with django_capture_on_commit_callbacks(execute=True):
        campaign_start(campaign=campaign)
    assert set(InboxItem.objects.filter(title="Soldes").values_list("recipient_id", flat=True)) == {
        r.id for r in french
    }


def test_the_api_creates_starts_pauses_resumes_and_cancels_with_progress(
    service_client: Any, django_capture_on_commit_callbacks: Any
) -> None:
    topic = _audience(4)
    ntype = _marketing_type()
    body = {
        "name": "API sale",
        "type": ntype.key,
        "audience": {"topic": topic.key},
        "data": {"headline": "API sale", "code": "API"},
        "throttle_per_second": 50,
    }
    created = service_client.post("/api/v1/campaigns/", body, format="json")
    assert created.status_code == 201, created.content
    campaign_id = created.json()["id"]
    assert created.json()["status"] == "draft"
    bad = service_client.post("/api/v1/campaigns/", {**body, "audience": {"topic": "nope"}}, format="json")
    assert bad.status_code == 400 and "audience.topic" in bad.json()["errors"]

    assert service_client.post(f"/api/v1/campaigns/{campaign_id}/resume/").status_code == 409
    with django_capture_on_commit_callbacks(execute=True):
        started = service_client.post(f"/api/v1/campaigns/{campaign_id}/start/")
    assert started.status_code == 200 and started.json()["status"] in ("running", "completed")
    progress = service_client.get(f"/api/v1/campaigns/{campaign_id}/").json()["progress"]
    assert {k: progress[k] for k in ("audience", "sent", "delivered", "failed", "suppressed")} == {
        "audience": 4,
        "sent": 4,
        "delivered": 4,
        "failed": 0,
        "suppressed": 0,
    }
    again = service_client.post(f"/api/v1/campaigns/{campaign_id}/start/")
    assert again.status_code == 409 and "only a draft starts" in again.json()["errors"]["status"][0]
    assert service_client.get("/api/v1/campaigns/999999/").status_code == 404

    segment = service_client.post(
        "/api/v1/segments/", {"name": "Everyone French", "filters": {"locales": ["fr"]}}, format="json"
    )
    assert segment.status_code == 201 and segment.json()["count"] == 0
    refused = service_client.post(
        "/api/v1/segments/", {"name": "x", "filters": {"has": ["fax"]}}, format="json"
    )
    assert refused.status_code == 400 and "filters.has" in refused.json()["errors"]


def test_the_admin_creates_a_campaign_with_errors_beside_fields_and_runs_it(
    admin_client: Client, django_capture_on_commit_callbacks: Any
) -> None:
    topic = _audience(3)
    ntype = _marketing_type()
    add = reverse("admin:notifications_campaign_add")
    form = {
        "name": "Admin sale",
        "notification_type": ntype.pk,
        "audience_topic": topic.pk,
        "data": '{"headline": "Admin sale", "code": "ADM"}',
        "throttle_per_second": 0,
        "variants": "[]",
    }
    refused = admin_client.post(add, form)
    assert refused.status_code == 200
    assert "must be a whole number of sends per second" in refused.content.decode()

    created = admin_client.post(add, {**form, "throttle_per_second": 100})
    assert created.status_code == 302, created.content.decode()[:2000]
    campaign = Campaign.objects.get(name="Admin sale")
    page = admin_client.get(
        reverse("admin:notifications_campaign_change", args=[campaign.pk])
    ).content.decode()
    assert 'id="campaign-live"' in page and 'name="_start"' in page
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(reverse("admin:notifications_campaign_change", args=[campaign.pk]), {"_start": "1"})
    progress = admin_client.get(reverse("admin:notifications_campaign_progress", args=[campaign.pk])).json()
    assert progress["progress"]["sent"] == 3

    count = admin_client.post(
        reverse("admin:notifications_segment_count"),
        {"filters": '{"locales": ["en"]}'},
        content_type="application/json",
    ).json()
    assert isinstance(count["count"], int) and count["count"] >= 3
    broken = admin_client.post(
        reverse("admin:notifications_segment_count"),
        {"filters": '{"has": ["fax"]}'},
        content_type="application/json",
    )
    assert broken.status_code == 400 and "filters.has" in broken.json()["errors"]


def test_the_command_starts_a_campaign_and_shows_its_progress(
    django_capture_on_commit_callbacks: Any,
) -> None:
    topic = _audience(2)
    campaign = _campaign(topic)
    out = StringIO()
    with django_capture_on_commit_callbacks(execute=True):
        call_command("campaign", str(campaign.id), "--start", stdout=out)
    call_command("campaign", str(campaign.id), "--follow", "--interval", "0.01", stdout=out)
    text = out.getvalue()
    assert "Winter sale: running" in text
    assert "100% of 2: 2 sent, 2 delivered, 0 failed, 0 suppressed" in text


def test_a_retry_or_a_quiet_hours_wait_of_a_paused_campaign_waits_for_its_resume() -> None:
    email = _marketing_type(["email"])
    topic = _audience(2, email="someone@example.com")
    campaign = _campaign(topic, email)
    campaign_start(campaign=campaign)
    event_fanout(outbox_id=OutboxMessage.objects.get(event__campaign=campaign).id)
    retrying = Delivery.objects.filter(event__campaign=campaign).first()
    assert retrying is not None
    due = timezone.now() - timedelta(seconds=1)
    Delivery.objects.filter(id=retrying.id).update(status="retrying", due_at=due)
    DeliverySchedule.objects.create(delivery=retrying, due_at=due)

    campaign_pause(campaign=campaign)
    assert deliveries_release_due() == 0, "the retry waits for the resume"

    campaign_resume(campaign=campaign)
    assert DeliverySchedule.objects.get(delivery=retrying).due_at == due
    assert deliveries_release_due() == 1

    campaign_cancel(campaign=campaign)
    assert set(Delivery.objects.filter(event__campaign=campaign).values_list("status", "reason")) == {
        ("suppressed", "campaign cancelled")
    }


def test_a_campaigns_in_app_batches_and_sends_go_to_the_campaign_queue(
    django_capture_on_commit_callbacks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages above INAPP_INLINE_MAX hand their in-app rows to dispatch batches: a
    campaign's are enqueued on its own queue, like its provider sends."""
    from notifications.services import dispatch

    topic = _audience(60, email="someone@example.com")
    campaign = _campaign(topic, _marketing_type(["inapp", "email"]), throttle_per_second=1000)
    queued: list[tuple[str, str | None]] = []
    real = dispatch.enqueue

    def recorded(
        name: str, *, args: tuple[Any, ...], queue: str | None = None, countdown: float | None = None
    ) -> bool:
        queued.append((name.rsplit(".", 1)[-1], queue))
        return real(name, args=args, queue=queue, countdown=countdown)

    monkeypatch.setattr(dispatch, "enqueue", recorded)
    with django_capture_on_commit_callbacks(execute=True):
        campaign_start(campaign=campaign)

    assert {"inapp_dispatch_task", "provider_dispatch_task"} <= {name for name, _ in queued}
    assert {queue for _, queue in queued} == {"campaign"}
    assert InboxItem.objects.filter(recipient__subscriptions__topic=topic).count() == 60


def test_a_large_campaigns_counts_are_shared_for_a_few_seconds_and_a_small_ones_are_not() -> None:
    from django.core.cache import cache

    from notifications.services.campaigns import PROGRESS_SHARE_RECIPIENTS

    email = _marketing_type(["email"])
    campaign = _campaign(_audience(4, email="someone@example.com"), email)
    campaign_start(campaign=campaign)
    event_fanout(outbox_id=OutboxMessage.objects.get(event__campaign=campaign).id)
    shared = [f"campaign:{campaign.pk}:counts:{status}" for status in CampaignStatus.values]
    cache.delete_many(shared)  # what an earlier run with the same ids may have left
    assert campaign_progress(campaign=campaign)[0].planned == 4

    Delivery.objects.filter(event__campaign=campaign).first().delete()  # type: ignore[union-attr]
    assert campaign_progress(campaign=campaign)[0].planned == 3, "a small campaign is counted on each call"

    campaign.audience_count = 3 * PROGRESS_SHARE_RECIPIENTS  # as if it were large: shared for 3 s
    try:
        assert campaign_progress(campaign=campaign)[0].planned == 3
        Delivery.objects.filter(event__campaign=campaign).first().delete()  # type: ignore[union-attr]
        assert campaign_progress(campaign=campaign)[0].planned == 3, "shared: the count of a moment ago"
        campaign.status = CampaignStatus.PAUSED
        assert campaign_progress(campaign=campaign)[0].planned == 2, "a new status counts afresh"
    finally:
        cache.delete_many(shared)
