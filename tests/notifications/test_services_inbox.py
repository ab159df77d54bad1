"""The end user's inbox as a service: the order it is listed in, marking read, in-app
dispatch in a bounded number of queries whatever the batch size."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from notifications import selectors
from notifications.models import Delivery, Event, InboxItem
from notifications.services.api_keys import api_key_create
from notifications.services.inbox import inapp_dispatch, inbox_mark_all_read
from notifications.services.ingest import event_ingest
from notifications.states import DeliveryStatus
from tests.notifications.factories import NotificationTypeFactory, RecipientFactory, pending_inapp

pytestmark = pytest.mark.django_db


@pytest.fixture
def key() -> Any:
    return api_key_create(name="inbox")[0]


def _planned(key: Any, type_key: str, external_ids: list[str], order: int) -> Event:
    """An accepted event whose in-app deliveries wait pending in a dispatch batch."""
    event = event_ingest(
        api_key=key, type_key=type_key, recipients=external_ids, data={"order_id": order}
    ).event
    pending_inapp(event)
    return event


def _inapp_ids(event: Event) -> list[int]:
    return list(Delivery.objects.filter(event=event, channel="inapp").values_list("id", flat=True))


def test_it_lists_the_inbox_newest_first_by_when_each_event_was_accepted(key, user_client):
    # given three events accepted one after the other, whose in-app writes committed in
    # another order (two fan-out workers: the third event's batch committed before the second's)
    nt = NotificationTypeFactory()
    alice = RecipientFactory()
    first, second, third = (_planned(key, nt.key, [alice.external_id], n) for n in (1, 2, 3))
    for event in (first, third, second):
        inapp_dispatch(delivery_ids=_inapp_ids(event))

    # when the inbox is listed
    listed = selectors.inbox_items(recipient_id=alice.id)

    # then it is newest first by acceptance, while seq keeps the commit order for resuming
    assert [row["event_id"] for row in listed] == [third.id, second.id, first.id]
    assert [row["seq"] for row in listed] == [2, 3, 1]
    resumed = selectors.inbox_items(recipient_id=alice.id, after=0)
    assert [row["seq"] for row in resumed] == [1, 2, 3]
    # and a page "before" an item continues in the listed order
    older = selectors.inbox_items(recipient_id=alice.id, before=3)
    assert [row["event_id"] for row in older] == [first.id]
    # and the API and the page say the same
    body = user_client(alice.id).get("/api/v1/inbox/").json()
    assert [item["event_id"] for item in body["results"]] == [str(third.id), str(second.id), str(first.id)]
    assert [item["accepted_at"] for item in body["results"]] == sorted(
        (item["accepted_at"] for item in body["results"]), reverse=True
    )


def test_it_marks_every_item_and_its_delivery_read_in_one_statement(key):
    nt = NotificationTypeFactory()
    alice, bob = RecipientFactory(), RecipientFactory()
    events = [_planned(key, nt.key, [alice.external_id, bob.external_id], n) for n in range(5)]
    for event in events:
        inapp_dispatch(delivery_ids=_inapp_ids(event))

    with CaptureQueriesContext(connection) as queries:
        changed = inbox_mark_all_read(recipient_id=alice.id)

    assert changed == 5
    writes = [q["sql"] for q in queries if q["sql"].lstrip().upper().startswith(("UPDATE", "WITH", "SELECT"))]
    assert len(writes) == 1, writes  # one UPDATE ... RETURNING: no id list read first
    assert not InboxItem.objects.filter(recipient=alice, read_at__isnull=True).exists()
    alice_statuses = set(Delivery.objects.filter(recipient=alice).values_list("status", flat=True))
    assert alice_statuses == {DeliveryStatus.READ}
    # another user's items are untouched
    assert InboxItem.objects.filter(recipient=bob, read_at__isnull=True).count() == 5
    assert inbox_mark_all_read(recipient_id=alice.id) == 0


def _dispatch_queries(key: Any, recipients: int, template: dict[str, str] | None = None) -> tuple[int, int]:
    nt = NotificationTypeFactory(inapp_template=template) if template else NotificationTypeFactory()
    people = [RecipientFactory() for _ in range(recipients)]
    event = _planned(key, nt.key, [p.external_id for p in people], 1)
    with CaptureQueriesContext(connection) as queries:
        written = inapp_dispatch(delivery_ids=_inapp_ids(event))
    return written, len(queries)


def test_it_writes_an_in_app_batch_in_a_number_of_queries_that_does_not_grow_with_it(key):
    small_written, small = _dispatch_queries(key, 2)
    large_written, large = _dispatch_queries(key, 60)

    assert (small_written, large_written) == (2, 60)
    # past a few ids, one SET LOCAL keeps the planner on the primary key
    assert small <= large <= small + 1 <= 8


def test_it_fails_unrenderable_in_app_items_in_one_statement_whatever_their_number(key):
    broken = {"title": "{{ data.missing.deeper }}", "body": "", "url": ""}
    _, few = _dispatch_queries(key, 2, broken)
    _, many = _dispatch_queries(key, 40, broken)

    assert many == few <= 8
    failed = Delivery.objects.filter(status=DeliveryStatus.FAILED)
    assert failed.count() == 42 and not InboxItem.objects.exists()
    assert all("missing" in reason for reason in failed.values_list("reason", flat=True))


def test_items_of_one_event_and_of_several_are_stored_alike(key):
    # given two recipients of a scheduled event (accepted_at is when it came due) and a
    # batch that mixes it with another event: the one-event batch gets the event's fields
    # as constants, the mixed one joins them in (services/inbox.py's _insert_items)
    nt = NotificationTypeFactory()
    alice, bob = RecipientFactory(), RecipientFactory()
    scheduled = _planned(key, nt.key, [alice.external_id, bob.external_id], 1)
    Event.objects.filter(id=scheduled.id).update(
        send_at=scheduled.created_at + timedelta(minutes=5), data={"order_id": 1, "nested": {"a": [1, 2]}}
    )
    other = _planned(key, nt.key, [bob.external_id], 2)

    inapp_dispatch(delivery_ids=_inapp_ids(scheduled)[:1])  # one event: constants
    inapp_dispatch(delivery_ids=_inapp_ids(scheduled)[1:] + _inapp_ids(other))  # joined

    fields = ("notification_type", "category", "title", "body", "url", "data", "accepted_at", "event_id")
    mine, bobs = (
        InboxItem.objects.filter(event=scheduled, recipient=r).values(*fields).get() for r in (alice, bob)
    )
    assert mine == bobs
    assert mine["accepted_at"] == scheduled.created_at + timedelta(minutes=5)
    assert mine["data"] == {"order_id": 1, "nested": {"a": [1, 2]}}
    assert (mine["notification_type"], mine["category"]) == (nt.key, nt.category)
