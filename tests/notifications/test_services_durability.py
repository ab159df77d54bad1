"""Which commits wait for the WAL flush (notifications/services/durability.py).

Inbox items are pushed to their owners right after their commit: a PostgreSQL crash must
not take back an item someone saw and hand its seq to another. Each test runs inside the
test's transaction, so the SET LOCAL a service made is still in force when it returns: the
setting read is the one its commit would have used."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection

from notifications.models import Delivery, DispatchBatch, InboxItem, OutboxMessage, Recipient
from notifications.services.api_keys import api_key_create
from notifications.services.deliveries import inapp_dispatch_batch
from notifications.services.fanout import event_fanout, event_fanout_next
from notifications.services.inbox import inapp_dispatch
from notifications.services.ingest import event_ingest
from tests.notifications.factories import (
    NotificationTypeFactory,
    RecipientFactory,
    SubscriptionFactory,
    pending_inapp,
)

pytestmark = pytest.mark.django_db


def _commit_setting() -> str:
    with connection.cursor() as db:
        db.execute("SHOW synchronous_commit")
        return str(db.fetchone()[0])


def _accepted(capture: Any, channel: str, *, topic: bool = False) -> tuple[int, Recipient]:
    """An event of a type sent on ``channel``, to one user directly or through a topic:
    its outbox row (not fanned out yet) and its recipient."""
    key, _ = api_key_create(name="t")
    nt = NotificationTypeFactory(channels=[channel])
    subscription = SubscriptionFactory(recipient=RecipientFactory(email="ada@example.com"))
    user = subscription.recipient
    with capture(execute=False):  # fanned out by the test
        event = event_ingest(
            api_key=key,
            type_key=nt.key,
            data={"order_id": 1},
            topic_key=subscription.topic.key if topic else None,
            recipients=None if topic else [user.external_id],
        ).event
    return OutboxMessage.objects.get(event=event).id, user


def test_a_small_event_whose_inbox_items_are_written_commits_durably(django_capture_on_commit_callbacks):
    outbox_id, user = _accepted(django_capture_on_commit_callbacks, "inapp")

    event_fanout_next(outbox_id=outbox_id)

    assert InboxItem.objects.filter(recipient=user).count() == 1
    assert _commit_setting() == "on"


def test_a_fanout_page_that_writes_inbox_items_commits_durably(django_capture_on_commit_callbacks):
    outbox_id, user = _accepted(django_capture_on_commit_callbacks, "inapp", topic=True)

    event_fanout(outbox_id=outbox_id)

    assert InboxItem.objects.filter(recipient=user).count() == 1
    assert _commit_setting() == "on"


def test_a_page_without_inapp_deliveries_commits_without_waiting_for_the_flush(
    django_capture_on_commit_callbacks,
):
    outbox_id, user = _accepted(django_capture_on_commit_callbacks, "email")

    event_fanout_next(outbox_id=outbox_id)

    assert Delivery.objects.filter(recipient=user, channel="email").count() == 1
    assert _commit_setting() == "off"


def test_a_page_that_leaves_its_inapp_rows_to_the_queue_waits_not_and_their_batch_does(
    django_capture_on_commit_callbacks, settings
):
    settings.INAPP_INLINE_MAX = 0  # the page hands its in-app recipient to a dispatch batch
    outbox_id, user = _accepted(django_capture_on_commit_callbacks, "inapp", topic=True)
    with django_capture_on_commit_callbacks(execute=False):
        event_fanout(outbox_id=outbox_id)
    assert not InboxItem.objects.exists() and not Delivery.objects.exists()
    assert _commit_setting() == "off"  # it wrote no item: a crash would only redo the page

    batch = DispatchBatch.objects.get()
    assert batch.planned_recipients == [user.id]
    with connection.cursor() as db:  # the batch runs in a transaction of its own
        db.execute("SET LOCAL synchronous_commit TO on")
    assert inapp_dispatch_batch(batch_id=batch.id) == 1
    assert _commit_setting() == "on"


def test_an_inapp_dispatch_of_pending_rows_commits_durably(django_capture_on_commit_callbacks):
    outbox_id, user = _accepted(django_capture_on_commit_callbacks, "inapp")
    ids = pending_inapp(OutboxMessage.objects.get(id=outbox_id).event)

    assert inapp_dispatch(delivery_ids=ids) == 1
    assert InboxItem.objects.filter(recipient=user).count() == 1
    assert _commit_setting() == "on"
