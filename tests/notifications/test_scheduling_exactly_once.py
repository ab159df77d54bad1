"""Two beat processes sweeping at once never double a scheduled send: due outbox rows and
due deliveries are claimed with SKIP LOCKED (services/outbox.py, services/scheduling.py),
and a send scheduled far beyond any broker's visibility timeout waits in PostgreSQL, not
in the broker, so it runs once when it comes due."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from notifications.models import Delivery, DeliverySchedule, InboxItem, OutboxMessage
from notifications.services import outbox as outbox_module
from notifications.services import scheduling as scheduling_module
from notifications.services.api_keys import api_key_create
from notifications.services.fanout import event_fanout
from notifications.services.ingest import event_ingest
from notifications.services.outbox import outbox_sweep
from notifications.services.scheduling import deliveries_release_due
from tests.notifications.factories import NotificationTypeFactory, RecipientFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def api_key_row() -> Any:
    return api_key_create(name="scheduling")[0]


def at_once(work: Any, threads: int = 2) -> list[Any]:
    """Run ``work`` in ``threads`` threads started together (each with its own database
    connection, as two beat processes have); their answers."""
    start = threading.Barrier(threads)
    answers: list[Any] = []

    def run() -> None:
        try:
            start.wait(10)
            answers.append(work())
        finally:
            connection.close()

    running = [threading.Thread(target=run) for _ in range(threads)]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join(60)
    return answers


def test_two_sweeps_hand_each_due_scheduled_event_to_one_fan_out(
    api_key_row: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    nt = NotificationTypeFactory()
    people = [RecipientFactory() for _ in range(3)]
    # Scheduled a month ahead: far past any broker's visibility timeout (Redis: 1 hour).
    events = [
        event_ingest(
            api_key=api_key_row,
            type_key=nt.key,
            recipients=[p.external_id for p in people],
            data={"order_id": n},
            send_at=timezone.now() + timedelta(days=30),
        ).event
        for n in range(60)
    ]
    OutboxMessage.objects.filter(event__in=events).update(available_at=timezone.now())
    handed: Counter[int] = Counter()
    enqueue = outbox_module._enqueue_fanout

    def counted(outbox_id: int, countdown: float | None = None, queue: str | None = None) -> bool:
        handed[outbox_id] += 1
        return enqueue(outbox_id, countdown, queue)

    monkeypatch.setattr(outbox_module, "_enqueue_fanout", counted)

    swept = at_once(lambda: outbox_sweep(limit=1000))

    assert sum(swept) == len(events)
    assert set(handed.values()) == {1} and len(handed) == len(events), "each row to one fan-out, once"
    assert InboxItem.objects.filter(event__in=events).count() == len(events) * len(people)


def test_two_sweeps_release_each_due_delivery_once(api_key_row: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    nt = NotificationTypeFactory()
    people = [RecipientFactory(timezone="UTC") for _ in range(40)]
    wall = (timezone.now() + timedelta(days=30)).replace(tzinfo=None, microsecond=0)
    event = event_ingest(
        api_key=api_key_row,
        type_key=nt.key,
        recipients=[p.external_id for p in people],
        data={"order_id": 1},
        send_at_local=wall,
    ).event
    event_fanout(outbox_id=OutboxMessage.objects.get(event=event).id)
    assert DeliverySchedule.objects.filter(delivery__event=event).count() == len(people)
    DeliverySchedule.objects.filter(delivery__event=event).update(due_at=timezone.now())
    dispatched: Counter[int] = Counter()
    dispatch = scheduling_module.deliveries_dispatch

    def counted(rows: Any, **kwargs: Any) -> Any:
        for delivery_id, _channel in rows:
            dispatched[delivery_id] += 1
        return dispatch(rows, **kwargs)

    monkeypatch.setattr(scheduling_module, "deliveries_dispatch", counted)

    released = at_once(lambda: deliveries_release_due(limit=1000))

    assert sum(released) == len(people)
    assert set(dispatched.values()) == {1} and len(dispatched) == len(people)
    assert Delivery.objects.filter(event=event, status="delivered").count() == len(people)
