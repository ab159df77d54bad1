"""State over a WebRTC data channel (gaming/services/rtc.py, gaming/consumers.py), with a
real aiortc peer as the client, signalled over a real match socket while the match server
runs on a thread: the channel carries whole states and then deltas from a tick the client
said it has seen, the socket stops carrying state meanwhile and carries it again (from a
whole state) when the client closes the channel or stops acknowledging; bad signalling is
answered naming the field."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator

from gaming import consumers
from gaming.modes.base import apply_delta
from project.processes.waiting import wait_until
from tests.gaming.test_match_server import TIMEOUT, ServerThread, frame_of, match_socket, matched

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("empty_board")]


class ChannelClient:
    """What a browser does: a negotiated, unordered, unreliable channel with id 0 in its
    offer; whole states and deltas rebuilt by tick; every state acknowledged with ``seen``."""

    def __init__(self, socket: WebsocketCommunicator, *, acknowledge: bool = True) -> None:
        self.socket = socket
        self.acknowledge = acknowledge
        self.pc = RTCPeerConnection()
        self.channel = self.pc.createDataChannel(
            "state", negotiated=True, id=0, ordered=False, maxRetransmits=0
        )
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.states: dict[int, dict[str, Any]] = {}
        self.channel.on("message", lambda text: self.frames.put_nowait(json.loads(text)))

    async def offer(self) -> None:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        await self.socket.send_json_to({"type": "rtc.offer", "sdp": self.pc.localDescription.sdp})
        answer = await frame_of(self.socket, "rtc.answer")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))

    async def next_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The next frame on the channel and the whole state it stands for."""
        frame = await asyncio.wait_for(self.frames.get(), TIMEOUT)
        assert frame["type"] == "state"
        if "state" in frame:
            state = frame["state"]
        else:
            assert frame["base"] in self.states, "a delta from a state never seen"
            state = apply_delta(self.states[frame["base"]], frame["delta"])
        self.states[frame["tick"]] = state
        if self.acknowledge:
            self.channel.send(json.dumps({"type": "seen", "tick": frame["tick"]}))
        return frame, state

    async def close(self) -> None:
        await self.pc.close()


async def socket_states(socket: WebsocketCommunicator, seconds: float) -> list[dict[str, Any]]:
    """The state frames the socket carries over ``seconds`` (``receive_nothing`` polls
    without the timeout that would cancel the application)."""
    frames: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        if await socket.receive_nothing(timeout=0.05):
            continue
        frame = await socket.receive_json_from(timeout=TIMEOUT)
        if frame["type"] == "state":
            frames.append(frame)
    return frames


def test_state_travels_on_the_data_channel_as_deltas_from_what_the_client_has_seen() -> None:
    match, (ana, ben) = matched(2)
    with ServerThread("match-rtc-1") as server:
        wait_until(lambda: str(match.id) in server.matches, 10, message="the server never claimed the match")

        async def scenario() -> None:
            socket, other = match_socket(match, ana), match_socket(match, ben)
            for side in (socket, other):
                assert (await side.connect(timeout=TIMEOUT))[0]
            await frame_of(socket, "state")
            client = ChannelClient(socket)
            await client.offer()

            frame, state = await client.next_state()
            assert "state" in frame, "the channel starts from a whole state"
            start_x = state["players"][ana.external_id]["x"]
            bases = []
            for _ in range(10):
                frame, state = await client.next_state()
                bases.append(frame.get("base"))
            assert all(base is not None for base in bases[2:]), bases
            # the socket carries no state while the channel does
            leftover = await socket_states(socket, 0.3)
            assert leftover == [] or max(f["tick"] for f in leftover) < frame["tick"]
            assert await socket_states(socket, 0.5) == []

            # an input on the socket is applied and acknowledged on the channel
            direction = 1 if start_x < 600 else -1
            await socket.send_json_to({"type": "input", "seq": 1, "move": [direction, 0]})
            for _ in range(100):
                frame, state = await client.next_state()
                if frame["ack"] == 1 and state["players"][ana.external_id]["x"] != start_x:
                    break
            else:
                raise AssertionError("the move never showed on the channel")

            # the state rebuilt from the channel's deltas is the server's own: ben's socket
            # (whole state, then the server's deltas) agrees at the same tick
            mine = dict(client.states)
            seen: dict[int, dict[str, Any]] = {}
            theirs: dict[str, Any] | None = None
            for _ in range(200):
                f = await other.receive_json_from(timeout=TIMEOUT)
                if f["type"] != "state":
                    continue
                theirs = f["state"] if "state" in f else apply_delta(theirs or {}, f["delta"])
                seen[f["tick"]] = theirs
                common = set(seen) & (set(mine) | set(client.states))
                if common:
                    tick = max(common)
                    assert seen[tick] == {**mine, **client.states}[tick]
                    break
                await client.next_state()
            else:
                raise AssertionError("the two paths never met at a tick")

            # the client closes the channel: the socket carries state again, whole first
            await socket.send_json_to({"type": "rtc.close"})
            await frame_of(socket, "rtc.closed")
            first = await frame_of(socket, "state")
            assert "state" in first
            second = await frame_of(socket, "state")
            assert "delta" in second and second["tick"] > first["tick"]
            await client.close()
            for side in (socket, other):
                await side.disconnect()

        async_to_sync(scenario)()


def test_a_client_that_stops_acknowledging_gets_state_on_the_socket_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(consumers, "RTC_SILENT_TICKS", 10)
    match, (ana, ben) = matched(2)
    with ServerThread("match-rtc-2") as server:
        wait_until(lambda: str(match.id) in server.matches, 10, message="the server never claimed the match")

        async def scenario() -> None:
            socket = match_socket(match, ana)
            assert (await socket.connect(timeout=TIMEOUT))[0]
            await frame_of(socket, "state")
            client = ChannelClient(socket, acknowledge=False)
            await client.offer()
            frame, _ = await client.next_state()
            assert "state" in frame
            # never acknowledged: every frame on the channel is whole, then the socket takes over
            for _ in range(5):
                frame, _ = await client.next_state()
                assert "state" in frame and "base" not in frame
            await frame_of(socket, "rtc.closed")
            assert "state" in await frame_of(socket, "state")
            await client.close()
            await socket.disconnect()

        async_to_sync(scenario)()


def test_bad_signalling_is_answered_naming_the_field_and_the_socket_goes_on(settings: Any) -> None:
    match, (ana, ben) = matched(2)
    with ServerThread("match-rtc-3") as server:
        wait_until(lambda: str(match.id) in server.matches, 10, message="the server never claimed the match")

        async def scenario() -> None:
            socket = match_socket(match, ana)
            assert (await socket.connect(timeout=TIMEOUT))[0]
            await frame_of(socket, "state")
            for frame, field, words in [
                ({"type": "rtc.candidate", "candidate": "x", "sdpMid": "0"}, "type", "before rtc.offer"),
                ({"type": "rtc.offer"}, "sdp", "expected the offer's SDP"),
                ({"type": "rtc.offer", "sdp": "v=0\r\n"}, "sdp", "no data channel"),
                (
                    {"type": "rtc.offer", "sdp": "v=0\r\nm=application 9 nonsense\r\n"},
                    "sdp",
                    "could not be used",
                ),
                ({"type": "rtc.offer", "sdp": "x" * 20_000}, "frame", "at most"),
                ({"type": "input", "seq": 1, "move": [0, 0], "pad": "x" * 3000}, "frame", "at most 2048"),
            ]:
                await socket.send_json_to(frame)
                error = await frame_of(socket, "error")
                assert (error["field"], words in error["message"]) == (field, True), error

            client = ChannelClient(socket)
            await client.offer()
            await client.next_state()
            for frame, field in [
                ({"type": "rtc.candidate", "candidate": 5, "sdpMid": "0"}, "candidate"),
                ({"type": "rtc.candidate", "candidate": "candidate:garbage"}, "candidate"),
                ({"type": "rtc.candidate", "candidate": "candidate:1 1 udp 1 10.0.0.1 9 typ host"}, "sdpMid"),
            ]:
                await socket.send_json_to(frame)
                assert (await frame_of(socket, "error"))["field"] == field
            await client.next_state()  # the channel goes on

            settings.GAMING_RTC = False
            await socket.send_json_to({"type": "rtc.offer", "sdp": client.pc.localDescription.sdp})
            unavailable = await frame_of(socket, "rtc.unavailable")
            assert "GAMING_RTC" in unavailable["reason"]
            await client.close()
            await socket.disconnect()

        async_to_sync(scenario)()
