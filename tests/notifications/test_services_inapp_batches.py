"""A large in-app page handed to the queue as planned recipients (DispatchBatch): its rows
are inserted delivered by the in-app dispatch, with their items, in one statement when
everyone reads the same text, rendered per recipient otherwise (services/deliveries.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.db import NotSupportedError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from notifications.models import Delivery, DispatchBatch, FallbackCheck, InboxItem, Recipient
from notifications.services.api_keys import api_key_create
from notifications.services.deliveries import inapp_dispatch_batch
from notifications.services.fanout import event_fanout
from notifications.services.inbox import _push_frames
from notifications.services.ingest import event_ingest
from notifications.services.realtime import NOTIFICATIONS_MESSAGE
from realtime.hub import hub_add, hub_discard
from realtime.redis_client import redis_key, redis_sync
from realtime.registry import ONLINE_SET
from tests.notifications.factories import (
    NotificationTypeFactory,
    RecipientFactory,
    SubscriptionFactory,
    TopicFactory,
)

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _every_page_to_the_queue(settings: Any) -> None:
    settings.INAPP_INLINE_MAX = 0


def _planned(type_key: str, people: list[Recipient], order: int = 1) -> tuple[Any, list[int]]:
    """An event to ``people`` through a topic, fanned out: (the event, its open batches)."""
    key, _ = api_key_create(name="t")
    topic = TopicFactory()
    for person in people:
        SubscriptionFactory(topic=topic, recipient=person)
    event = event_ingest(api_key=key, type_key=type_key, topic_key=topic.key, data={"order_id": order}).event
    event_fanout(outbox_id=event.outbox.id)
    return event, list(
        DispatchBatch.objects.filter(planned_event=event.id, done_at__isnull=True).values_list(
            "id", flat=True
        )
    )


def _dispatch_counting(batch_id: int) -> tuple[int, int]:
    with CaptureQueriesContext(connection) as queries:
        written = inapp_dispatch_batch(batch_id=batch_id)
    return written, len(queries)


def test_one_text_for_everyone_is_written_in_a_number_of_statements_that_does_not_grow():
    nt = NotificationTypeFactory()
    few, many = [RecipientFactory() for _ in range(2)], [RecipientFactory() for _ in range(40)]
    (_, [few_batch]), (event, [many_batch]) = _planned(nt.key, few, 1), _planned(nt.key, many, 2)

    few_written, few_statements = _dispatch_counting(few_batch)
    many_written, many_statements = _dispatch_counting(many_batch)
    assert (few_written, many_written) == (2, 40)
    assert many_statements <= few_statements <= 6  # the first also reads the templates

    items = InboxItem.objects.filter(event=event)
    assert sorted(items.values_list("recipient_id", flat=True)) == sorted(r.id for r in many)
    assert set(items.values_list("title", "body", "seq")) == {("Order 2", "shipped", 1)}
    rows = Delivery.objects.filter(event=event)
    assert set(rows.values_list("channel", "status", "attempts")) == {("inapp", "delivered", 1)}
    assert all(r.sent_at is not None and r.created_at <= r.sent_at == r.updated_at for r in rows)
    assert set(items.values_list("delivery_id", flat=True)) == set(rows.values_list("id", flat=True))


def test_a_delivery_that_exists_already_is_kept_and_the_others_are_written():
    nt = NotificationTypeFactory()
    first, second, third = RecipientFactory(), RecipientFactory(), RecipientFactory()
    event, [batch] = _planned(nt.key, [first, second, third])
    existing = Delivery.objects.create(
        event=event, recipient=second, channel="inapp", status="delivered", reason="written before"
    )

    assert inapp_dispatch_batch(batch_id=batch) == 2

    rows = Delivery.objects.filter(event=event)
    assert rows.count() == 3
    assert rows.get(recipient=second).reason == "written before"
    items = InboxItem.objects.filter(event=event)
    assert sorted(items.values_list("recipient_id", flat=True)) == sorted([first.id, third.id])
    assert existing.id not in set(items.values_list("delivery_id", flat=True))
    assert DispatchBatch.objects.get(id=batch).done_at is not None


def test_sequence_numbers_follow_the_items_a_recipient_already_has():
    nt = NotificationTypeFactory()
    alice, bob = RecipientFactory(), RecipientFactory()
    for order in (1, 2):
        _, batches = _planned(nt.key, [alice] if order == 1 else [alice, bob], order)
        for batch_id in batches:
            inapp_dispatch_batch(batch_id=batch_id)

    assert sorted(InboxItem.objects.filter(recipient_id=alice.id).values_list("seq", flat=True)) == [1, 2]
    assert list(InboxItem.objects.filter(recipient_id=bob.id).values_list("seq", flat=True)) == [1]


def test_texts_that_differ_per_recipient_are_rendered_for_each():
    nt = NotificationTypeFactory(inapp_template={"title": "Hi {{ recipient.name }}", "body": "", "url": ""})
    ada, bo = RecipientFactory(name="Ada"), RecipientFactory(name="Bo")
    event, [batch] = _planned(nt.key, [ada, bo])

    assert inapp_dispatch_batch(batch_id=batch) == 2

    titles = dict(InboxItem.objects.filter(event=event).values_list("recipient_id", "title"))
    assert titles == {ada.id: "Hi Ada", bo.id: "Hi Bo"}


def test_a_text_that_cannot_render_fails_its_rows_and_writes_no_item():
    nt = NotificationTypeFactory(inapp_template={"title": "{{ data.missing.deeper }}", "body": "", "url": ""})
    event, [batch] = _planned(nt.key, [RecipientFactory(), RecipientFactory()])

    assert inapp_dispatch_batch(batch_id=batch) == 0

    assert set(Delivery.objects.filter(event=event).values_list("status", flat=True)) == {"failed"}
    assert not InboxItem.objects.exists()


def test_a_fallback_from_inapp_is_planned_for_the_rows_the_batch_inserts():
    nt = NotificationTypeFactory(
        channels=["inapp"], fallbacks=[{"from": "inapp", "to": "email", "after_seconds": 60}]
    )
    event, [batch] = _planned(nt.key, [RecipientFactory(), RecipientFactory()])

    assert inapp_dispatch_batch(batch_id=batch) == 2

    rows = Delivery.objects.filter(event=event)
    assert sorted(FallbackCheck.objects.values_list("delivery_id", flat=True)) == sorted(
        rows.values_list("id", flat=True)
    )
    assert set(FallbackCheck.objects.values_list("to_channel", flat=True)) == {"email"}


class _HubListener:
    """A live connection as the process's hub sees one (realtime/hub.py)."""

    def __init__(self, recipient_id: int) -> None:
        self.recipient_id = recipient_id
        self.messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def deliver(self, message: dict[str, Any]) -> None:
        self.messages.put_nowait(message)

    def hub_resumed(self) -> None:
        pass


def test_connected_owners_get_their_items_in_one_message_after_commit(django_capture_on_commit_callbacks):
    nt = NotificationTypeFactory()
    online, also_online, offline = RecipientFactory(), RecipientFactory(), RecipientFactory()
    event, [batch] = _planned(nt.key, [online, also_online, offline])

    def dispatch() -> None:
        with django_capture_on_commit_callbacks(execute=True):
            assert inapp_dispatch_batch(batch_id=batch) == 3

    async def listen() -> list[dict[str, Any]]:
        listeners = [_HubListener(online.id), _HubListener(also_online.id)]
        for listener in listeners:
            await hub_add(listener)
        try:
            await sync_to_async(dispatch)()
            return [await asyncio.wait_for(listener.messages.get(), timeout=10) for listener in listeners]
        finally:
            for listener in listeners:
                hub_discard(listener)

    redis_sync().sadd(redis_key(ONLINE_SET), online.id, also_online.id)
    try:
        first, second = async_to_sync(listen)()
    finally:
        redis_sync().srem(redis_key(ONLINE_SET), online.id, also_online.id)

    assert first == second, "one message for both owners"
    items = {item.recipient_id: item for item in InboxItem.objects.filter(event_id=event.id)}
    assert first["type"] == NOTIFICATIONS_MESSAGE
    assert first["rows"] == {
        str(online.id): [[items[online.id].id, 1]],
        str(also_online.id): [[items[also_online.id].id, 1]],
    }, "the offline owner is left out"
    assert first["unread"] == {str(online.id): 1, str(also_online.id): 1}
    assert first["item"]["title"] == "Order 1" and first["item"]["event_id"] == str(event.id)


def test_an_owner_with_items_of_several_events_in_one_page_gets_them_in_seq_order() -> None:
    """Two events in one page whose items cross (one owner's first item is of the second
    event, another's of the first): each owner still receives its items in seq order, with
    its unread count after the last (services/inbox.py _push_frames)."""
    nt = NotificationTypeFactory()
    first, second = RecipientFactory(), RecipientFactory()
    key, _ = api_key_create(name="t")
    event_a = event_ingest(
        api_key=key, type_key=nt.key, recipients=[first.external_id], data={"order_id": 1}
    ).event
    event_b = event_ingest(
        api_key=key, type_key=nt.key, recipients=[first.external_id], data={"order_id": 2}
    ).event
    text_a, text_b = ("Order 1", "", ""), ("Order 2", "", "")
    items = [
        (second.id, 1, 0, event_a.id, event_a, text_a),
        (first.id, 1, 0, event_b.id, event_b, text_b),
        (first.id, 2, 0, event_a.id, event_a, text_a),
        (second.id, 2, 0, event_b.id, event_b, text_b),
    ]

    async def listen() -> dict[int, list[dict[str, Any]]]:
        listeners = {rid: _HubListener(rid) for rid in (first.id, second.id)}
        for listener in listeners.values():
            await hub_add(listener)
        try:
            await sync_to_async(_push_frames)(items, [101, 201, 102, 202], timezone.now())
            return {
                rid: [await asyncio.wait_for(listener.messages.get(), timeout=10) for _ in range(2)]
                for rid, listener in listeners.items()
            }
        finally:
            for listener in listeners.values():
                hub_discard(listener)

    redis_sync().sadd(redis_key(ONLINE_SET), first.id, second.id)
    try:
        received = async_to_sync(listen)()
    finally:
        redis_sync().srem(redis_key(ONLINE_SET), first.id, second.id)

    for rid, messages in received.items():
        rows = [row for message in messages for row in message["rows"][str(rid)]]
        assert [seq for _item_id, seq in rows] == [1, 2], f"recipient {rid} in seq order"
        assert [str(rid) in message["unread"] for message in messages] == [False, True], (
            "the count after the last"
        )
    titles = [message["item"]["title"] for message in received[first.id]]
    assert titles == ["Order 2", "Order 1"]


def test_a_batch_stores_its_ids_compressed_with_lz4_where_the_server_has_it():
    with connection.cursor() as db:
        db.execute(
            """SELECT attname, attcompression FROM pg_attribute
               WHERE attrelid = 'notifications_dispatchbatch'::regclass
                 AND attname IN ('delivery_ids', 'planned_recipients')"""
        )
        methods = dict(db.fetchall())
        try:
            db.execute("SAVEPOINT probe")
            db.execute("CREATE TEMP TABLE lz4_probe (a bigint[] COMPRESSION lz4)")
            expected = "l"
        except NotSupportedError:  # a server built without lz4 (the migration keeps pglz there)
            db.execute("ROLLBACK TO SAVEPOINT probe")
            expected = ""
    assert methods == {"delivery_ids": expected, "planned_recipients": expected}
