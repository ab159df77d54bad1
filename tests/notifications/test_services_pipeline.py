"""The pipeline in-process: ingest -> outbox relay -> fan-out -> planning -> in-app dispatch,
with eager Celery tasks against the real PostgreSQL and Redis."""

from __future__ import annotations

from datetime import time, timedelta
from typing import Any
from unittest import mock
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from notifications.models import (
    Delivery,
    DeliverySchedule,
    DispatchBatch,
    Event,
    InboxItem,
    OutboxMessage,
    Preference,
    Recipient,
)
from notifications.services.api_keys import api_key_create
from notifications.services.deliveries import inapp_dispatch_batch
from notifications.services.dispatch import dispatch_batches_sweep
from notifications.services.fanout import event_fanout
from notifications.services.inbox import inapp_dispatch
from notifications.services.ingest import IdempotencyConflict, IngestError, event_ingest
from notifications.services.outbox import outbox_sweep
from notifications.services.scheduling import deliveries_release_due
from tests.notifications.factories import (
    NotificationTypeFactory,
    RecipientFactory,
    SubscriptionFactory,
    TopicFactory,
    pending_inapp,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def key() -> Any:
    return api_key_create(name="pipeline")[0]


def _quiet_window_around_now(zone: str, margin: timedelta) -> tuple[time, time]:
    """Quiet hours from ``margin`` before to ``margin`` after the current time in ``zone``."""
    local_now = timezone.now().astimezone(ZoneInfo(zone))
    return (
        (local_now - margin).time().replace(second=0, microsecond=0),
        (local_now + margin).time().replace(second=0, microsecond=0),
    )


def _send(key: Any, capture: Any, **kwargs: Any) -> Event:
    with capture(execute=True):
        result = event_ingest(api_key=key, **kwargs)
    return result.event


def test_it_delivers_one_inbox_item_per_recipient_with_gapless_seq(key, django_capture_on_commit_callbacks):
    nt = NotificationTypeFactory()
    alice, bob = RecipientFactory(), RecipientFactory()

    for order in (1, 2, 3):
        _send(
            key,
            django_capture_on_commit_callbacks,
            type_key=nt.key,
            recipients=[alice.external_id, bob.external_id],
            data={"order_id": order},
        )

    for recipient in (alice, bob):
        items = list(InboxItem.objects.filter(recipient=recipient).order_by("seq"))
        assert [i.seq for i in items] == [1, 2, 3]
        assert [i.title for i in items] == ["Order 1", "Order 2", "Order 3"]
    assert set(Delivery.objects.values_list("status", flat=True)) == {"delivered"}
    assert Event.objects.filter(status="completed").count() == 3


def test_it_returns_the_same_event_for_a_repeated_idempotency_key(key, django_capture_on_commit_callbacks):
    nt = NotificationTypeFactory()
    alice = RecipientFactory()
    body: dict[str, Any] = {
        "type_key": nt.key,
        "recipients": [alice.external_id],
        "data": {"order_id": 7},
        "idempotency_key": "k-1",
    }

    first = _send(key, django_capture_on_commit_callbacks, **body)
    with django_capture_on_commit_callbacks(execute=True):
        again = event_ingest(api_key=key, **body)

    assert again.created is False and again.event.id == first.id
    assert InboxItem.objects.filter(recipient=alice).count() == 1
    with pytest.raises(IdempotencyConflict):
        event_ingest(api_key=key, **{**body, "data": {"order_id": 8}})


def test_it_names_unknown_type_recipients_and_topic_and_stores_nothing(key):
    alice = RecipientFactory()
    with pytest.raises(IngestError) as unknown_type:
        event_ingest(api_key=key, type_key="nope", recipients=[alice.external_id])
    assert "nope" in unknown_type.value.errors["type"][0]

    nt = NotificationTypeFactory()
    with pytest.raises(IngestError) as unknown_recipient:
        event_ingest(api_key=key, type_key=nt.key, recipients=[alice.external_id, "ghost"])
    assert "'ghost'" in unknown_recipient.value.errors["recipients"][0]
    with pytest.raises(IngestError) as unknown_topic:
        event_ingest(api_key=key, type_key=nt.key, topic_key="no-such-topic")
    assert "no-such-topic" in unknown_topic.value.errors["topic"][0]
    assert Event.objects.count() == 0 and OutboxMessage.objects.count() == 0


def _topic_event_in_batches(
    key: Any, settings: Any, *, subscribers: int, page: int
) -> tuple[Any, Any, list[int]]:
    """An event to a topic of ``subscribers``, fanned out in pages of ``page`` through
    in-app batches: (the event, its outbox row, the subscribers' ids in order)."""
    settings.FANOUT_PAGE_SIZE = page
    settings.INAPP_INLINE_MAX = 0
    nt = NotificationTypeFactory()
    topic = TopicFactory()
    ids = sorted(SubscriptionFactory(topic=topic).recipient_id for _ in range(subscribers))
    event = event_ingest(api_key=key, type_key=nt.key, topic_key=topic.key, data={"order_id": 1}).event
    return event, OutboxMessage.objects.get(event=event), ids


def test_it_fans_out_a_topic_in_pages_and_running_again_sends_nothing_twice(key, settings):
    # given a topic of 130 subscribers, fanned out in pages of 40 through in-app batches
    event, outbox, subscribers = _topic_event_in_batches(key, settings, subscribers=130, page=40)

    with CaptureQueriesContext(connection) as queries:
        progress = event_fanout(outbox_id=outbox.id, slice_seconds=60)
    assert progress.recipients == 130 and progress.pages == 4
    # A bounded number of queries per page, none per recipient.
    assert len(queries) <= 4 * 12 + 12
    # Each page's in-app recipients wait in a batch; their rows are written by its dispatch.
    batches = list(
        DispatchBatch.objects.order_by("id").values_list("id", "planned_event", "planned_recipients")
    )
    assert {planned_event for _, planned_event, _ in batches} == {event.id}
    assert sorted(r for _, _, ids in batches for r in ids) == subscribers
    assert not Delivery.objects.filter(event=event).exists()

    # when every batch is dispatched twice, then the whole fan-out runs again and its
    # batches are dispatched too
    for _ in range(2):
        for batch_id, _event, _ids in batches:
            DispatchBatch.objects.filter(id=batch_id).update(done_at=None)
            inapp_dispatch_batch(batch_id=batch_id)
    OutboxMessage.objects.filter(id=outbox.id).update(processed_at=None, cursor=0)
    again = event_fanout(outbox_id=outbox.id, slice_seconds=60)
    rerun = DispatchBatch.objects.exclude(id__in=[b[0] for b in batches]).values_list("id", flat=True)
    assert [inapp_dispatch_batch(batch_id=batch_id) for batch_id in rerun] == [0] * 4

    # then nothing exists twice: deliveries, inbox items, sequence numbers
    assert again.recipients == 130
    assert Delivery.objects.filter(event=event).count() == 130
    assert Delivery.objects.filter(event=event).values("recipient").distinct().count() == 130
    assert InboxItem.objects.filter(event=event).count() == 130
    assert set(InboxItem.objects.filter(event=event).values_list("seq", flat=True)) == {1}
    assert set(Delivery.objects.filter(event=event).values_list("status", flat=True)) == {"delivered"}
    # and the rows say when they were planned and when they were written
    row = Delivery.objects.filter(event=event).first()
    assert row is not None and row.attempts == 1 and row.sent_at is not None
    assert row.created_at <= row.sent_at == row.updated_at


def test_a_page_another_worker_stored_meanwhile_is_not_stored_again(key, settings):
    # given a topic of 100 subscribers in pages of 30, where another worker stores the
    # second page while this one is planning it
    from notifications.services import fanout

    event, outbox, subscribers = _topic_event_in_batches(key, settings, subscribers=100, page=30)
    plan = fanout._plan_next_page
    calls = 0

    def plan_while_another_stores(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        page = plan(*args, **kwargs)
        if calls == 2:
            assert fanout._fanout_page(outbox.id) is not None  # the other worker
        return page

    # when this worker fans out, carrying the row from page to page
    with mock.patch.object(fanout, "_plan_next_page", plan_while_another_stores):
        progress = event_fanout(outbox_id=outbox.id, slice_seconds=60)

    # then it dropped its stale plan, read the row again and went on from where the other
    # left it: every subscriber planned once, and the event counts each once
    assert progress.finished and progress.recipients == 70
    planned = sorted(
        r for ids in DispatchBatch.objects.values_list("planned_recipients", flat=True) for r in ids
    )
    assert planned == subscribers
    event.refresh_from_db()
    assert event.planned_count == 100 and event.status == "completed"


def test_an_inapp_batch_skips_recipients_deleted_since_it_was_planned(key, settings):
    settings.INAPP_INLINE_MAX = 0
    nt = NotificationTypeFactory()
    alice, bob = RecipientFactory(), RecipientFactory()
    event = event_ingest(
        api_key=key, type_key=nt.key, recipients=[alice.external_id, bob.external_id], data={"order_id": 1}
    ).event
    event_fanout(outbox_id=event.outbox.id)
    batch = DispatchBatch.objects.get(done_at__isnull=True)
    Recipient.objects.filter(id=bob.id).delete()

    assert inapp_dispatch_batch(batch_id=batch.id) == 1

    assert list(Delivery.objects.filter(event=event).values_list("recipient_id", "status")) == [
        (alice.id, "delivered")
    ]
    assert InboxItem.objects.get(event=event).recipient_id == alice.id


def test_it_stops_after_its_time_slice_and_resumes_from_the_cursor(key, settings):
    settings.FANOUT_PAGE_SIZE = 10
    nt = NotificationTypeFactory()
    topic = TopicFactory()
    for _ in range(35):
        SubscriptionFactory(topic=topic)
    event = event_ingest(api_key=key, type_key=nt.key, topic_key=topic.key, data={"order_id": 1}).event
    outbox = OutboxMessage.objects.get(event=event)

    from celery import current_app

    current_app.conf.task_always_eager = False  # keep the hand-off in the broker's hands
    try:
        from unittest import mock

        with mock.patch("notifications.services.fanout.outbox_relay") as relay:
            first = event_fanout(outbox_id=outbox.id, slice_seconds=0)
    finally:
        current_app.conf.task_always_eager = True
    assert first.pages == 1 and not first.finished
    relay.assert_called_once_with(outbox_id=outbox.id, queue=None)  # the fan-out queue, not a campaign's
    outbox.refresh_from_db()
    assert outbox.cursor > 0 and outbox.processed_at is None

    event_fanout(outbox_id=outbox.id, slice_seconds=60)
    outbox.refresh_from_db()
    assert outbox.processed_at is not None
    assert Delivery.objects.filter(event=event).count() == 35


def test_it_writes_each_inbox_item_once_when_dispatch_runs_twice(key):
    nt = NotificationTypeFactory()
    alice = RecipientFactory()
    event = event_ingest(
        api_key=key, type_key=nt.key, recipients=[alice.external_id], data={"order_id": 1}
    ).event
    ids = pending_inapp(event)

    assert inapp_dispatch(delivery_ids=ids) == 1
    assert inapp_dispatch(delivery_ids=ids) == 0
    assert InboxItem.objects.filter(recipient=alice).count() == 1
    # and the event's own fan-out, which finds its row there, writes nothing either
    event_fanout(outbox_id=event.outbox.id)
    assert InboxItem.objects.filter(recipient=alice).count() == 1
    assert Delivery.objects.get(event=event).status == "delivered"


def test_it_dispatches_again_a_batch_whose_task_was_lost(key, settings, django_capture_on_commit_callbacks):
    settings.INAPP_INLINE_MAX = 0
    nt = NotificationTypeFactory()
    alice = RecipientFactory()
    event = event_ingest(
        api_key=key, type_key=nt.key, recipients=[alice.external_id], data={"order_id": 1}
    ).event
    event_fanout(outbox_id=event.outbox.id)  # the dispatch enqueue was lost: on_commit never ran
    batch = DispatchBatch.objects.get(done_at__isnull=True)
    assert batch.channel == "inapp" and (batch.planned_event, batch.planned_recipients) == (
        event.id,
        [alice.id],
    )
    assert not Delivery.objects.filter(event=event).exists()
    assert dispatch_batches_sweep() == 0  # still leased

    DispatchBatch.objects.filter(id=batch.id).update(leased_until=timezone.now() - timedelta(seconds=1))
    with django_capture_on_commit_callbacks(execute=True):
        assert dispatch_batches_sweep() == 1
    assert Delivery.objects.get(event=event).status == "delivered"
    assert DispatchBatch.objects.get(id=batch.id).done_at is not None
    assert InboxItem.objects.filter(recipient=alice).count() == 1
    assert dispatch_batches_sweep() == 0


def test_it_fails_a_delivery_whose_template_cannot_render_without_a_seq_gap(
    key, django_capture_on_commit_callbacks
):
    broken = NotificationTypeFactory(
        inapp_template={"title": "{{ data.missing.deeper }}", "body": "", "url": ""}
    )
    fine = NotificationTypeFactory()
    alice = RecipientFactory()

    _send(
        key, django_capture_on_commit_callbacks, type_key=broken.key, recipients=[alice.external_id], data={}
    )
    _send(
        key,
        django_capture_on_commit_callbacks,
        type_key=fine.key,
        recipients=[alice.external_id],
        data={"order_id": 2},
    )

    failed = Delivery.objects.get(event__notification_type=broken)
    assert failed.status == "failed" and "missing" in failed.reason
    assert list(InboxItem.objects.filter(recipient=alice).values_list("seq", flat=True)) == [1]


def test_it_suppresses_opted_out_channels_by_precedence(key, django_capture_on_commit_callbacks):
    nt = NotificationTypeFactory(category="social")
    everything_off, social_off_type_on, category_off = (
        RecipientFactory(),
        RecipientFactory(),
        RecipientFactory(),
    )
    Preference.objects.create(recipient=everything_off, channel="inapp", enabled=False)
    Preference.objects.create(recipient=social_off_type_on, category="social", channel="inapp", enabled=False)
    Preference.objects.create(
        recipient=social_off_type_on, notification_type=nt, channel="inapp", enabled=True
    )
    Preference.objects.create(recipient=category_off, category="social", channel="inapp", enabled=False)

    event = _send(
        key,
        django_capture_on_commit_callbacks,
        type_key=nt.key,
        recipients=[r.external_id for r in (everything_off, social_off_type_on, category_off)],
        data={"order_id": 1},
    )

    status = dict(Delivery.objects.filter(event=event).values_list("recipient__external_id", "status"))
    assert status == {
        everything_off.external_id: "suppressed",
        social_off_type_on.external_id: "delivered",
        category_off.external_id: "suppressed",
    }


def test_it_lets_critical_types_bypass_opt_outs_and_quiet_hours(key, django_capture_on_commit_callbacks):
    nt = NotificationTypeFactory(category="critical")
    start, end = _quiet_window_around_now("UTC", timedelta(hours=1))
    alice = RecipientFactory(quiet_hours_start=start, quiet_hours_end=end)
    Preference.objects.create(recipient=alice, channel="inapp", enabled=False)

    event = _send(
        key,
        django_capture_on_commit_callbacks,
        type_key=nt.key,
        recipients=[alice.external_id],
        data={"order_id": 1},
    )

    assert Delivery.objects.get(event=event).status == "delivered"


def test_it_defers_during_quiet_hours_in_the_recipients_timezone_and_releases_later(
    key, django_capture_on_commit_callbacks
):
    nt = NotificationTypeFactory()
    start, end = _quiet_window_around_now("Asia/Tokyo", timedelta(minutes=30))
    alice = RecipientFactory(timezone="Asia/Tokyo", quiet_hours_start=start, quiet_hours_end=end)

    event = _send(
        key,
        django_capture_on_commit_callbacks,
        type_key=nt.key,
        recipients=[alice.external_id],
        data={"order_id": 1},
    )

    delivery = Delivery.objects.get(event=event)
    assert delivery.status == "scheduled" and delivery.reason == "quiet hours"
    assert delivery.due_at is not None
    assert timedelta(minutes=28) < delivery.due_at - timezone.now() < timedelta(minutes=31)
    assert deliveries_release_due() == 0

    assert DeliverySchedule.objects.get(delivery=delivery).due_at == delivery.due_at
    DeliverySchedule.objects.filter(delivery=delivery).update(due_at=timezone.now() - timedelta(seconds=1))
    with django_capture_on_commit_callbacks(execute=True):
        assert deliveries_release_due() == 1
    delivery.refresh_from_db()
    assert delivery.status == "delivered"
    assert InboxItem.objects.filter(recipient=alice).count() == 1


def test_it_drops_during_quiet_hours_when_the_type_says_drop(key, django_capture_on_commit_callbacks):
    nt = NotificationTypeFactory(quiet_hours_policy="drop")
    start, end = _quiet_window_around_now("UTC", timedelta(hours=1))
    alice = RecipientFactory(quiet_hours_start=start, quiet_hours_end=end)

    event = _send(
        key,
        django_capture_on_commit_callbacks,
        type_key=nt.key,
        recipients=[alice.external_id],
        data={"order_id": 1},
    )

    delivery = Delivery.objects.get(event=event)
    assert (delivery.status, delivery.reason) == ("suppressed", "quiet hours")


def test_it_suppresses_past_the_per_user_rate_cap(key, settings, django_capture_on_commit_callbacks):
    settings.RATE_CAPS = {**settings.RATE_CAPS, "inapp": "2/3600"}
    from notifications.services.ratelimits import rate_cap

    rate_cap.cache_clear()
    try:
        nt = NotificationTypeFactory()
        alice = RecipientFactory()
        for order in range(3):
            _send(
                key,
                django_capture_on_commit_callbacks,
                type_key=nt.key,
                recipients=[alice.external_id],
                data={"order_id": order},
            )
    finally:
        rate_cap.cache_clear()

    statuses = list(Delivery.objects.filter(recipient=alice).order_by("id").values_list("status", "reason"))
    assert statuses == [("delivered", ""), ("delivered", ""), ("suppressed", "rate cap reached")]


def test_rate_caps_count_each_entry_and_name_only_those_past_the_cap(settings):
    settings.RATE_CAPS = {**settings.RATE_CAPS, "inapp": "2/3600"}
    from notifications.services.ratelimits import rate_cap, rate_caps_consume

    rate_cap.cache_clear()
    alice, bob = RecipientFactory(), RecipientFactory()
    try:
        first = rate_caps_consume(channel="inapp", recipient_ids=[alice.id, bob.id, alice.id, alice.id])
        second = rate_caps_consume(channel="inapp", recipient_ids=[bob.id, alice.id])
    finally:
        rate_cap.cache_clear()

    assert first == [False, False, False, True]
    assert second == [False, True]


def test_it_marks_channels_without_a_transport_failed_with_a_reason(
    key, django_capture_on_commit_callbacks, settings
):
    settings.CHANNEL_PROVIDERS = {**settings.CHANNEL_PROVIDERS, "sms": []}
    nt = NotificationTypeFactory(channels=["inapp", "sms"])
    alice = RecipientFactory()

    event = _send(
        key,
        django_capture_on_commit_callbacks,
        type_key=nt.key,
        recipients=[alice.external_id],
        data={"order_id": 1},
    )

    rows = dict(Delivery.objects.filter(event=event).values_list("channel", "reason"))
    assert rows["inapp"] == "" and "no transport" in rows["sms"]


def test_it_sweeps_an_outbox_row_whose_enqueue_was_lost(key, django_capture_on_commit_callbacks):
    nt = NotificationTypeFactory()
    alice = RecipientFactory()
    # Accepted while the broker was "down": the on-commit relay never ran.
    event = event_ingest(
        api_key=key, type_key=nt.key, recipients=[alice.external_id], data={"order_id": 1}
    ).event
    assert outbox_sweep() == 0  # still leased to the relay

    OutboxMessage.objects.filter(event=event).update(leased_until=None)
    with django_capture_on_commit_callbacks(execute=True):
        assert outbox_sweep() == 1
    assert InboxItem.objects.filter(recipient=alice).count() == 1


def test_it_holds_scheduled_events_until_send_at(key, django_capture_on_commit_callbacks):
    nt = NotificationTypeFactory()
    alice = RecipientFactory()
    later = timezone.now() + timedelta(minutes=10)
    event = _send(
        key,
        django_capture_on_commit_callbacks,
        type_key=nt.key,
        recipients=[alice.external_id],
        data={"order_id": 1},
        send_at=later,
    )

    assert Event.objects.get(id=event.id).status == "scheduled"
    assert outbox_sweep() == 0 and Delivery.objects.count() == 0

    OutboxMessage.objects.filter(event=event).update(available_at=timezone.now())
    with django_capture_on_commit_callbacks(execute=True):
        assert outbox_sweep() == 1
    assert InboxItem.objects.filter(recipient=alice).count() == 1


def test_it_skips_recipients_deleted_after_ingest(key, django_capture_on_commit_callbacks):
    nt = NotificationTypeFactory()
    alice, bob = RecipientFactory(), RecipientFactory()
    event = event_ingest(
        api_key=key, type_key=nt.key, recipients=[alice.external_id, bob.external_id], data={"order_id": 1}
    ).event
    Recipient.objects.filter(id=bob.id).delete()

    event_fanout(outbox_id=event.outbox.id)

    assert list(Delivery.objects.filter(event=event).values_list("recipient_id", flat=True)) == [alice.id]


def test_it_writes_small_pages_inbox_items_in_the_fan_out_transaction(key, settings):
    settings.INAPP_INLINE_MAX = 5
    nt = NotificationTypeFactory()
    few, many = [RecipientFactory() for _ in range(3)], [RecipientFactory() for _ in range(8)]

    small = event_ingest(
        api_key=key, type_key=nt.key, recipients=[r.external_id for r in few], data={"order_id": 1}
    )
    event_fanout(outbox_id=small.event.outbox.id)  # no on-commit hooks run: nothing queued
    large = event_ingest(
        api_key=key, type_key=nt.key, recipients=[r.external_id for r in many], data={"order_id": 2}
    )
    event_fanout(outbox_id=large.event.outbox.id)

    assert InboxItem.objects.filter(event=small.event).count() == 3
    assert not DispatchBatch.objects.filter(
        delivery_ids__overlap=list(Delivery.objects.filter(event=small.event).values_list("id", flat=True))
    ).exists()
    assert InboxItem.objects.filter(event=large.event).count() == 0
    assert not Delivery.objects.filter(event=large.event).exists()
    assert DispatchBatch.objects.get(done_at__isnull=True).planned_recipients == sorted(r.id for r in many)
