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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Any

import redis
import redis.asyncio as aioredis
from django.conf import settings

from realtime.redis_client import redis_async
from realtime.registry import connection_activity, connection_register, connection_unregister

log = logging.getLogger(__name__)

# Well under CONNECTION_TTL_SECONDS (90), so one missed refresh does not mark a live
# connection gone.
REGISTRATION_REFRESH_SECONDS = 30.0
# The queue entry of a frame sent as it is; apps add kinds of their own.
FRAME = "frame"


class ConnectionTooSlow(Exception):
    """The client fell too far behind; close it and let it catch up on reconnecting."""


class LiveConnection:
    """The live side of one connection. ``open()`` joins the groups and registers;
    ``deliver()`` takes a channel-layer message and ``send()`` a frame; ``frames()`` yields
    what to send, in order; ``close()`` undoes ``open()``. Everything arriving goes through
    one queue of ``queue_limit`` entries."""

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
        self.queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue(
            maxsize=queue_limit if queue_limit is not None else settings.SOCKET_SEND_QUEUE_LIMIT
        )
        self.too_slow = False
        self.closed = False
        self._redis: aioredis.Redis | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._listening = False

    # --- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        """Join the groups (before the app reads anything from its store, so that nothing
        committed meanwhile can fall between the two) and register the connection."""
        for group in self.groups:
            await self.layer.group_add(group, self.channel)
        self._listening = True
        self._redis = redis_async()
        await self.refresh()
        self._tasks.append(asyncio.create_task(self._keep_registered()))

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
        """A channel-layer message for this connection; the app's subclass queues what it
        means. Here: nothing."""

    def send(self, frame: dict[str, Any]) -> None:
        """A frame to send as it is (pong, error, a count)."""
        self.put((FRAME, frame))

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
            self._tasks.append(asyncio.create_task(self._stop_listening()))
            if self.on_too_slow is not None:
                self.on_too_slow()

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

    async def expand(self, entry: tuple[Any, ...]) -> AsyncGenerator[dict[str, Any], None]:
        """The frames an entry of the app's own kind stands for."""
        raise ValueError(f"no frames for a queue entry of kind {entry[0]!r}")
        yield {}  # pragma: no cover - makes this an async generator

    # --- internals -------------------------------------------------------------------------

    async def _keep_registered(self) -> None:
        while True:
            await asyncio.sleep(REGISTRATION_REFRESH_SECONDS)
            await self.refresh()

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
