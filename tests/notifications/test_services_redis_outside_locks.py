"""Redis is never asked while PostgreSQL rows are locked, and a Redis outage costs only
what Redis is for (live frames, rate caps, presence): never an in-app write.

These tests commit for real (``transaction=True``): inside a test-wide transaction every
Redis call would look like it ran inside one.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from django.db import connection
from django.utils import timezone

from notifications.models import Delivery, FallbackCheck, InboxItem
from notifications.services import ratelimits, sms_guard
from notifications.services.api_keys import api_key_create
from notifications.services.fallback import fallback_checks_due
from notifications.services.inbox import inbox_item_mark_read, inbox_mark_all_read
from notifications.services.ingest import event_ingest
from notifications.states import DeliveryStatus
from realtime import redis_client
from realtime.redis_client import redis_key, redis_sync
from tests.notifications.factories import NotificationTypeFactory, RecipientFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def key() -> Any:
    return api_key_create(name="locks")[0]


@pytest.fixture
def redis_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """Every Redis command this process sends, with whether a database transaction was
    open at that moment."""
    calls: list[tuple[str, bool]] = []
    command = redis.Redis.execute_command
    pipeline = redis.client.Pipeline.execute

    def spy_command(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append((str(args[0]), connection.in_atomic_block))
        return command(self, *args, **kwargs)

    def spy_pipeline(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(("PIPELINE", connection.in_atomic_block))
        return pipeline(self, *args, **kwargs)

    monkeypatch.setattr(redis.Redis, "execute_command", spy_command)
    monkeypatch.setattr(redis.client.Pipeline, "execute", spy_pipeline)
    return calls


def _online(recipient_id: int) -> None:
    """Register a live connection for the recipient, as an open inbox socket does."""
    redis_sync().sadd(redis_key("inbox:online"), recipient_id)


def test_it_asks_redis_nothing_while_a_fan_out_holds_row_locks(key, settings, redis_calls):
    # given a type with a rate cap, one connected recipient and one offline, in-app inline
    settings.RATE_CAPS = {**settings.RATE_CAPS, "inapp": "1000/60"}
    ratelimits.rate_cap.cache_clear()
    nt = NotificationTypeFactory()
    alice, bob = RecipientFactory(), RecipientFactory()
    _online(alice.id)
    redis_calls.clear()

    # when an event is accepted and fanned out (eager tasks, after each commit)
    event_ingest(
        api_key=key, type_key=nt.key, recipients=[alice.external_id, bob.external_id], data={"order_id": 1}
    )

    # then both inbox items exist, Redis was used (caps, registry, frames, metrics), and
    # never inside a transaction
    assert InboxItem.objects.filter(event__notification_type=nt).count() == 2
    assert {name for name, _ in redis_calls} >= {"EVALSHA", "SMISMEMBER"}
    assert [call for call in redis_calls if call[1]] == []


def test_it_asks_redis_nothing_while_marking_read(key, redis_calls):
    nt = NotificationTypeFactory()
    alice = RecipientFactory()
    event_ingest(api_key=key, type_key=nt.key, recipients=[alice.external_id], data={"order_id": 1})
    event_ingest(api_key=key, type_key=nt.key, recipients=[alice.external_id], data={"order_id": 2})
    item = InboxItem.objects.filter(recipient=alice).first()
    assert item is not None
    redis_calls.clear()

    inbox_item_mark_read(recipient_id=alice.id, item_id=item.id)
    inbox_mark_all_read(recipient_id=alice.id)

    assert redis_calls and [call for call in redis_calls if call[1]] == []


def test_it_asks_redis_nothing_while_the_fallback_sweep_holds_its_checks(key, settings, redis_calls):
    # given an in-app delivery whose fallback check (to email, a channel without providers
    # here, so planning settles it at once) is due
    settings.CHANNEL_PROVIDERS = {**settings.CHANNEL_PROVIDERS, "email": []}
    nt = NotificationTypeFactory()
    nt.fallbacks = [{"from": "inapp", "to": "inapp", "after_seconds": 0}]
    alice = RecipientFactory()
    event = event_ingest(
        api_key=key, type_key=nt.key, recipients=[alice.external_id], data={"order_id": 1}
    ).event
    delivery = Delivery.objects.get(event=event)
    FallbackCheck.objects.create(
        delivery=delivery, to_channel="email", due_at=timezone.now() - timedelta(seconds=1)
    )
    Delivery.objects.filter(id=delivery.id).update(status=DeliveryStatus.PENDING)  # not reached yet
    redis_calls.clear()

    fallback_checks_due()

    assert not FallbackCheck.objects.exists()
    assert Delivery.objects.get(event=event, channel="email").status == DeliveryStatus.FAILED
    assert ("PIPELINE", False) in redis_calls  # presence was asked (one pipeline), outside any lock
    assert [call for call in redis_calls if call[1]] == []


@pytest.fixture
def redis_down(settings: Any) -> Iterator[None]:
    """Point this process at a Redis that does not answer."""

    def forget_clients() -> None:
        redis_client.redis_sync.cache_clear()
        ratelimits._consume_script.cache_clear()
        sms_guard._scripts.cache_clear()

    settings.REDIS_URL = "redis://127.0.0.1:9/0"
    forget_clients()
    yield
    forget_clients()


def test_it_writes_the_inbox_even_when_redis_does_not_answer(key, settings, redis_down):
    # given Redis is down (rate caps, connection registry, frames and metrics all live there)
    settings.RATE_CAPS = {**settings.RATE_CAPS, "inapp": "1000/60"}
    ratelimits.rate_cap.cache_clear()
    nt = NotificationTypeFactory()
    alice = RecipientFactory()

    # when an event is accepted
    event = event_ingest(
        api_key=key, type_key=nt.key, recipients=[alice.external_id], data={"order_id": 9}
    ).event

    # then the user has the item: caps fail open, frames are skipped, nothing rolls back
    item = InboxItem.objects.get(recipient=alice, event=event)
    assert item.seq == 1 and item.title == "Order 9"
    assert Delivery.objects.get(event=event).status == DeliveryStatus.DELIVERED
