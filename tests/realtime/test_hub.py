"""The process hub (realtime/hub.py): one subscription per event loop hands each published
message to the live connections of its recipients, and tells them when the subscription
came back after a drop."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis
from asgiref.sync import async_to_sync

from project.processes.waiting import wait_until
from realtime import hub
from realtime.hub import hub_add, hub_discard, hub_publish, hub_publish_async
from realtime.redis_client import redis_async, redis_key, redis_sync

DEADLINE = 10.0


class Listener:
    """A live connection as the hub sees one."""

    def __init__(self, recipient_id: int) -> None:
        self.recipient_id = recipient_id
        self.messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.resumed = 0

    def deliver(self, message: dict[str, Any]) -> None:
        self.messages.put_nowait(message)

    def hub_resumed(self) -> None:
        self.resumed += 1

    async def next(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.messages.get(), timeout=DEADLINE)


def _clients_of_this_hub(name: str | None = None) -> list[dict[str, Any]]:
    """The Redis connections of the running event loop's hub subscription (or the named
    hub's)."""
    name = name or hub._hub().name
    return [entry for entry in redis_sync().client_list() if entry.get("name") == name]


def hub_subscription_kill() -> int:
    """Close the Redis connection of the running event loop's hub subscription, as a Redis
    restart or a network cut would; returns how many connections that was."""
    clients = _clients_of_this_hub()
    for entry in clients:
        redis_sync().client_kill_filter(_id=entry["id"])
    return len(clients)


def hub_subscribed() -> bool:
    return any(int(entry["sub"]) > 0 for entry in _clients_of_this_hub())


def test_a_publish_reaches_every_live_connection_of_its_recipients_and_no_other() -> None:
    async def scenario() -> None:
        tab, phone, other, unaddressed = Listener(1), Listener(1), Listener(2), Listener(3)
        for listener in (tab, phone, other, unaddressed):
            await hub_add(listener)
        try:
            await hub_publish_async(redis_async(), [([1, 2], {"n": 1}), ([2], {"n": 2})])
            assert [await tab.next(), await phone.next()] == [{"n": 1}, {"n": 1}]
            assert [await other.next(), await other.next()] == [{"n": 1}, {"n": 2}]
            await hub_publish_async(redis_async(), [([3], {"n": 3})])
            assert await unaddressed.next() == {"n": 3}, "nothing before it was for this one"
            assert tab.messages.empty() and phone.messages.empty() and other.messages.empty()
        finally:
            for listener in (tab, phone, other, unaddressed):
                hub_discard(listener)

    async_to_sync(scenario)()


def test_a_large_publish_is_split_and_all_of_it_arrives_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub, "PUBLISH_ENTRIES_MAX", 3)
    entries = [([rid, rid + 100], {"n": rid}) for rid in range(1, 6)]
    assert len(hub._encode(entries)) == 5, "two entries of two recipients would pass 3"

    async def scenario() -> None:
        listeners = [Listener(rid) for rid in (1, 105)]
        for listener in listeners:
            await hub_add(listener)
        try:
            # The sync publisher, as Celery workers and views use it.
            await asyncio.to_thread(hub_publish, entries)
            assert await listeners[0].next() == {"n": 1}
            assert await listeners[1].next() == {"n": 5}
            hub_publish([([1], {"n": 6}), ([], {"n": "to nobody"})])
            assert await listeners[0].next() == {"n": 6}
        finally:
            for listener in listeners:
                hub_discard(listener)

    async_to_sync(scenario)()


def test_it_subscribes_again_after_a_drop_and_tells_its_connections() -> None:
    async def scenario() -> None:
        listener = Listener(7)
        await hub_add(listener)
        try:
            assert hub_subscription_kill() == 1
            await asyncio.to_thread(wait_until, lambda: listener.resumed == 1, timeout=DEADLINE)
            await hub_publish_async(redis_async(), [([7], {"after": "the drop"})])
            assert await listener.next() == {"after": "the drop"}
        finally:
            hub_discard(listener)

    async_to_sync(scenario)()


def test_the_subscription_lasts_as_long_as_a_connection_is_held() -> None:
    async def scenario() -> None:
        first, second = Listener(1), Listener(2)
        await hub_add(first)
        await hub_add(second)
        assert hub_subscribed() and len(_clients_of_this_hub()) == 1, "one subscription per event loop"
        hub_discard(first)
        assert hub_subscribed()
        name = hub._hub().name
        hub_discard(second)
        await asyncio.to_thread(wait_until, lambda: not _clients_of_this_hub(name), timeout=DEADLINE)

    async_to_sync(scenario)()


def test_a_connection_is_refused_and_not_held_when_redis_cannot_be_reached(settings: Any) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:1/0"

    async def scenario() -> None:
        listener = Listener(9)
        with pytest.raises((redis.RedisError, OSError)):
            await hub_add(listener)
        assert 9 not in hub.hub_recipients()

    async_to_sync(scenario)()


def test_a_publish_of_the_wrong_shape_is_dropped_and_the_next_still_arrives() -> None:
    async def scenario() -> None:
        listener = Listener(4)
        await hub_add(listener)
        try:
            client = redis_async()
            for garbage in ("not json", '{"a": 1}', "[[4, 5]]", '[[[4], "text"]]', "[1, 2]"):
                await client.publish(redis_key(hub.HUB_CHANNEL), garbage)
            await hub_publish_async(client, [([4], {"n": "after"})])
            assert await listener.next() == {"n": "after"}
            assert listener.messages.empty() and listener.resumed == 0, "the subscription never dropped"
        finally:
            hub_discard(listener)

    async_to_sync(scenario)()
