"""Staff pages of the provider channels: dead letters and their replay, suppressions,
webhook endpoints, fallback rules, provider health (breakers), delivery charts, and the
SVG charts they draw."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from html import unescape
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from notifications.admin.charts import bar_chart, chart_has_data, chart_html, line_chart
from notifications.admin.deadletter_replay import deadletter_selection
from notifications.admin.pages import channel_charts
from notifications.models import (
    AttemptOutcome,
    Channel,
    DeadLetter,
    Delivery,
    DeliveryAttempt,
    DeliveryEvent,
    DeliveryStatus,
    Event,
    NotificationType,
    Recipient,
    Suppression,
    WebhookEndpoint,
)
from notifications.services.metrics import metrics_increment
from notifications.services.provider_health import breaker_record, provider_health
from realtime.redis_client import redis_key, redis_sync

HEALTH_URL = "admin:notifications_provider_health"
CHARTS_URL = "admin:notifications_delivery_charts"
DEADLETTERS_URL = "admin:notifications_deadletter_changelist"


# --- fixtures ---------------------------------------------------------------------------


@dataclass
class Letters:
    notification_type: NotificationType
    event: Event
    email_timeout: Delivery
    email_bounce: Delivery
    sms_timeout: Delivery
    replayed: Delivery

    def open_ids(self) -> set[int]:
        return set(DeadLetter.objects.filter(replayed_at__isnull=True).values_list("delivery_id", flat=True))


def _dead(
    event: Event, channel: str, reason: str, *, replayed: bool = False, notification_type: str = ""
) -> Delivery:
    recipient = Recipient.objects.create(external_id=f"user-{Recipient.objects.count() + 1}")
    delivery = Delivery.objects.create(
        event=event,
        recipient=recipient,
        channel=channel,
        status=DeliveryStatus.DEAD,
        reason=reason,
        attempts=5,
    )
    DeadLetter.objects.create(
        delivery=delivery,
        channel=channel,
        notification_type=notification_type or event.notification_type.key,
        reason=reason,
        attempts=5,
        replayed_at=timezone.now() if replayed else None,
        replay_count=1 if replayed else 0,
    )
    return delivery


@pytest.fixture
def letters(db: Any, settings: Any) -> Letters:
    # No provider for the channels: a replayed delivery is made pending again and is not
    # handed to a provider (no sandbox needed).
    settings.CHANNEL_PROVIDERS = {**settings.CHANNEL_PROVIDERS, "email": [], "sms": []}
    notification_type = NotificationType.objects.create(
        key="order.shipped", channels=[Channel.EMAIL, Channel.SMS]
    )
    NotificationType.objects.create(key="billing.failed", channels=[Channel.EMAIL])
    event = Event.objects.create(
        notification_type=notification_type, request_fingerprint="x", recipient_ids=[]
    )
    return Letters(
        notification_type=notification_type,
        event=event,
        email_timeout=_dead(event, Channel.EMAIL, "provider timeout after 10s"),
        email_bounce=_dead(event, Channel.EMAIL, "mailbox unknown", notification_type="billing.failed"),
        sms_timeout=_dead(event, Channel.SMS, "provider timeout after 10s"),
        replayed=_dead(event, Channel.EMAIL, "provider timeout after 10s", replayed=True),
    )


# Breaker state lives in Redis under the test run's namespace, which every xdist worker of
# the run shares (project/settings/test.py): the tests that wipe or count it run on one
# worker, one after another, or one's wipe lands between another's calls and its page.
BREAKERS = pytest.mark.xdist_group("provider-breakers")


@pytest.fixture
def clean_breakers(settings: Any) -> Iterator[None]:
    def wipe() -> None:
        keys = [
            redis_key(f"provider:{name}:{part}")
            for name in settings.PROVIDERS
            for part in ("breaker", "window", "health")
        ]
        redis_sync().delete(*keys)

    wipe()
    yield
    wipe()


def _user(*, staff: bool, perms: tuple[str, ...] = ()) -> User:
    user = User.objects.create_user(username=f"u{User.objects.count()}", password="x", is_staff=staff)
    for codename in perms:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    return user


def _client_for(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _messages(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


# --- access -----------------------------------------------------------------------------


@BREAKERS
def test_it_renders_the_provider_pages_for_staff(
    admin_client: Client, letters: Letters, clean_breakers: None
) -> None:
    health = admin_client.get(reverse(HEALTH_URL))
    charts = admin_client.get(reverse(CHARTS_URL))
    dead = admin_client.get(reverse(DEADLETTERS_URL))
    index = admin_client.get(reverse("admin:app_list", args=["notifications"]))
    deliveries = admin_client.get(reverse("admin:notifications_delivery_changelist"))

    assert [r.status_code for r in (health, charts, dead, index, deliveries)] == [200] * 5
    assert "<canvas data-chart=" in health.content.decode()
    assert "<canvas data-chart=" in charts.content.decode()
    for page in (index, deliveries):
        assert reverse(HEALTH_URL) in page.content.decode()
        assert reverse(CHARTS_URL) in page.content.decode()


@pytest.mark.parametrize(
    ("method", "url_name", "args"),
    [
        ("get", HEALTH_URL, []),
        ("get", CHARTS_URL, []),
        ("post", "admin:notifications_provider_breaker_reset", ["mailgun"]),
        ("post", "admin:notifications_deadletter_replay_matching", []),
        ("post", "admin:notifications_deadletter_replay_open", []),
    ],
)
def test_it_sends_anonymous_and_non_staff_users_to_the_admin_login(
    db: Any, method: str, url_name: str, args: list[str]
) -> None:
    url = reverse(url_name, args=args)
    for client in (Client(), _client_for(_user(staff=False))):
        response = getattr(client, method)(url)

        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))


@BREAKERS
def test_it_refuses_staff_without_the_model_permissions(letters: Letters, clean_breakers: None) -> None:
    bare = _client_for(_user(staff=True))
    viewer = _client_for(_user(staff=True, perms=("view_delivery", "view_deadletter")))

    assert bare.get(reverse(HEALTH_URL)).status_code == 403
    assert bare.get(reverse(CHARTS_URL)).status_code == 403
    assert viewer.get(reverse(HEALTH_URL)).status_code == 200
    assert (
        viewer.post(reverse("admin:notifications_provider_breaker_reset", args=["mailgun"])).status_code
        == 403
    )
    replay = viewer.post(
        reverse("admin:notifications_deadletter_replay_open"), {"confirm": "yes", "changelist_query": ""}
    )
    assert replay.status_code == 403
    assert letters.open_ids() == {letters.email_timeout.id, letters.email_bounce.id, letters.sms_timeout.id}
    assert "Replay all open" not in viewer.get(reverse(DEADLETTERS_URL)).content.decode()


# --- provider health --------------------------------------------------------------------


def _state_of(html: str, provider: str) -> str:
    row = re.search(rf'<tr data-provider="{re.escape(provider)}">(.*?)</tr>', html, re.S)
    assert row is not None, f"no row for {provider}"
    state = re.search(r'data-state="([a-z_]+)"', row.group(1))
    assert state is not None
    return state.group(1)


@BREAKERS
def test_it_shows_an_opened_breaker_and_resets_it(
    admin_client: Client, settings: Any, clean_breakers: None
) -> None:
    settings.BREAKER_MIN_CALLS = 3
    settings.BREAKER_OPEN_SECONDS = 300
    for _ in range(4):
        breaker_record(provider="mailgun", ok=False, latency_ms=5)

    before = admin_client.get(reverse(HEALTH_URL))
    reset = admin_client.post(
        reverse("admin:notifications_provider_breaker_reset", args=["mailgun"]), follow=True
    )

    html = before.content.decode()
    assert _state_of(html, "mailgun") == "open"
    assert _state_of(html, "smtp") == "closed"
    panel = next(p for p in before.context["panels"] if p.health.provider == "mailgun")
    assert (panel.health.calls, panel.health.failures, panel.health.opened_times) == (4, 4, 1)
    assert panel.error_percent == "100.0%"
    assert 'id="provider-mailgun"' in html and 'aria-label="mailgun: calls per minute"' in html
    assert reset.redirect_chain == [(reverse(HEALTH_URL), 302)]
    assert "The breaker of mailgun was reset" in reset.content.decode()
    assert _state_of(reset.content.decode(), "mailgun") == "closed"
    assert next(h for h in provider_health(minutes=5) if h.provider == "mailgun").state == "closed"


@BREAKERS
def test_it_resets_only_known_providers_and_only_by_post(admin_client: Client, clean_breakers: None) -> None:
    unknown = admin_client.post(reverse("admin:notifications_provider_breaker_reset", args=["nope"]))
    by_get = admin_client.get(reverse("admin:notifications_provider_breaker_reset", args=["mailgun"]))

    assert unknown.status_code == 404
    assert by_get.status_code == 405


@BREAKERS
def test_it_links_the_sandbox_page_only_when_a_provider_uses_the_sandbox(
    admin_client: Client, settings: Any, clean_breakers: None
) -> None:
    settings.PROVIDER_SANDBOX_HOST = "sandbox.internal"
    settings.PROVIDER_SANDBOX_HTTP_PORT = 8199
    settings.PROVIDERS = {
        "mailgun": {**settings.PROVIDERS["mailgun"], "sandbox": True},
        "webhook": {**settings.PROVIDERS["webhook"], "sandbox": False},
    }
    with_sandbox = admin_client.get(reverse(HEALTH_URL)).content.decode()
    settings.PROVIDERS = {"webhook": {**settings.PROVIDERS["webhook"], "sandbox": False}}
    without = admin_client.get(reverse(HEALTH_URL)).content.decode()

    assert 'href="http://sandbox.internal:8199/_sandbox/"' in with_sandbox
    assert "_sandbox/" not in without


# --- delivery charts --------------------------------------------------------------------


def test_it_charts_deliveries_per_channel_by_status(admin_client: Client, db: Any) -> None:
    metrics_increment({"deliveries:sms:sent": 3, "deliveries:sms:failed": 1})

    response = admin_client.get(reverse(CHARTS_URL))

    html = response.content.decode()
    assert response.status_code == 200
    assert '<meta http-equiv="refresh" content="30">' in html
    charts = {chart.channel: chart for chart in response.context["charts"]}
    assert list(charts) == Channel.values
    assert {"sent", "failed"} <= {s["name"] for s in charts["sms"].spec["series"]}
    assert dict(charts["sms"].totals)["sent"] >= 3
    assert html.count("<canvas data-chart=") == len(Channel.values)
    assert "notifications/charts.js" in html


@pytest.mark.parametrize(
    ("query", "minutes", "warned"),
    [
        ("", 60, False),
        ("?minutes=15", 15, False),
        ("?minutes=5", 15, True),
        ("?minutes=99999", 1440, True),
        ("?minutes=abc", 60, True),
    ],
)
def test_it_bounds_the_chart_window(
    admin_client: Client, db: Any, query: str, minutes: int, warned: bool
) -> None:
    response = admin_client.get(reverse(CHARTS_URL) + query)

    assert response.status_code == 200
    assert response.context["minutes"] == minutes
    assert any("expected 15 to 1440" in m for m in _messages(response)) == warned


def test_it_sums_long_windows_into_buckets() -> None:
    start = 1_700_000_040
    series = [(start + 60 * i, {"email:sent": 1, "push:dead": 2 if i == 5 else 0}) for i in range(12)]

    charts = {chart.channel: chart for chart in channel_charts(series, bucket_minutes=4)}

    assert charts["email"].totals == [("sent", 12)]
    assert charts["push"].totals == [("dead", 2)]
    assert "per 4 minutes" in str(charts["email"].chart)
    assert "No data" in str(charts["sms"].chart)


# --- dead letters -----------------------------------------------------------------------


def test_it_lists_dead_letters_with_filters_and_search(admin_client: Client, letters: Letters) -> None:
    url = reverse(DEADLETTERS_URL)

    def shown(**params: str) -> set[int]:
        response = admin_client.get(url, params)
        assert response.status_code == 200
        return {row.delivery_id for row in response.context["cl"].result_list}

    assert shown(channel__exact="sms") == {letters.sms_timeout.id}
    assert shown(replayed="no") == {letters.email_timeout.id, letters.email_bounce.id, letters.sms_timeout.id}
    assert shown(replayed="yes") == {letters.replayed.id}
    assert shown(notification_type="billing.failed") == {letters.email_bounce.id}
    assert shown(q="MAILBOX") == {letters.email_bounce.id}
    assert shown(q=str(letters.sms_timeout.id)) == {letters.sms_timeout.id}
    html = admin_client.get(url).content.decode()
    assert reverse("admin:notifications_delivery_change", args=[letters.sms_timeout.id]) in html
    assert "Replay all matching the current filter" in html


def test_it_replays_the_selected_dead_letters(admin_client: Client, letters: Letters) -> None:
    response = admin_client.post(
        reverse(DEADLETTERS_URL),
        {"action": "replay_selected", "_selected_action": [letters.email_timeout.id, letters.replayed.id]},
        follow=True,
    )

    assert "Replayed 1 dead letter. 1 was replayed already or no longer dead, and left alone." in _messages(
        response
    )
    assert letters.open_ids() == {letters.email_bounce.id, letters.sms_timeout.id}
    replayed = DeadLetter.objects.get(delivery=letters.email_timeout)
    assert replayed.replayed_at is not None and replayed.replay_count == 1
    assert Delivery.objects.get(id=letters.email_timeout.id).status != DeliveryStatus.DEAD
    assert Delivery.objects.get(id=letters.sms_timeout.id).status == DeliveryStatus.DEAD
    assert DeadLetter.objects.get(delivery=letters.replayed).replay_count == 1


def test_it_confirms_then_replays_the_dead_letters_matching_the_filter(
    admin_client: Client, letters: Letters
) -> None:
    url = reverse("admin:notifications_deadletter_replay_matching")
    query = "channel__exact=email&o=-5"

    confirm = admin_client.post(url, {"changelist_query": query})

    assert confirm.status_code == 200
    assert confirm.context["count"] == 2
    assert "channel is email" in confirm.content.decode()
    assert letters.open_ids() == {letters.email_timeout.id, letters.email_bounce.id, letters.sms_timeout.id}

    done = admin_client.post(url, {"changelist_query": query, "confirm": "yes"})

    assert done.status_code == 302
    assert done["Location"] == reverse(DEADLETTERS_URL) + "?channel__exact=email&o=-5"
    assert letters.open_ids() == {letters.sms_timeout.id}
    assert Delivery.objects.get(id=letters.email_bounce.id).status != DeliveryStatus.DEAD
    assert "Replayed 2 dead letters." in _messages(admin_client.get(done["Location"]))


@pytest.mark.parametrize(
    "query",
    [
        "q=timeout",
        "q=order.shipped",
        "q=mailbox&channel__exact=email",
        "notification_type=order.shipped&q=billing.failed",
        "replayed=no&q=TIMEOUT",
        "replayed=yes",
    ],
)
def test_it_replays_exactly_the_dead_letters_the_changelist_shows(
    admin_client: Client, letters: Letters, query: str
) -> None:
    listed = admin_client.get(f"{reverse(DEADLETTERS_URL)}?{query}").context["cl"].result_list
    shown_open = {row.delivery_id for row in listed if row.replayed_at is None}
    before = letters.open_ids()

    admin_client.post(
        reverse("admin:notifications_deadletter_replay_matching"),
        {"changelist_query": query, "confirm": "yes"},
    )

    assert before - letters.open_ids() == shown_open


def test_it_replays_a_dead_letter_found_by_its_delivery_id(admin_client: Client, letters: Letters) -> None:
    query = f"q={letters.sms_timeout.id}"

    admin_client.post(
        reverse("admin:notifications_deadletter_replay_matching"),
        {"changelist_query": query, "confirm": "yes"},
    )

    assert letters.open_ids() == {letters.email_timeout.id, letters.email_bounce.id}


def test_it_refuses_a_filter_it_cannot_replay_exactly(admin_client: Client, letters: Letters) -> None:
    response = admin_client.post(
        reverse("admin:notifications_deadletter_replay_matching"),
        {"changelist_query": "attempts__gte=3", "confirm": "yes"},
        follow=True,
    )

    assert "Cannot replay by attempts__gte: only channel, type, date and search." in _messages(response)
    assert len(letters.open_ids()) == 3


def test_it_turns_the_date_filter_into_the_replay_window(letters: Letters) -> None:
    from django.http import QueryDict

    today = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    params = QueryDict(mutable=True)
    params.update({"created_at__gte": str(today), "created_at__lt": str(today + timedelta(days=1))})

    selection = deadletter_selection(params)

    assert selection.base.created_after == today
    assert selection.base.created_before == today + timedelta(days=1)
    assert set(selection.rows().values_list("delivery_id", flat=True)) == letters.open_ids()


def test_it_confirms_then_replays_every_open_dead_letter(admin_client: Client, letters: Letters) -> None:
    url = reverse("admin:notifications_deadletter_replay_open")

    confirm = admin_client.post(url, {"changelist_query": "channel__exact=sms"})
    done = admin_client.post(url, {"changelist_query": "channel__exact=sms", "confirm": "yes"}, follow=True)
    again = admin_client.post(url, {"changelist_query": ""})

    assert confirm.context["count"] == 3 and confirm.context["everything"] is True
    assert "Replayed 3 dead letters." in _messages(done)
    assert letters.open_ids() == set()
    assert "Nothing to replay" in again.content.decode()
    assert all(letter.replayed_at is not None for letter in DeadLetter.objects.all()), (
        "every letter is replayed"
    )


def test_it_shows_the_error_history_on_the_dead_letter_page_and_replays_it(
    admin_client: Client, letters: Letters
) -> None:
    delivery = letters.email_timeout
    for number, outcome in ((1, AttemptOutcome.TRANSIENT), (2, AttemptOutcome.TRANSIENT)):
        DeliveryAttempt.objects.create(
            delivery=delivery,
            number=number,
            outcome=outcome,
            provider="mailgun",
            target="ada@example.com",
            error=f"timeout <{number}>",
            latency_ms=10_000,
        )
    url = reverse("admin:notifications_deadletter_change", args=[delivery.id])

    page = admin_client.get(url)
    edit = admin_client.post(url, {"reason": "changed"})
    replay = admin_client.post(
        reverse("admin:notifications_deadletter_replay_one", args=[delivery.id]), follow=True
    )

    html = page.content.decode()
    assert page.status_code == 200
    assert html.count('<tr class="attempt"') == 2
    assert "ada@example.com" in html and "timeout &lt;2&gt;" in html and "10000 ms" in html
    assert "Replay this delivery" in html
    assert edit.status_code == 403
    assert admin_client.get(reverse("admin:notifications_deadletter_add")).status_code == 403
    assert replay.redirect_chain == [(url, 302)]
    assert "Replayed 1 dead letter." in _messages(replay)
    assert "Replay this delivery" not in replay.content.decode()
    assert DeadLetter.objects.get(delivery=delivery).replayed_at is not None


# --- suppressions, webhooks, fallbacks, delivery page -----------------------------------


def test_it_adds_a_manual_suppression_normalised(admin_client: Client) -> None:
    add = reverse("admin:notifications_suppression_add")

    email = admin_client.post(add, {"kind": "email", "address": "  Ada@Example.COM ", "reason": "manual"})
    phone = admin_client.post(add, {"kind": "phone", "address": "+1 (415) 555-0100", "reason": "manual"})
    duplicate = admin_client.post(add, {"kind": "email", "address": "ADA@example.com", "reason": "manual"})
    bad = admin_client.post(add, {"kind": "phone", "address": "0415 555", "reason": "manual"})

    assert email.status_code == phone.status_code == 302
    assert set(Suppression.objects.values_list("kind", "address", "reason")) == {
        ("email", "ada@example.com", "manual"),
        ("phone", "+14155550100", "manual"),
    }
    assert duplicate.status_code == 200 and "already exists" in duplicate.content.decode()
    assert "is not a valid phone number in international form" in bad.content.decode()
    found = admin_client.get(reverse("admin:notifications_suppression_changelist"), {"q": "ADA@EXAMPLE.COM"})
    assert [s.address for s in found.context["cl"].result_list] == ["ada@example.com"]


def test_it_deletes_a_suppression(admin_client: Client) -> None:
    gone = Suppression.objects.create(kind="email", address="gone@example.com", reason="hard_bounce")
    kept = Suppression.objects.create(kind="email", address="kept@example.com", reason="complaint")

    response = admin_client.post(
        reverse("admin:notifications_suppression_delete", args=[gone.pk]), {"post": "yes"}
    )
    edit = admin_client.post(
        reverse("admin:notifications_suppression_change", args=[kept.pk]),
        {"kind": "email", "address": "other@example.com", "reason": "manual"},
    )

    assert response.status_code == 302
    assert list(Suppression.objects.values_list("address", flat=True)) == ["kept@example.com"]
    assert edit.status_code == 403


def test_it_never_shows_a_webhook_secret_back(admin_client: Client, db: Any) -> None:
    recipient = Recipient.objects.create(external_id="hooked")
    add = reverse("admin:notifications_webhookendpoint_add")
    form = {
        "recipient": recipient.pk,
        "kind": "generic",
        "url": "https://hooks.example.com/a",
        "active": "on",
    }

    unsigned = admin_client.post(add, form)
    created = admin_client.post(add, {**form, "new_secret": "whsec-very-secret-1"})
    endpoint = WebhookEndpoint.objects.get()
    change = reverse("admin:notifications_webhookendpoint_change", args=[endpoint.pk])
    page = admin_client.get(change).content.decode()
    kept = admin_client.post(change, {**form, "url": "https://hooks.example.com/b"})
    endpoint.refresh_from_db()

    assert "a signing secret is required for generic webhooks" in unsigned.content.decode()
    assert created.status_code == 302
    assert "whsec-very-secret-1" not in page
    assert (
        "whsec-very-secret-1"
        not in admin_client.get(reverse("admin:notifications_webhookendpoint_changelist")).content.decode()
    )
    assert kept.status_code == 302
    assert (endpoint.url, endpoint.secret) == ("https://hooks.example.com/b", "whsec-very-secret-1")


def _type_form(fallbacks: str) -> dict[str, Any]:
    return {
        "key": "welcome",
        "name": "Welcome",
        "category": "transactional",
        "channels": ["push", "sms"],
        "default_locale": "en",
        "quiet_hours_policy": "defer",
        "fallbacks": fallbacks,
        "templates-TOTAL_FORMS": "2",
        "templates-INITIAL_FORMS": "0",
        "templates-0-channel": "push",
        "templates-0-locale": "en",
        "templates-0-content": '{"title": "Welcome", "body": "Hi"}',
        "templates-1-channel": "sms",
        "templates-1-locale": "en",
        "templates-1-content": '{"text": "Welcome"}',
    }


def test_it_edits_fallback_rules_and_rejects_bad_ones(admin_client: Client, db: Any) -> None:
    add = reverse("admin:notifications_notificationtype_add")

    bad = admin_client.post(
        add,
        _type_form('[{"from": "pager", "to": "sms"}, {"from": "push", "to": "sms", "after_seconds": -1}]'),
    )
    not_a_channel_of_the_type = admin_client.post(
        add, _type_form('[{"from": "email", "to": "sms", "after_seconds": 60}]')
    )
    good = admin_client.post(add, _type_form('[{"from": "push", "to": "sms", "after_seconds": 60}]'))

    html = bad.content.decode()
    assert "fallbacks[0].from: &#x27;pager&#x27; is not a channel" in html
    assert "fallbacks[0].after_seconds: this field is required" in html
    assert "fallbacks[1].after_seconds: must be a whole number of seconds from 0 to 86400, got -1" in html
    assert (
        "fallbacks[0].from: channel &#x27;email&#x27; is not among the type&#x27;s channels (push, sms)"
        in not_a_channel_of_the_type.content.decode()
    )
    assert good.status_code == 302
    created = NotificationType.objects.get(key="welcome")
    assert created.fallbacks == [{"from": "push", "to": "sms", "after_seconds": 60}]
    listed = admin_client.get(reverse("admin:notifications_notificationtype_changelist")).content.decode()
    assert "push → sms after 60s" in listed


def test_it_shows_attempts_and_tracking_events_on_the_delivery_page(
    admin_client: Client, letters: Letters
) -> None:
    delivery = letters.email_bounce
    DeliveryAttempt.objects.create(
        delivery=delivery,
        number=1,
        outcome=AttemptOutcome.SUCCESS,
        provider="mailgun",
        target="bob@example.com",
        detail={"status": 200},
    )
    DeliveryEvent.objects.create(delivery=delivery, kind="bounced", provider="mailgun", detail={"code": 550})

    response = admin_client.get(reverse("admin:notifications_delivery_change", args=[delivery.id]))

    html = response.content.decode()
    assert response.status_code == 200
    assert "bob@example.com" in html and "bounced" in html and "550" in html
    assert "tracking events (provider receipts)" in html.lower()


# --- admin/charts.py --------------------------------------------------------------------


def test_it_escapes_every_text_in_a_chart() -> None:
    spec = line_chart(
        {'<script>alert("x")</script>': [1.0], "<b>&": [2.0]},
        labels=['"quoted" <title>'],
        colors={"<b>&": '"red"><script>'},
        title='"quoted" <title>',
    )
    html = str(chart_html(spec))
    assert "<script>" not in html and "<b>" not in html and '"red">' not in html
    assert 'aria-label="&quot;quoted&quot; &lt;title&gt;"' in html
    # The spec travels whole in the attribute and comes back as it was.
    attribute = re.search(r'data-chart="([^"]*)"', html)
    assert attribute is not None
    assert json.loads(unescape(attribute.group(1))) == spec


@pytest.mark.parametrize(
    "series",
    [{}, {"calls": []}, {"calls": [None, None]}, {"calls": [0.0, 0.0]}],
    ids=["none", "empty", "gaps", "zeros"],
)
def test_it_says_no_data_when_nothing_is_to_be_drawn(series: dict[str, list[float | None]]) -> None:
    for spec in (
        line_chart(series, labels=["a", "b"], title="Empty"),
        bar_chart(series, labels=["a", "b"], title="Empty"),
    ):
        assert not chart_has_data(spec)
        assert "No data in this window" in str(chart_html(spec))


def test_it_keeps_gaps_draws_negatives_at_zero_and_fits_the_labels() -> None:
    spec = line_chart(
        {"latency": [5.0, -1.0, None, 7.0, 9.0, 11.0]}, labels=list("abcde"), title="t", unit="ms"
    )
    assert spec["series"] == [{"name": "latency", "color": "#2f7ed8", "values": [5.0, 0.0, None, 7.0, 9.0]}]
    assert (spec["type"], spec["unit"], spec["stacked"]) == ("line", "ms", False)
    short = line_chart({"calls": [1.0]}, labels=["a", "b", "c"], title="t")
    assert short["series"][0]["values"] == [1.0, None, None]


def test_bars_are_stacked_and_keep_their_colours() -> None:
    spec = bar_chart(
        {"ok": [3.0, 0.0], "failed": [1.0, 0.0]},
        labels=["12:00", "12:01"],
        colors={"failed": "#e53935"},
        title="t",
    )
    assert spec["type"] == "bar" and spec["stacked"] is True
    assert [(s["name"], s["color"]) for s in spec["series"]] == [("ok", "#2f7ed8"), ("failed", "#e53935")]
