"""One live connection of an end user, whatever carries it (a websocket consumer or an SSE
stream): its channel-layer groups, its registration in the connection registry, and a
bounded queue between what arrives and what the client takes.

The channel layer is pub/sub (at-most-once, and it buffers without limit), so the queue
here is the only buffer a connection may grow: when the client falls ``queue_limit``
entries behind, the connection is cut off (``ConnectionTooSlow``) and stops listening.
The client reconnects and catches up from the app's own store (the inbox resumes by seq),
which is the truth; the frames are only a nudge.

Apps subclass LiveConnection: ``deliver()`` turns a channel-layer message into queue
entries, and ``expand()`` turns an entry of the app's own kinds into frames (the inbox's
resume reads the database there, in the writer's turn, never in the layer's).

One web process holds ten thousand of these, most of them idle for minutes, so an idle one
holds no task and no buffer of its own: the queue's storage exists only while entries wait
(``EntryQueue``), a carrier that pushes (``send_with``: the websocket) has a sending task
only while there is something to send, and the registrations of a process are renewed
together by one task per event loop (``_Renewals``) rather than a sleeping task each.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import redis
import redis.asyncio as aioredis
from django.conf import settings

from realtime.hub import hub_add, hub_discard
from realtime.queues import EntryQueue
from realtime.redis_client import redis_async
from realtime.registry import (
    connection_activity,
    connection_register,
    connection_unregister,
    connections_register,
)

log = logging.getLogger(__name__)

# Well under CONNECTION_TTL_SECONDS (90), so one missed refresh does not mark a live
# connection gone.
REGISTRATION_REFRESH_SECONDS = 30.0
# Registrations renewed per Redis round trip by the renewal task.
REGISTRATION_REFRESH_BATCH = 500
# The queue entry of a frame sent as it is; apps add kinds of their own.
FRAME = "frame"
# Frames handed to a carrier's ``send_many`` at once at most (a long resume is sent in
# parts of this many, not gathered whole).
SEND_BATCH_MAX = 100


class ConnectionTooSlow(Exception):
    """The client fell too far behind; close it and let it catch up on reconnecting."""


class _Renewals:
    """The registrations of one event loop's live connections, renewed together every
    REGISTRATION_REFRESH_SECONDS by one task (batched pipelines), which runs only while
    the loop has connections."""

    def __init__(self) -> None:
        self.connections: dict[LiveConnection, None] = {}
        self.task: asyncio.Task[None] | None = None

    def add(self, connection: LiveConnection) -> None:
        self.connections[connection] = None
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._renew_forever())

    def discard(self, connection: LiveConnection) -> None:
        self.connections.pop(connection, None)
        if not self.connections and self.task is not None:
            self.task.cancel()
            self.task = None

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(REGISTRATION_REFRESH_SECONDS)
            await self.renew()

    async def renew(self) -> None:
        live = [c for c in self.connections if not c.closed]
        for start in range(0, len(live), REGISTRATION_REFRESH_BATCH):
            batch = live[start : start + REGISTRATION_REFRESH_BATCH]
            try:
                await connections_register(redis_async(), [(c.recipient_id, c.channel) for c in batch])
            except (redis.RedisError, OSError) as exc:
                # Each is renewed again at the next turn, within the registration's TTL.
                log.warning("%d live connections not re-registered: %s", len(batch), exc)


_renewals: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Renewals] = weakref.WeakKeyDictionary()


def _renewals_of_loop() -> _Renewals:
    loop = asyncio.get_running_loop()
    renewals = _renewals.get(loop)
    if renewals is None:
        renewals = _renewals[loop] = _Renewals()
    return renewals


async def registrations_renew() -> None:
    """Renew now every registration of this event loop's live connections (what the
    renewal task does every REGISTRATION_REFRESH_SECONDS)."""
    await _renewals_of_loop().renew()


class LiveConnection:
    """The live side of one connection. ``open()`` joins the groups and registers;
    ``deliver()`` takes a channel-layer message and ``send()`` a frame; ``frames()`` yields
    what to send, in order (or ``send_with()`` has it sent); ``close()`` undoes ``open()``.
    Everything arriving goes through one queue of ``queue_limit`` entries."""

    def __init__(
        self,
        *,
        recipient_id: int,
        layer: Any,
        channel: str,
        groups: Sequence[str] = (),
        queue_limit: int | None = None,
        on_too_slow: Callable[[], None] | None = None,
    ) -> None:
        self.recipient_id = recipient_id
        self.layer = layer
        self.channel = channel
        self.groups = list(groups)
        self.on_too_slow = on_too_slow
        self.queue = EntryQueue(queue_limit if queue_limit is not None else settings.SOCKET_SEND_QUEUE_LIMIT)
        self.too_slow = False
        self.closed = False
        self._redis: aioredis.Redis | None = None
        self._tasks: list[asyncio.Task[Any]] | None = None
        self._listening = False
        self._in_hub = False
        self._registered = False
        # Push mode (send_with): how a frame is sent, what to do when sending fails, and the
        # task sending while entries wait (None while the queue is empty).
        self._push: Callable[[dict[str, Any]], Awaitable[None]] | None = None
        self._push_many: Callable[[list[dict[str, Any]]], Awaitable[None]] | None = None
        self._write_now: Callable[[list[str]], bool] | None = None
        self._push_failed: Callable[[BaseException], None] | None = None
        self.sender: asyncio.Task[None] | None = None

    # --- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        """Subscribe to the process's hub and join the groups (before the app reads anything
        from its store, so that nothing committed meanwhile can fall between the two), then
        register the connection (publishers send only to registered recipients, so a
        publish that finds it registered reaches it)."""
        await hub_add(self)
        self._in_hub = True
        for group in self.groups:
            await self.layer.group_add(group, self.channel)
        self._listening = True
        self._redis = redis_async()
        await self.refresh()
        _renewals_of_loop().add(self)
        self._registered = True

    async def join(self, group: str) -> None:
        """Listen on one more group (left again on close, or with ``leave``)."""
        if group in self.groups or self.closed or self.too_slow:
            return
        self.groups.append(group)
        await self.layer.group_add(group, self.channel)

    async def leave(self, group: str) -> None:
        if group not in self.groups:
            return
        self.groups.remove(group)
        try:
            await self.layer.group_discard(group, self.channel)
        except redis.RedisError as exc:
            log.warning("live connection did not leave group %s: %s", group, exc)

    def listen(self) -> None:
        """Read this connection's channel from the layer in a task of its own and deliver
        what arrives (for carriers that, unlike a Channels consumer, do not dispatch
        channel-layer messages themselves: the SSE stream)."""
        self._task(self._receive_loop())

    async def close(self) -> None:
        """Stop listening and unregister; safe to call twice."""
        if self.closed:
            return
        self.closed = True
        if self._registered:
            _renewals_of_loop().discard(self)
        tasks = [*(self._tasks or ()), *([self.sender] if self.sender is not None else [])]
        current = asyncio.current_task()
        for task in tasks:
            if task is not current:
                task.cancel()
        for task in tasks:
            if task is not current:
                with contextlib.suppress(BaseException):
                    await task
        await self._stop_listening()
        if self._in_hub:
            hub_discard(self)
            self._in_hub = False
        if self._redis is not None:
            try:
                # It still counts for the presence grace: a reload reconnects within it.
                await connection_unregister(
                    self._redis,
                    recipient_id=self.recipient_id,
                    connection=self.channel,
                    linger_seconds=settings.PRESENCE_GRACE_SECONDS,
                )
            except redis.RedisError as exc:
                # The registration expires on its own within CONNECTION_TTL_SECONDS.
                log.warning("live connection not unregistered: %s", exc)
            # The client is shared by every connection of this event loop: not closed here.
            self._redis = None

    async def refresh(self) -> None:
        """Renew the registration (on open, on a client's ping, and every 30 s)."""
        if self._redis is None:
            return
        try:
            await connection_register(self._redis, recipient_id=self.recipient_id, connection=self.channel)
        except redis.RedisError as exc:
            # Unregistered, the user misses live frames; the client still catches up when
            # it resumes, so the connection stays open.
            log.warning("live connection not registered: %s", exc)

    async def report_activity(self, state: str) -> None:
        """The client says it is ``active`` or ``idle`` (presence)."""
        if self._redis is None:
            return
        try:
            await connection_activity(
                self._redis, recipient_id=self.recipient_id, connection=self.channel, state=state
            )
        except redis.RedisError as exc:
            log.warning("activity of a live connection not recorded: %s", exc)

    # --- what arrives --------------------------------------------------------------------

    def deliver(self, message: dict[str, Any]) -> None:
        """A message for this connection, from the process's hub (realtime/hub.py) or the
        channel layer; the app's subclass queues what it means. Here: nothing."""

    def hub_resumed(self) -> None:
        """The hub's subscription dropped and is back: messages published meanwhile were
        lost. The app's subclass reads from its store what the client may have missed.
        Here: nothing."""

    def send(self, frame: dict[str, Any]) -> None:
        """A frame to send as it is (pong, error, a count): written at once when nothing
        waits (``write_now``), queued otherwise."""
        if self._write_now is not None and self.write_now([json.dumps(frame)]):
            return
        self.put((FRAME, frame))

    def write_now(self, texts: list[str]) -> bool:
        """Write these encoded frames straight to the carrier, without the queue or a task,
        when nothing is queued or being sent (so order holds) and the carrier takes data
        now; False when nothing was written (the caller queues instead). A broadcast
        reaches thousands of idle connections at once, and for each of them the queue, the
        sending task and the awaiting send cost more than the write itself
        (docs/benchmarks.md, P3 broadcast)."""
        writer = self._write_now
        if (
            writer is None
            or self.sender is not None
            or self.too_slow
            or self.closed
            or not self.queue.empty()
        ):
            return False
        try:
            return writer(texts)
        except Exception as exc:  # noqa: BLE001 - the queued way meets it again and decides
            log.debug("direct write to a live connection of recipient %s failed: %r", self.recipient_id, exc)
            return False

    def put(self, entry: tuple[Any, ...]) -> None:
        """Queue an entry (its first element names its kind); past ``queue_limit`` the
        connection is cut off."""
        if self.too_slow or self.closed:
            return
        try:
            self.queue.put_nowait(entry)
        except asyncio.QueueFull:
            self.too_slow = True
            log.info("cutting off a slow live connection of recipient %s", self.recipient_id)
            # Leave the groups: nothing more is buffered for a client that is gone in all
            # but name (frames() raises at its next turn; the carrier closes).
            self._task(self._stop_listening())
            if self.on_too_slow is not None:
                self.on_too_slow()
            return
        if self._push is not None and self.sender is None:
            self.sender = asyncio.get_running_loop().create_task(self._send_queued())

    # --- what to send ----------------------------------------------------------------------

    async def frames(self, *, idle_seconds: float | None = None) -> AsyncIterator[dict[str, Any] | None]:
        """Frames to send, in order; None after ``idle_seconds`` without any (a keepalive
        moment). Raises ConnectionTooSlow once the client fell too far behind."""
        while True:
            if self.too_slow:
                raise ConnectionTooSlow
            try:
                entry = await asyncio.wait_for(self.queue.get(), timeout=idle_seconds)
            except TimeoutError:
                yield None
                continue
            if self.too_slow:
                raise ConnectionTooSlow
            if entry[0] == FRAME:
                yield entry[1]
                continue
            async with contextlib.aclosing(self.expand(entry)) as expanded:
                async for frame in expanded:
                    yield frame

    def send_with(
        self,
        send: Callable[[dict[str, Any]], Awaitable[None]],
        *,
        failed: Callable[[BaseException], None],
        send_many: Callable[[list[dict[str, Any]]], Awaitable[None]] | None = None,
        write_now: Callable[[list[str]], bool] | None = None,
    ) -> None:
        """Push instead of ``frames()``: from now on every frame is sent, in order, with
        ``send``, by a task that exists only while entries wait (an idle connection holds
        none). With ``send_many``, the frames waiting are sent together instead, up to
        SEND_BATCH_MAX at a time (a carrier that writes them in one go: the websocket's
        SEND_TEXTS, realtime/uvicorn_websocket.py). ``failed`` is called with
        ConnectionTooSlow once the client fell too far behind, or with whatever ``send``
        or ``send_many`` raised; nothing more is sent after it. ``write_now`` (see
        ``write_now``) writes encoded frames at once when the carrier takes data without
        waiting, True, or writes nothing, False."""
        self._push, self._push_failed, self._push_many = send, failed, send_many
        self._write_now = write_now
        if not self.queue.empty() and self.sender is None:
            self.sender = asyncio.get_running_loop().create_task(self._send_queued())

    async def expand(self, entry: tuple[Any, ...]) -> AsyncGenerator[dict[str, Any], None]:
        """The frames an entry of the app's own kind stands for."""
        raise ValueError(f"no frames for a queue entry of kind {entry[0]!r}")
        yield {}  # pragma: no cover - makes this an async generator

    # --- internals -------------------------------------------------------------------------

    async def _send_queued(self) -> None:
        assert self._push is not None and self._push_failed is not None
        try:
            while True:
                if self.too_slow:
                    raise ConnectionTooSlow
                if self.queue.empty():
                    # No await between this look and the task's end, so an entry put from
                    # now on starts a new sender.
                    self.sender = None
                    return
                if self._push_many is not None:
                    await self._send_waiting(self._push_many)
                    continue
                entry = self.queue.get_nowait()
                if entry[0] == FRAME:
                    await self._push(entry[1])
                    continue
                async with contextlib.aclosing(self.expand(entry)) as expanded:
                    async for frame in expanded:
                        await self._push(frame)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the carrier decides (it closes the socket)
            self._push = self._push_many = self._write_now = None
            self._push_failed(exc)

    async def _send_waiting(self, send_many: Callable[[list[dict[str, Any]]], Awaitable[None]]) -> None:
        """Send the frames of the entries waiting now, SEND_BATCH_MAX at a time."""
        batch: list[dict[str, Any]] = []
        while not self.queue.empty():
            entry = self.queue.get_nowait()
            if entry[0] == FRAME:
                batch.append(entry[1])
            else:
                async with contextlib.aclosing(self.expand(entry)) as expanded:
                    async for frame in expanded:
                        batch.append(frame)
                        if len(batch) >= SEND_BATCH_MAX:
                            await send_many(batch)
                            batch = []
                if self.too_slow:
                    raise ConnectionTooSlow
            if len(batch) >= SEND_BATCH_MAX:
                await send_many(batch)
                batch = []
        if batch:
            await send_many(batch)

    def _task(self, coroutine: Awaitable[Any]) -> None:
        if self._tasks is None:
            self._tasks = []
        self._tasks.append(asyncio.ensure_future(coroutine))

    async def _receive_loop(self) -> None:
        # Runs until close() cancels it: the pub/sub layer drops the channel's subscription
        # and buffer only when a pending receive() is cancelled. After a cut-off, what
        # still arrives is dropped by put().
        while True:
            self.deliver(await self.layer.receive(self.channel))

    async def _stop_listening(self) -> None:
        if not self._listening:
            return
        self._listening = False
        for group in self.groups:
            try:
                await self.layer.group_discard(group, self.channel)
            except redis.RedisError as exc:
                log.warning("live connection did not leave group %s: %s", group, exc)
