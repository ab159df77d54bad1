"""A live inbox connection writes a broadcast's frames straight to a socket that takes
data (services/live_inbox.py, realtime/connection.py ``write_now``): the same frames as the
queued way, in order, and never past a gap, a queue or a socket that cannot take them."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from asgiref.sync import async_to_sync

from notifications.services.live_inbox import LiveInbox
from notifications.services.realtime import NOTIFICATIONS_MESSAGE

SHARED = {
    "id": None,
    "seq": None,
    "type": "comment",
    "category": "social",
    "title": 'Ana said "hi" \u2014 <b>',
    "body": "line\nbreak",
    "url": "https://example.com/x?a=1&b=2",
    "data": {"nested": [1, 2, {"k": None}]},
    "read": False,
    "read_at": None,
    "created_at": "2026-11-30T10:00:00+00:00",
    "accepted_at": "2026-11-30T10:00:00+00:00",
    "event_id": "7b7f",
    "archived": False,
    "archived_at": None,
    "snoozed_until": None,
}


def _message(rows: dict[int, list[list[int]]], unread: dict[int, int]) -> dict[str, Any]:
    return {
        "type": NOTIFICATIONS_MESSAGE,
        "item": SHARED,
        "rows": {str(rid): r for rid, r in rows.items()},
        "unread": {str(rid): n for rid, n in unread.items()},
    }


class Socket:
    """What the websocket carrier offers a live connection: an awaiting send and an
    immediate write, which may refuse (a transport paused by flow control)."""

    def __init__(self) -> None:
        self.written: list[dict[str, Any]] = []
        self.sent: list[dict[str, Any]] = []
        self.takes_data = True

    def write_now(self, texts: list[str]) -> bool:
        if not self.takes_data:
            return False
        self.written += [json.loads(text) for text in texts]
        return True

    async def send(self, frame: dict[str, Any]) -> None:
        self.sent.append(frame)


def _connection(socket: Socket, recipient_id: int = 5) -> LiveInbox:
    live = LiveInbox(recipient_id=recipient_id, layer=None, channel="test!1")
    live.send_with(socket.send, failed=lambda exc: None, write_now=socket.write_now)
    return live


def _expected(item_id: int, seq: int) -> dict[str, Any]:
    return {"type": "notification", "seq": seq, "item": {**SHARED, "id": item_id, "seq": seq}}


def test_in_order_items_are_written_at_once_as_the_same_frames_the_queue_sends() -> None:
    async def scenario() -> None:
        socket = Socket()
        live = _connection(socket)
        live.deliver(_message({5: [[11, 1], [12, 2]], 6: [[13, 1]]}, {5: 2, 6: 1}))
        assert live.sender is None and live.queue.empty(), "no task, nothing queued"
        assert socket.written == [_expected(11, 1), _expected(12, 2), {"type": "unread_count", "count": 2}]
        assert live.sequencer.last_sent_seq == 2
        live.deliver(_message({5: [[14, 3]]}, {}))
        assert socket.written[-1] == _expected(14, 3) and live.sequencer.last_sent_seq == 3

    async_to_sync(scenario)()


@pytest.mark.parametrize(
    ("rows", "why"),
    [
        ([[20, 4]], "a gap: seq 3 is missing"),
        ([[20, 2]], "already sent"),
        ([[20, 3], [21, 5]], "a gap inside"),
    ],
)
def test_items_that_do_not_follow_the_last_sent_go_the_queued_way(rows: list[list[int]], why: str) -> None:
    async def scenario() -> None:
        socket = Socket()
        live = _connection(socket)
        live.sequencer.last_sent_seq = 2
        live.expand = _no_database  # type: ignore[method-assign]
        live.deliver(_message({5: rows}, {}))
        assert socket.written == [], why
        await asyncio.sleep(0)  # the sender's turn
        assert socket.sent == [f for f in (_expected(*row) for row in rows)], why

    async def _no_database(entry: tuple[Any, ...]) -> Any:
        # The sequencer would read the gap from the database; here each item is sent as is.
        yield {"type": "notification", "seq": entry[1], "item": entry[2]}

    async_to_sync(scenario)()


def test_a_socket_that_cannot_take_data_gets_its_frames_queued_and_later_ones_wait_behind_them() -> None:
    async def scenario() -> None:
        socket = Socket()
        socket.takes_data = False
        live = _connection(socket)
        sending = asyncio.Event()
        release = asyncio.Event()

        async def slow_send(frame: dict[str, Any]) -> None:
            sending.set()
            await release.wait()
            socket.sent.append(frame)

        live._push = slow_send
        live.deliver(_message({5: [[11, 1]]}, {5: 1}))
        await sending.wait()
        socket.takes_data = True
        # The socket takes data again, but a frame is still being sent: the next waits.
        live.send({"type": "pong"})
        assert socket.written == []
        release.set()
        while live.sender is not None:
            await asyncio.sleep(0)
        assert [frame["type"] for frame in socket.sent] == ["notification", "unread_count", "pong"]
        live.send({"type": "pong"})
        assert socket.written == [{"type": "pong"}], "idle again: written at once"

    async_to_sync(scenario)()
