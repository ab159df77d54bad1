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

State may also travel over a WebRTC data channel (gaming/services/rtc.py), signalled on
this socket with ``rtc.offer`` / ``rtc.answer`` / ``rtc.candidate``. While it is open, the
state frames go there instead, each a whole state or a delta from a ``base`` tick the
client said it has (``{"type": "seen", "tick"}`` on the channel), so a lost frame never
breaks the ones after it. Frames that cannot be lost (``end``, errors) stay on the socket,
and the socket carries state again, from a whole one, if the channel fails or the client
stops saying what it has seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import redis
from asgiref.sync import sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from gaming.models import MatchStatus
from gaming.modes.base import apply_delta, delta
from gaming.selectors import match_player
from gaming.services.inbound import signal_send
from gaming.services.placement import END_MESSAGE, TICK_MESSAGE
from gaming.services.rtc import SDP_MAX_BYTES, RtcRefused, StateChannel, rtc_unavailable_reason
from notifications.selectors import recipient_for_user
from realtime.auth import socket_authenticate
from realtime.hub import hub_add, hub_discard

log = logging.getLogger(__name__)

CLOSE_NOT_A_PLAYER = 4403
CLOSE_NO_MATCH = 4404
CLOSE_ENDED = 4000
CLOSE_UNAVAILABLE = 1013  # try again later
FRAME_MAX_BYTES = 2048
RTC_FRAME_MAX_BYTES = SDP_MAX_BYTES + 256  # an offer's SDP and the frame around it
QUEUE_MAX = 40  # two seconds of ticks at 20 Hz
REJOIN_EVERY_TICKS = 20
# The states sent on a data channel that a delta may start from (three seconds at 20 Hz).
RTC_KEPT_STATES = 60
# A channel whose client has said nothing for this many ticks is given up for the socket.
RTC_SILENT_TICKS = 60


def _recipient_id_for_user(user: Any) -> int | None:
    recipient = recipient_for_user(user=user)
    return recipient.id if recipient is not None else None


class MatchConsumer(AsyncWebsocketConsumer):
    """One player's match socket. It hears ticks from the hub, never the channel layer."""

    joined = False
    sender: asyncio.Task[None] | None = None
    rtc: StateChannel | None = None
    rtc_state: dict[str, Any] | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Channels' ``AsyncConsumer.__call__`` without a channel of the channel layer (a
        pub/sub subscription per socket, unused here) and without its task per event: the
        socket's events are dispatched in turn in this coroutine."""
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        with contextlib.suppress(StopConsumer):
            while True:
                await self.dispatch(await receive())

    async def dispatch(self, message: dict[str, Any]) -> None:
        # A frame touches no database: Channels' dispatch would first hop to a thread to
        # close old database connections, for every frame (aclose_old_connections).
        if message["type"] == "websocket.receive":
            await self.websocket_receive(message)
        else:
            await super().dispatch(message)

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
        self.outbox: asyncio.Queue[dict[str, Any] | str] = asyncio.Queue()
        self.has_state = False
        self.sent_tick = -1  # the tick of the last state frame on the socket
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
        self._signal("join")  # lost, it is asked again (_tick)

    async def disconnect(self, code: int) -> None:
        if not self.joined:
            return
        self.joined = False
        hub_discard(self)
        await self._rtc_close()
        if self.sender is not None:
            self.sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.sender
        self._signal("leave")

    def _signal(self, kind: str, frame: dict[str, Any] | None = None) -> None:
        """To the match's server, in the process's next batch (gaming/services/inbound.py)."""
        signal_send(self.match_id, kind, self.player, frame)

    # --- the player's frames ---------------------------------------------------------------

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any
    ) -> None:
        if text_data is None:
            self.error("frame", "send JSON text frames, not binary ones")
            return
        if len(text_data) > RTC_FRAME_MAX_BYTES:
            self.error(
                "frame",
                f"a frame holds at most {FRAME_MAX_BYTES} bytes ({RTC_FRAME_MAX_BYTES} for rtc.offer)",
            )
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
        if len(text_data) > FRAME_MAX_BYTES and kind != "rtc.offer":
            self.error(
                "frame",
                f"a frame holds at most {FRAME_MAX_BYTES} bytes ({RTC_FRAME_MAX_BYTES} for rtc.offer)",
            )
            return
        if kind == "ping":
            self.queue({"type": "pong"})
        elif kind == "input":
            if not self.joined:
                return
            self._signal("input", frame)
        elif kind == "rtc.offer":
            await self._rtc_offer(frame.get("sdp"))
        elif kind == "rtc.candidate":
            await self._rtc_candidate(frame)
        elif kind == "rtc.close":
            await self._rtc_close(fall_back=True)
        else:
            self.error(
                "type",
                f"unknown frame type {kind!r}; expected 'input', 'ping', 'rtc.offer', 'rtc.candidate' or 'rtc.close'",
            )

    def error(self, field: str, message: str) -> None:
        self.queue({"type": "error", "field": field, "message": message})

    # --- the data channel --------------------------------------------------------------------

    async def _rtc_offer(self, sdp: Any) -> None:
        unavailable = rtc_unavailable_reason()
        if unavailable is not None:
            self.queue({"type": "rtc.unavailable", "reason": unavailable})
            return
        await self._rtc_close()  # a new offer replaces a channel there was
        channel = StateChannel(on_message=self._rtc_message, on_closed=self._rtc_failed)
        try:
            answer = await channel.answer(sdp)
        except RtcRefused as refused:
            await channel.close()
            self.error(refused.field, refused.reason)
            return
        self.rtc = channel
        # The channel needs whole states to start from: ask for one, and keep it up to date.
        self.rtc_state = None
        self.rtc_tick = self.rtc_ack = -1
        self.rtc_sent: dict[int, dict[str, Any]] = {}
        self.rtc_base = -1
        self.rtc_silent = 0
        self.has_state = False
        self._signal("join")
        self.queue({"type": "rtc.answer", "sdp": answer})

    async def _rtc_candidate(self, frame: dict[str, Any]) -> None:
        if self.rtc is None:
            self.error("type", "rtc.candidate before rtc.offer")
            return
        try:
            await self.rtc.add_candidate(frame)
        except RtcRefused as refused:
            self.error(refused.field, refused.reason)

    def _rtc_message(self, text: str) -> None:
        """The client's ``{"type": "seen", "tick"}``: a state it holds, to build deltas from."""
        try:
            frame = json.loads(text)
            tick = int(frame["tick"]) if isinstance(frame, dict) and frame.get("type") == "seen" else -1
        except (ValueError, KeyError, TypeError):
            return
        if tick in self.rtc_sent and tick > self.rtc_base:
            self.rtc_base = tick
        self.rtc_silent = 0

    def _rtc_failed(self) -> None:
        self.rtc = None
        self._rtc_fall_back()

    def _rtc_fall_back(self) -> None:
        """The socket carries state again, starting from a whole one."""
        self.queue({"type": "rtc.closed"})
        if self.rtc_state is not None:
            self.queue({"type": "state", "tick": self.rtc_tick, "ack": self.rtc_ack, "state": self.rtc_state})
            self.has_state = True
            self.sent_tick = self.rtc_tick
        else:
            self.hub_resumed()
        self.rtc_state = None

    async def _rtc_close(self, *, fall_back: bool = False) -> None:
        channel, self.rtc = self.rtc, None
        if channel is not None:
            await channel.close()
            if fall_back:
                self._rtc_fall_back()

    def _rtc_tick(self, message: dict[str, Any], ack: int) -> bool:
        """Send this tick on the data channel; False if it goes on the socket instead."""
        channel = self.rtc
        if channel is None:
            return False
        tick = int(message["tick"])
        if self.player in message.get("full_for", ()) and "snapshot" in message:
            self.rtc_state = message["snapshot"]
        elif self.rtc_state is not None and tick == self.rtc_tick + 1:
            self.rtc_state = apply_delta(self.rtc_state, message["delta"])
        else:
            # No whole state yet, or a tick missed (a delta only follows its own previous
            # tick): wait for the whole state asked for; the socket waits too.
            if self.rtc_state is not None:
                self.rtc_state = None
                self.hub_resumed()
            return False
        self.rtc_tick, self.rtc_ack = tick, ack
        if not channel.open:
            return False  # still connecting: the socket carries state meanwhile
        self.rtc_silent += 1
        if self.rtc_silent > RTC_SILENT_TICKS:
            # Nothing heard for three seconds: the path is gone though ICE has not noticed.
            asyncio.ensure_future(self._rtc_close(fall_back=True))
            return True
        frame: dict[str, Any] = {"type": "state", "tick": tick, "ack": ack}
        base = self.rtc_sent.get(self.rtc_base)
        if base is not None:
            frame["base"] = self.rtc_base
            frame["delta"] = delta(base, self.rtc_state)
        else:
            frame["state"] = self.rtc_state
        self.rtc_sent[tick] = self.rtc_state
        for old in [t for t in self.rtc_sent if t <= tick - RTC_KEPT_STATES]:
            del self.rtc_sent[old]
        channel.send(json.dumps(frame, separators=(",", ":")))
        return True

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
        ack = message["acks"].get(self.player, 0)
        if self.rtc is not None and self._rtc_tick(message, ack):
            return
        tick = int(message["tick"])
        frame: dict[str, Any] = {"type": "state", "tick": tick, "ack": ack}
        if self.player in message.get("full_for", ()) and "snapshot" in message:
            frame["state"] = message["snapshot"]
            self.has_state = True
        elif self.has_state and tick != self.sent_tick + 1:
            # A tick never came (a publish lost): a delta only follows its own previous tick.
            self.hub_resumed()
            return
        elif self.has_state:
            # Every player of the match gets the same delta: encoded once per process (the
            # hub lets receivers keep what they derive under an underscore key).
            encoded = message.get("_delta_json")
            if encoded is None:
                encoded = message["_delta_json"] = json.dumps(message["delta"], separators=(",", ":"))
            self.queue(f'{{"type":"state","tick":{tick},"ack":{int(ack)},"delta":{encoded}}}')
            self.sent_tick = tick
            return
        else:
            # Our join has not reached the server yet (or was lost): ask again now and then.
            self.ticks_without_state += 1
            if self.ticks_without_state % REJOIN_EVERY_TICKS == 1:
                self._signal("join")
            return
        self.queue(frame)
        self.sent_tick = tick

    def hub_resumed(self) -> None:
        """Ticks may have been lost: start again from a whole snapshot."""
        self.has_state = False
        self.rtc_state = None
        self._signal("join")

    def queue(self, frame: dict[str, Any] | str) -> None:
        """Queue a frame for the socket: a dict, or one already encoded (a state delta)."""
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
                    await self.send(
                        frame if isinstance(frame, str) else json.dumps(frame, separators=(",", ":"))
                    )
            except TimeoutError:
                await self.close(code=4008)
                return
            if isinstance(frame, dict) and frame["type"] == "end":
                await self.close(code=CLOSE_ENDED)
                return
