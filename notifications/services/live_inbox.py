"""One live inbox connection, whatever carries it (the websocket consumer or the SSE
stream): a live connection (realtime/connection.py: the recipient's channel-layer group,
the registration, the bounded queue and the slow-client cut-off) that sends each inbox
item once and in seq order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Callable
from typing import Any

import redis
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from notifications import selectors
from notifications.services.inbox import inbox_item_payload
from notifications.services.realtime import (
    APP_FRAME_MESSAGE,
    ITEM_MESSAGE,
    NOTIFICATIONS_MESSAGE,
    READ_ALL_MESSAGE,
    UNREAD_MESSAGE,
)
from presence.services import PRESENCE_CHANGE, Presence, presence_group
from presence.typing import (
    TYPING_CHANGE,
    typing_announce,
    typing_expire_later,
    typing_group,
    typing_now,
    typing_set,
)
from realtime.connection import FRAME, ConnectionTooSlow, LiveConnection

log = logging.getLogger(__name__)

RESUME_PAGE_SIZE = selectors.INBOX_PAGE_MAX
# Queue entries of the inbox's own kinds (realtime/connection.py's FRAME besides).
_RESUME = "resume"
_NOTIFICATION = "notification"


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


class LiveInbox(LiveConnection):
    """The live side of one inbox connection: ``open()`` also queues the current unread
    count; ``deliver()`` takes the inbox's channel-layer messages; ``resume()`` a client's
    request for every item after a seq."""

    def __init__(
        self,
        *,
        recipient_id: int,
        layer: Any,
        channel: str,
        queue_limit: int | None = None,
        on_too_slow: Callable[[], None] | None = None,
        hold_seconds: float = 0.0,
    ) -> None:
        super().__init__(
            recipient_id=recipient_id,
            layer=layer,
            channel=channel,
            queue_limit=queue_limit,
            on_too_slow=on_too_slow,
        )
        self.sequencer = InboxSequencer(recipient_id=recipient_id)
        # Presence this connection watches: recipient id -> external_id (the frames' key),
        # and the changes gathered for the next presence frame.
        self.watching: dict[int, str] = {}
        self._changes: dict[str, dict[str, Any]] = {}
        self._flush: asyncio.Task[None] | None = None
        # Typing: the rooms watched, and the rooms this connection types in, each with the
        # task that announces the room again when the indicator runs out.
        self.typing_watching: set[str] = set()
        self._typing: dict[str, asyncio.Task[None]] = {}
        self.label: str | None = None  # how this user is named in typing frames
        # What arrives before the client said where it stands (``hold_seconds``), and the
        # timer that lets it through anyway.
        self._held: list[dict[str, Any]] | None = None
        self._hold_timer: asyncio.TimerHandle | None = None
        if hold_seconds > 0:
            self._held = []
            self._hold_timer = asyncio.get_running_loop().call_later(hold_seconds, self.release_held)

    async def open(self) -> None:
        await super().open()
        count = await database_sync_to_async(selectors.inbox_unread_count)(recipient_id=self.recipient_id)
        self.send({"type": "unread_count", "count": count})

    async def close(self) -> None:
        if self._hold_timer is not None:
            self._hold_timer.cancel()
        if self._flush is not None:
            self._flush.cancel()
        # Whoever watches the rooms this connection typed in stops seeing it at once.
        for room in list(self._typing):
            with contextlib.suppress(redis.RedisError, OSError):
                await self.typing(room, typing=False)
        await super().close()

    # --- typing ------------------------------------------------------------------------

    async def typing(self, room: str, *, typing: bool = True) -> None:
        """This connection's user types in ``room`` (or stopped); the room's watchers get
        the new list when it changed, and again when the indicator runs out."""
        assert self.label is not None, "typing needs the connection's label"
        changed, typers = await typing_set(room, self.label, typing=typing)
        expiring = self._typing.pop(room, None)
        if expiring is not None:
            expiring.cancel()
        if typing:
            self._typing[room] = asyncio.create_task(typing_expire_later(self.layer, room))
        if changed:
            await typing_announce(self.layer, room, typers)

    async def watch_typing(self, room: str) -> None:
        """Watch who types in ``room``: who does now at once, then every change."""
        self.typing_watching.add(room)
        await self.join(typing_group(room))
        typers = await typing_now(room)
        self.send(
            {"type": "typing", "room": room, "recipients": typers, "expires_in": settings.TYPING_SECONDS}
        )

    async def unwatch_typing(self, room: str) -> None:
        if room in self.typing_watching:
            self.typing_watching.discard(room)
            await self.leave(typing_group(room))

    # --- presence ------------------------------------------------------------------------

    async def watch(self, people: dict[int, str]) -> None:
        """Watch these recipients (id -> external_id): every change of their presence from
        now on goes out in batched frames (presence/services.py). The caller then sends
        their presence now (``send_presence``): read after joining, so no change can fall
        between the two."""
        for rid, external_id in people.items():
            self.watching[rid] = external_id
            await self.join(presence_group(rid))

    def send_presence(self, people: dict[int, str], current: dict[int, Presence]) -> None:
        self.send({"type": "presence", "changes": {people[rid]: _presence(current[rid]) for rid in people}})

    async def unwatch(self, recipient_ids: list[int]) -> None:
        for rid in recipient_ids:
            if self.watching.pop(rid, None) is not None:
                await self.leave(presence_group(rid))

    async def _flush_later(self) -> None:
        await asyncio.sleep(settings.PRESENCE_BATCH_SECONDS)
        changes, self._changes, self._flush = self._changes, {}, None
        if changes:
            self.send({"type": "presence", "changes": changes})

    # --- what arrives ----------------------------------------------------------------------

    def release_held(self) -> None:
        """The client spoke (or the hold ran out): what arrived meanwhile goes on, after
        whatever the client asked for (a resume queued first sends each item once, in
        order)."""
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
        held, self._held = self._held, None
        for message in held or ():
            self.deliver(message)

    def deliver(self, message: dict[str, Any]) -> None:
        """A message for this recipient from the process hub (services/realtime.py), or a
        change of presence or typing it watches. Until the client spoke, held (see
        ``hold_seconds`` of the websocket, notifications/consumers.py)."""
        if self._held is not None:
            self._held.append(message)
            return
        if message.get("type") == TYPING_CHANGE:
            if message["room"] in self.typing_watching:
                frame = {key: message[key] for key in ("room", "recipients", "expires_in")}
                self.put((FRAME, {"type": "typing", **frame}))
        elif message.get("type") == PRESENCE_CHANGE:
            external_id = self.watching.get(message["recipient"])
            if external_id is not None and not self.closed:
                self._changes[external_id] = {"status": message["status"], "last_seen": message["last_seen"]}
                if self._flush is None:
                    self._flush = asyncio.create_task(self._flush_later())
        elif message.get("type") == NOTIFICATIONS_MESSAGE:
            # New items of many recipients, reading the same (services/inbox.py _push_frames).
            key = str(self.recipient_id)
            rows = message["rows"].get(key)
            if not rows:
                return
            unread = message["unread"].get(key)  # the count after them, when given
            if self._in_order(rows) and self.write_now(_notification_texts(message, rows, unread)):
                self.sequencer.last_sent_seq = rows[-1][1]
                return
            shared = message["item"]
            for item_id, seq in rows:
                self.put((_NOTIFICATION, seq, {**shared, "id": item_id, "seq": seq}))
            if unread is not None:
                self.put((FRAME, {"type": "unread_count", "count": unread}))
        elif message.get("type") == UNREAD_MESSAGE:
            self.send({"type": "unread_count", "count": message["count"]})
        elif message.get("type") == ITEM_MESSAGE:
            # An item changed elsewhere (another tab or device, or a snooze ran out).
            self.send({"type": "item", "item": message["item"]})
            self.send({"type": "unread_count", "count": message["unread"]})
        elif message.get("type") == APP_FRAME_MESSAGE:
            self.send(message["frame"])
        elif message.get("type") == READ_ALL_MESSAGE:
            self.send({"type": "read_all", "up_to_seq": message["up_to_seq"], "read_at": message["read_at"]})
            self.send({"type": "unread_count", "count": message["unread"]})

    def _in_order(self, rows: list[list[int]]) -> bool:
        """Whether the items (id, seq) follow the last one sent with no gap (or nothing was
        sent yet, and the client asked for no baseline): they can then go out as they
        are, with no look at the database (InboxSequencer.live)."""
        last = self.sequencer.last_sent_seq
        for _item_id, seq in rows:
            if last is not None and seq != last + 1:
                return False
            last = seq
        return True

    def resume(self, *, after: int) -> None:
        """The client asks for every item after seq ``after``."""
        self.put((_RESUME, after))

    def hub_resumed(self) -> None:
        """Frames published while the process's hub was not subscribed were lost: send the
        items after the last one sent (none sent and none asked for yet: the client has not
        said where it stands, so there is nothing to resume from)."""
        if self.sequencer.last_sent_seq is not None:
            self.resume(after=self.sequencer.last_sent_seq)

    async def expand(self, entry: tuple[Any, ...]) -> AsyncGenerator[dict[str, Any], None]:
        if entry[0] == _RESUME:
            items = self.sequencer.resume(after=entry[1])
        else:
            items = self.sequencer.live(seq=entry[1], item=entry[2])
        async with contextlib.aclosing(items):
            async for seq, item in items:
                yield {"type": "notification", "seq": seq, "item": item}


def _notification_texts(message: dict[str, Any], rows: list[list[int]], unread: int | None) -> list[str]:
    """The encoded frames of a recipient's new items and unread count: the item every
    recipient shares is encoded once per process (kept in the message), each frame adds
    its id and seq to it."""
    shared = message.get("_shared_json")
    if shared is None:
        shared = json.dumps({k: v for k, v in message["item"].items() if k not in ("id", "seq")})[1:-1]
        message["_shared_json"] = shared
    texts = [
        f'{{"type": "notification", "seq": {seq}, "item": {{"id": {item_id}, "seq": {seq}, {shared}}}}}'
        for item_id, seq in rows
    ]
    if unread is not None:
        texts.append(f'{{"type": "unread_count", "count": {unread}}}')
    return texts


def _presence(presence: Presence) -> dict[str, Any]:
    return {
        "status": presence.status,
        "last_seen": presence.last_seen.isoformat() if presence.last_seen else None,
    }


async def inbox_wait(*, recipient_id: int, after: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for an inbox item with seq > ``after`` (the long-poll
    of api/inbox.py): True as soon as one exists. The wait is a live connection of its
    own, registered and in the recipient's group, so dispatch publishes to it and the user
    counts as connected; the stored items are read after joining, so an item committed
    just before cannot be missed. A channel layer that does not answer ends the wait
    early (the poller asks again)."""
    layer = get_channel_layer()
    assert layer is not None, "CHANNEL_LAYERS is not configured"
    live = LiveInbox(recipient_id=recipient_id, layer=layer, channel=await layer.new_channel())

    async def first_item() -> bool:
        async for frame in live.frames():
            if frame is not None and frame["type"] == "notification":
                return True
        return False  # pragma: no cover - frames() never ends by itself

    try:
        await live.open()
        live.listen()
        live.resume(after=after)
        return await asyncio.wait_for(first_item(), timeout=timeout)
    except TimeoutError:
        return False
    except (redis.RedisError, ConnectionTooSlow, OSError) as exc:
        log.warning("inbox long-poll wait ended early: %s", exc)
        return False
    finally:
        await live.close()
