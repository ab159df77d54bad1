"""Small events fanned out together (notifications/services/fanout.py): the fan-out task
of one small event takes along the other small events waiting, stores them in one
transaction, and leaves large, scheduled and aggregated events to their own paths."""

from __future__ import annotations

import re
from datetime import timedelta

import psycopg
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from notifications.models import Delivery, Event, InboxItem, OutboxMessage, Recipient
from notifications.services.api_keys import api_key_create
from notifications.services.fanout import _CLAIM_SPACE as CLAIM_SPACE
from notifications.services.fanout import _load_outboxes, event_fanout_next, events_fanout_many
from notifications.services.ingest import event_ingest
from tests.notifications.factories import NotificationTypeFactory, RecipientFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db


def _outbox(event: Event) -> int:
    return OutboxMessage.objects.get(event=event).id


def test_the_task_of_one_small_event_stores_every_small_event_waiting_in_one_go(
    django_capture_on_commit_callbacks, django_assert_max_num_queries
):
    key, _ = api_key_create(name="t")
    nt = NotificationTypeFactory()
    users = [RecipientFactory() for _ in range(20)]
    with django_capture_on_commit_callbacks(execute=False):  # their own tasks not run yet
        events = [
            event_ingest(api_key=key, type_key=nt.key, recipients=[u.external_id], data={"order_id": n}).event
            for n, u in enumerate(users)
        ]

    # as many statements as for one event alone (test below)
    with django_assert_max_num_queries(16):
        progress = event_fanout_next(outbox_id=_outbox(events[5]))

    assert progress.recipients == 20 and progress.finished
    assert InboxItem.objects.count() == 20
    assert set(Event.objects.values_list("status", flat=True)) == {"completed"}
    # and the tasks of the events taken along find them done and store nothing twice
    for event in events:
        assert event_fanout_next(outbox_id=_outbox(event)).recipients == 0
    assert InboxItem.objects.count() == Delivery.objects.count() == 20


def test_large_scheduled_and_aggregated_events_are_not_taken_along(django_capture_on_commit_callbacks):
    key, _ = api_key_create(name="t")
    nt = NotificationTypeFactory()
    aggregated = NotificationTypeFactory(aggregation_window_seconds=30)
    alice, bob = RecipientFactory(), RecipientFactory()
    subscription = SubscriptionFactory(recipient=bob)
    with django_capture_on_commit_callbacks(execute=False):
        small = event_ingest(
            api_key=key, type_key=nt.key, recipients=[alice.external_id], data={"order_id": 1}
        )
        topic = event_ingest(
            api_key=key, type_key=nt.key, topic_key=subscription.topic.key, data={"order_id": 2}
        )
        later = event_ingest(
            api_key=key,
            type_key=nt.key,
            recipients=[alice.external_id],
            data={"order_id": 3},
            send_at=timezone.now() + timedelta(hours=1),
        )
        liked = event_ingest(api_key=key, type_key=aggregated.key, recipients=[alice.external_id], data={})

    assert event_fanout_next(outbox_id=_outbox(small.event)).recipients == 1

    undone = set(OutboxMessage.objects.filter(processed_at__isnull=True).values_list("event_id", flat=True))
    assert undone == {topic.event.id, later.event.id, liked.event.id}
    # and the topic event still fans out page by page through its own task
    assert event_fanout_next(outbox_id=_outbox(topic.event)).recipients == 1
    assert InboxItem.objects.filter(recipient=bob).count() == 1


def _one_event_for(recipient: Recipient) -> Event:
    key, _ = api_key_create(name="t")
    nt = NotificationTypeFactory()
    return event_ingest(
        api_key=key, type_key=nt.key, recipients=[recipient.external_id], data={"order_id": 1}
    ).event


def test_a_lone_small_event_goes_alone(django_capture_on_commit_callbacks, django_assert_max_num_queries):
    alice = RecipientFactory()
    with django_capture_on_commit_callbacks(execute=False):  # its own task not run yet
        event = _one_event_for(alice)

    with django_assert_max_num_queries(16):
        assert event_fanout_next(outbox_id=_outbox(event)).recipients == 1
    assert InboxItem.objects.get(recipient=alice).title == "Order 1"


def test_events_another_fanout_is_planning_are_neither_planned_nor_stored_twice(
    django_capture_on_commit_callbacks,
):
    # given three small events waiting, the second claimed by another fan-out (another
    # database session holds its claim)
    key, _ = api_key_create(name="t")
    nt = NotificationTypeFactory()
    users = [RecipientFactory() for _ in range(3)]
    with django_capture_on_commit_callbacks(execute=False):
        events = [
            event_ingest(api_key=key, type_key=nt.key, recipients=[u.external_id], data={"order_id": n}).event
            for n, u in enumerate(users)
        ]
    claimed = _outbox(events[1])
    other = psycopg.connect(**_connection_kwargs(), autocommit=True)  # type: ignore[arg-type]
    try:
        assert other.execute("SELECT pg_try_advisory_lock(%s)", [CLAIM_SPACE + claimed]).fetchone() == (True,)

        # when the first event's task runs, and then the claimed event's own task
        first = event_fanout_next(outbox_id=_outbox(events[0]))
        own = event_fanout_next(outbox_id=claimed)
        # Released here, not by closing: a closed session's backend lets its locks go a
        # moment after close() returns, which a busy machine makes long enough to see.
        other.execute("SELECT pg_advisory_unlock(%s)", [CLAIM_SPACE + claimed])
    finally:
        other.close()

    # then the two others were stored and the claimed one left to its holder
    assert (first.recipients, own.recipients) == (2, 0)
    assert set(InboxItem.objects.values_list("recipient_id", flat=True)) == {users[0].id, users[2].id}
    # and once the claim is gone, its own task stores it
    assert event_fanout_next(outbox_id=claimed).recipients == 1


def _connection_kwargs() -> dict[str, object]:
    from django.db import connection

    params = connection.get_connection_params()
    return {k: v for k, v in params.items() if k in ("host", "port", "user", "password", "dbname")}


def test_a_batch_of_small_events_writes_at_most_a_page_of_recipients(
    django_capture_on_commit_callbacks, settings
):
    # given a page of four recipients, and three waiting events to two recipients each
    settings.FANOUT_PAGE_SIZE = 4
    key, _ = api_key_create(name="t")
    nt = NotificationTypeFactory()
    users = [RecipientFactory() for _ in range(6)]
    with django_capture_on_commit_callbacks(execute=False):
        events = [
            event_ingest(
                api_key=key,
                type_key=nt.key,
                recipients=[users[2 * n].external_id, users[2 * n + 1].external_id],
                data={"order_id": n},
            ).event
            for n in range(3)
        ]

    # when the first event's task runs, it takes along only as many as fit in the page
    assert event_fanout_next(outbox_id=_outbox(events[0])).recipients == 4
    assert OutboxMessage.objects.filter(processed_at__isnull=True).count() == 1
    # and a bulk task over all three stores the rest, a page at a time
    assert events_fanout_many(outbox_ids=[_outbox(e) for e in events]).recipients == 2
    assert InboxItem.objects.count() == 6


def test_rows_whose_events_the_caller_holds_are_not_read_again_nor_stored_twice(
    django_capture_on_commit_callbacks,
):
    key, _ = api_key_create(name="t")
    nt = NotificationTypeFactory()
    alice = RecipientFactory()
    with django_capture_on_commit_callbacks(execute=False):  # as the web process hands it over
        event = event_ingest(
            api_key=key, type_key=nt.key, recipients=[alice.external_id], data={"order_id": 1}
        ).event
    outbox_id = _outbox(event)

    with CaptureQueriesContext(connection) as queries:
        assert events_fanout_many(outbox_ids=[outbox_id], events={outbox_id: event}).recipients == 1

    # the row is locked to be stored, and not read with its event beforehand
    reads = [q["sql"] for q in queries.captured_queries if 'FROM "notifications_outboxmessage"' in q["sql"]]
    assert len(reads) == 1 and "FOR UPDATE" in reads[0], reads
    assert InboxItem.objects.get(recipient=alice).title == "Order 1"
    # handed over again (another fan-out stored it meanwhile): planned, and dropped when stored
    assert events_fanout_many(outbox_ids=[outbox_id], events={outbox_id: event}).recipients == 0
    assert InboxItem.objects.count() == Delivery.objects.count() == 1


def test_an_inapp_delivery_written_with_its_page_is_inserted_delivered_not_inserted_then_updated(
    django_capture_on_commit_callbacks,
):
    alice = RecipientFactory()
    with django_capture_on_commit_callbacks(execute=False):  # its own task not run yet
        event = _one_event_for(alice)

    with CaptureQueriesContext(connection) as queries:
        assert event_fanout_next(outbox_id=_outbox(event)).recipients == 1

    delivery_writes = [
        q["sql"].split()[0]
        for q in queries.captured_queries
        if q["sql"].split()[0] in ("INSERT", "UPDATE") and re.search(r"\bnotifications_delivery\b", q["sql"])
    ]
    assert delivery_writes == ["INSERT"], queries.captured_queries
    delivery = Delivery.objects.get(recipient=alice)
    assert (delivery.status, delivery.attempts) == ("delivered", 1)
    assert delivery.sent_at is not None and delivery.updated_at == delivery.sent_at >= delivery.created_at
    assert InboxItem.objects.get(delivery=delivery).seq == 1


def test_rows_read_by_hand_carry_the_events_and_types_the_orm_would_give(django_capture_on_commit_callbacks):
    nt = NotificationTypeFactory(fallbacks=[{"from": "inapp", "to": "email", "after_seconds": 60}])
    alice, bob = RecipientFactory(), RecipientFactory()
    key, _ = api_key_create(name="t")
    with django_capture_on_commit_callbacks(execute=False):
        events = [
            event_ingest(
                api_key=key, type_key=nt.key, recipients=[r.external_id], data={"order_id": n, "x": [1]}
            ).event
            for n, r in enumerate([alice, bob])
        ]
    ids = [_outbox(e) for e in events]

    rows = sorted(_load_outboxes(ids), key=lambda row: row.id)

    assert [(row.id, row.cursor, row.event_id) for row in rows] == [
        (i, 0, e.id) for i, e in zip(ids, events, strict=True)
    ]
    for row in rows:
        expected = Event.objects.select_related("notification_type").get(id=row.event_id)
        fields = [f.attname for f in Event._meta.concrete_fields]
        assert [getattr(row.event, f) for f in fields] == [getattr(expected, f) for f in fields]
        type_fields = [f.attname for f in type(nt)._meta.concrete_fields]
        assert [getattr(row.event.notification_type, f) for f in type_fields] == [
            getattr(expected.notification_type, f) for f in type_fields
        ]
        assert not row.event._state.adding
    assert rows[0].event.notification_type is rows[1].event.notification_type  # one per type
    assert rows[0].event.data == {"order_id": 0, "x": [1]}
    OutboxMessage.objects.filter(id=ids[0]).update(processed_at=timezone.now())
    assert [row.id for row in _load_outboxes(ids)] == [ids[1]]
