"""What a web process's match sockets tell the match servers (joins, leaves, inputs), sent
in batches: every signal of an event loop goes into one queue, and one task empties it,
each match's signals since the last round in one message on the match's inbound channel
(gaming/services/placement.py ``inbound_channel``), all of a round in one pipelined round
trip to Redis. Under load a round carries many signals; when idle, a signal goes at once.

One PUBLISH per input cost a Redis connection per input in flight: 1,000 players sending
20 inputs a second ran the process's pool out ("Too many connections", docs/benchmarks.md,
P8). The match server takes ``{"kind": "batch", "signals": [...]}`` as the signals in
order (gaming/services/server.py ``inbound``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from typing import Any

import redis

from gaming.services.placement import inbound_channel
from realtime.redis_client import redis_async

log = logging.getLogger(__name__)

# A batch message stays well under the match server's inbound limit (server.INBOUND_MAX_BYTES),
# and small enough (about 80 inputs) that taking it holds the server's clocks back little.
BATCH_MAX_BYTES = 8 * 1024


class _Outbox:
    def __init__(self) -> None:
        self.pending: dict[str, list[str]] = {}
        self.task: asyncio.Task[None] | None = None

    def add(self, match_id: str, body: str) -> None:
        self.pending.setdefault(match_id, []).append(body)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        while self.pending:
            pending, self.pending = self.pending, {}
            pipe = redis_async().pipeline(transaction=False)
            for match_id, bodies in pending.items():
                for message in _batches(bodies):
                    pipe.publish(inbound_channel(match_id), message)
            try:
                await pipe.execute()
            except (redis.RedisError, OSError) as error:
                # Inputs are superseded by the next ones; a lost join is asked again by the
                # socket that has no state (gaming/consumers.py REJOIN_EVERY_TICKS).
                log.warning("match signals lost: Redis unreachable (%s)", error)


def _batches(bodies: list[str]) -> list[str]:
    """One message for ``bodies`` (each a JSON signal), or a few if they are many."""
    if len(bodies) == 1:
        return bodies
    messages: list[str] = []
    chunk: list[str] = []
    size = 0
    for body in bodies:
        if chunk and size + len(body) > BATCH_MAX_BYTES:
            messages.append(_batch(chunk))
            chunk, size = [], 0
        chunk.append(body)
        size += len(body) + 1
    messages.append(_batch(chunk))
    return messages


def _batch(bodies: list[str]) -> str:
    return '{"kind":"batch","signals":[' + ",".join(bodies) + "]}"


_outboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Outbox] = weakref.WeakKeyDictionary()


def _outbox() -> _Outbox:
    loop = asyncio.get_running_loop()
    outbox = _outboxes.get(loop)
    if outbox is None:
        outbox = _outboxes[loop] = _Outbox()
    return outbox


def signal_send(match_id: str, kind: str, player: str, frame: dict[str, Any] | None = None) -> None:
    """Queue one signal for ``match_id``'s server: ``join``, ``leave`` or ``input`` (with
    its ``frame``). Returns at once; the signals of one socket keep their order."""
    body: dict[str, Any] = {"kind": kind, "player": player}
    if frame is not None:
        body["frame"] = frame
    _outbox().add(match_id, json.dumps(body, separators=(",", ":")))
