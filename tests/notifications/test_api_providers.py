"""The v1 API of the provider channels: dead letters, the suppression list, webhook
endpoints, fallback rules, the origin IP of events and the provider of deliveries."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from notifications.models import (
    DeadLetter,
    Delivery,
    DeliveryAttempt,
    Event,
    NotificationType,
    Recipient,
    Suppression,
    WebhookEndpoint,
)
from tests.notifications.factories import NotificationTypeFactory, RecipientFactory

pytestmark = pytest.mark.django_db

SECRET = "whsec_0123456789abcdef"


def _errors(response: Any) -> dict[str, Any]:
    return response.json()["errors"]


def _dead_letter(
    *,
    channel: str = "email",
    notification_type: NotificationType | None = None,
    recipient: Recipient | None = None,
    reason: str = "retries exhausted: mailgun answered 503",
    created_at: datetime | None = None,
    attempts: int = 3,
) -> DeadLetter:
    """A delivery whose retries ran out, with its attempt log and dead letter."""
    nt = notification_type or NotificationTypeFactory()
    recipient = recipient or RecipientFactory()
    event = Event.objects.create(
        notification_type=nt, request_fingerprint="0" * 64, recipient_ids=[recipient.id]
    )
    delivery = Delivery.objects.create(
        event=event,
        recipient=recipient,
        channel=channel,
        status="dead",
        reason=reason,
        attempts=attempts,
        provider="mailgun",
    )
    DeliveryAttempt.objects.bulk_create(
        DeliveryAttempt(
            delivery=delivery,
            number=number,
            outcome="transient",
            error=f"503 on try {number}",
            provider="mailgun",
            target="ana@example.com",
        )
        for number in range(attempts, 0, -1)
    )
    return DeadLetter.objects.create(
        delivery=delivery,
        channel=channel,
        notification_type=nt.key,
        reason=reason,
        attempts=attempts,
        created_at=created_at or timezone.now(),
    )


@pytest.fixture
def no_providers(settings: Any) -> None:
    """No channel has a provider: a replayed delivery is never sent to the sandbox."""
    settings.CHANNEL_PROVIDERS = {}


def _assert_replayed(letter: DeadLetter) -> None:
    letter.refresh_from_db()
    delivery = Delivery.objects.get(id=letter.delivery_id)
    assert letter.replayed_at is not None and letter.replay_count == 1
    # A fresh retry budget, and out of the dead state: waiting to be sent, or settled at
    # once because no provider is configured for the channel.
    assert delivery.retry_base == delivery.attempts == letter.attempts
    assert delivery.status == "pending" or (
        delivery.status == "failed" and "no provider" in delivery.reason
    ), (delivery.status, delivery.reason)


# --- authentication -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/v1/dead-letters/"),
        ("post", "/api/v1/dead-letters/replay/"),
        ("post", "/api/v1/dead-letters/1/replay/"),
        ("get", "/api/v1/suppressions/"),
        ("post", "/api/v1/suppressions/"),
        ("delete", "/api/v1/suppressions/email/a@example.com/"),
        ("get", "/api/v1/recipients/u-1/webhooks/"),
        ("post", "/api/v1/recipients/u-1/webhooks/"),
        ("delete", "/api/v1/recipients/u-1/webhooks/1/"),
    ],
)
def test_it_refuses_provider_endpoints_without_a_key(client, method, path):
    response = getattr(client, method)(path, {}, content_type="application/json")
    assert response.status_code == 401 and "authorization" in _errors(response)


# --- dead letters ---------------------------------------------------------------------------


def test_it_lists_open_dead_letters_newest_first_with_their_attempts(service_client):
    now = timezone.now()
    older = _dead_letter(created_at=now - timedelta(hours=2))
    newer = _dead_letter(channel="sms", created_at=now - timedelta(hours=1))
    replayed = _dead_letter()
    DeadLetter.objects.filter(pk=replayed.pk).update(replayed_at=now, replay_count=1)

    response = service_client.get("/api/v1/dead-letters/")

    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["delivery_id"] for r in results] == [newer.delivery_id, older.delivery_id]
    item = results[1]
    delivery = Delivery.objects.select_related("recipient").get(id=older.delivery_id)
    assert {k: item[k] for k in ("event_id", "recipient", "channel", "type", "reason", "attempts")} == {
        "event_id": str(delivery.event_id),
        "recipient": delivery.recipient.external_id,
        "channel": "email",
        "type": older.notification_type,
        "reason": older.reason,
        "attempts": 3,
    }
    assert [a["number"] for a in item["errors"]] == [1, 2, 3]
    assert item["errors"][0] == {
        "number": 1,
        "outcome": "transient",
        "error": "503 on try 1",
        "provider": "mailgun",
        "target": "ana@example.com",
        "created_at": item["errors"][0]["created_at"],
    }


def test_it_reads_a_page_of_dead_letters_in_a_fixed_number_of_queries(
    service_client, django_assert_max_num_queries
):
    for _ in range(3):
        _dead_letter()
    with django_assert_max_num_queries(4) as few:
        assert len(service_client.get("/api/v1/dead-letters/").json()["results"]) == 3
    for _ in range(7):
        _dead_letter()
    with django_assert_max_num_queries(len(few.captured_queries)):
        assert len(service_client.get("/api/v1/dead-letters/").json()["results"]) == 10


def test_it_filters_dead_letters_by_channel_type_reason_and_time(service_client):
    now = timezone.now()
    nt = NotificationTypeFactory()
    email = _dead_letter(notification_type=nt, created_at=now - timedelta(days=2))
    sms = _dead_letter(channel="sms", reason="twilio error 21614", created_at=now - timedelta(hours=1))
    _dead_letter(channel="push", created_at=now - timedelta(days=5))

    def ids(query: str) -> list[int]:
        response = service_client.get(f"/api/v1/dead-letters/?{query}")
        assert response.status_code == 200, response.content
        return [r["delivery_id"] for r in response.json()["results"]]

    assert ids("channel=sms") == [sms.delivery_id]
    assert ids(f"type={nt.key}") == [email.delivery_id]
    assert ids("reason=21614") == [sms.delivery_id]
    after = (now - timedelta(days=3)).isoformat()
    before = (now - timedelta(days=1)).isoformat()
    # The offset's "+" left unencoded arrives as a space; it still parses.
    assert ids(f"after={after}&before={before}") == [email.delivery_id]
    assert ids("channel=&type=&reason=") == [sms.delivery_id, email.delivery_id] + ids("channel=push")


def test_it_pages_dead_letters_with_a_cursor(service_client):
    now = timezone.now()
    letters = [_dead_letter(created_at=now - timedelta(minutes=i)) for i in range(5)]

    first = service_client.get("/api/v1/dead-letters/?page_size=2").json()
    second = service_client.get(first["next"]).json()
    third = service_client.get(second["next"]).json()

    seen = [r["delivery_id"] for page in (first, second, third) for r in page["results"]]
    assert seen == [letter.delivery_id for letter in letters] and third["next"] is None


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("channel=pigeon", "channel"),
        ("after=yesterday", "after"),
        ("before=2024-13-45T00:00:00Z", "before"),
        ("after=2024-05-02T00:00:00Z&before=2024-05-01T00:00:00Z", "before"),
    ],
)
def test_it_names_the_bad_dead_letter_filter(service_client, query, field):
    response = service_client.get(f"/api/v1/dead-letters/?{query}")
    assert response.status_code == 400 and list(_errors(response)) == [field]


def test_it_replays_dead_letters_by_id(service_client, no_providers, django_capture_on_commit_callbacks):
    chosen, other = _dead_letter(), _dead_letter()

    with django_capture_on_commit_callbacks(execute=True):
        response = service_client.post(
            "/api/v1/dead-letters/replay/", {"ids": [chosen.delivery_id, 999_999]}, format="json"
        )

    assert response.status_code == 200 and response.json() == {"replayed": 1}
    _assert_replayed(chosen)
    other.refresh_from_db()
    assert other.replayed_at is None and Delivery.objects.get(id=other.delivery_id).status == "dead"
    listed = [r["delivery_id"] for r in service_client.get("/api/v1/dead-letters/").json()["results"]]
    assert listed == [other.delivery_id]


def test_it_replays_dead_letters_matching_a_filter(
    service_client, no_providers, django_capture_on_commit_callbacks
):
    sms = _dead_letter(channel="sms", reason="twilio error 21614")
    email = _dead_letter(channel="email")

    with django_capture_on_commit_callbacks(execute=True):
        response = service_client.post(
            "/api/v1/dead-letters/replay/", {"filter": {"channel": "sms", "reason": "21614"}}, format="json"
        )

    assert response.json() == {"replayed": 1}
    _assert_replayed(sms)
    assert Delivery.objects.get(id=email.delivery_id).status == "dead"


def test_it_replays_every_dead_letter(service_client, no_providers, django_capture_on_commit_callbacks):
    letters = [_dead_letter(channel=channel) for channel in ("email", "sms", "push")]

    with django_capture_on_commit_callbacks(execute=True):
        response = service_client.post("/api/v1/dead-letters/replay/", {"all": True}, format="json")
    again = service_client.post("/api/v1/dead-letters/replay/", {"all": True}, format="json")

    assert response.json() == {"replayed": 3} and again.json() == {"replayed": 0}
    for letter in letters:
        _assert_replayed(letter)


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, {"ids"}),
        ({"ids": [1], "all": True}, {"ids", "all"}),
        ({"ids": [1], "filter": {"channel": "sms"}, "all": True}, {"ids", "filter", "all"}),
        ({"all": False}, {"all"}),
        ({"filter": {}}, {"filter"}),
        ({"ids": []}, {"ids"}),
        ({"ids": ["seven"]}, {"ids"}),
        ({"everything": True}, {"everything"}),
    ],
)
def test_it_refuses_a_replay_body_without_exactly_one_choice(service_client, body, fields):
    letter = _dead_letter()
    response = service_client.post("/api/v1/dead-letters/replay/", body, format="json")
    assert response.status_code == 400 and set(_errors(response)) == fields
    assert DeadLetter.objects.get(pk=letter.pk).replayed_at is None


def test_it_names_the_bad_field_of_a_replay_filter(service_client):
    response = service_client.post(
        "/api/v1/dead-letters/replay/", {"filter": {"channel": "pigeon", "after": "soon"}}, format="json"
    )
    assert response.status_code == 400
    assert set(_errors(response)["filter"]) == {"channel", "after"}


def test_it_replays_one_dead_letter_and_answers_404_when_there_is_none(
    service_client, no_providers, django_capture_on_commit_callbacks
):
    letter = _dead_letter()

    with django_capture_on_commit_callbacks(execute=True):
        response = service_client.post(f"/api/v1/dead-letters/{letter.delivery_id}/replay/")

    assert response.status_code == 200 and response.json() == {"replayed": 1}
    _assert_replayed(letter)
    again = service_client.post(f"/api/v1/dead-letters/{letter.delivery_id}/replay/")
    assert again.status_code == 404 and "detail" in _errors(again)
    assert service_client.post("/api/v1/dead-letters/999999/replay/").status_code == 404


# --- suppression list -----------------------------------------------------------------------


def test_it_adds_lists_and_removes_suppressions(service_client):
    added = service_client.post(
        "/api/v1/suppressions/", {"kind": "email", "address": " Ana@Example.COM "}, format="json"
    )
    assert added.status_code == 201
    assert {k: added.json()[k] for k in ("kind", "address", "reason", "detail")} == {
        "kind": "email",
        "address": "ana@example.com",
        "reason": "manual",
        "detail": "",
    }
    again = service_client.post(
        "/api/v1/suppressions/",
        {"kind": "email", "address": "ana@example.com", "reason": "complaint"},
        format="json",
    )
    assert again.status_code == 200 and again.json()["reason"] == "manual"
    phone = service_client.post(
        "/api/v1/suppressions/",
        {"kind": "phone", "address": "+1 415 555 2671", "reason": "sms_stop", "detail": "replied STOP"},
        format="json",
    )
    assert phone.status_code == 201 and phone.json()["address"] == "+14155552671"

    everything = service_client.get("/api/v1/suppressions/").json()["results"]
    assert [s["address"] for s in everything] == ["+14155552671", "ana@example.com"]
    emails = service_client.get("/api/v1/suppressions/?kind=email").json()["results"]
    assert [s["address"] for s in emails] == ["ana@example.com"]
    one = service_client.get("/api/v1/suppressions/?address=ANA@example.com").json()["results"]
    assert [s["address"] for s in one] == ["ana@example.com"]
    # "+" left unencoded in a query string arrives as a space.
    by_phone = service_client.get("/api/v1/suppressions/?address=+14155552671").json()["results"]
    assert [s["address"] for s in by_phone] == ["+14155552671"]

    assert service_client.delete("/api/v1/suppressions/phone/+14155552671/").status_code == 204
    assert service_client.delete("/api/v1/suppressions/email/ANA@example.com/").status_code == 204
    assert not Suppression.objects.exists()
    gone = service_client.delete("/api/v1/suppressions/email/ana@example.com/")
    assert gone.status_code == 404 and "detail" in _errors(gone)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "pager", "address": "a@example.com"}, "kind"),
        ({"kind": "email", "address": "not-an-email"}, "address"),
        ({"kind": "phone", "address": "12345"}, "address"),
        ({"kind": "phone", "address": "a@example.com"}, "address"),
        ({"kind": "email", "address": "a@example.com", "reason": "bored"}, "reason"),
        ({"kind": "email"}, "address"),
        ({"kind": "email", "address": "a@example.com", "colour": "red"}, "colour"),
    ],
)
def test_it_names_the_bad_suppression_field(service_client, body, field):
    response = service_client.post("/api/v1/suppressions/", body, format="json")
    assert response.status_code == 400 and field in _errors(response)
    assert not Suppression.objects.exists()


@pytest.mark.parametrize(("query", "field"), [("kind=pager", "kind"), ("kind=phone&address=12", "address")])
def test_it_names_the_bad_suppression_query(service_client, query, field):
    response = service_client.get(f"/api/v1/suppressions/?{query}")
    assert response.status_code == 400 and field in _errors(response)


def test_it_refuses_to_remove_a_suppression_of_an_unknown_kind(service_client):
    response = service_client.delete("/api/v1/suppressions/pager/123/")
    assert response.status_code == 400 and "kind" in _errors(response)


# --- webhook endpoints ----------------------------------------------------------------------


def test_it_adds_lists_and_removes_webhook_endpoints_without_echoing_the_secret(service_client):
    alice = RecipientFactory()
    base = f"/api/v1/recipients/{alice.external_id}/webhooks/"

    generic = service_client.post(
        base, {"kind": "generic", "url": "https://hooks.example.com/in", "secret": SECRET}, format="json"
    )
    slack = service_client.post(
        base, {"kind": "slack", "url": "https://hooks.slack.com/services/T/B/X"}, format="json"
    )
    local = service_client.post(
        base, {"kind": "teams", "url": "http://127.0.0.1:8101/teams/hook"}, format="json"
    )

    assert (generic.status_code, slack.status_code, local.status_code) == (201, 201, 201)
    assert "secret" not in generic.json() and generic.json()["has_secret"] is True
    assert slack.json()["has_secret"] is False and slack.json()["active"] is True
    assert WebhookEndpoint.objects.get(id=generic.json()["id"]).secret == SECRET
    listed = service_client.get(base).json()["results"]
    assert [e["kind"] for e in listed] == ["generic", "slack", "teams"]
    assert all("secret" not in e for e in listed)

    removed = service_client.delete(f"{base}{slack.json()['id']}/")
    assert removed.status_code == 204
    assert not WebhookEndpoint.objects.filter(id=slack.json()["id"]).exists()
    assert service_client.delete(f"{base}{slack.json()['id']}/").status_code == 404


def test_it_replaces_and_reactivates_an_endpoint_added_again(service_client):
    alice = RecipientFactory()
    base = f"/api/v1/recipients/{alice.external_id}/webhooks/"
    first = service_client.post(base, {"kind": "slack", "url": "https://hooks.example.com/a"}, format="json")
    WebhookEndpoint.objects.filter(id=first.json()["id"]).update(active=False)

    again = service_client.post(
        base, {"kind": "generic", "url": "https://hooks.example.com/a", "secret": SECRET}, format="json"
    )

    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    endpoint = WebhookEndpoint.objects.get()
    assert (endpoint.kind, endpoint.secret, endpoint.active) == ("generic", SECRET, True)


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        ({"kind": "slack", "url": "http://hooks.example.com/x"}, "url", "https"),
        ({"kind": "slack", "url": "ftp://hooks.example.com/x"}, "url", "https"),
        ({"kind": "slack", "url": "not a url"}, "url", ""),
        ({"kind": "generic", "url": "https://hooks.example.com/x"}, "secret", "required"),
        ({"kind": "generic", "url": "https://hooks.example.com/x", "secret": "short"}, "secret", "16"),
        ({"kind": "slack", "url": "https://hooks.example.com/x", "secret": SECRET}, "secret", "not signed"),
        ({"kind": "irc", "url": "https://hooks.example.com/x"}, "kind", ""),
        ({"kind": "slack", "url": "https://hooks.example.com/x", "active": False}, "active", "read-only"),
    ],
)
def test_it_names_the_bad_webhook_endpoint_field(service_client, body, field, fragment):
    alice = RecipientFactory()
    response = service_client.post(f"/api/v1/recipients/{alice.external_id}/webhooks/", body, format="json")
    assert response.status_code == 400, response.content
    errors = _errors(response)
    assert field in errors and fragment in " ".join(errors[field])
    assert not WebhookEndpoint.objects.exists()


def test_it_answers_404_for_webhooks_of_unknown_recipients_or_of_someone_else(service_client):
    alice, bob = RecipientFactory(), RecipientFactory()
    endpoint = WebhookEndpoint.objects.create(
        recipient=alice, kind="slack", url="https://hooks.example.com/a"
    )
    body = {"kind": "slack", "url": "https://hooks.example.com/b"}

    assert service_client.get("/api/v1/recipients/ghost/webhooks/").status_code == 404
    assert service_client.post("/api/v1/recipients/ghost/webhooks/", body, format="json").status_code == 404
    assert service_client.delete(f"/api/v1/recipients/ghost/webhooks/{endpoint.id}/").status_code == 404
    assert (
        service_client.delete(f"/api/v1/recipients/{bob.external_id}/webhooks/{endpoint.id}/").status_code
        == 404
    )
    assert WebhookEndpoint.objects.filter(id=endpoint.id).exists()


# --- notification type fallbacks ------------------------------------------------------------

TYPE_WITH_FALLBACK: dict[str, Any] = {
    "key": "login.code",
    "category": "transactional",
    "channels": ["push", "inapp"],
    "templates": {
        "push": {"title": "Your code", "body": "{{ data.code }}"},
        "inapp": {"title": "Your code is {{ data.code }}"},
        "sms": {"text": "Your code is {{ data.code }}"},
    },
    "fallbacks": [{"from": "push", "to": "sms", "after_seconds": 60}],
}


def test_it_stores_and_returns_fallback_rules_with_a_fallback_only_channel(service_client):
    created = service_client.post("/api/v1/notification-types/", TYPE_WITH_FALLBACK, format="json")

    assert created.status_code == 201, created.content
    assert created.json()["fallbacks"] == TYPE_WITH_FALLBACK["fallbacks"]
    assert created.json()["channels"] == ["push", "inapp"] and "sms" in created.json()["templates"]
    stored = NotificationType.objects.get(key="login.code")
    assert stored.fallbacks == TYPE_WITH_FALLBACK["fallbacks"] and stored.channels == ["push", "inapp"]
    assert (
        service_client.get("/api/v1/notification-types/login.code/").json()["fallbacks"] == stored.fallbacks
    )
    listed = service_client.get("/api/v1/notification-types/").json()["results"]
    assert listed[0]["fallbacks"] == stored.fallbacks

    replaced = service_client.put(
        "/api/v1/notification-types/login.code/",
        {**TYPE_WITH_FALLBACK, "fallbacks": [{"from": "inapp", "to": "sms", "after_seconds": 0}]},
        format="json",
    )
    assert replaced.status_code == 200 and replaced.json()["fallbacks"][0]["from"] == "inapp"
    without = {k: v for k, v in TYPE_WITH_FALLBACK.items() if k != "fallbacks"}
    without["templates"] = {k: v for k, v in without["templates"].items() if k != "sms"}
    cleared = service_client.put("/api/v1/notification-types/login.code/", without, format="json")
    assert cleared.status_code == 200 and cleared.json()["fallbacks"] == []
    assert NotificationType.objects.get(key="login.code").fallbacks == []


def _rules(*rules: Any) -> dict[str, Any]:
    return {**TYPE_WITH_FALLBACK, "fallbacks": list(rules)}


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        (_rules({"from": "email", "to": "sms", "after_seconds": 60}), "fallbacks[0].from", "not among"),
        (_rules({"from": "push", "to": "push", "after_seconds": 60}), "fallbacks[0].to", "differ"),
        (_rules({"from": "push", "to": "email", "after_seconds": 60}), "fallbacks[0].to", "no template"),
        (_rules({"from": "push", "to": "pigeon", "after_seconds": 60}), "fallbacks[0].to", ""),
        (_rules({"from": "push", "to": "sms", "after_seconds": 86_401}), "fallbacks[0].after_seconds", ""),
        (_rules({"from": "push", "to": "sms", "after_seconds": -1}), "fallbacks[0].after_seconds", ""),
        (_rules({"from": "push", "to": "sms"}), "fallbacks[0].after_seconds", "required"),
        (
            _rules({"from": "push", "to": "sms", "after_seconds": 1, "when": "x"}),
            "fallbacks[0].when",
            "unknown",
        ),
        (
            _rules(
                {"from": "push", "to": "sms", "after_seconds": 60},
                {"from": "push", "to": "inapp", "after_seconds": 120},
            ),
            "fallbacks[1].from",
            "at most one",
        ),
        (_rules("push->sms"), "fallbacks[0]", "object"),
        ({**TYPE_WITH_FALLBACK, "fallbacks": {"push": "sms"}}, "fallbacks", "list"),
    ],
)
def test_it_names_the_bad_fallback_rule_field(service_client, body, field, fragment):
    response = service_client.post("/api/v1/notification-types/", body, format="json")
    assert response.status_code == 400, response.content
    errors = _errors(response)
    assert field in errors and fragment in " ".join(errors[field]), errors
    assert not NotificationType.objects.filter(key="login.code").exists()


def test_it_still_refuses_a_template_for_a_channel_neither_planned_nor_fallen_back_to(service_client):
    body = {**TYPE_WITH_FALLBACK, "fallbacks": []}
    response = service_client.post("/api/v1/notification-types/", body, format="json")
    assert response.status_code == 400 and "sms" in _errors(response)["templates"]


# --- events: origin_ip ------------------------------------------------------------------------


def test_it_stores_the_origin_ip_of_an_event(service_client):
    nt = NotificationTypeFactory()
    alice = RecipientFactory()
    body = {"type": nt.key, "recipients": [alice.external_id]}

    v4 = service_client.post("/api/v1/events/", {**body, "origin_ip": "203.0.113.7"}, format="json")
    v6 = service_client.post("/api/v1/events/", {**body, "origin_ip": "2001:DB8:0:0::1"}, format="json")
    none = service_client.post("/api/v1/events/", body, format="json")

    assert (v4.status_code, v6.status_code, none.status_code) == (202, 202, 202)
    assert Event.objects.get(id=v4.json()["id"]).origin_ip == "203.0.113.7"
    assert Event.objects.get(id=v6.json()["id"]).origin_ip == "2001:db8::1"
    assert Event.objects.get(id=none.json()["id"]).origin_ip is None


@pytest.mark.parametrize("value", ["not-an-ip", "300.1.1.1", "", 12])
def test_it_names_a_bad_origin_ip(service_client, value):
    nt = NotificationTypeFactory()
    alice = RecipientFactory()
    response = service_client.post(
        "/api/v1/events/",
        {"type": nt.key, "recipients": [alice.external_id], "origin_ip": value},
        format="json",
    )
    assert response.status_code == 400 and "origin_ip" in _errors(response)
    assert not Event.objects.exists()


def test_it_keeps_the_fingerprint_of_events_without_origin_ip_and_counts_it_when_given(service_client):
    nt = NotificationTypeFactory()
    alice = RecipientFactory()
    body = {"type": nt.key, "recipients": [alice.external_id], "data": {"n": 1}, "idempotency_key": "k1"}

    first = service_client.post("/api/v1/events/", body, format="json")

    # The fingerprint of a body without origin_ip is what it was before origin_ip existed.
    legacy = json.dumps(
        {"type": nt.key, "recipients": [alice.external_id], "topic": None, "data": {"n": 1}, "send_at": None},
        sort_keys=True,
        separators=(",", ":"),
    )
    assert Event.objects.get().request_fingerprint == hashlib.sha256(legacy.encode()).hexdigest()
    changed = service_client.post("/api/v1/events/", {**body, "origin_ip": "203.0.113.7"}, format="json")
    assert first.status_code == 202 and changed.status_code == 409

    with_ip = {**body, "idempotency_key": "k2", "origin_ip": "203.0.113.7"}
    accepted = service_client.post("/api/v1/events/", with_ip, format="json")
    repeated = service_client.post("/api/v1/events/", with_ip, format="json")
    other_ip = service_client.post("/api/v1/events/", {**with_ip, "origin_ip": "203.0.113.8"}, format="json")
    assert (accepted.status_code, repeated.status_code, other_ip.status_code) == (202, 200, 409)
    assert repeated.json()["id"] == accepted.json()["id"] and Event.objects.count() == 2


# --- deliveries: provider ---------------------------------------------------------------------


def test_it_shows_the_provider_of_each_delivery(service_client):
    letter = _dead_letter()
    delivery = Delivery.objects.get(id=letter.delivery_id)

    results = service_client.get(f"/api/v1/events/{delivery.event_id}/deliveries/").json()["results"]

    assert results[0]["provider"] == "mailgun"
    assert {"recipient", "channel", "status", "reason", "attempts"} <= set(results[0])


def test_it_documents_the_provider_endpoints_in_the_schema(client):
    schema = client.get("/api/schema/").content
    for path in (
        b"/api/v1/dead-letters/",
        b"/api/v1/dead-letters/replay/",
        b"/api/v1/dead-letters/{delivery_id}/replay/",
        b"/api/v1/suppressions/",
        b"/api/v1/suppressions/{kind}/{address}/",
        b"/api/v1/recipients/{external_id}/webhooks/",
        b"/api/v1/recipients/{external_id}/webhooks/{endpoint_id}/",
        b"origin_ip",
        b"fallbacks",
    ):
        assert path in schema, path
