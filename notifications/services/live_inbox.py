"""One live inbox connection, whatever carries it (the websocket consumer or the SSE
stream): its place in the recipient's channel-layer group, its registration in the
connection registry, a bounded queue between what arrives and what the client takes, and
the sequencing that sends each item once and in seq order.

The channel layer is pub/sub (at-most-once, and it buffers without limit), so the queue
here is the only buffer a connection may grow: when the client falls ``queue_limit``
entries behind, the connection is cut off (``LiveInboxTooSlow``) and stops listening; the
client reconnects and resumes by seq, losing nothing because the database inbox is the
truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import redis
import redis.asyncio as aioredis
from channels.db import database_sync_to_async
from django.conf import settings

from notifications import selectors
from notifications.services.connections import connection_register, connection_unregister
from notifications.services.inbox import inbox_item_payload
from notifications.services.realtime import NOTIFICATION_MESSAGE, UNREAD_MESSAGE, inbox_group
from notifications.services.redis_client import redis_async

log = logging.getLogger(__name__)

# Well under CONNECTION_TTL_SECONDS (90), so one missed refresh does not mark a live
# connection gone.
REGISTRATION_REFRESH_SECONDS = 30.0
RESUME_PAGE_SIZE = selectors.INBOX_PAGE_MAX


class LiveInboxTooSlow(Exception):
    """The client fell too far behind; close it and let it resume by seq."""


class InboxSequencer:
    """Decides which items a client gets, so that each is sent once and in seq order.

    ``last_sent_seq`` is None until something was sent or a resume was asked: before that
    the client has no baseline, so live items are passed on as they come. Afterwards a live
    item at or below it was already sent (by a resume) and is dropped, and one beyond
    ``last_sent_seq + 1`` means the pub/sub layer lost frames: the missing ones are read
    from the database first. Both generators advance ``last_sent_seq`` as they yield.
    """

    def __init__(self, *, recipient_id: int, last_sent_seq: int | None = None) -> None:
        self.recipient_id = recipient_id
        self.last_sent_seq = last_sent_seq

    async def resume(self, *, after: int) -> AsyncGenerator[tuple[int, dict[str, Any]], None]:
        """Every stored item with seq > ``after``, ascending."""
        self.last_sent_seq = after
        async for seq, item in self._stored(after=after):
            yield seq, item

    async def live(
        self, *, seq: int, item: dict[str, Any]
    ) -> AsyncGenerator[tuple[int, dict[str, Any]], None]:
        """The live item, preceded by any stored items the client has not had yet."""
        if self.last_sent_seq is not None:
            if seq <= self.last_sent_seq:
                return
            if seq > self.last_sent_seq + 1:
                async for stored_seq, stored_item in self._stored(after=self.last_sent_seq, below=seq):
                    yield stored_seq, stored_item
        self.last_sent_seq = seq
        yield seq, item

    async def _stored(
        self, *, after: int, below: int | None = None
    ) -> AsyncGenerator[tuple[int, dict[str, Any]], None]:
        cursor = after
        while True:
            rows = await database_sync_to_async(selectors.inbox_items)(
                recipient_id=self.recipient_id, after=cursor, limit=RESUME_PAGE_SIZE
            )
            for row in rows:
                if below is not None and row["seq"] >= below:
                    return
                self.last_sent_seq = row["seq"]
                yield row["seq"], inbox_item_payload(row)
            if len(rows) < RESUME_PAGE_SIZE:
                return
            cursor = rows[-1]["seq"]


class LiveInbox:
    """The live side of one connection. ``open()`` joins the group and registers;
    ``deliver()`` takes a channel-layer message, ``resume()`` and ``send()`` a client's
    request or a frame; ``frames()`` yields what to send, in order; ``close()`` undoes
    ``open()``. Everything arriving goes through one queue of ``queue_limit`` entries."""

    def __init__(
        self,
        *,
        recipient_id: int,
        layer: Any,
        channel: str,
        queue_limit: int | None = None,
        on_too_slow: Callable[[], None] | None = None,
    ) -> None:
        self.recipient_id = recipient_id
        self.on_too_slow = on_too_slow
        self.layer = layer
        self.channel = channel
        self.queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue(
            maxsize=queue_limit if queue_limit is not None else settings.SOCKET_SEND_QUEUE_LIMIT
        )
        self.sequencer = InboxSequencer(recipient_id=recipient_id)
        self.too_slow = False
        self.closed = False
        self._redis: aioredis.Redis | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._listening = False

    # --- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        """Join the recipient's group (before anything is read from the database, so no
        item committed meanwhile can fall between the two), register the connection and
        queue the current unread count."""
        await self.layer.group_add(inbox_group(self.recipient_id), self.channel)
        self._listening = True
        self._redis = redis_async()
        await self.refresh()
        self._tasks.append(asyncio.create_task(self._keep_registered()))
        count = await database_sync_to_async(selectors.inbox_unread_count)(recipient_id=self.recipient_id)
        self.send({"type": "unread_count", "count": count})

    def listen(self) -> None:
        """Read this connection's channel from the layer in a task of its own and deliver
        what arrives (for carriers that, unlike a Channels consumer, do not dispatch
        channel-layer messages themselves: the SSE stream)."""
        self._tasks.append(asyncio.create_task(self._receive_loop()))

    async def close(self) -> None:
        """Stop listening and unregister; safe to call twice."""
        if self.closed:
            return
        self.closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        await self._stop_listening()
        if self._redis is not None:
            try:
                await connection_unregister(
                    self._redis, recipient_id=self.recipient_id, connection=self.channel
                )
            except redis.RedisError as exc:
                # The registration expires on its own within CONNECTION_TTL_SECONDS.
                log.warning("inbox connection not unregistered: %s", exc)
            # The client is shared by every connection of this event loop: not closed here.
            self._redis = None

    async def refresh(self) -> None:
        """Renew the registration (on open, on a client's ping, and every 30 s)."""
        if self._redis is None:
            return
        try:
            await connection_register(self._redis, recipient_id=self.recipient_id, connection=self.channel)
        except redis.RedisError as exc:
            # Without the registration dispatch skips live frames; the client still gets
            # every item when it resumes, so the connection stays open.
            log.warning("inbox connection not registered: %s", exc)

    # --- what arrives --------------------------------------------------------------------

    def deliver(self, message: dict[str, Any]) -> None:
        """A channel-layer message for this recipient (services/realtime.py)."""
        if message.get("type") == NOTIFICATION_MESSAGE:
            self._put(("notification", message["seq"], message["item"]))
            if "unread" in message:  # the count after it (services/inbox.py)
                self._put(("frame", {"type": "unread_count", "count": message["unread"]}))
        elif message.get("type") == UNREAD_MESSAGE:
            self._put(("frame", {"type": "unread_count", "count": message["count"]}))

    def resume(self, *, after: int) -> None:
        """The client asks for every item after seq ``after``."""
        self._put(("resume", after))

    def send(self, frame: dict[str, Any]) -> None:
        """A frame to send as it is (pong, error, unread count)."""
        self._put(("frame", frame))

    def _put(self, entry: tuple[Any, ...]) -> None:
        if self.too_slow or self.closed:
            return
        try:
            self.queue.put_nowait(entry)
        except asyncio.QueueFull:
            self.too_slow = True
            log.info("cutting off a slow inbox connection of recipient %s", self.recipient_id)
            # Leave the group: nothing more is buffered for a client that is gone in all
            # but name (frames() raises at its next turn; the carrier closes).
            self._tasks.append(asyncio.create_task(self._stop_listening()))
            if self.on_too_slow is not None:
                self.on_too_slow()

    # --- what to send ----------------------------------------------------------------------

    async def frames(self, *, idle_seconds: float | None = None) -> AsyncIterator[dict[str, Any] | None]:
        """Frames to send, in order, each notification once; None after ``idle_seconds``
        without any (a keepalive moment). Raises LiveInboxTooSlow once the client fell too
        far behind."""
        while True:
            if self.too_slow:
                raise LiveInboxTooSlow
            try:
                entry = await asyncio.wait_for(self.queue.get(), timeout=idle_seconds)
            except TimeoutError:
                yield None
                continue
            kind = entry[0]
            if self.too_slow:
                raise LiveInboxTooSlow
            if kind == "resume":
                async with contextlib.aclosing(self.sequencer.resume(after=entry[1])) as items:
                    async for seq, item in items:
                        yield {"type": "notification", "seq": seq, "item": item}
            elif kind == "notification":
                async with contextlib.aclosing(self.sequencer.live(seq=entry[1], item=entry[2])) as items:
                    async for seq, item in items:
                        yield {"type": "notification", "seq": seq, "item": item}
            else:
                yield entry[1]

    # --- internals -------------------------------------------------------------------------

    async def _keep_registered(self) -> None:
        while True:
            await asyncio.sleep(REGISTRATION_REFRESH_SECONDS)
            await self.refresh()

    async def _receive_loop(self) -> None:
        # Runs until close() cancels it: the pub/sub layer drops the channel's subscription
        # and buffer only when a pending receive() is cancelled. After a cut-off, what
        # still arrives is dropped by _put.
        while True:
            self.deliver(await self.layer.receive(self.channel))

    async def _stop_listening(self) -> None:
        if not self._listening:
            return
        self._listening = False
        try:
            await self.layer.group_discard(inbox_group(self.recipient_id), self.channel)
        except redis.RedisError as exc:
            log.warning("inbox connection did not leave its group: %s", exc)
