"""The base of every end-user websocket: authenticate, keep one live connection
(realtime/connection.py), answer the heartbeat, validate client frames, and send through
one sender at a time, with a cut-off for clients that cannot keep up.

An app's consumer says who a logged-in user is (``user_to_recipient``), builds its live
connection (``live_connection``), names the channel-layer messages that are queued rather
than dispatched (``layer_messages``) and handles its own client frames (``handle_frame``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import Any, ClassVar

from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings

from realtime.auth import CLOSE_TOO_SLOW, socket_authenticate
from realtime.connection import ConnectionTooSlow, LiveConnection
from realtime.registry import ACTIVE, IDLE
from realtime.uvicorn_websocket import SEND_TEXTS

log = logging.getLogger(__name__)


# What ``{"type": "activity", "state": ...}`` may say (presence: idle when every tab is).
ACTIVITY_STATES = (ACTIVE, IDLE)


class _SendTimedOut(Exception):
    """One frame took longer than SOCKET_SEND_TIMEOUT_SECONDS to send."""


class RealtimeConsumer(AsyncJsonWebsocketConsumer):
    """One end user's socket. Channel-layer handlers run on the consumer's single dispatch
    loop, so they only queue work; the live connection's sender sends every frame, one
    at a time and in order (a task that exists only while frames wait). A client that cannot
    keep up (queue full, or a send slower than SOCKET_SEND_TIMEOUT_SECONDS) is closed with
    4008 and catches up when it reconnects, which bounds the memory one connection holds.
    The client may send ``{"type": "ping"}`` at any time: ``{"type": "pong"}`` answers, and
    the connection's registration is renewed; and ``{"type": "activity", "state": "active"
    | "idle"}`` when its user becomes active or idle (presence)."""

    # Channel-layer message types queued on the live connection, never awaited.
    layer_messages: ClassVar[frozenset[str]] = frozenset()
    # Client frame types besides "ping", for the error that names what is accepted.
    frame_types: ClassVar[tuple[str, ...]] = ()

    recipient_id: int | None = None
    live: LiveConnection | None = None
    # SOCKET_SEND_TIMEOUT_SECONDS, read once per socket on connect.
    send_timeout: float = 0.0

    # --- what an app's consumer provides ------------------------------------------------

    async def user_to_recipient(self, user: Any) -> int | None:
        """The recipient id of a logged-in Django user, or None (no session sockets)."""
        return None

    def live_connection(self, recipient_id: int) -> LiveConnection:
        raise NotImplementedError

    async def handle_frame(self, frame_type: Any, content: dict[str, Any]) -> bool:
        """Handle a client frame of the app's own; False when its type is unknown."""
        return False

    async def presence_changed(self) -> None:
        """The user's presence may have changed: a connection opened, reported activity
        or closed (the app announces it to whoever watches)."""

    # --- lifecycle ----------------------------------------------------------------------

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Channels' ``AsyncConsumer.__call__``, with less held per idle socket: the
        socket's own events are awaited in this coroutine and the channel layer is read by
        one long-lived task, where Channels keeps a task for each source, makes a new one
        for every message and waits on both with ``asyncio.wait`` (a waiter and callbacks
        per turn). Layer messages in ``layer_messages`` are only queued (``dispatch``), so
        they need no turn of their own; any other message from the layer is dispatched
        under a lock, one at a time with the socket's events, as Channels does."""
        layer = get_channel_layer(self.channel_layer_alias)
        if layer is None:
            await super().__call__(scope, receive, send)
            return
        self.scope = scope
        self.channel_layer = layer
        self.channel_name = await layer.new_channel()
        self.channel_receive = functools.partial(layer.receive, self.channel_name)
        self.base_send = send
        self._turn = asyncio.Lock()
        reader = asyncio.ensure_future(self._read_layer())
        try:
            while True:
                message = await receive()
                async with self._turn:
                    await self.dispatch(message)
        except StopConsumer:
            pass
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _read_layer(self) -> None:
        # Until __call__ cancels it: cancelling the pending receive() is what makes the
        # pub/sub layer drop this channel's subscription and buffer.
        while True:
            message = await self.channel_receive()
            if message["type"] in self.layer_messages:
                await self.dispatch(message)
            else:
                async with self._turn:
                    await self.dispatch(message)

    async def connect(self) -> None:
        self.closing = False
        self.send_timeout = settings.SOCKET_SEND_TIMEOUT_SECONDS
        recipient_id, close_code = await socket_authenticate(
            self.scope, user_to_recipient=self.user_to_recipient
        )
        if recipient_id is None:
            await self.close(code=close_code)
            return
        self.recipient_id = recipient_id
        self.live = self.live_connection(recipient_id)
        self.live.on_too_slow = self._close_too_slow
        # The groups are joined before accepting so that no frame published after the
        # client's first request can fall between the two.
        await self.live.open()
        await self.accept()
        self.start_sending()
        await self.presence_changed()

    def start_sending(self) -> None:
        """Frames go out in order through the connection's sender, a task that exists only
        while frames wait: ten thousand idle sockets hold no writer task each. The server
        may write several frames at once, and at once when the socket takes data
        (realtime/uvicorn_websocket.py)."""
        assert self.live is not None, "start_sending after the connection is made"
        texts = self.scope.get("extensions", {}).get(SEND_TEXTS)
        self.live.send_with(
            self._send_frame,
            failed=self._send_failed,
            send_many=self._send_frames if texts is not None else None,
            write_now=texts.get("write_now") if texts is not None else None,
        )

    async def disconnect(self, code: int) -> None:
        self.closing = True
        if self.live is not None:
            # Cancels the sender, if one is sending.
            await self.live.close()
            await self.presence_changed()

    # --- client frames --------------------------------------------------------------------

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any
    ) -> None:
        if text_data is None:
            self.send_error("frame", "Send JSON text frames, not binary ones.")
            return
        try:
            content = await self.decode_json(text_data)
        except ValueError:
            self.send_error("frame", "Expected a JSON object, got text that is not JSON.")
            return
        await self.receive_json(content)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if self.live is None:
            return
        if not isinstance(content, dict):
            self.send_error("frame", f"Expected a JSON object, got {type(content).__name__}.")
            return
        frame_type = content.get("type")
        if frame_type == "ping":
            self.live.send({"type": "pong"})
            await self.live.refresh()
        elif frame_type == "activity":
            state = content.get("state")
            if state not in ACTIVITY_STATES:
                self.send_error("state", f"Expected 'active' or 'idle', got {state!r}.")
                return
            await self.live.report_activity(state)
            await self.presence_changed()
        elif not await self.handle_frame(frame_type, content):
            expected = ", ".join(repr(name) for name in ("ping", "activity", *self.frame_types))
            self.send_error("type", f"Unknown frame type {frame_type!r}; expected one of {expected}.")

    def send_error(self, field: str, message: str) -> None:
        """An error frame naming the field and the problem."""
        if self.live is not None:
            self.live.send({"type": "error", "errors": {field: [message]}})

    # --- channel-layer handlers: queue and return, never await the socket ------------------

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels closes stale database connections before every message it dispatches,
        a hop to a thread and back. The layer's frames touch no database, and one comes for
        every item of every socket, so they skip that hop; the socket's own events
        (connect, receive, disconnect) keep it."""
        if message["type"] in self.layer_messages:
            if self.live is not None:
                self.live.deliver(message)
            return
        await super().dispatch(message)

    # --- the writer -----------------------------------------------------------------------

    def _close_too_slow(self) -> None:
        if self.closing:
            return
        self.closing = True
        log.info("closing a slow socket of recipient %s", self.recipient_id)
        asyncio.ensure_future(self._close_now())

    async def _close_now(self) -> None:
        sender = self.live.sender if self.live is not None else None
        if sender is not None and sender is not asyncio.current_task():
            sender.cancel()
        await self.close(code=CLOSE_TOO_SLOW)

    def _send_failed(self, exc: BaseException) -> None:
        if isinstance(exc, _SendTimedOut | ConnectionTooSlow):
            self._close_too_slow()
            return
        # A socket already closed under the sender: disconnect() follows and cleans up.
        log.debug("frame not sent on a socket of recipient %s: %r", self.recipient_id, exc)

    async def _send_frame(self, frame: dict[str, Any]) -> None:
        # asyncio.timeout rather than wait_for: no task of its own for every frame.
        try:
            async with asyncio.timeout(self.send_timeout):
                await self.send_json(frame)
        except TimeoutError:
            raise _SendTimedOut from None

    async def _send_frames(self, frames: list[dict[str, Any]]) -> None:
        """The frames in one write (SEND_TEXTS), within one SOCKET_SEND_TIMEOUT_SECONDS."""
        texts = [await self.encode_json(frame) for frame in frames]
        try:
            async with asyncio.timeout(self.send_timeout):
                await self.base_send({"type": SEND_TEXTS, "texts": texts})
        except TimeoutError:
            raise _SendTimedOut from None
