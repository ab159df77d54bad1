"""Deliveries carry no database-checked key to their recipient: inserts check it in their
own statement, and recipients_delete waits out the transactions inserting deliveries, so
no delivery outlives its recipient (notifications/models/deliveries.py)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection, connections, transaction
from django.utils import timezone

from notifications.models import Delivery, InboxItem, Recipient
from notifications.services.api_keys import api_key_create
from notifications.services.deliveries import deliveries_insert
from notifications.services.fanout import event_fanout
from notifications.services.ingest import event_ingest
from notifications.services.planning import PlannedDelivery
from notifications.services.recipients import recipients_delete
from project.processes.waiting import wait_until
from tests.notifications.factories import NotificationTypeFactory, RecipientFactory


def _pending(*recipient_ids: int) -> list[PlannedDelivery]:
    return [PlannedDelivery(rid, "inapp", "pending") for rid in recipient_ids]


@pytest.mark.django_db
def test_an_insert_skips_recipients_that_are_gone():
    alice = RecipientFactory()
    gone = RecipientFactory()
    gone_id = gone.id
    Recipient.objects.filter(id=gone_id).delete()
    event_id = uuid.uuid4()

    inserted = deliveries_insert(
        event_ids=[event_id] * 2, planned=_pending(alice.id, gone_id), now=timezone.now()
    )

    assert [row.recipient_id for row in inserted] == [alice.id]
    assert list(Delivery.objects.values_list("recipient_id", flat=True)) == [alice.id]


def _in_thread(work: Callable[[], Any], results: dict[str, Any], name: str) -> threading.Thread:
    def run() -> None:
        try:
            results[name] = work()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            results[name] = exc
        finally:
            connections.close_all()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def _waiting_on_locks() -> int:
    with connection.cursor() as db:
        db.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return int(db.fetchone()[0])


@pytest.mark.django_db(transaction=True)
def test_deleting_a_recipient_waits_for_inserts_in_flight_and_leaves_no_delivery_behind():
    # given a transaction that inserted a delivery for alice and has not committed yet
    alice, bob = RecipientFactory(), RecipientFactory()
    event_id = uuid.uuid4()
    inserted, release = threading.Event(), threading.Event()
    results: dict[str, Any] = {}

    def first_writer() -> int:
        with transaction.atomic():
            rows = deliveries_insert(event_ids=[event_id], planned=_pending(alice.id), now=timezone.now())
            inserted.set()
            assert release.wait(30)
        return len(rows)

    def late_writer() -> int:
        # planned before the deletion (alice was there), stored after it began
        with transaction.atomic():
            rows = deliveries_insert(
                event_ids=[event_id] * 2, planned=_pending(alice.id, bob.id), now=timezone.now()
            )
        return len(rows)

    writer = _in_thread(first_writer, results, "first")
    assert inserted.wait(30)

    # when alice is deleted meanwhile, and another insert for her comes after the deletion
    deleter = _in_thread(lambda: recipients_delete(recipient_ids=[alice.id]), results, "delete")
    wait_until(lambda: _waiting_on_locks() >= 1, timeout=30, message="the deletion did not wait")
    late = _in_thread(late_writer, results, "late")
    wait_until(lambda: _waiting_on_locks() >= 2, timeout=30, message="the late insert did not wait")
    assert deleter.is_alive() and late.is_alive()
    release.set()
    for thread in (writer, deleter, late):
        thread.join(30)

    # then the deletion took the row committed before it, and the late insert skipped her
    assert results == {"first": 1, "delete": 1, "late": 1}
    assert not Recipient.objects.filter(id=alice.id).exists()
    assert list(Delivery.objects.values_list("recipient_id", flat=True)) == [bob.id]


@pytest.mark.django_db
def test_deleting_recipients_takes_their_deliveries_and_inbox_items_with_them():
    nt = NotificationTypeFactory()
    alice, bob = RecipientFactory(), RecipientFactory()
    key, _ = api_key_create(name="t")
    event = event_ingest(
        api_key=key, type_key=nt.key, recipients=[alice.external_id, bob.external_id], data={"order_id": 1}
    ).event
    event_fanout(outbox_id=event.outbox.id)
    assert InboxItem.objects.count() == 2

    assert recipients_delete(recipient_ids=[alice.id, 10**12]) == 1

    assert list(Recipient.objects.values_list("id", flat=True)) == [bob.id]
    assert list(Delivery.objects.values_list("recipient_id", flat=True)) == [bob.id]
    assert list(InboxItem.objects.values_list("recipient_id", flat=True)) == [bob.id]


@pytest.mark.django_db
def test_the_admin_deletes_a_recipient_through_the_service(admin_client, monkeypatch):
    alice = RecipientFactory()
    calls: list[list[int]] = []
    from notifications.admin import recipients as recipient_admin

    def spy(*, recipient_ids: list[int]) -> int:
        calls.append(recipient_ids)
        return recipients_delete(recipient_ids=recipient_ids)

    monkeypatch.setattr(recipient_admin, "recipients_delete", spy)
    response = admin_client.post(
        "/admin/notifications/recipient/",
        {"action": "delete_selected", "_selected_action": [alice.id], "post": "yes"},
    )

    assert response.status_code == 302
    assert calls == [[alice.id]] and not Recipient.objects.exists()
