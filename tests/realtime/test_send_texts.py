"""The websocket protocol's ASGI extension (realtime/uvicorn_websocket.py, SEND_TEXTS):
several frames in one write, and at once when the socket takes data, through a real
uvicorn server; and the thread that keeps garbage collections short (realtime/gc_pauses.py)."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from typing import Any

import uvicorn
from websockets.asyncio.client import connect

from harness.processes import free_port
from project.processes.platform import UVICORN_WS
from project.processes.waiting import wait_until
from realtime import gc_pauses
from realtime.uvicorn_websocket import SEND_TEXTS, IdleLightWebSocketProtocol

FRAME_TIMEOUT = 5.0


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    write_now = scope["extensions"][SEND_TEXTS]["write_now"]
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message["text"] == "now":
            assert write_now(["a", "b"]) is True
        else:
            await send({"type": SEND_TEXTS, "texts": ["c", "d" * 70_000]})


async def _serve() -> tuple[uvicorn.Server, asyncio.Future[None], int]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(_app, host="127.0.0.1", port=port, ws=UVICORN_WS, lifespan="off", log_level="warning")
    )
    serving = asyncio.ensure_future(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        await asyncio.sleep(0.01)
    return server, serving, port


def test_frames_go_out_together_now_or_once_the_socket_takes_data_again() -> None:
    async def scenario() -> None:
        server, serving, port = await _serve()
        try:
            async with connect(f"ws://127.0.0.1:{port}/", compression=None, max_size=None) as socket:
                await socket.send("now")
                assert [await asyncio.wait_for(socket.recv(), FRAME_TIMEOUT) for _ in range(2)] == ["a", "b"]
                await socket.send("batch")
                frames = [await asyncio.wait_for(socket.recv(), FRAME_TIMEOUT) for _ in range(2)]
                assert frames == ["c", "d" * 70_000]

                (protocol,) = server.server_state.connections
                assert isinstance(protocol, IdleLightWebSocketProtocol)
                # Paused by flow control: nothing is written now, and the awaiting way waits.
                protocol.writable.clear()
                assert protocol.write_texts_now(["x"]) is False
                waiting = asyncio.ensure_future(protocol.send({"type": SEND_TEXTS, "texts": ["e"]}))
                await asyncio.sleep(0.05)
                assert not waiting.done()
                protocol.writable.set()
                await asyncio.wait_for(waiting, FRAME_TIMEOUT)
                assert await asyncio.wait_for(socket.recv(), FRAME_TIMEOUT) == "e"
            await asyncio.to_thread(wait_until, lambda: protocol.close_sent or protocol.disconnected, 10)
            assert protocol.write_texts_now(["after close"]) is False
        finally:
            server.should_exit = True
            await asyncio.wait_for(serving, 10)

    asyncio.run(scenario())


def test_the_freezing_thread_moves_long_lived_objects_out_of_collections() -> None:
    kept = [[index] for index in range(10_000)]
    gc_pauses.gc_pauses_unbound()
    try:
        assert gc_pauses.gc_pauses_bound(freeze_seconds=0.05, full_seconds=0) is True
        assert gc_pauses.gc_pauses_bound(freeze_seconds=0.05, full_seconds=0) is False, "once per process"
        wait_until(lambda: gc.get_freeze_count() >= len(kept), timeout=10)
    finally:
        gc_pauses.gc_pauses_unbound()
    assert gc.get_freeze_count() == 0
    assert gc_pauses.gc_pauses_bound(freeze_seconds=0, full_seconds=0) is False, "0 turns it off"


def test_the_thorough_pass_collects_what_frozen_cycles_left() -> None:
    class Cycle:
        pass

    gc_pauses.gc_pauses_unbound()
    first, second = Cycle(), Cycle()
    first.other, second.other = second, first  # type: ignore[attr-defined]
    gone = weakref.ref(first)
    try:
        gc.freeze()
        del first, second
        gc.collect()
        assert gone() is not None, "frozen: collections skip it"
        assert gc_pauses.gc_pauses_bound(freeze_seconds=0.05, full_seconds=0.01) is True
        wait_until(lambda: gone() is None, timeout=10)
    finally:
        gc_pauses.gc_pauses_unbound()
