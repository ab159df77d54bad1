"""The web process's signals to the match servers (gaming/services/inbound.py) through real
Redis: signals queued together reach the match's inbound channel as one batch, in order;
a lone signal goes by itself; a large batch is split under the size the server takes."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from asgiref.sync import async_to_sync

from gaming.services import inbound
from gaming.services.placement import inbound_channel
from gaming.services.server import INBOUND_MAX_BYTES
from realtime.redis_client import redis_async


async def heard(match_id: str, send: Any, count: int) -> list[Any]:
    """The messages on ``match_id``'s inbound channel after ``send()``, decoded."""
    pubsub = redis_async().pubsub()
    await pubsub.subscribe(inbound_channel(match_id))
    await pubsub.get_message(timeout=1.0)  # the subscription's confirmation
    send()
    messages: list[Any] = []
    async with asyncio.timeout(10):
        while len(messages) < count:
            message = await pubsub.get_message(timeout=1.0, ignore_subscribe_messages=True)
            if message is not None:
                messages.append(json.loads(message["data"]))
    await pubsub.aclose()
    return messages


def test_signals_queued_together_go_as_one_batch_in_order() -> None:
    match_id = str(uuid.uuid4())

    def send() -> None:
        inbound.signal_send(match_id, "join", "ana")
        for seq in range(1, 6):
            inbound.signal_send(match_id, "input", "ana", {"type": "input", "seq": seq})

    (message,) = async_to_sync(heard)(match_id, send, 1)

    assert message["kind"] == "batch"
    assert [s["kind"] for s in message["signals"]] == ["join"] + ["input"] * 5
    assert [s["frame"]["seq"] for s in message["signals"][1:]] == [1, 2, 3, 4, 5]


def test_a_lone_signal_goes_by_itself() -> None:
    match_id = str(uuid.uuid4())

    (message,) = async_to_sync(heard)(match_id, lambda: inbound.signal_send(match_id, "leave", "ben"), 1)

    assert message == {"kind": "leave", "player": "ben"}


def test_a_large_batch_is_split_under_what_the_server_takes() -> None:
    match_id = str(uuid.uuid4())
    pad = "x" * 1500

    def send() -> None:
        for seq in range(100):
            inbound.signal_send(match_id, "input", "ana", {"type": "input", "seq": seq, "pad": pad})

    bodies = [
        json.dumps(
            {"kind": "input", "player": "ana", "frame": {"type": "input", "seq": seq, "pad": pad}},
            separators=(",", ":"),
        )
        for seq in range(100)
    ]
    expected = len(inbound._batches(bodies))
    assert expected > 1

    messages = async_to_sync(heard)(match_id, send, expected)

    assert all(m["kind"] == "batch" for m in messages)
    assert all(len(json.dumps(m)) <= inbound.BATCH_MAX_BYTES + 2048 < INBOUND_MAX_BYTES for m in messages)
    seqs = [s["frame"]["seq"] for m in messages for s in m["signals"]]
    assert seqs == list(range(100))
