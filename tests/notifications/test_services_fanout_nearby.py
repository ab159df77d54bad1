"""Small events fanned out by the process that accepted them (notifications/services/
fanout_nearby.py): right after the API's commit, on a thread of the process, with the
fan-out queue and the outbox sweep behind it. The thread has a connection of its own, so
these tests commit for real (transactional_db)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from notifications.models import Delivery, Event, InboxItem, OutboxMessage
from notifications.services import fanout_nearby, ingest, outbox
from notifications.services.api_keys import api_key_create
from notifications.services.fanout_nearby import fanout_nearby_idle, fanout_nearby_stop, fanout_soon
from notifications.services.ingest import event_ingest
from notifications.services.queues import EVENT_FANOUT, EVENTS_FANOUT_MANY
from tests.notifications.factories import (
    NotificationTypeFactory,
    RecipientFactory,
    SubscriptionFactory,
    TopicFactory,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _nearby_on(settings: Any) -> Iterator[None]:
    settings.FANOUT_NEARBY = True
    yield
    fanout_nearby_stop()


@pytest.fixture
def enqueued(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the fan-out tasks handed to the broker (they still run, eagerly)."""
    names: list[str] = []
    real = outbox.enqueue

    def spy(name: str, **kwargs: Any) -> bool:
        names.append(name)
        return real(name, **kwargs)

    monkeypatch.setattr(outbox, "enqueue", spy)
    return names


def _stored_events(count: int, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """``count`` one-recipient events, stored and not yet fanned out (as if the process had
    died right after each commit); their outbox ids."""
    key, _ = api_key_create(name="t")
    nt = NotificationTypeFactory()
    users = [RecipientFactory() for _ in range(count)]
    with monkeypatch.context() as patch:
        patch.setattr(ingest, "event_fanout_soon", lambda **kwargs: None)
        events = [
            event_ingest(api_key=key, type_key=nt.key, recipients=[u.external_id], data={"order_id": n}).event
            for n, u in enumerate(users)
        ]
    return [OutboxMessage.objects.get(event=event).id for event in events]


def _done(outbox_ids: list[int]) -> bool:
    return not OutboxMessage.objects.filter(id__in=outbox_ids, processed_at__isnull=True).exists()


def test_an_accepted_event_is_fanned_out_by_the_process_that_accepted_it(
    service_client: Any, enqueued: list[str]
) -> None:
    nt = NotificationTypeFactory()
    alice = RecipientFactory()

    response = service_client.post(
        "/api/v1/events/",
        {"type": nt.key, "recipients": [alice.external_id], "data": {"order_id": 7}},
        format="json",
    )

    assert response.status_code == 202
    assert fanout_nearby_idle()
    assert InboxItem.objects.get(recipient=alice).title == "Order 7"
    assert Event.objects.get(id=response.json()["id"]).status == "completed"
    assert enqueued == []  # no broker hop


def test_an_event_to_a_topic_goes_to_the_fanout_queue_at_once(
    service_client: Any, enqueued: list[str]
) -> None:
    nt = NotificationTypeFactory()
    topic = TopicFactory()
    alice = RecipientFactory()
    SubscriptionFactory(topic=topic, recipient=alice)

    response = service_client.post(
        "/api/v1/events/", {"type": nt.key, "topic": topic.key, "data": {"order_id": 8}}, format="json"
    )

    assert response.status_code == 202
    assert enqueued == [EVENT_FANOUT]  # paged by a fan-out task, as before
    assert fanout_nearby._nearby is None  # the thread never saw it
    assert InboxItem.objects.get(recipient=alice).title == "Order 8"


def test_events_waiting_together_are_stored_by_one_fanout(
    monkeypatch: pytest.MonkeyPatch, enqueued: list[str]
) -> None:
    outbox_ids = _stored_events(12, monkeypatch)
    batches: list[list[int]] = []
    real = fanout_nearby.events_fanout_many

    def counted(outbox_ids: list[int], **kwargs: Any) -> Any:
        batches.append(list(outbox_ids))
        return real(outbox_ids=outbox_ids, **kwargs)

    monkeypatch.setattr(fanout_nearby, "events_fanout_many", counted)

    fanout_soon(outbox_ids=outbox_ids)

    assert fanout_nearby_idle()
    assert batches == [outbox_ids]
    assert _done(outbox_ids) and InboxItem.objects.count() == 12
    assert enqueued == []


def test_events_beyond_the_backlog_go_to_the_fanout_queue(
    monkeypatch: pytest.MonkeyPatch, settings: Any, enqueued: list[str]
) -> None:
    settings.FANOUT_NEARBY_BACKLOG = 2
    outbox_ids = _stored_events(3, monkeypatch)

    fanout_soon(outbox_ids=outbox_ids)

    assert enqueued == [EVENTS_FANOUT_MANY]
    assert _done(outbox_ids) and InboxItem.objects.count() == 3


def test_a_failed_fanout_hands_its_events_to_the_fanout_queue(
    monkeypatch: pytest.MonkeyPatch, enqueued: list[str]
) -> None:
    outbox_ids = _stored_events(1, monkeypatch)

    def broken(outbox_ids: list[int], **kwargs: Any) -> None:
        raise RuntimeError("database went away")

    monkeypatch.setattr(fanout_nearby, "events_fanout_many", broken)

    fanout_soon(outbox_ids=outbox_ids)

    assert fanout_nearby_idle()
    assert enqueued == [EVENT_FANOUT]  # one event: a task of its own, as the API would relay it
    assert _done(outbox_ids) and InboxItem.objects.count() == 1


def test_stopping_hands_the_waiting_events_to_the_fanout_queue(
    monkeypatch: pytest.MonkeyPatch, enqueued: list[str]
) -> None:
    first, second = _stored_events(2, monkeypatch)
    taken, release = threading.Event(), threading.Event()
    real = fanout_nearby.events_fanout_many

    def held(outbox_ids: list[int], **kwargs: Any) -> Any:
        taken.set()
        release.wait(10)
        return real(outbox_ids=outbox_ids, **kwargs)

    monkeypatch.setattr(fanout_nearby, "events_fanout_many", held)
    fanout_soon(outbox_ids=[first])
    assert taken.wait(10)
    fanout_soon(outbox_ids=[second])  # waits behind the first
    thread = fanout_nearby._nearby.thread  # type: ignore[union-attr]

    fanout_nearby_stop(timeout=0.1)  # the first is still in hand

    assert enqueued == [EVENT_FANOUT] and _done([second])
    # (its task may take the first along: the thread then finds it done and stores nothing)
    release.set()
    thread.join(10)
    assert not thread.is_alive()
    assert _done([first]) and InboxItem.objects.count() == Delivery.objects.count() == 2


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread's death
def test_events_go_to_the_fanout_queue_once_the_thread_is_gone(
    monkeypatch: pytest.MonkeyPatch, enqueued: list[str]
) -> None:
    first, second = _stored_events(2, monkeypatch)

    def fatal(outbox_ids: list[int], **kwargs: Any) -> None:
        raise SystemExit  # not an Exception: the thread ends

    monkeypatch.setattr(fanout_nearby, "events_fanout_many", fatal)
    fanout_soon(outbox_ids=[first])
    thread = fanout_nearby._nearby.thread  # type: ignore[union-attr]
    thread.join(10)
    assert not thread.is_alive()

    fanout_soon(outbox_ids=[second])

    assert enqueued == [EVENT_FANOUT]
    # the second's task takes along the first, which the thread left behind
    assert _done([first, second]) and InboxItem.objects.count() == Delivery.objects.count() == 2
