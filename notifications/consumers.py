"""The live inbox over a websocket: authenticate, then stream inbox items in seq order.

The channel layer is pub/sub (at-most-once, unbounded), so the socket never trusts it for
completeness: every item has a per-recipient ``seq`` and the database is the source of
truth. ``InboxSequencer`` turns resume requests and live frames into the items to send,
each exactly once and in order, filling gaps from the database; the SSE view uses it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from typing import Any
from urllib.parse import parse_qs

import redis
import redis.asyncio as aioredis
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from notifications import selectors
from notifications.services.connections import connection_register, connection_unregister
from notifications.services.inbox import inbox_item_payload
from notifications.services.realtime import inbox_group
from notifications.services.redis_client import redis_async
from notifications.services.tokens import TokenInvalid, end_user_token_verify

log = logging.getLogger(__name__)

# Close codes (4000-4999 are the application's own).
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN_ORIGIN = 4403
CLOSE_TOO_SLOW = 4008

# Well under CONNECTION_TTL_SECONDS (90), so one missed refresh does not mark a live
# connection gone.
REGISTRATION_REFRESH_SECONDS = 30.0
RESUME_PAGE_SIZE = selectors.INBOX_PAGE_MAX


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


class _SendTimedOut(Exception):
    """One frame took longer than SOCKET_SEND_TIMEOUT_SECONDS to send."""


def _query_token(scope: dict[str, Any]) -> str | None:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
    return values[0] if values else None


def _origin(scope: dict[str, Any]) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"origin":
            return value.decode("latin-1")
    return None


def _parse_after(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


class InboxConsumer(AsyncJsonWebsocketConsumer):
    """``/ws/inbox/``: the live inbox of one recipient (DESIGN.md section 4).

    Channel-layer handlers run on the consumer's single dispatch loop, so they only queue
    work; one writer task sends every frame. A client that cannot keep up (queue full, or a
    send slower than SOCKET_SEND_TIMEOUT_SECONDS) is closed with 4008 and resumes by seq,
    which bounds the memory one connection can hold.
    """

    recipient_id: int | None = None
    sequencer: InboxSequencer | None = None
    redis: aioredis.Redis | None = None

    async def connect(self) -> None:
        self.outbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue(maxsize=settings.SOCKET_SEND_QUEUE_LIMIT)
        self.tasks: list[asyncio.Task[None]] = []
        self.closing = False

        recipient_id, close_code = await self._authenticate()
        if recipient_id is None:
            await self.close(code=close_code)
            return
        self.recipient_id = recipient_id
        self.sequencer = InboxSequencer(recipient_id=recipient_id)
        # Join the group before accepting so that no frame published after the client's
        # first resume can fall between the two.
        await self.channel_layer.group_add(inbox_group(recipient_id), self.channel_name)
        await self.accept()
        self.redis = redis_async()
        await self._register()
        count = await database_sync_to_async(selectors.inbox_unread_count)(recipient_id=recipient_id)
        self._enqueue(("frame", {"type": "unread_count", "count": count}))
        self.tasks.append(asyncio.create_task(self._write_loop()))
        self.tasks.append(asyncio.create_task(self._keep_registered()))

    async def _authenticate(self) -> tuple[int | None, int]:
        """(recipient_id, 0) when the socket may open, else (None, close code)."""
        token = _query_token(self.scope)
        if token is not None:
            # A token is not an ambient credential, so a token socket may come from any origin.
            try:
                return end_user_token_verify(token=token), 0
            except TokenInvalid:
                return None, CLOSE_UNAUTHORIZED
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            return None, CLOSE_UNAUTHORIZED
        # The cookie is sent by any page the browser visits, so only our own pages may use it
        # (cross-site websocket hijacking). A missing Origin is refused too.
        if _origin(self.scope) not in settings.SOCKET_ALLOWED_ORIGINS:
            return None, CLOSE_FORBIDDEN_ORIGIN
        recipient = await database_sync_to_async(selectors.recipient_for_user)(user=user)
        if recipient is None:
            return None, CLOSE_UNAUTHORIZED
        return recipient.id, 0

    async def disconnect(self, code: int) -> None:
        self.closing = True
        for task in getattr(self, "tasks", []):
            task.cancel()
        for task in getattr(self, "tasks", []):
            with contextlib.suppress(BaseException):
                await task
        if self.recipient_id is None:
            return
        await self.channel_layer.group_discard(inbox_group(self.recipient_id), self.channel_name)
        if self.redis is not None:
            try:
                await connection_unregister(
                    self.redis, recipient_id=self.recipient_id, connection=self.channel_name
                )
            except redis.RedisError as exc:
                # The registration expires on its own within CONNECTION_TTL_SECONDS.
                log.warning("inbox connection not unregistered: %s", exc)
            finally:
                # The client is shared by every connection of this event loop: not closed here.
                self.redis = None

    # --- client frames -----------------------------------------------------------------

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any
    ) -> None:
        if text_data is None:
            self._send_error("frame", "Send JSON text frames, not binary ones.")
            return
        try:
            content = await self.decode_json(text_data)
        except ValueError:
            self._send_error("frame", "Expected a JSON object, got text that is not JSON.")
            return
        await self.receive_json(content)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if not isinstance(content, dict):
            self._send_error("frame", f"Expected a JSON object, got {type(content).__name__}.")
            return
        frame_type = content.get("type")
        if frame_type == "ping":
            self._enqueue(("frame", {"type": "pong"}))
            await self._register()
        elif frame_type == "resume":
            after = _parse_after(content.get("after"))
            if after is None:
                self._send_error("after", f"Expected a non-negative integer, got {content.get('after')!r}.")
                return
            self._enqueue(("resume", after))
        else:
            self._send_error("type", f"Unknown frame type {frame_type!r}; expected 'ping' or 'resume'.")

    def _send_error(self, field: str, message: str) -> None:
        self._enqueue(("frame", {"type": "error", "errors": {field: [message]}}))

    # --- channel-layer handlers: queue and return, never await the socket --------------

    async def inbox_notification(self, message: dict[str, Any]) -> None:
        self._enqueue(("notification", message["seq"], message["item"]))

    async def inbox_unread(self, message: dict[str, Any]) -> None:
        self._enqueue(("frame", {"type": "unread_count", "count": message["count"]}))

    # --- the writer --------------------------------------------------------------------

    def _enqueue(self, entry: tuple[Any, ...]) -> None:
        if self.closing:
            return
        try:
            self.outbox.put_nowait(entry)
        except asyncio.QueueFull:
            self._close_too_slow()

    def _close_too_slow(self) -> None:
        if self.closing:
            return
        self.closing = True
        log.info("closing a slow inbox socket of recipient %s", self.recipient_id)
        self.tasks.append(asyncio.create_task(self._close_now(CLOSE_TOO_SLOW)))

    async def _close_now(self, code: int) -> None:
        for task in self.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        await self.close(code=code)

    async def _write_loop(self) -> None:
        assert self.sequencer is not None
        try:
            while not self.closing:
                entry = await self.outbox.get()
                kind = entry[0]
                if kind == "resume":
                    async with contextlib.aclosing(self.sequencer.resume(after=entry[1])) as items:
                        async for seq, item in items:
                            await self._send_frame({"type": "notification", "seq": seq, "item": item})
                elif kind == "notification":
                    async with contextlib.aclosing(self.sequencer.live(seq=entry[1], item=entry[2])) as items:
                        async for seq, item in items:
                            await self._send_frame({"type": "notification", "seq": seq, "item": item})
                else:
                    await self._send_frame(entry[1])
        except _SendTimedOut:
            self._close_too_slow()

    async def _send_frame(self, frame: dict[str, Any]) -> None:
        try:
            await asyncio.wait_for(self.send_json(frame), timeout=settings.SOCKET_SEND_TIMEOUT_SECONDS)
        except TimeoutError:
            raise _SendTimedOut from None

    # --- connection registry -----------------------------------------------------------

    async def _register(self) -> None:
        if self.redis is None or self.recipient_id is None:
            return
        try:
            await connection_register(
                self.redis, recipient_id=self.recipient_id, connection=self.channel_name
            )
        except redis.RedisError as exc:
            # Without the registration dispatch skips live frames; the client still gets
            # every item when it resumes, so the socket stays open.
            log.warning("inbox connection not registered: %s", exc)

    async def _keep_registered(self) -> None:
        while True:
            await asyncio.sleep(REGISTRATION_REFRESH_SECONDS)
            await self._register()
