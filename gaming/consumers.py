"""The match socket, ``/ws/matches/{id}/?token=``: a player's way into their match,
whichever match server holds it (gaming/services/server.py).

Only the match's players get in (anyone else is refused before the upgrade: 4403; no such
match: 4404). The socket tells the server the player joined (the server's next tick
brings the whole snapshot), passes each ``{"type": "input", "seq", ...}`` on, and sends
the player every tick as ``{"type": "state", "tick", "ack", "state" | "delta"}`` and the
end as ``{"type": "end", "result" | "aborted"}``. A malformed frame is answered with an
error naming the field and changes nothing. A client that falls behind has its queued
deltas dropped and gets a fresh snapshot instead: a state frame supersedes the ones
before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import redis
from asgiref.sync import sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from gaming.models import MatchStatus
from gaming.selectors import match_player
from gaming.services.placement import END_MESSAGE, TICK_MESSAGE, inbound_channel
from notifications.selectors import recipient_for_user
from realtime.auth import socket_authenticate
from realtime.hub import hub_add, hub_discard
from realtime.redis_client import redis_async

log = logging.getLogger(__name__)

CLOSE_NOT_A_PLAYER = 4403
CLOSE_NO_MATCH = 4404
CLOSE_ENDED = 4000
CLOSE_UNAVAILABLE = 1013  # try again later
FRAME_MAX_BYTES = 2048
QUEUE_MAX = 40  # two seconds of ticks at 20 Hz
REJOIN_EVERY_TICKS = 20


def _recipient_id_for_user(user: Any) -> int | None:
    recipient = recipient_for_user(user=user)
    return recipient.id if recipient is not None else None


class MatchConsumer(AsyncWebsocketConsumer):
    joined = False
    sender: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        recipient_id, close_code = await socket_authenticate(
            self.scope, user_to_recipient=sync_to_async(_recipient_id_for_user)
        )
        if recipient_id is None:
            await self.close(code=close_code)
            return
        self.match_id = str(self.scope["url_route"]["kwargs"]["match_id"])
        seat = await sync_to_async(match_player)(match_id=self.match_id, recipient_id=recipient_id)
        if seat is None:
            await self.close(code=CLOSE_NO_MATCH)
            return
        status, player = seat
        if player is None:
            await self.close(code=CLOSE_NOT_A_PLAYER)
            return
        self.recipient_id, self.player = recipient_id, player
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.has_state = False
        self.ticks_without_state = 0
        if status not in (MatchStatus.ASSIGNED, MatchStatus.RUNNING):
            await self.accept()
            await self.send(json.dumps({"type": "end", "status": status}))
            await self.close(code=CLOSE_ENDED)
            return
        # In the hub before the socket opens: nothing published after the client saw it
        # open is missed.
        try:
            await hub_add(self)
        except (redis.RedisError, OSError) as error:
            log.warning("match socket refused: no live subscription (%s)", error)
            await self.close(code=CLOSE_UNAVAILABLE)
            return
        self.joined = True
        await self.accept()
        self.sender = asyncio.create_task(self._send_queued())
        with contextlib.suppress(redis.RedisError, OSError):
            await self._signal("join")  # lost, it is asked again (_tick)

    async def disconnect(self, code: int) -> None:
        if not self.joined:
            return
        self.joined = False
        hub_discard(self)
        if self.sender is not None:
            self.sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.sender
        with contextlib.suppress(redis.RedisError, OSError):
            await self._signal("leave")

    async def _signal(self, kind: str, frame: dict[str, Any] | None = None) -> None:
        body: dict[str, Any] = {"kind": kind, "player": self.player}
        if frame is not None:
            body["frame"] = frame
        await redis_async().publish(inbound_channel(self.match_id), json.dumps(body, separators=(",", ":")))

    # --- the player's frames ---------------------------------------------------------------

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any
    ) -> None:
        if text_data is None:
            self.error("frame", "send JSON text frames, not binary ones")
            return
        if len(text_data) > FRAME_MAX_BYTES:
            self.error("frame", f"a frame holds at most {FRAME_MAX_BYTES} bytes")
            return
        try:
            frame = json.loads(text_data)
        except ValueError:
            self.error("frame", "expected a JSON object, got text that is not JSON")
            return
        if not isinstance(frame, dict):
            self.error("frame", f"expected a JSON object, got {type(frame).__name__}")
            return
        kind = frame.get("type")
        if kind == "ping":
            self.queue({"type": "pong"})
        elif kind == "input":
            if not self.joined:
                return
            try:
                await self._signal("input", frame)
            except (redis.RedisError, OSError):
                self.error("service", "the match is unreachable for a moment; send again")
        else:
            self.error("type", f"unknown frame type {kind!r}; expected 'input' or 'ping'")

    def error(self, field: str, message: str) -> None:
        self.queue({"type": "error", "field": field, "message": message})

    # --- from the hub: queue and return, never await --------------------------------------

    def deliver(self, message: dict[str, Any]) -> None:
        if message.get("match") != self.match_id:
            return
        kind = message.get("type")
        if kind == TICK_MESSAGE:
            self._tick(message)
        elif kind == END_MESSAGE:
            self.queue(
                {
                    "type": "end",
                    "result": message.get("result"),
                    "aborted": bool(message.get("aborted")),
                    "reason": message.get("reason", ""),
                }
            )

    def _tick(self, message: dict[str, Any]) -> None:
        frame: dict[str, Any] = {
            "type": "state",
            "tick": message["tick"],
            "ack": message["acks"].get(self.player, 0),
        }
        if self.player in message.get("full_for", ()) and "snapshot" in message:
            frame["state"] = message["snapshot"]
            self.has_state = True
        elif self.has_state:
            frame["delta"] = message["delta"]
        else:
            # Our join has not reached the server yet (or was lost): ask again now and then.
            self.ticks_without_state += 1
            if self.ticks_without_state % REJOIN_EVERY_TICKS == 1:
                asyncio.ensure_future(self._signal("join"))
            return
        self.queue(frame)

    def hub_resumed(self) -> None:
        """Ticks may have been lost: start again from a whole snapshot."""
        self.has_state = False
        asyncio.ensure_future(self._signal("join"))

    def queue(self, frame: dict[str, Any]) -> None:
        if not hasattr(self, "outbox"):
            return
        if self.outbox.qsize() >= QUEUE_MAX:
            # Behind by two seconds: drop what waits and start again from a snapshot.
            while not self.outbox.empty():
                self.outbox.get_nowait()
            self.hub_resumed()
        self.outbox.put_nowait(frame)

    async def _send_queued(self) -> None:
        timeout = settings.SOCKET_SEND_TIMEOUT_SECONDS
        while True:
            frame = await self.outbox.get()
            try:
                async with asyncio.timeout(timeout):
                    await self.send(json.dumps(frame, separators=(",", ":")))
            except TimeoutError:
                await self.close(code=4008)
                return
            if frame["type"] == "end":
                await self.close(code=CLOSE_ENDED)
                return
