"""The documents' Redis streams between web processes: every socket of a document but the
sender gets each message, in order, even across a dropped Redis connection; a reader
that fell behind what the stream keeps tells its sockets to reconnect."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync

from collaboration.services.relay import Relay, document_stream, relay_publish
from realtime.redis_client import redis_async, redis_sync

TIMEOUT = 5.0


class Socket:
    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.got: list[bytes] = []
        self.rejoined = False

    def deliver(self, message: bytes) -> None:
        self.got.append(message)

    def rejoin(self) -> None:
        self.rejoined = True


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    async_to_sync(scenario)()


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not condition():
            await asyncio.sleep(0.01)


@pytest.fixture
def document_id() -> Iterator[int]:
    found = random.randint(10**12, 2**62)
    yield found
    redis_sync().delete(document_stream(found))


def test_every_socket_but_the_sender_gets_each_message_in_order(document_id: int) -> None:
    async def scenario() -> None:
        relay = Relay()
        a, b = Socket("a"), Socket("b")
        await relay.join(document_id, a)
        await relay.join(document_id, b)
        for n in range(50):
            await relay_publish(redis_async(), document_id, f"m{n}".encode(), origin="a" if n % 2 else "b")
        await until(lambda: len(a.got) + len(b.got) == 50)
        assert a.got == [f"m{n}".encode() for n in range(0, 50, 2)]
        assert b.got == [f"m{n}".encode() for n in range(1, 50, 2)]
        relay.leave(document_id, a)
        relay.leave(document_id, b)

    run(scenario)


def test_a_dropped_redis_connection_loses_no_message(document_id: int) -> None:
    async def scenario() -> None:
        relay = Relay()
        listener = Socket("reader")
        await relay.join(document_id, listener)
        await relay_publish(redis_async(), document_id, b"before", origin="writer")
        await until(lambda: listener.got == [b"before"])
        # the reader's blocked XREAD loses its connection; messages keep coming meanwhile
        for client in redis_sync().client_list():
            if client.get("cmd") == "xread":
                redis_sync().client_kill_filter(_id=client["id"])
        for n in range(5):
            await relay_publish(redis_async(), document_id, f"during{n}".encode(), origin="writer")
        await until(lambda: len(listener.got) == 6)
        assert listener.got == [b"before", *[f"during{n}".encode() for n in range(5)]]
        relay.leave(document_id, listener)

    run(scenario)


def test_a_reader_behind_what_the_stream_keeps_tells_its_sockets_to_rejoin(
    document_id: int, settings: Any
) -> None:
    settings.COLLAB_STREAM_MAXLEN = 100

    async def scenario() -> None:
        relay = Relay()
        listener = Socket("reader")
        await relay.join(document_id, listener)
        relay.positions[document_id] = "1-0"  # as if it had stopped reading long ago
        pipe = redis_async().pipeline(transaction=False)
        for n in range(1000):
            pipe.xadd(document_stream(document_id), {"m": f"{n}", "o": "w"}, maxlen=100, approximate=True)
        await pipe.execute()
        await until(lambda: listener.rejoined)
        assert document_id not in relay.rooms

    run(scenario)
