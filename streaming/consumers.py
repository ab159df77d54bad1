"""``/ws/streams/{key}/chat/?token=``: a stream's live chat, on the shared socket plumbing
(realtime/consumers.py: heartbeat, the bounded send queue, the slow-client cut-off).

Who may open it: the chat is as public as the stream, so a socket without credentials (no
``?token=``, no signed-in session with an inbox) is a reader: it gets everything and may
post nothing (a ``message`` frame is answered with an error naming ``token``). A token that
is forged or expired is refused (4401) rather than quietly read-only, so a client that
meant to sign in learns it did not; a session from a foreign page is refused (4403), as on
every socket. No such stream: 4404.

On connecting, a socket gets ``{"type": "history", "messages": [...], "slow_mode_seconds",
"moderator"}`` (the last 50 messages not deleted, oldest first, each as a message frame
without its ``type``; whether this viewer may moderate) and then ``{"type": "viewers",
"count"}``, and from then on every frame of the chat (streaming/services/chat.py). Frames
that arrive while the history is read wait, and a message the history holds already is
not sent again.

Client frames: ``{"type": "message", "text"}`` besides ``ping`` and ``activity``. A frame over
FRAME_MAX_BYTES is refused unread, and anything malformed (not JSON, not an object, an
unknown type, a missing or non-string ``text``) or refused (see chat_post) is answered with
``{"type": "error", "field", "message"}``; the socket stays open.

A chat socket is not a registered live connection (realtime/registry.py): that registry
means "sees in-app notifications", which a chat does not show, and presence comes from
the inbox socket. Its viewer is counted in the stream's own set instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import redis
from channels.db import database_sync_to_async
from django.conf import settings

from notifications.selectors import recipient_for_user
from realtime.auth import CLOSE_UNAUTHORIZED, query_token, socket_authenticate
from realtime.connection import FRAME, LiveConnection
from realtime.consumers import RealtimeConsumer
from streaming.chat_selectors import chat_author, chat_history, chat_may_moderate
from streaming.models import Stream
from streaming.selectors import stream_by_key
from streaming.services.chat import (
    CHAT_FRAME,
    ChatRefused,
    chat_group,
    chat_post,
    chat_viewer_join,
    chat_viewer_leave,
)

log = logging.getLogger(__name__)

CLOSE_NO_STREAM = 4404
# A client frame larger than this is answered with an error, unread.
FRAME_MAX_BYTES = 10 * 1024
# How long after its history a socket still drops a message broadcast that the history held.
HISTORY_OVERLAP_SECONDS = 10.0


def _recipient_id_for_user(user: Any) -> int | None:
    recipient = recipient_for_user(user=user)
    return recipient.id if recipient is not None else None


def _too_big(text: str) -> bool:
    # UTF-8 takes at most 4 bytes a character: most frames are judged without encoding.
    if len(text) > FRAME_MAX_BYTES:
        return True
    return len(text) * 4 > FRAME_MAX_BYTES and len(text.encode("utf-8", "surrogatepass")) > FRAME_MAX_BYTES


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__
    )


class ChatConnection(LiveConnection):
    """A chat socket's live side: the stream's group, without the process's hub or the
    connection registry (see the module docstring). Frames wait (``held``) until the
    socket's history is sent; a message the history holds is not sent again, even when its
    broadcast comes after the history (it is published after its commit, which the
    history's read may already see)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.held: list[dict[str, Any]] | None = []
        self.history_ids: frozenset[int] = frozenset()

    async def open(self) -> None:
        for group in self.groups:
            await self.layer.group_add(group, self.channel)
        # The base class leaves the groups on close() once it has listened.
        self._listening = True

    def deliver(self, message: dict[str, Any]) -> None:
        frames = message.get("frames") or []
        if self.held is not None:
            self.held.extend(frames)
            return
        for frame in frames:
            if not self._in_history(frame):
                self.send(frame)

    def release(self, *, history_ids: frozenset[int]) -> None:
        """Send what waited for the history, less the messages it holds."""
        self.history_ids = history_ids
        held, self.held = self.held or [], None
        for frame in held:
            if not self._in_history(frame):
                self.put((FRAME, frame))
        # Broadcasts trail their commits by milliseconds; the ids are not kept for good
        # (ten thousand idle sockets).
        asyncio.get_running_loop().call_later(HISTORY_OVERLAP_SECONDS, self._forget_history)

    def _in_history(self, frame: dict[str, Any]) -> bool:
        return (
            bool(self.history_ids) and frame.get("type") == "message" and frame.get("id") in self.history_ids
        )

    def _forget_history(self) -> None:
        self.history_ids = frozenset()


def _history(stream: Stream, recipient_id: int | None) -> tuple[list[dict[str, Any]], int, bool]:
    """(the history, the stream's slow mode now, whether the viewer moderates)."""
    messages = chat_history(stream_id=stream.id)
    slow = Stream.objects.filter(id=stream.id).values_list("slow_mode_seconds", flat=True).first() or 0
    return messages, slow, chat_may_moderate(stream=stream, recipient_id=recipient_id)


class StreamChatConsumer(RealtimeConsumer):
    layer_messages = frozenset({CHAT_FRAME})
    frame_types = ("message",)

    live: ChatConnection | None = None
    stream: Stream | None = None
    author: Any = None  # the poster's Recipient; None for a reader
    viewer = ""

    async def user_to_recipient(self, user: Any) -> int | None:
        return await database_sync_to_async(_recipient_id_for_user)(user)

    async def connect(self) -> None:
        """RealtimeConsumer.connect, but a socket without credentials opens as a reader."""
        self.closing = False
        self.send_timeout = settings.SOCKET_SEND_TIMEOUT_SECONDS
        stream = await database_sync_to_async(stream_by_key)(str(self.scope["url_route"]["kwargs"]["key"]))
        if stream is None:
            await self.close(code=CLOSE_NO_STREAM)
            return
        recipient_id, close_code = await socket_authenticate(
            self.scope, user_to_recipient=self.user_to_recipient
        )
        if recipient_id is None and (close_code != CLOSE_UNAUTHORIZED or query_token(self.scope) is not None):
            await self.close(code=close_code)
            return
        if recipient_id is not None:
            self.author = await database_sync_to_async(chat_author)(recipient_id=recipient_id)
            if self.author is None:
                await self.close(code=CLOSE_UNAUTHORIZED)
                return
        self.stream, self.recipient_id = stream, recipient_id
        self.live = ChatConnection(
            recipient_id=recipient_id or 0,
            layer=self.channel_layer,
            channel=self.channel_name,
            groups=[chat_group(stream.id)],
        )
        self.live.on_too_slow = self._close_too_slow
        # In the group before the history is read: nothing posted meanwhile is missed.
        await self.live.open()
        await self.accept()
        self.start_sending()
        messages, slow, moderator = await database_sync_to_async(_history)(stream, recipient_id)
        self.live.send(
            {"type": "history", "messages": messages, "slow_mode_seconds": slow, "moderator": moderator}
        )
        self.live.release(history_ids=frozenset(m["id"] for m in messages))
        # A reader counts once per socket: nothing tells two anonymous tabs apart.
        self.viewer = f"r{recipient_id}" if recipient_id is not None else f"a{self.channel_name}"
        try:
            count = await chat_viewer_join(
                stream_id=stream.id, viewer=self.viewer, connection=self.channel_name
            )
        except (redis.RedisError, OSError) as exc:
            log.warning("chat viewer of stream %s not counted: %s", stream.key, exc)
            self.viewer = ""
            return
        self.live.send({"type": "viewers", "count": count})

    async def disconnect(self, code: int) -> None:
        await super().disconnect(code)
        if self.stream is not None and self.viewer:
            viewer, self.viewer = self.viewer, ""
            try:
                await chat_viewer_leave(stream_id=self.stream.id, viewer=viewer, connection=self.channel_name)
            except (redis.RedisError, OSError) as exc:
                # Its entry expires on its own within VIEWERS_TTL_SECONDS.
                log.warning("chat viewer of stream %s not uncounted: %s", self.stream.key, exc)

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any
    ) -> None:
        if text_data is not None and _too_big(text_data):
            self.send_error("frame", f"A frame holds at most {FRAME_MAX_BYTES} bytes; this one was not read.")
            return
        await super().receive(text_data, bytes_data, **kwargs)

    @classmethod
    async def decode_json(cls, text_data: str) -> Any:
        try:
            return json.loads(text_data)
        except RecursionError as exc:
            # "[[[[..." within the size limit: refused like any malformed JSON.
            raise ValueError("nested too deeply") from exc

    async def handle_frame(self, frame_type: Any, content: dict[str, Any]) -> bool:
        if frame_type != "message":
            return False
        if "text" not in content:
            self.send_error(
                "text", "Missing: a message frame carries its text, {'type': 'message', 'text': ...}."
            )
            return True
        text = content["text"]
        if not isinstance(text, str):
            self.send_error("text", f"Expected a string, got {_json_type(text)}.")
            return True
        if self.author is None or self.stream is None:
            self.send_error("token", "Sign in to chat: this socket has no ?token= and reads only.")
            return True
        try:
            await database_sync_to_async(chat_post)(
                stream=self.stream, author_recipient=self.author, text=text
            )
        except ChatRefused as refused:
            self.send_error(refused.field, refused.message)
        return True

    def send_error(self, field: str, message: str) -> None:
        """``{"type": "error", "field", "message"}``."""
        if self.live is not None:
            self.live.send({"type": "error", "field": field, "message": message})
