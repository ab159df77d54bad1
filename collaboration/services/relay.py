"""How a document's messages reach its sockets on every web process: a Redis stream per
document, as y-redis does, rather than pub/sub.

An update is appended to the document's stream after it is stored (``relay_publish``);
awareness messages go the same way. Each web process reads the streams of the documents
it has sockets for with one blocking XREAD (``Relay``), from the position it has reached
in each, and hands every entry to those sockets. A stream keeps its entries after they are
read, so a process whose Redis connection drops and comes back reads on from where it was
and no socket misses an update (pub/sub would have dropped what was published meanwhile).
A socket joins before it reads the document's state from the database: whatever is stored
after that read is in the stream after its position; what is in both arrives twice, which
Yjs ignores.

A stream keeps its last COLLAB_STREAM_MAXLEN entries and expires a day after its last
one. A process that fell further behind than that (stopped for a long while) cannot know
what it missed: it closes the document's sockets with CLOSE_REJOIN, their clients
reconnect and sync by state vectors, and nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
import weakref
from typing import Any, Protocol, cast

import redis
import redis.asyncio as aioredis
from django.conf import settings

from realtime.redis_client import redis_key, redis_sync

log = logging.getLogger(__name__)

STREAM_TTL_SECONDS = 24 * 3600
# How long one XREAD waits for entries before it is issued again.
BLOCK_MS = 5_000
# A socket told to reconnect (its process fell behind the stream): y-websocket does.
CLOSE_REJOIN = 4408

# Stream entries as redis-py returns them: (id, {field: value}), bytes throughout.
Entries = list[tuple[bytes, dict[bytes, bytes]]]


def document_stream(document_id: int) -> str:
    return redis_key(f"collab:stream:{document_id}")


def _entry(message: bytes, origin: str) -> dict[str, bytes | str]:
    return {"m": message, "o": origin}


async def relay_publish(client: aioredis.Redis, document_id: int, message: bytes, origin: str) -> None:
    """Append a message for the document's sockets (all but ``origin``'s)."""
    key = document_stream(document_id)
    pipe = client.pipeline(transaction=False)
    pipe.xadd(key, _entry(message, origin), maxlen=settings.COLLAB_STREAM_MAXLEN, approximate=True)  # type: ignore[arg-type]
    pipe.expire(key, STREAM_TTL_SECONDS)
    await pipe.execute()


def relay_publish_sync(document_id: int, message: bytes) -> None:
    """``relay_publish`` for code outside the event loop (a restore in an API view)."""
    key = document_stream(document_id)
    pipe = redis_sync().pipeline(transaction=False)
    pipe.xadd(key, _entry(message, ""), maxlen=settings.COLLAB_STREAM_MAXLEN, approximate=True)  # type: ignore[arg-type]
    pipe.expire(key, STREAM_TTL_SECONDS)
    pipe.execute()


class Listener(Protocol):
    """A socket of a document: ``deliver`` queues and returns, never awaits the socket."""

    origin: str

    def deliver(self, message: bytes) -> None: ...

    def rejoin(self) -> None: ...


class Relay:
    """The streams one web process reads, for the sockets it holds (one per event loop)."""

    def __init__(self) -> None:
        self.rooms: dict[int, set[Listener]] = {}
        self.positions: dict[int, str] = {}
        # A stream of this reader alone: an entry on it ends the XREAD under way, so that a
        # document joined meanwhile is read from at once rather than after BLOCK_MS.
        self.wake_key = redis_key(f"collab:wake:{uuid.uuid4().hex}")
        self.wake_position = "0-0"
        self.reader: asyncio.Task[None] | None = None
        self.client = aioredis.Redis.from_url(
            settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=None
        )

    async def join(self, document_id: int, listener: Listener) -> None:
        """Start handing the document's messages to ``listener``: every one appended after
        this returns, and perhaps a few before (duplicates Yjs ignores)."""
        if document_id not in self.rooms:
            last: Entries = cast(Any, await self.client.xrevrange(document_stream(document_id), count=1))
            if document_id not in self.rooms:  # nobody joined it while we asked
                self.positions[document_id] = last[0][0].decode() if last else "0-0"
                self.rooms[document_id] = set()
                await self._wake()
        self.rooms[document_id].add(listener)
        if self.reader is None or self.reader.done():
            self.reader = asyncio.create_task(self._read())

    def leave(self, document_id: int, listener: Listener) -> None:
        listeners = self.rooms.get(document_id)
        if listeners is None:
            return
        listeners.discard(listener)
        if not listeners:
            del self.rooms[document_id]
            self.positions.pop(document_id, None)

    async def _wake(self) -> None:
        if self.reader is not None and not self.reader.done():
            pipe = self.client.pipeline(transaction=False)
            pipe.xadd(self.wake_key, {"w": 1}, maxlen=10, approximate=False)
            pipe.expire(self.wake_key, 60)
            await pipe.execute()

    async def _read(self) -> None:
        while self.rooms:
            streams: dict[str, str] = {self.wake_key: self.wake_position}
            by_key = {document_stream(d): d for d in self.rooms}
            streams.update({key: self.positions[d] for key, d in by_key.items()})
            try:
                found: list[tuple[bytes, Entries]] = cast(
                    Any, await self.client.xread(cast(Any, streams), block=BLOCK_MS)
                )
            except (redis.RedisError, OSError) as error:
                log.warning("document streams unreadable, retrying: %r", error)
                await asyncio.sleep(0.5)
                continue
            for raw_key, entries in found or []:
                key = raw_key.decode()
                if key == self.wake_key:
                    self.wake_position = entries[-1][0].decode()
                    continue
                document_id = by_key.get(key)
                if document_id is None or document_id not in self.rooms:
                    continue  # left while this read was under way
                if await self._fell_behind(key, self.positions[document_id], entries):
                    self._rejoin_all(document_id)
                    continue
                for _, fields in entries:
                    message, origin = fields[b"m"], fields[b"o"].decode()
                    for listener in list(self.rooms.get(document_id, ())):
                        if listener.origin != origin:
                            listener.deliver(message)
                if document_id in self.positions:
                    self.positions[document_id] = entries[-1][0].decode()

    async def _fell_behind(self, key: str, position: str, entries: Entries) -> bool:
        """Whether entries after ``position`` were trimmed before this reader got them: only
        possible when a read brings back about as many entries as the stream keeps."""
        if position == "0-0" or len(entries) < settings.COLLAB_STREAM_MAXLEN // 2:
            return False
        with contextlib.suppress(redis.RedisError):
            first: Entries = cast(Any, await self.client.xrange(key, count=1))
            return bool(first) and _id(first[0][0].decode()) > _id(position)
        return True

    def _rejoin_all(self, document_id: int) -> None:
        log.warning("fell behind document %s's stream: its sockets reconnect", document_id)
        for listener in self.rooms.pop(document_id, set()):
            listener.rejoin()
        self.positions.pop(document_id, None)


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


_relays: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Relay] = weakref.WeakKeyDictionary()


def relay() -> Relay:
    """The relay of the running event loop."""
    loop = asyncio.get_running_loop()
    found = _relays.get(loop)
    if found is None:
        found = _relays[loop] = Relay()
    return found
