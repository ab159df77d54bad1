"""A light websocket client for P3's load: thousands of sockets in a few processes.

P3 holds 10,000 sockets against a server that shares the machine's two cores with the
client, so the client must cost little: the ``websockets`` library's client spent more CPU
opening and reading 10,000 sockets than the server did holding them. ``LightSocket`` is
just enough of RFC 6455 for a benchmark on one machine: the opening handshake (its answer
must be 101), unmasked server frames (text, binary, ping, pong, close; continuation frames
are joined), masked client frames. No extensions, no TLS.

``ClientPool`` spreads the sockets over worker processes (each an asyncio loop on uvloop)
and drives them by commands: open sockets, record the frames that arrive (with their
arrival time, ``time.perf_counter()``, which is the system's monotonic clock on Linux and
so comparable across processes), send frames, ping every socket, run a closed-loop
heartbeat. Arrivals are recorded raw and summarized after the measurement, so that reading
a frame during it costs only an append.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import socket as socketlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class HandshakeFailed(Exception):
    """The server did not answer the opening handshake with 101."""


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """One masked, final client frame (RFC 6455 5.2, 5.3)."""
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    elif length < 1 << 16:
        header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big")
    mask = random.getrandbits(32).to_bytes(4, "big")
    if not length:
        return header + mask
    repeated = (mask * (length // 4 + 1))[:length]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(length, "big")
    return header + mask + masked


def decode_frames(buffer: bytearray) -> Iterator[tuple[bool, int, bytes]]:
    """(fin, opcode, payload) of each complete server frame at the start of ``buffer``,
    removed from it as it is read; a partial frame stays for the next call."""
    while len(buffer) >= 2:
        first, second = buffer[0], buffer[1]
        length, offset = second & 0x7F, 2
        if length == 126:
            if len(buffer) < 4:
                return
            length, offset = int.from_bytes(buffer[2:4], "big"), 4
        elif length == 127:
            if len(buffer) < 10:
                return
            length, offset = int.from_bytes(buffer[2:10], "big"), 10
        masked = second & 0x80
        if masked:  # servers must not mask; accepted all the same
            offset += 4
        if len(buffer) < offset + length:
            return
        payload = bytes(buffer[offset : offset + length])
        if masked:
            key = buffer[offset - 4 : offset]
            payload = bytes(byte ^ key[i % 4] for i, byte in enumerate(payload))
        del buffer[: offset + length]
        yield bool(first & 0x80), first & 0x0F, payload


class LightSocket(asyncio.Protocol):
    """One client websocket; what arrives goes to ``on_message(socket, arrival, payload)``."""

    def __init__(
        self,
        index: int,
        host: str,
        path: str,
        on_message: Callable[[LightSocket, float, bytes], None],
        *,
        wait_first_message: bool,
    ) -> None:
        self.index = index
        self.on_message = on_message
        self.wait_first_message = wait_first_message
        key = base64.b64encode(os.urandom(16)).decode()
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.transport: Any = None
        self.buffer = bytearray()
        self.handshaken = False
        self.closed = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pong: asyncio.Future[None] | None = None
        self.fragments: list[bytes] = []
        # Free for the caller: a heartbeat's send time, a count.
        self.sent_at = 0.0

    # --- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        # uvloop's transports are not asyncio.Transport subclasses.
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        arrival = time.perf_counter()
        self.buffer += data
        if not self.handshaken:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end])
            del self.buffer[: end + 4]
            if not head.startswith(b"HTTP/1.1 101"):
                self._fail(HandshakeFailed(head.split(b"\r\n", 1)[0].decode("latin-1")))
                return
            self.handshaken = True
            if not self.wait_first_message and not self.ready.done():
                self.ready.set_result(None)
        for fin, opcode, payload in decode_frames(self.buffer):
            if opcode in (OP_TEXT, OP_BINARY, OP_CONTINUATION):
                self.fragments.append(payload)
                if not fin:
                    continue
                message = self.fragments[0] if len(self.fragments) == 1 else b"".join(self.fragments)
                self.fragments = []
                if not self.ready.done():
                    self.ready.set_result(None)
                self.on_message(self, arrival, message)
            elif opcode == OP_PING:
                self._write(OP_PONG, payload)
            elif opcode == OP_PONG:
                if self.pong is not None and not self.pong.done():
                    self.pong.set_result(None)
            elif opcode == OP_CLOSE:
                self._write(OP_CLOSE, payload[:2])
                self._fail(ConnectionError(f"closed by the server: {payload[:2].hex()}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("connection lost"))

    # --- sending ----------------------------------------------------------------------------

    def send_text(self, text: str | bytes) -> None:
        self._write(OP_TEXT, text.encode() if isinstance(text, str) else text)

    async def ping(self, timeout: float) -> bool:
        """True when the server answers a ping within ``timeout``."""
        if self.closed:
            return False
        self.pong = asyncio.get_running_loop().create_future()
        self._write(OP_PING, b"p")
        try:
            await asyncio.wait_for(self.pong, timeout)
        except (TimeoutError, ConnectionError):
            return False
        return True

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self._write(OP_CLOSE, (1000).to_bytes(2, "big"))
            self.closed = True
            self.transport.close()

    def _write(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_frame(opcode, payload))

    def _fail(self, exc: BaseException) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(exc)
        if self.pong is not None and not self.pong.done():
            self.pong.set_exception(ConnectionError(str(exc)))
        if self.transport is not None:
            self.transport.close()


# --- One worker process ------------------------------------------------------------------------


@dataclass
class _Heartbeat:
    text: bytes
    marker: bytes
    until: float
    pongs: int = 0
    round_trips: list[float] = field(default_factory=list)


class _Worker:
    """The sockets of one worker process and what it records of them."""

    def __init__(self) -> None:
        self.sockets: list[LightSocket] = []
        self.recording = False
        self.recorded: list[tuple[int, float, bytes]] = []
        self.heartbeat: _Heartbeat | None = None

    def on_message(self, socket: LightSocket, arrival: float, payload: bytes) -> None:
        beat = self.heartbeat
        if beat is not None and beat.marker in payload:
            beat.pongs += 1
            beat.round_trips.append(arrival - socket.sent_at)
            if arrival < beat.until:
                socket.sent_at = time.perf_counter()
                socket.send_text(beat.text)
            return
        if self.recording:
            self.recorded.append((socket.index, arrival, payload))

    async def open(
        self, host: str, port: int, paths: Sequence[tuple[int, str]], concurrency: int, wait_first: bool
    ) -> tuple[int, list[str], float]:
        started = time.perf_counter()
        errors = await open_sockets(
            host,
            port,
            paths,
            concurrency,
            lambda index, path: LightSocket(
                index, f"{host}:{port}", path, self.on_message, wait_first_message=wait_first
            ),
            self.sockets.append,
        )
        self.sockets.sort(key=lambda s: s.index)
        return len(self.sockets), errors[:5], time.perf_counter() - started

    def by_index(self) -> dict[int, LightSocket]:
        return {socket.index: socket for socket in self.sockets}

    def send(self, texts: Sequence[tuple[int, bytes]]) -> list[tuple[int, float]]:
        sockets = self.by_index()
        sent = []
        for index, text in texts:
            socket = sockets.get(index)
            if socket is not None and not socket.closed:
                sent.append((index, time.perf_counter()))
                socket.send_text(text)
        return sent

    async def beat(self, text: bytes, marker: bytes, seconds: float, grace: float) -> dict[str, Any]:
        started = time.perf_counter()
        beat = self.heartbeat = _Heartbeat(text=text, marker=marker, until=started + seconds)
        for socket in self.sockets:
            socket.sent_at = time.perf_counter()
            socket.send_text(text)
        await asyncio.sleep(seconds)
        in_window = beat.pongs
        window = time.perf_counter() - started
        await asyncio.sleep(grace)
        self.heartbeat = None
        trips = sorted(beat.round_trips)
        return {
            "pongs": in_window,
            "pongs_after": beat.pongs - in_window,
            "window": window,
            "round_trip_p50": trips[len(trips) // 2] if trips else float("nan"),
            "round_trip_p99": trips[min(len(trips) - 1, int(len(trips) * 0.99))] if trips else float("nan"),
        }

    async def held(self, timeout: float) -> int:
        answers = await asyncio.gather(*(socket.ping(timeout) for socket in self.sockets))
        return sum(answers)


def _summarize(recorded: list[tuple[int, float, bytes]], how: str) -> list[Any]:
    """What the parent gets of the recorded frames: ``raw`` (index, arrival, payload),
    ``type`` (index, arrival, frame type), ``notification`` (index, arrival, event id) of
    notification frames, ``presence`` (index, arrival, [(external_id, status)...]) of
    presence frames, ``presence_count`` (index, arrival, how many changes; -1 for an
    error frame)."""
    if how == "raw":
        return recorded
    out: list[Any] = []
    for index, arrival, payload in recorded:
        try:
            frame = json.loads(payload)
        except ValueError:
            continue
        kind = frame.get("type") if isinstance(frame, dict) else None
        if how == "type":
            out.append((index, arrival, kind))
        elif how == "notification" and kind == "notification":
            out.append((index, arrival, str(frame["item"].get("event_id"))))
        elif how == "presence" and kind == "presence":
            changes = [(key, value.get("status")) for key, value in frame.get("changes", {}).items()]
            out.append((index, arrival, changes))
        elif how == "presence_count" and kind in ("presence", "error"):
            out.append((index, arrival, len(frame.get("changes", {})) if kind == "presence" else -1))
    return out


async def _serve(connection: Connection) -> None:
    loop = asyncio.get_running_loop()
    worker = _Worker()
    while True:
        command, args = await loop.run_in_executor(None, connection.recv)
        try:
            if command == "open":
                reply: Any = await worker.open(*args)
            elif command == "record":
                worker.recording = bool(args)
                reply = None
            elif command == "take":
                recorded, worker.recorded = worker.recorded, []
                reply = _summarize(recorded, args)
            elif command == "send":
                reply = worker.send(args)
            elif command == "beat":
                reply = await worker.beat(*args)
            elif command == "held":
                reply = await worker.held(args)
            elif command == "recorded":
                reply = len(worker.recorded)
            elif command == "count":
                reply = sum(1 for socket in worker.sockets if not socket.closed)
            elif command == "close":
                for socket in worker.sockets:
                    socket.close()
                await asyncio.sleep(0.2)
                connection.send(("ok", None))
                return
            else:
                raise ValueError(f"unknown command {command!r}")
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises
            connection.send(("error", f"{type(exc).__name__}: {exc}"))
            continue
        connection.send(("ok", reply))


def _worker_main(connection: Connection) -> None:
    import uvloop

    uvloop.run(_serve(connection))


# --- The pool ----------------------------------------------------------------------------------


class ClientPool:
    """``processes`` worker processes holding sockets; socket ``i`` lives in worker
    ``i % processes``. Use as a context manager (the workers are stopped on exit). Each
    worker is ``python -m bench.wsclient <fd>``, a fresh interpreter talking over a socket
    pair (multiprocessing's spawn would import the parent's ``__main__`` again)."""

    def __init__(self, processes: int = 2) -> None:
        self.pipes: list[Connection] = []
        self.workers: list[subprocess.Popen[bytes]] = []
        try:
            for _ in range(processes):
                ours, theirs = socketlib.socketpair()
                process = subprocess.Popen(
                    [sys.executable, "-m", "bench.wsclient", str(theirs.fileno())],
                    pass_fds=[theirs.fileno()],
                    cwd=Path(__file__).resolve().parent.parent,
                )
                theirs.close()
                self.pipes.append(Connection(ours.detach()))
                self.workers.append(process)
        except BaseException:
            self.close()
            raise

    @property
    def size(self) -> int:
        return len(self.pipes)

    def _all(self, command: str, args: Sequence[Any]) -> list[Any]:
        """Send each worker its command (``args[i]`` to worker i), then gather the replies."""
        for pipe, arg in zip(self.pipes, args, strict=True):
            pipe.send((command, arg))
        replies = []
        for pipe in self.pipes:
            status, reply = pipe.recv()
            if status != "ok":
                raise RuntimeError(f"client worker: {reply}")
            replies.append(reply)
        return replies

    def _split(self, items: Sequence[tuple[int, Any]]) -> list[list[tuple[int, Any]]]:
        parts: list[list[tuple[int, Any]]] = [[] for _ in self.pipes]
        for index, value in items:
            parts[index % self.size].append((index, value))
        return parts

    def open(
        self, url: str, paths: Sequence[str], *, concurrency: int = 50, wait_first: bool = True
    ) -> tuple[int, list[str], float]:
        """Open one socket per path (``ws://host:port`` + path), ``concurrency`` handshakes
        at a time per worker; with ``wait_first`` each counts once its first message came.
        Returns (sockets open, the first errors, seconds)."""
        host, _, port = url.removeprefix("ws://").partition(":")
        parts = self._split(list(enumerate(paths)))
        started = time.perf_counter()
        replies = self._all("open", [(host, int(port), part, concurrency, wait_first) for part in parts])
        return (
            sum(r[0] for r in replies),
            [e for r in replies for e in r[1]][:5],
            time.perf_counter() - started,
        )

    def record(self, on: bool = True) -> None:
        self._all("record", [on] * self.size)

    def take(self, how: str = "raw") -> list[Any]:
        """The frames recorded since the last take, summarized (``_summarize``), sorted by arrival."""
        return sorted(
            (row for reply in self._all("take", [how] * self.size) for row in reply), key=lambda r: r[1]
        )

    def recorded(self) -> int:
        """Frames recorded so far (not yet taken)."""
        return sum(self._all("recorded", [None] * self.size))

    def wait_recorded(self, wanted: int, timeout: float, interval: float = 0.1) -> int:
        """Poll until ``wanted`` frames are recorded or ``timeout`` passes; how many were."""
        deadline = time.monotonic() + timeout
        count = self.recorded()
        while count < wanted and time.monotonic() < deadline:
            time.sleep(interval)
            count = self.recorded()
        return count

    def send(self, texts: Sequence[tuple[int, str | bytes]]) -> list[tuple[int, float]]:
        """Send each (socket index, text); returns (index, sent at) of each."""
        encoded = [(index, text.encode() if isinstance(text, str) else text) for index, text in texts]
        return [row for reply in self._all("send", self._split(encoded)) for row in reply]

    def beat(self, text: str, marker: str, seconds: float, grace: float = 2.0) -> dict[str, Any]:
        """Every socket sends ``text`` and again each time a message holding ``marker``
        answers, for ``seconds``: the answers counted in that window, all workers summed."""
        replies = self._all("beat", [(text.encode(), marker.encode(), seconds, grace)] * self.size)
        window = max(r["window"] for r in replies)
        return {
            "answers": sum(r["pongs"] for r in replies),
            "late_answers": sum(r["pongs_after"] for r in replies),
            "seconds": window,
            "round_trip_p50": sorted(r["round_trip_p50"] for r in replies)[len(replies) // 2],
            "round_trip_p99": max(r["round_trip_p99"] for r in replies),
        }

    def held(self, timeout: float = 30.0) -> int:
        """Sockets that answer a websocket ping within ``timeout``."""
        return sum(self._all("held", [timeout] * self.size))

    def count(self) -> int:
        """Sockets still open."""
        return sum(self._all("count", [None] * self.size))

    def close(self) -> None:
        with contextlib.suppress(OSError, EOFError, RuntimeError):
            self._all("close", [None] * self.size)
        for process in self.workers:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pipe in self.pipes:
            pipe.close()

    def __enter__(self) -> ClientPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def open_sockets(
    host: str,
    port: int,
    paths: Sequence[tuple[int, str]],
    concurrency: int,
    make: Callable[[int, str], LightSocket],
    opened: Callable[[Any], None],
) -> list[str]:
    """Open a socket for each (index, path), ``concurrency`` at a time, each the protocol
    ``make(index, path)`` returns; ``opened(socket)`` for each one that is ready. Returns
    the first five errors."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(concurrency)
    errors: list[str] = []

    async def one(index: int, path: str) -> None:
        async with gate:
            try:
                _, socket = await loop.create_connection(lambda: make(index, path), host, port)
                await asyncio.wait_for(socket.ready, 60)
            except (OSError, HandshakeFailed, TimeoutError, ConnectionError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                return
            opened(socket)

    await asyncio.gather(*(one(index, path) for index, path in paths))
    return errors[:5]


if __name__ == "__main__":
    _worker_main(Connection(int(sys.argv[1])))
