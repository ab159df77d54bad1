"""Marketing email in provider batches, and its receipts read from the provider's event log.

Against the provider sandbox (a real process speaking Mailgun's API) through django-anymail:
a page of marketing email is one batch call, each recipient's message personalised by
recipient variables; what the batch cannot express exactly goes out on its own; the
receipts come from Mailgun's events API, read in pages by ``receipts_poll``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from harness.sandbox import SandboxProcess
from notifications.models import (
    Delivery,
    DeliveryEvent,
    Event,
    NotificationType,
    ProviderCursor,
    Recipient,
    Suppression,
)
from notifications.services.api_keys import api_key_create
from notifications.services.catalog import notification_type_save
from notifications.services.feedback import Receipt, receipts_track
from notifications.services.ingest import event_ingest
from notifications.services.provider_health import breaker_reset
from notifications.services.receipts_poll import polled_providers, receipts_poll
from notifications.services.sending import record
from notifications.services.sending.claim import deliveries_claim
from notifications.services.sending.prepare import Job
from notifications.services.sending.record import jobs_record
from notifications.states import DeliveryStatus
from notifications.transports.base import OutboundMessage, SendResult
from notifications.transports.registry import transports_reset
from project.processes.waiting import wait_until
from tests.notifications.factories import RecipientFactory

pytestmark = [pytest.mark.django_db, pytest.mark.xdist_group("sending")]

OFFER = {
    "subject": "{{ data.headline }}, {{ recipient.name }}",
    "html": "<p>{{ data.headline }} for {{ recipient.name }} ({{ recipient.external_id }})</p>",
    "text": "{{ data.headline }} for {{ recipient.name }}",
}


@pytest.fixture
def providers(sandbox: SandboxProcess, settings: Any) -> Iterator[SandboxProcess]:
    sandbox.control.reset()
    settings.PROVIDERS = sandbox.providers()
    settings.ANYMAIL = {**settings.ANYMAIL, "MAILGUN_API_URL": settings.PROVIDERS["mailgun"]["api_url"]}
    settings.RATE_CAPS = {}
    settings.MARKETING_CAPS = ""
    transports_reset()
    for name in settings.PROVIDERS:
        breaker_reset(provider=name)
    yield sandbox
    transports_reset()


def _offer(key: str, template: dict[str, str] | None = None) -> NotificationType:
    return notification_type_save(
        key=key,
        fields={"category": "marketing", "channels": ["email"]},
        templates={"email": template or OFFER},
    )


def _send(capture: Any, ntype: NotificationType, recipients: list[Recipient]) -> Event:
    with capture(execute=True):
        result = event_ingest(
            api_key=api_key_create(name="batch")[0],
            type_key=ntype.key,
            recipients=[r.external_id for r in recipients],
            data={"headline": "Winter sale"},
        )
    return result.event


def _mailgun(sandbox: SandboxProcess, count: int) -> list[dict[str, Any]]:
    return sandbox.control.wait_for_messages("mailgun", count)


def test_marketing_email_to_many_goes_out_as_one_mailgun_batch_each_message_personalised(
    providers, django_capture_on_commit_callbacks
):
    people = [RecipientFactory(name=f"Reader {n}", email=f"reader{n}@example.com") for n in range(4)]
    people.append(RecipientFactory(name="Tom & <Jerry>", email="tom@example.com"))

    event = _send(django_capture_on_commit_callbacks, _offer("promo.batch"), people)

    records = _mailgun(providers, 5)
    assert len(records) == 5
    assert {r["summary"]["message_id"] for r in records} == {records[0]["summary"]["message_id"]}, "one call"
    assert all(r["summary"].get("batch") for r in records)
    by_address = {r["to"]: r for r in records}
    deliveries = {d.recipient_id: d for d in Delivery.objects.filter(event=event)}
    for person in people:
        record = by_address[person.email]
        delivery = deliveries[person.id]
        assert record["key"] == str(delivery.idempotency_key)
        assert record["summary"]["variables"]["delivery_id"] == str(delivery.id)
        assert record["summary"]["subject"] == f"Winter sale, {person.name}"
        assert record["summary"]["text"] == f"Winter sale for {person.name}"
        assert delivery.status == DeliveryStatus.SENT
        assert delivery.provider == "mailgun-bulk"
    assert by_address["tom@example.com"]["summary"]["html"] == (
        f"<p>Winter sale for Tom &amp; &lt;Jerry&gt; ({people[-1].external_id})</p>"
    )
    unsubscribe = {r["summary"]["headers"]["List-Unsubscribe"] for r in records}
    assert len(unsubscribe) == 5, "each recipient's own unsubscribe link"


def test_a_template_doing_more_with_a_recipient_field_than_print_it_sends_those_messages_alone(
    providers, django_capture_on_commit_callbacks
):
    greeting = {
        "subject": "{% if recipient.name %}Hi {{ recipient.name }}{% else %}Hello{% endif %}",
        "text": "{{ data.headline }}",
    }
    named = [RecipientFactory(name=f"Named {n}", email=f"named{n}@example.com") for n in range(3)]
    nameless = RecipientFactory(name="", email="nameless@example.com")

    _send(django_capture_on_commit_callbacks, _offer("promo.greeting", greeting), [*named, nameless])

    records = {r["to"]: r for r in _mailgun(providers, 4)}
    assert records["nameless@example.com"]["summary"]["subject"] == "Hello"
    assert not records["nameless@example.com"]["summary"].get("batch")
    assert {records[p.email]["summary"]["subject"] for p in named} == {f"Hi {p.name}" for p in named}
    assert len({records[p.email]["summary"]["message_id"] for p in named}) == 1


def test_receipts_of_the_bulk_domain_are_read_from_the_events_api_once_each(
    providers, django_capture_on_commit_callbacks
):
    assert polled_providers() == ["mailgun-bulk"]
    people = [RecipientFactory(email=f"fan{n}@example.com") for n in range(3)]
    bounced = RecipientFactory(email="gone@bounce.sandbox.test")
    full = RecipientFactory(email="full@softbounce.sandbox.test")
    event = _send(django_capture_on_commit_callbacks, _offer("promo.receipts"), [*people, bounced, full])

    def settled() -> bool:
        receipts_poll(provider="mailgun-bulk")
        return not Delivery.objects.filter(event=event, status=DeliveryStatus.SENT).exists()

    wait_until(settled, timeout=10, message="every receipt read from the events API")

    statuses = dict(Delivery.objects.filter(event=event).values_list("recipient_id", "status"))
    assert {statuses[p.id] for p in people} == {DeliveryStatus.DELIVERED}
    assert statuses[bounced.id] == DeliveryStatus.BOUNCED
    assert statuses[full.id] == DeliveryStatus.RETRYING, "a soft bounce is sent again later"
    assert Suppression.objects.filter(address="gone@bounce.sandbox.test").exists()
    stored = DeliveryEvent.objects.filter(delivery__event=event).count()
    assert stored == 5
    cursor = ProviderCursor.objects.get(provider="mailgun-bulk")
    assert cursor.next_url and cursor.events >= 5

    assert receipts_poll(provider="mailgun-bulk") == 0, "nothing new: the cursor moved past them"
    cursor.next_url = ""  # a lost cursor reads the log again from the start
    cursor.save()
    assert receipts_poll(provider="mailgun-bulk") >= 5
    assert DeliveryEvent.objects.filter(delivery__event=event).count() == stored, "each receipt kept once"


def test_a_page_of_receipts_moves_each_delivery_forward_only_and_stores_each_once():
    recipient = RecipientFactory()
    ntype = _offer("promo.track")
    event = Event.objects.create(notification_type=ntype, recipient_ids=[recipient.id], data={})
    sent = Delivery.objects.create(
        event=event, recipient=recipient, channel="email", status=DeliveryStatus.SENT
    )
    opened = Delivery.objects.create(
        event=event, recipient=RecipientFactory(), channel="email", status=DeliveryStatus.OPENED
    )
    now = timezone.now()
    page = [
        Receipt(
            delivery_id=sent.id, kind="opened", provider="mailgun-bulk", occurred_at=now, dedupe_key="e2"
        ),
        Receipt(
            delivery_id=sent.id, kind="delivered", provider="mailgun-bulk", occurred_at=now, dedupe_key="e1"
        ),
        Receipt(
            delivery_id=opened.id, kind="delivered", provider="mailgun-bulk", occurred_at=now, dedupe_key="e3"
        ),
        Receipt(
            delivery_id=sent.id, kind="delivered", provider="mailgun-bulk", occurred_at=now, dedupe_key="e1"
        ),
        Receipt(
            delivery_id=10**12, kind="delivered", provider="mailgun-bulk", occurred_at=now, dedupe_key="e4"
        ),
    ]

    receipts_track(page)
    receipts_track(page)

    sent.refresh_from_db()
    opened.refresh_from_db()
    assert sent.status == DeliveryStatus.OPENED
    assert opened.status == DeliveryStatus.OPENED, "a late delivered never undoes opened"
    assert sorted(DeliveryEvent.objects.values_list("delivery_id", "kind")) == sorted(
        [(sent.id, "opened"), (sent.id, "delivered"), (opened.id, "delivered")]
    )


def test_an_unreachable_events_api_leaves_the_cursor_where_it_was(providers, settings, caplog):
    settings.PROVIDERS = {
        **settings.PROVIDERS,
        "mailgun-bulk": {**settings.PROVIDERS["mailgun-bulk"], "api_url": "http://127.0.0.1:9/mailgun/v3"},
    }
    ProviderCursor.objects.create(provider="mailgun-bulk", next_url="", events=7)

    assert receipts_poll(provider="mailgun-bulk") == 0
    assert receipts_poll(provider="mailgun-bulk") == 0

    cursor = ProviderCursor.objects.get(provider="mailgun-bulk")
    assert (cursor.next_url, cursor.events) == ("", 7)
    assert len([r for r in caplog.records if "events API unavailable" in r.getMessage()]) <= 1


@pytest.mark.django_db(transaction=True)
def test_a_page_of_receipts_stored_while_its_send_is_being_recorded_still_moves_the_delivery(monkeypatch):
    """The race that lost 500 receipts of a 20,000-email campaign: the poller's page is
    stored after the send's record looked for receipts and before it committed, so
    neither saw the other. Each looks again after its own commit."""
    recipient = RecipientFactory()
    event = Event.objects.create(
        notification_type=_offer("promo.race"), recipient_ids=[recipient.id], data={}
    )
    delivery = Delivery.objects.create(event=event, recipient=recipient, channel="email")
    token, [claimed] = deliveries_claim(delivery_ids=[delivery.id], now=timezone.now())
    message = OutboundMessage(
        delivery_id=delivery.id,
        idempotency_key="k",
        channel="email",
        to="a@example.com",
        category="marketing",
    )
    job = Job(claimed=claimed, messages=[message])
    job.results.append((message, "mailgun-bulk", SendResult(provider="mailgun-bulk"), 5))
    original = record.receipts_apply_early
    pages: list[int] = []

    def page_arrives_in_flight(**kwargs: Any) -> int:
        moved = original(**kwargs)
        if not pages:  # inside the record's transaction, after it looked for receipts
            receipt = Receipt(
                delivery_id=delivery.id, kind="delivered", provider="mailgun-bulk", dedupe_key="r"
            )

            def poll() -> None:
                pages.append(receipts_track([receipt]))
                connection.close()

            poller = threading.Thread(target=poll)
            poller.start()
            poller.join()
        return moved

    monkeypatch.setattr(record, "receipts_apply_early", page_arrives_in_flight)

    jobs_record([job], token)

    assert pages == [0], "the page could not move a delivery not yet recorded as sent"
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.DELIVERED


def test_a_batch_the_bulk_domain_refuses_for_now_fails_over_to_smtp_message_by_message(
    providers, django_capture_on_commit_callbacks
):
    providers.control.set_fault("mailgun", status=503, rate=1.0)
    people = [RecipientFactory(name=f"Fan {n}", email=f"fan-over{n}@example.com") for n in range(3)]

    event = _send(django_capture_on_commit_callbacks, _offer("promo.failover"), people)

    assert set(Delivery.objects.filter(event=event).values_list("status", "provider")) == {("sent", "smtp")}
    refused = providers.control.messages("mailgun")
    assert [(r["status"], sorted(r["to"].split(", "))) for r in refused] == [
        (503, sorted(p.email for p in people))
    ], "one batch call, refused"
    mails = {r["to"]: r for r in providers.control.wait_for_messages("smtp", 3)}
    assert {mails[p.email]["summary"]["subject"] for p in people} == {
        f"Winter sale, {p.name}" for p in people
    }
    providers.control.clear_faults()


def test_a_placeholder_in_the_event_data_is_sent_as_written_not_filled_in(
    providers, django_capture_on_commit_callbacks
):
    people = [RecipientFactory(name=f"Quoted {n}", email=f"quoted{n}@example.com") for n in range(2)]
    with django_capture_on_commit_callbacks(execute=True):
        event_ingest(
            api_key=api_key_create(name="batch")[0],
            type_key=_offer("promo.quoted").key,
            recipients=[p.external_id for p in people],
            data={"headline": "Use %recipient.name% in your templates"},
        )

    records = _mailgun(providers, 2)
    assert {r["summary"]["subject"] for r in records} == {
        f"Use %recipient.name% in your templates, {p.name}" for p in people
    }
    assert not any(r["summary"].get("batch") for r in records)


def test_one_malformed_address_fails_alone_not_its_whole_batch(providers, django_capture_on_commit_callbacks):
    good = [RecipientFactory(email=f"good{n}@example.com") for n in range(2)]
    bad = RecipientFactory(email="not an address@@example..com")

    event = _send(django_capture_on_commit_callbacks, _offer("promo.malformed"), [*good, bad])

    statuses = dict(Delivery.objects.filter(event=event).values_list("recipient_id", "status"))
    assert {statuses[p.id] for p in good} == {DeliveryStatus.SENT}
    assert statuses[bad.id] == DeliveryStatus.FAILED


def test_a_second_poller_of_the_same_provider_returns_at_once(providers, django_capture_on_commit_callbacks):
    from realtime.redis_client import redis_key, redis_sync

    event = _send(
        django_capture_on_commit_callbacks, _offer("promo.poller"), [RecipientFactory(email="p@example.com")]
    )
    key = redis_key("receipts-poll:mailgun-bulk")
    redis_sync().set(key, "another poller", ex=30)
    try:
        assert receipts_poll(provider="mailgun-bulk") == 0
        assert Delivery.objects.get(event=event).status == DeliveryStatus.SENT
    finally:
        redis_sync().delete(key)

    def delivered() -> bool:
        receipts_poll(provider="mailgun-bulk")
        return Delivery.objects.get(event=event).status == DeliveryStatus.DELIVERED

    wait_until(delivered, timeout=10, message="the receipt read once the other poller is gone")


def test_a_placeholder_written_in_the_template_is_sent_as_written(
    providers, django_capture_on_commit_callbacks
):
    literal = {"subject": "Write %recipient.name% to personalise, {{ recipient.name }}", "text": "x"}
    people = [RecipientFactory(name=f"Author {n}", email=f"author{n}@example.com") for n in range(2)]

    _send(django_capture_on_commit_callbacks, _offer("promo.literal", literal), people)

    subjects = {r["summary"]["subject"] for r in _mailgun(providers, 2)}
    assert subjects == {f"Write %recipient.name% to personalise, {p.name}" for p in people}
