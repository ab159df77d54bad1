"""``/ws/docs/{key}``: the y-websocket protocol, so a stock Yjs ``WebsocketProvider``
connects unchanged (``serverUrl = ws://host/ws/docs``, room name = the document's key).

On connect the socket is authenticated (``?token=`` or a session from our own pages) and
its user must be a member of the document: anyone else is refused before the upgrade
completes. The server then sends its state vector (sync step 1); the client answers with
what the server lacks (its offline edits) and asks for what it lacks (its own step 1).
Every update is stored (collaboration/services/updates.py) before it is relayed to the
document's other sockets, on this process or any other, through the document's Redis
stream (collaboration/services/relay.py). Everything a socket is sent goes through its own
bounded queue, written by one task; a client that cannot keep up is closed with 4408 and
its provider reconnects and syncs what it lacks. A viewer receives everything; its updates are refused and it is told
with a y-protocols auth message (permission denied). A malformed message, an update over
its size limit or one that would take the document over its limit closes that socket
alone, with a close reason that says why. Awareness messages (cursors, names) are relayed
as they come and kept in Redis (collaboration/services/awareness.py): a socket that joins
or asks (query-awareness) is sent every client's current state; when a socket goes, its
clients' states are cleared for every peer at once, and a client not heard of within the
awareness timeout (its process died) is cleared by the first socket of the document that
notices.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from typing import Any

import redis
from asgiref.sync import sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from collaboration.services import protocol
from collaboration.services.access import CLOSE_MALFORMED, socket_member
from collaboration.services.awareness import (
    awareness_current,
    awareness_expire,
    awareness_forget,
    awareness_record,
)
from collaboration.services.relay import CLOSE_REJOIN, relay, relay_publish
from collaboration.services.updates import (
    EMPTY_UPDATE,
    Batch,
    UpdateRefused,
    document_state,
    state_missing,
    state_vector,
)
from collaboration.services.writer import writer
from realtime.queues import EntryQueue
from realtime.redis_client import redis_async

log = logging.getLogger(__name__)

# Close codes besides collaboration/services/access.py's.
CLOSE_DOCUMENT_FULL = 4413
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
# Updates waiting to be stored past which the socket is read no further until they are.
PENDING_MAX = 10_000
# How long a closing socket waits for its received updates to be stored.
WRITER_DRAIN_SECONDS = 10.0


class DocumentConsumer(AsyncWebsocketConsumer):
    document_id: int | None = None
    recipient_id: int | None = None
    writes = False
    joined = False
    closing = False
    # Messages of other sockets of the document skip this one's own (collaboration/services/relay.py).
    origin = ""
    # The awareness clients this socket spoke for, with their last clocks: cleared for
    # every peer when the socket goes, as a y-websocket server does.
    awareness_clocks: dict[int, int]
    outbox: EntryQueue
    sender: asyncio.Task[None] | None = None
    # Updates received and not yet stored, and the task storing them (_store_pending).
    pending: list[bytes]
    pending_bytes = 0
    storing: asyncio.Task[None] | None = None
    sweeper: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        self.awareness_clocks = {}
        self.pending = []
        member = await socket_member(self.scope)
        if isinstance(member, int):
            await self.close(code=member)
            return
        document = member.document
        self.document_id, self.recipient_id = document.id, member.recipient_id
        self.writes = member.writes
        self.origin = uuid.uuid4().hex
        self.outbox = EntryQueue(settings.COLLAB_SOCKET_QUEUE_MAX)
        # Joined before the state is read, so nothing stored after that read is missed.
        await relay().join(document.id, self)
        self.joined = True
        await self.accept()
        self.sender = asyncio.create_task(self._send_queued())
        state = await sync_to_async(document_state)(document.id)
        self._queue(protocol.sync_step1(state_vector(state)))
        await self._send_awareness()
        self.sweeper = asyncio.create_task(self._sweep_awareness())

    async def disconnect(self, code: int) -> None:
        if not self.joined:
            return
        assert self.document_id is not None
        if self.storing is not None and not self.storing.done():
            # What the client sent before it went is stored (and relayed) all the same.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self.storing), timeout=WRITER_DRAIN_SECONDS)
        relay().leave(self.document_id, self)
        for task in (self.sweeper, self.sender):
            if task is not None:
                task.cancel()
        if self.awareness_clocks:
            gone = [
                protocol.AwarenessEntry(client_id, clock + 1, None)
                for client_id, clock in self.awareness_clocks.items()
            ]
            with contextlib.suppress(redis.RedisError):
                await awareness_forget(self.document_id, list(self.awareness_clocks))
                await self._publish(protocol.awareness_message(protocol.awareness_update(gone)))

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels closes stale database connections before every message it dispatches,
        a hop to the process's database thread and back. A client's frames touch no
        database here (storing is the writer's, which checks its connection itself), and
        that hop waited behind the writer's commits: a fast typist's frames were read one
        per commit and stored one per row. Connect and disconnect keep it."""
        if message["type"] == "websocket.receive":
            await self.websocket_receive(message)
            return
        await super().dispatch(message)

    # --- what the relay hands over: queue and return, never await the socket -------------

    def deliver(self, message: bytes) -> None:
        self._queue(message)

    def rejoin(self) -> None:
        """Close so that the client reconnects and syncs: this socket missed messages, or
        could not take them as fast as they came."""
        if self.closing:
            return
        self.closing = True
        asyncio.ensure_future(self.close(code=CLOSE_REJOIN, reason="reconnect to sync"))

    def _queue(self, message: bytes) -> None:
        if self.closing:
            return
        try:
            self.outbox.put_nowait(message)
        except asyncio.QueueFull:
            log.info("closing a document socket that cannot keep up (document %s)", self.document_id)
            self.rejoin()

    async def _send_queued(self) -> None:
        """The one writer of the socket: everything it is sent, in order."""
        while True:
            message = await self.outbox.get()
            await self.send(bytes_data=message)

    async def _publish(self, message: bytes) -> None:
        assert self.document_id is not None
        await relay_publish(redis_async(), self.document_id, message, self.origin)

    # --- awareness ---------------------------------------------------------------------------

    async def _send_awareness(self) -> None:
        """Every client's current awareness state, to this socket (on joining, or asked)."""
        assert self.document_id is not None
        try:
            entries = await awareness_current(self.document_id)
        except redis.RedisError:
            return  # peers send theirs again within the timeout
        if entries:
            self._queue(protocol.awareness_message(protocol.awareness_update(entries)))

    async def _sweep_awareness(self) -> None:
        """Clear, for every peer, the clients of this document not heard of within the
        timeout: those of a process that died, whose sockets said nothing when they went."""
        assert self.document_id is not None
        period = max(0.2, settings.COLLAB_AWARENESS_TIMEOUT_SECONDS / 3)
        while True:
            # Spread over the period, so a document's sockets do not all look at once.
            await asyncio.sleep(period * random.uniform(0.75, 1.25))
            try:
                gone = await awareness_expire(self.document_id)
                if gone:
                    message = protocol.awareness_message(protocol.awareness_update(gone))
                    await relay_publish(redis_async(), self.document_id, message, origin="")
            except redis.RedisError:
                continue

    # --- what the client sends ---------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if bytes_data is None:
            await self.close(code=CLOSE_MALFORMED, reason="binary y-websocket messages only")
            return
        try:
            message = protocol.parse(bytes_data)
        except protocol.ProtocolError as error:
            await self.close(code=CLOSE_MALFORMED, reason=str(error)[:120])
            return
        if isinstance(message, protocol.Sync):
            await self._sync_message(message)
        elif isinstance(message, protocol.Awareness):
            entries = protocol.awareness_entries(message.payload)  # parse() has checked it
            for entry in entries:
                if entry.state is None:
                    self.awareness_clocks.pop(entry.client_id, None)
                else:
                    self.awareness_clocks[entry.client_id] = entry.clock
            assert self.document_id is not None
            with contextlib.suppress(redis.RedisError):
                await awareness_record(self.document_id, entries)
            await self._publish(protocol.awareness_message(message.payload))
        else:
            await self._send_awareness()  # query-awareness

    async def _sync_message(self, message: protocol.Sync) -> None:
        assert self.document_id is not None
        if message.step == protocol.SYNC_STEP1:
            state = await sync_to_async(document_state)(self.document_id)
            try:
                missing = state_missing(state, message.payload)
            except ValueError:
                await self.close(code=CLOSE_MALFORMED, reason="sync step 1: not a Yjs state vector")
                return
            self._queue(protocol.sync_step2(missing))
            return
        if message.payload == EMPTY_UPDATE:
            return  # a client with nothing the server lacks answers step 1 with this
        if not self.writes:
            self._queue(protocol.permission_denied("viewers cannot edit this document"))
            return
        self.pending.append(message.payload)
        self.pending_bytes += len(message.payload)
        if self.storing is None or self.storing.done():
            self.storing = asyncio.create_task(self._store_pending())
        if len(self.pending) >= PENDING_MAX or self.pending_bytes >= settings.COLLAB_UPDATE_MAX_BYTES:
            # Read no further until what waits is stored: the client's socket backs up.
            await asyncio.shield(self.storing)

    async def _store_pending(self) -> None:
        """Store what the client sent while the previous batch was being stored, as one
        batch (with other sockets' batches, in one transaction: collaboration/services/
        writer.py), then relay it: one editor typing fast costs a row per batch, not per
        keystroke, and an update still reaches peers only once it is stored."""
        assert self.document_id is not None
        while self.pending:  # stored even while closing: the client sent them
            batch, self.pending, self.pending_bytes = self.pending, [], 0
            try:
                stored = await writer().store(Batch(self.document_id, batch, self.recipient_id))
            except UpdateRefused as refused:
                if refused.stored is not None:
                    await self._publish(protocol.sync_update(refused.stored.data))
                code = {"too_large": CLOSE_MESSAGE_TOO_BIG, "document_full": CLOSE_DOCUMENT_FULL}.get(
                    refused.code, CLOSE_MALFORMED
                )
                self.closing = True
                await self.close(code=code, reason=refused.message[:120])
                return
            except Exception:
                # Not stored (the database went away): the client keeps its edits and sends
                # what the server lacks when it reconnects.
                log.exception("updates of document %s not stored; closing the socket", self.document_id)
                self.closing = True
                await self.close(code=CLOSE_INTERNAL)
                return
            await self._publish(protocol.sync_update(stored.data))
