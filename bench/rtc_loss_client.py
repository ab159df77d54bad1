"""One player's view of a match under packet loss, for bench/rtc_loss.py:
``python -m bench.rtc_loss_client --url ws://.../ws/matches/<id>/?token=... --path rtc|socket
--seconds 20`` (run inside the benchmark's network namespace) follows the match over the
socket alone, or over the WebRTC data channel it signals on the socket (an aiortc peer doing
what gaming/static/gaming/play.js does), and prints one JSON line: when each tick arrived
and was usable (a delta only counts if its base is held), over the measured window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import websockets
from aiortc import RTCPeerConnection, RTCSessionDescription

from gaming.modes.base import apply_delta


class Follower:
    def __init__(self) -> None:
        self.arrivals: dict[int, float] = {}  # tick -> when it first became usable
        self.socket_state: dict[str, Any] | None = None
        self.channel_states: dict[int, dict[str, Any]] = {}
        self.channel_frames = 0
        self.fell_back = False

    def on_socket(self, frame: dict[str, Any]) -> None:
        if "state" in frame:
            self.socket_state = frame["state"]
        elif self.socket_state is not None:
            self.socket_state = apply_delta(self.socket_state, frame["delta"])
        else:
            return
        self.arrivals.setdefault(int(frame["tick"]), time.monotonic())

    def on_channel(self, frame: dict[str, Any]) -> bool:
        if "state" in frame:
            state = frame["state"]
        elif frame.get("base") in self.channel_states:
            state = apply_delta(self.channel_states[frame["base"]], frame["delta"])
        else:
            return False
        tick = int(frame["tick"])
        self.channel_states[tick] = state
        for old in [t for t in self.channel_states if t < tick - 60]:
            del self.channel_states[old]
        self.channel_frames += 1
        self.arrivals.setdefault(tick, time.monotonic())
        return True


async def follow(url: str, path: str, seconds: float, warmup: float) -> dict[str, Any]:
    follower = Follower()
    async with websockets.connect(url, open_timeout=15, max_size=2**22) as socket:
        pc: RTCPeerConnection | None = None
        channel_open = asyncio.Event()
        if path == "rtc":
            pc = RTCPeerConnection()
            channel = pc.createDataChannel("state", negotiated=True, id=0, ordered=False, maxRetransmits=0)

            @channel.on("message")
            def _message(text: Any) -> None:
                frame = json.loads(text)
                if frame.get("type") == "state" and follower.on_channel(frame):
                    channel.send(json.dumps({"type": "seen", "tick": frame["tick"]}))
                    channel_open.set()

            await pc.setLocalDescription(await pc.createOffer())
            await socket.send(json.dumps({"type": "rtc.offer", "sdp": pc.localDescription.sdp}))

        async def read() -> None:
            async for text in socket:
                frame = json.loads(text)
                kind = frame.get("type")
                if kind == "state":
                    follower.on_socket(frame)
                elif kind == "rtc.answer" and pc is not None:
                    await pc.setRemoteDescription(RTCSessionDescription(sdp=frame["sdp"], type="answer"))
                elif kind in ("rtc.closed", "rtc.unavailable"):
                    follower.fell_back = True
                elif kind == "end":
                    return

        reader = asyncio.create_task(read())
        try:
            if pc is not None:
                async with asyncio.timeout(20):
                    await channel_open.wait()
            await asyncio.sleep(warmup)
            follower.arrivals.clear()
            started = time.monotonic()
            await asyncio.sleep(seconds)
            ended = time.monotonic()
        finally:
            reader.cancel()
            if pc is not None:
                await pc.close()
    arrivals = {tick: at - started for tick, at in follower.arrivals.items() if at <= ended}
    return {
        "path": path,
        "seconds": ended - started,
        "arrivals": sorted(arrivals.items()),
        "channel_frames": follower.channel_frames,
        "fell_back": follower.fell_back,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--path", choices=("socket", "rtc"), required=True)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args(argv)
    result = asyncio.run(follow(args.url, args.path, args.seconds, args.warmup))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
