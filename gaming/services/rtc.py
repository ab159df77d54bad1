"""Match state over a WebRTC data channel: unreliable and unordered, so a lost state frame is
simply superseded by the next one instead of holding back the ones behind it, as a lost TCP
segment holds back a websocket (docs/gaming.md, "State over WebRTC").

The match socket (gaming/consumers.py) is the signalling path: the browser sends
``{"type": "rtc.offer", "sdp"}`` (its offer holds a data channel, ``negotiated`` with id 0,
and, having waited for gathering, its candidates), the web process answers with
``{"type": "rtc.answer", "sdp"}`` and may take trickled ``rtc.candidate`` frames. Both ends
open the same negotiated channel; this end sends with ``ordered=False, maxRetransmits=0``.
The channel lives in the web process that holds the player's socket, beside it: the socket
stays open for inputs, the end of the match, errors, and as the fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp
from django.conf import settings

log = logging.getLogger(__name__)

CHANNEL_LABEL = "state"
CHANNEL_ID = 0
SDP_MAX_BYTES = 16_384
# Past this much waiting in the channel's send buffer, a frame is dropped: the next one
# supersedes it, and queueing behind a congested path is what the channel is for avoiding.
BUFFERED_MAX_BYTES = 64 * 1024

_open_channels = 0


class RtcRefused(Exception):
    """A signalling frame this end cannot take; ``field`` names what is wrong."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def rtc_unavailable_reason() -> str | None:
    """Why this process takes no data channel now (off, or full), or None."""
    if not settings.GAMING_RTC:
        return "WebRTC is off on this server (GAMING_RTC)"
    if _open_channels >= settings.GAMING_RTC_MAX_CHANNELS:
        return "this server holds as many data channels as it may (GAMING_RTC_MAX_CHANNELS)"
    return None


def ice_servers() -> list[dict[str, str]]:
    """The STUN/TURN servers both ends gather with, as the browser's RTCPeerConnection takes them."""
    return [{"urls": url} for url in settings.GAMING_RTC_ICE_SERVERS]


class StateChannel:
    """One player's data channel. ``on_message(text)`` is called with what the client sends
    on it (its ``seen`` acknowledgements), ``on_closed()`` once, when the connection fails
    or closes (not when ``close`` is called)."""

    def __init__(self, *, on_message: Callable[[str], None], on_closed: Callable[[], None]) -> None:
        global _open_channels
        configuration = RTCConfiguration(
            iceServers=[RTCIceServer(urls=url) for url in settings.GAMING_RTC_ICE_SERVERS]
        )
        self.pc = RTCPeerConnection(configuration)
        self.channel = self.pc.createDataChannel(
            CHANNEL_LABEL, negotiated=True, id=CHANNEL_ID, ordered=False, maxRetransmits=0
        )
        self.closed = False
        self.sent = 0
        self.dropped = 0
        self._on_closed = on_closed
        _open_channels += 1

        @self.channel.on("message")
        def _message(message: Any) -> None:
            if isinstance(message, str):
                on_message(message)

        @self.pc.on("connectionstatechange")
        async def _state() -> None:
            if self.pc.connectionState in ("failed", "closed") and not self.closed:
                await self.close()
                self._on_closed()

    @property
    def open(self) -> bool:
        return not self.closed and self.channel.readyState == "open"

    async def answer(self, offer: Any) -> str:
        """Take the client's offer; return this end's answer (candidates included: aiortc
        gathers before it returns). Raises ``RtcRefused`` naming ``sdp``."""
        if not isinstance(offer, str) or not offer.strip():
            raise RtcRefused("sdp", "expected the offer's SDP as a string")
        if len(offer) > SDP_MAX_BYTES:
            raise RtcRefused("sdp", f"an offer holds at most {SDP_MAX_BYTES} bytes")
        if "m=application" not in offer:
            raise RtcRefused("sdp", "the offer has no data channel (no m=application section)")
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            await self.pc.setLocalDescription(await self.pc.createAnswer())
        except Exception as error:  # aiortc's SDP parser also asserts: any failure is the offer's
            raise RtcRefused("sdp", f"the offer could not be used: {error or 'malformed SDP'}") from None
        description = self.pc.localDescription
        if description is None:  # pragma: no cover - set just above
            raise RtcRefused("sdp", "no answer could be made")
        return str(description.sdp)

    async def add_candidate(self, frame: dict[str, Any]) -> None:
        """A trickled ``rtc.candidate`` frame: ``candidate`` (an SDP ``candidate:`` line, or
        empty at the end of gathering), ``sdpMid``, ``sdpMLineIndex``."""
        text = frame.get("candidate")
        if not isinstance(text, str) or len(text) > 1024:
            raise RtcRefused("candidate", "expected an ICE candidate line (a string of at most 1024 bytes)")
        if not text:
            return  # end of candidates: nothing to do for a full-gathering answerer
        try:
            candidate = candidate_from_sdp(text.removeprefix("candidate:"))
        except Exception as error:  # the parser indexes and asserts: any failure is the line's
            raise RtcRefused("candidate", f"not an ICE candidate line: {error or 'malformed'}") from None
        mid = frame.get("sdpMid")
        index = frame.get("sdpMLineIndex")
        candidate.sdpMid = mid if isinstance(mid, str) else None
        candidate.sdpMLineIndex = index if isinstance(index, int) else None
        if candidate.sdpMid is None and candidate.sdpMLineIndex is None:
            raise RtcRefused("sdpMid", "a candidate names its media section (sdpMid or sdpMLineIndex)")
        try:
            await self.pc.addIceCandidate(candidate)
        except (ValueError, KeyError) as error:
            raise RtcRefused("candidate", f"the candidate could not be used: {error}") from None

    def send(self, text: str) -> bool:
        """Send one frame if the channel is open and not backed up; False if it was not sent."""
        if not self.open or self.channel.bufferedAmount > BUFFERED_MAX_BYTES:
            self.dropped += 1
            return False
        self.channel.send(text)
        self.sent += 1
        return True

    async def close(self) -> None:
        global _open_channels
        if self.closed:
            return
        self.closed = True
        _open_channels -= 1
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await self.pc.close()
