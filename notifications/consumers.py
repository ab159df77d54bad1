"""The live inbox over a websocket (``/ws/inbox/``), on the shared socket plumbing
(realtime/consumers.py: authentication, heartbeat, the bounded queue and the slow-client
cut-off, ``ping`` and ``activity``). Sequencing lives in services/live_inbox.py, shared
with the SSE stream (views.py); this consumer says who a logged-in user is, handles
``resume`` and the presence subscriptions, and announces its user's presence changes.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from channels.db import database_sync_to_async
from django.conf import settings

from notifications import selectors
from notifications.services.live_inbox import LiveInbox
from notifications.services.validation import EXTERNAL_ID_MAX
from presence.services import PRESENCE_CHANGE, presence_announce, presence_changes, presence_of
from presence.typing import ROOM_MAX, TYPING_CHANGE
from realtime.consumers import RealtimeConsumer

log = logging.getLogger(__name__)


def _parse_after(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _recipient_id_for_user(user: Any) -> int | None:
    recipient = selectors.recipient_for_user(user=user)
    return recipient.id if recipient is not None else None


def _external_ids(value: Any) -> list[str] | str:
    """The frame's ``recipients`` as a list of external_ids, or what is wrong with it."""
    if not isinstance(value, list) or not value:
        return f"Expected a non-empty list of external_ids, got {value!r}."
    if len(value) > settings.PRESENCE_WATCH_MAX:
        return f"At most {settings.PRESENCE_WATCH_MAX} external_ids, got {len(value)}."
    wrong = [item for item in value if not isinstance(item, str) or not 0 < len(item) <= EXTERNAL_ID_MAX]
    if wrong:
        return f"Expected external_ids (text of 1 to {EXTERNAL_ID_MAX} characters), got {wrong[0]!r}."
    return list(dict.fromkeys(value))


def _external_id(recipient_id: int) -> str:
    return selectors.recipient_external_id(recipient_id=recipient_id)


def _watchable(external_ids: list[str]) -> tuple[dict[int, str], list[str]]:
    """(recipient id -> external_id, the unknown external_ids)."""
    ids = selectors.recipient_ids_by_external_id(external_ids=external_ids)
    return {rid: external_id for external_id, rid in ids.items()}, [x for x in external_ids if x not in ids]


class InboxConsumer(RealtimeConsumer):
    """``/ws/inbox/``: the live inbox of one recipient. Client frames besides ``ping`` and
    ``activity``: ``{"type": "resume", "after": n}`` (every item after seq n, in order),
    ``{"type": "presence.subscribe" | "presence.unsubscribe", "recipients": [...]}``,
    ``{"type": "typing", "room": key}`` (optionally ``"state": "stopped"``; repeat it every
    few seconds while typing) and ``{"type": "typing.subscribe" | "typing.unsubscribe",
    "room": key}`` (presence/typing.py)."""

    # What the channel layer sends an inbox socket: the changes of presence of whom it
    # watches (presence/services.py) and typing. The inbox's own frames come through the
    # process's hub straight to the live connection (services/realtime.py).
    layer_messages = frozenset({PRESENCE_CHANGE, TYPING_CHANGE})
    frame_types = (
        "resume",
        "presence.subscribe",
        "presence.unsubscribe",
        "typing",
        "typing.subscribe",
        "typing.unsubscribe",
    )

    live: LiveInbox | None = None

    async def user_to_recipient(self, user: Any) -> int | None:
        return await database_sync_to_async(_recipient_id_for_user)(user)

    def live_connection(self, recipient_id: int) -> LiveInbox:
        # A client resumes with a frame right after connecting; an item that arrived first
        # would overtake the items before it (sent before them) or come twice. Live items
        # wait for the client's first frame, at most INBOX_RESUME_WAIT_SECONDS.
        return LiveInbox(
            recipient_id=recipient_id,
            layer=self.channel_layer,
            channel=self.channel_name,
            hold_seconds=settings.INBOX_RESUME_WAIT_SECONDS,
        )

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        await super().receive_json(content, **kwargs)
        if self.live is not None:
            self.live.release_held()

    async def handle_frame(self, frame_type: Any, content: dict[str, Any]) -> bool:
        if self.live is None:
            return False
        if frame_type == "resume":
            after = _parse_after(content.get("after"))
            if after is None:
                self.send_error("after", f"Expected a non-negative integer, got {content.get('after')!r}.")
            else:
                self.live.resume(after=after)
        elif frame_type in ("presence.subscribe", "presence.unsubscribe"):
            await self._presence_frame(frame_type, content.get("recipients"))
        elif frame_type in ("typing", "typing.subscribe", "typing.unsubscribe"):
            await self._typing_frame(frame_type, content)
        else:
            return False
        return True

    async def _typing_frame(self, frame_type: str, content: dict[str, Any]) -> None:
        assert self.live is not None
        room = content.get("room")
        if not isinstance(room, str) or not 0 < len(room) <= ROOM_MAX:
            self.send_error(
                "room", f"Expected a room key (text of 1 to {ROOM_MAX} characters), got {room!r}."
            )
            return
        try:
            if frame_type == "typing.unsubscribe":
                await self.live.unwatch_typing(room)
            elif frame_type == "typing.subscribe":
                if (
                    room not in self.live.typing_watching
                    and len(self.live.typing_watching) >= settings.TYPING_WATCH_MAX
                ):
                    self.send_error("room", f"A socket watches at most {settings.TYPING_WATCH_MAX} rooms.")
                    return
                await self.live.watch_typing(room)
            else:
                state = content.get("state", "typing")
                if state not in ("typing", "stopped"):
                    self.send_error("state", f"Expected 'typing' or 'stopped', got {state!r}.")
                    return
                if self.live.label is None:
                    self.live.label = await database_sync_to_async(_external_id)(self.live.recipient_id)
                await self.live.typing(room, typing=state == "typing")
        except redis.RedisError as exc:
            self.send_error("room", f"Typing indicators are unavailable right now (Redis: {exc}).")

    async def _presence_frame(self, frame_type: str, recipients: Any) -> None:
        assert self.live is not None
        external_ids = _external_ids(recipients)
        if isinstance(external_ids, str):
            self.send_error("recipients", external_ids)
            return
        if frame_type == "presence.unsubscribe":
            by_external = {x: rid for rid, x in self.live.watching.items()}
            await self.live.unwatch([by_external[x] for x in external_ids if x in by_external])
            return
        people, unknown = await database_sync_to_async(_watchable)(external_ids)
        if unknown:
            self.send_error(
                "recipients", f"No recipient with external_id {', '.join(map(repr, unknown[:10]))}."
            )
            return
        if len(set(self.live.watching) | set(people)) > settings.PRESENCE_WATCH_MAX:
            self.send_error(
                "recipients", f"A socket watches at most {settings.PRESENCE_WATCH_MAX} recipients."
            )
            return
        await self.live.watch(people)
        try:
            current = await database_sync_to_async(presence_of)(people)
        except redis.RedisError as exc:
            self.send_error(
                "recipients", f"Presence is unavailable right now (Redis: {exc}); changes will follow."
            )
            return
        self.live.send_presence(people, current)

    async def presence_changed(self) -> None:
        if self.recipient_id is None:
            return
        try:
            changes = await database_sync_to_async(presence_changes)([self.recipient_id])
            if changes:
                await presence_announce(self.channel_layer, changes)
        except redis.RedisError as exc:
            # Watchers miss this change; the sweep announces it once Redis answers again.
            log.warning("presence change not announced: %s", exc)
