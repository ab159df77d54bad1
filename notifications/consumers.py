"""The live inbox over a websocket: authenticate, then stream inbox items in seq order.

Sequencing, registration and the bounded queue live in services/live_inbox.py, shared
with the SSE stream (views.py). This consumer authenticates, parses client frames and
sends what the live inbox yields, one frame at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from notifications import selectors
from notifications.services.live_inbox import LiveInbox, LiveInboxTooSlow
from notifications.services.realtime import NOTIFICATION_MESSAGE, UNREAD_MESSAGE
from notifications.services.tokens import TokenInvalid, end_user_token_verify

log = logging.getLogger(__name__)

# Close codes (4000-4999 are the application's own).
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN_ORIGIN = 4403
CLOSE_TOO_SLOW = 4008

# What the channel layer sends an inbox socket (services/realtime.py): queued, never awaited.
_LAYER_MESSAGES = frozenset({NOTIFICATION_MESSAGE, UNREAD_MESSAGE})


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
    """``/ws/inbox/``: the live inbox of one recipient.

    Channel-layer handlers run on the consumer's single dispatch loop, so they only queue
    work; one writer task sends every frame. A client that cannot keep up (queue full, or a
    send slower than SOCKET_SEND_TIMEOUT_SECONDS) is closed with 4008 and resumes by seq,
    which bounds the memory one connection can hold.
    """

    recipient_id: int | None = None
    live: LiveInbox | None = None

    async def connect(self) -> None:
        self.writer: asyncio.Task[None] | None = None
        self.closing = False
        recipient_id, close_code = await self._authenticate()
        if recipient_id is None:
            await self.close(code=close_code)
            return
        self.recipient_id = recipient_id
        self.live = LiveInbox(
            recipient_id=recipient_id,
            layer=self.channel_layer,
            channel=self.channel_name,
            on_too_slow=self._close_too_slow,
        )
        # The group is joined before accepting so that no frame published after the
        # client's first resume can fall between the two.
        await self.live.open()
        await self.accept()
        self.writer = asyncio.create_task(self._write_loop())

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
        if self.writer is not None and self.writer is not asyncio.current_task():
            self.writer.cancel()
            with contextlib.suppress(BaseException):
                await self.writer
        if self.live is not None:
            await self.live.close()

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
        if self.live is None:
            return
        if not isinstance(content, dict):
            self._send_error("frame", f"Expected a JSON object, got {type(content).__name__}.")
            return
        frame_type = content.get("type")
        if frame_type == "ping":
            self.live.send({"type": "pong"})
            await self.live.refresh()
        elif frame_type == "resume":
            after = _parse_after(content.get("after"))
            if after is None:
                self._send_error("after", f"Expected a non-negative integer, got {content.get('after')!r}.")
                return
            self.live.resume(after=after)
        else:
            self._send_error("type", f"Unknown frame type {frame_type!r}; expected 'ping' or 'resume'.")

    def _send_error(self, field: str, message: str) -> None:
        if self.live is not None:
            self.live.send({"type": "error", "errors": {field: [message]}})

    # --- channel-layer handlers: queue and return, never await the socket --------------

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels closes stale database connections before every message it dispatches,
        a hop to a thread and back. The channel layer's frames touch no database, and one
        comes for every item of every socket, so they skip that hop; the socket's own
        events (connect, receive, disconnect) keep it."""
        if message["type"] in _LAYER_MESSAGES:
            if self.live is not None:
                self.live.deliver(message)
            return
        await super().dispatch(message)

    # --- the writer --------------------------------------------------------------------

    def _close_too_slow(self) -> None:
        if self.closing:
            return
        self.closing = True
        log.info("closing a slow inbox socket of recipient %s", self.recipient_id)
        asyncio.ensure_future(self._close_now())

    async def _close_now(self) -> None:
        if self.writer is not None and self.writer is not asyncio.current_task():
            self.writer.cancel()
        await self.close(code=CLOSE_TOO_SLOW)

    async def _write_loop(self) -> None:
        assert self.live is not None
        try:
            async for frame in self.live.frames():
                if frame is not None:
                    await self._send_frame(frame)
        except (_SendTimedOut, LiveInboxTooSlow):
            self._close_too_slow()

    async def _send_frame(self, frame: dict[str, Any]) -> None:
        try:
            await asyncio.wait_for(self.send_json(frame), timeout=settings.SOCKET_SEND_TIMEOUT_SECONDS)
        except TimeoutError:
            raise _SendTimedOut from None
