"""What an idle socket holds (P3: ten thousand per web process at 30 KB each or less): no
sending task and no queue storage between frames, one renewal task per event loop rather
than one per connection, and uvicorn's protocol without the handshake's headers once it
is answered (realtime/uvicorn_websocket.py), still a working websocket."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import uvicorn
from asgiref.sync import async_to_sync
from websockets.asyncio.client import connect

from harness.processes import free_port
from project.processes.platform import UVICORN_WS
from realtime import connection as live_module
from realtime.connection import registrations_renew
from realtime.queues import EntryQueue
from realtime.redis_client import redis_sync
from realtime.registry import _key as connection_key
from realtime.tokens import end_user_token_issue
from realtime.uvicorn_websocket import IdleLightWebSocketProtocol
from tests.realtime.test_consumers import CONNECTIONS, FRAME_TIMEOUT, _communicator, _recipient_id

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_idle_connection_holds_no_sending_task_and_no_queued_storage(settings: Any) -> None:
    settings.PRESENCE_GRACE_SECONDS = 0
    recipient_id = _recipient_id()
    token, _ = end_user_token_issue(recipient_id=recipient_id)

    async def scenario() -> None:
        socket = _communicator(token=token)
        assert (await socket.connect())[0]
        await socket.send_json_to({"type": "ping"})
        assert await socket.receive_json_from(FRAME_TIMEOUT) == {"type": "pong"}
        live = CONNECTIONS[recipient_id]
        # the sender ended with the queue empty; nothing is allocated for the next frame
        deadline = time.monotonic() + FRAME_TIMEOUT
        while live.sender is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert live.sender is None
        assert live.queue.empty() and live.queue._items is None
        # and the next frame still goes out, through a new sender
        await socket.send_json_to({"type": "ping"})
        assert await socket.receive_json_from(FRAME_TIMEOUT) == {"type": "pong"}
        await socket.disconnect()

    async_to_sync(scenario)()


def _expiry(recipient_id: int) -> float:
    """When the recipient's one registered connection expires (its score)."""
    ((_, score),) = redis_sync().zrange(connection_key(recipient_id), 0, -1, withscores=True)  # type: ignore[misc]
    return float(score)


def test_registrations_of_a_loop_are_renewed_together_by_one_task(settings: Any) -> None:
    settings.PRESENCE_GRACE_SECONDS = 0
    people = [_recipient_id() for _ in range(3)]

    async def scenario() -> None:
        sockets = [_communicator(token=end_user_token_issue(recipient_id=rid)[0]) for rid in people]
        for socket in sockets:
            assert (await socket.connect())[0]
        renewals = live_module._renewals_of_loop()
        assert {c.recipient_id for c in renewals.connections} >= set(people)
        assert renewals.task is not None and not renewals.task.done()
        # each registration's expiry moved a minute closer, so a renewal is seen at once
        for rid in people:
            rows: list[tuple[bytes, float]] = redis_sync().zrange(connection_key(rid), 0, -1, withscores=True)  # type: ignore[assignment]
            ((member, score),) = rows
            redis_sync().zadd(connection_key(rid), {member: score - 60})
        before = {rid: _expiry(rid) for rid in people}

        await registrations_renew()

        after = {rid: _expiry(rid) for rid in people}
        assert all(after[rid] > before[rid] for rid in people)
        for socket in sockets:
            await socket.disconnect()
        # the task ends with the loop's last connection
        assert not renewals.connections and renewals.task is None

    async_to_sync(scenario)()


def test_the_entry_queue_is_bounded_and_keeps_order() -> None:
    async def scenario() -> None:
        queue = EntryQueue(2)
        waiter = asyncio.ensure_future(queue.get())
        await asyncio.sleep(0)
        queue.put_nowait(("frame", 1))
        assert await waiter == ("frame", 1)
        queue.put_nowait(("frame", 2))
        queue.put_nowait(("frame", 3))
        with pytest.raises(asyncio.QueueFull):
            queue.put_nowait(("frame", 4))
        assert [queue.get_nowait(), await queue.get()] == [("frame", 2), ("frame", 3)]
        assert queue.empty() and queue._items is None

    asyncio.run(scenario())


async def _echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "websocket"
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": message["text"]})


def test_uvicorns_protocol_drops_the_handshake_once_answered_and_still_echoes() -> None:
    async def scenario() -> None:
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(
                _echo, host="127.0.0.1", port=port, ws=UVICORN_WS, lifespan="off", log_level="warning"
            )
        )
        serving = asyncio.ensure_future(server.serve())
        try:
            deadline = time.monotonic() + 10
            while not server.started:
                assert time.monotonic() < deadline, "uvicorn did not start"
                await asyncio.sleep(0.01)
            async with connect(f"ws://127.0.0.1:{port}/", compression=None) as socket:
                for text in ("one", "two" * 1000):
                    await socket.send(text)
                    assert await asyncio.wait_for(socket.recv(), FRAME_TIMEOUT) == text
                (protocol,) = server.server_state.connections
                assert isinstance(protocol, IdleLightWebSocketProtocol)
                assert protocol.request is None and protocol.response is None
                assert protocol.queue.empty() and protocol.writable.is_set()
        finally:
            server.should_exit = True
            await asyncio.wait_for(serving, 10)

    asyncio.run(scenario())
