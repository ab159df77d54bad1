"""P7's clients of collaborative documents: a light websocket, a Yjs peer speaking the
y-websocket protocol over it (a pycrdt document, as the stock ``WebsocketProvider`` keeps a
Yjs one), a ShareDB-style OT client of ``/ws/docs/{key}/ot``, the documents and members
they need (over the service API), and a trace's Yjs updates made by Yjs itself.

The socket is bench/wsclient.py's idea made cheaper for a few sockets carrying hundreds of
thousands of small frames: frames are read with an offset into the buffer (cut once per
read, not once per frame), and client frames are masked with the all-zero key (RFC 6455
lets the client pick its key; XOR with zero costs nothing), so a writer can encode a whole
trace's frames before the clock starts and hand them to the kernel in one write.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import struct
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycrdt import Doc, Text, TransactionEvent

from bench import ot_text
from bench.editing_trace import Trace
from bench.stack import Stack
from collaboration.services import protocol
from harness.processes import REPO_ROOT

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_ZERO_MASK = b"\x00\x00\x00\x00"
CONTENT = "content"  # the Y.Text a text document's editors share (collaboration/services/updates.py)
NODE_ENCODER = Path(__file__).resolve().parent / "p7_yjs_trace.mjs"


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One final client frame, masked with the zero key."""
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    elif length < 1 << 16:
        header = bytes((0x80 | opcode, 0x80 | 126)) + struct.pack(">H", length)
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + struct.pack(">Q", length)
    return header + _ZERO_MASK + payload


def decode_state_vector(vector: bytes) -> dict[int, int]:
    """{client id: clock} of an encoded Yjs state vector (a count, then client and clock
    pairs, variable-length unsigned integers)."""
    values, value, shift = [], 0, 0
    for byte in vector:
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            values.append(value)
            value, shift = 0, 0
    count = values[0] if values else 0
    return {values[1 + 2 * n]: values[2 + 2 * n] for n in range(count)}


class HandshakeRefused(ConnectionError):
    """The server answered the opening handshake with something else than 101."""


class FrameSocket(asyncio.Protocol):
    """One client websocket; each message goes to ``on_message(socket, opcode, payload,
    arrival)`` (arrival: ``time.perf_counter()`` of the read that completed it; the socket
    is passed because a message may come before ``open`` has returned it). Counts frames and
    bytes each way, frame headers included (the HTTP handshake excluded)."""

    def __init__(
        self, host: str, path: str, on_message: Callable[[FrameSocket, int, bytes, float], None]
    ) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.on_message = on_message
        self.transport: Any = None
        self.buffer = bytearray()
        self.handshaken = False
        self.fragments: list[bytes] = []
        self.fragment_opcode = OP_BINARY
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[int | None] = loop.create_future()
        self.close_reason = ""
        self.received = self.handshake_bytes = self.bytes_out = self.frames_in = self.frames_out = 0

    @classmethod
    async def open(
        cls,
        ws_url: str,
        path: str,
        on_message: Callable[[FrameSocket, int, bytes, float], None],
        timeout: float = 30.0,
    ) -> FrameSocket:
        host_port = ws_url.removeprefix("ws://").rstrip("/")
        host, _, port = host_port.partition(":")
        loop = asyncio.get_running_loop()
        _, socket = await loop.create_connection(
            lambda: cls(host_port, path, on_message), host, int(port or 80)
        )
        await asyncio.wait_for(socket.opened, timeout)
        return socket

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        arrival = time.perf_counter()
        self.buffer += data
        self.received += len(data)
        if not self.handshaken:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end])
            self.handshake_bytes = self.received - len(self.buffer) + end + 4
            del self.buffer[: end + 4]
            if not head.startswith(b"HTTP/1.1 101"):
                self._fail(HandshakeRefused(head.split(b"\r\n", 1)[0].decode("latin-1")))
                return
            self.handshaken = True
            self.opened.set_result(None)
        self._read_frames(arrival)

    @property
    def bytes_in(self) -> int:
        """Bytes of frames received (the HTTP handshake's answer excluded)."""
        return self.received - self.handshake_bytes

    def _read_frames(self, arrival: float) -> None:
        buffer = self.buffer
        at, size = 0, len(buffer)
        while size - at >= 2:
            first, second = buffer[at], buffer[at + 1]
            length, offset = second & 0x7F, at + 2
            if length == 126:
                if size - at < 4:
                    break
                length, offset = int.from_bytes(buffer[at + 2 : at + 4], "big"), at + 4
            elif length == 127:
                if size - at < 10:
                    break
                length, offset = int.from_bytes(buffer[at + 2 : at + 10], "big"), at + 10
            if size < offset + length:
                break
            payload = bytes(buffer[offset : offset + length])
            at = offset + length
            self.frames_in += 1
            opcode = first & 0x0F
            if opcode in (OP_TEXT, OP_BINARY, OP_CONTINUATION):
                if opcode != OP_CONTINUATION:
                    self.fragment_opcode = opcode
                self.fragments.append(payload)
                if first & 0x80:
                    message = payload if len(self.fragments) == 1 else b"".join(self.fragments)
                    self.fragments = []
                    self.on_message(self, self.fragment_opcode, message, arrival)
            elif opcode == OP_PING:
                self.send(OP_PONG, payload)
            elif opcode == OP_CLOSE:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                self.close_reason = payload[2:].decode("utf-8", "replace")
                if not self.closed.done():
                    self.closed.set_result(code)
                self.send(OP_CLOSE, payload[:2])
                self.transport.close()
                break
        if at:
            del buffer[:at]

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("connection lost"))

    def _fail(self, exc: BaseException) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc)
        if not self.closed.done():
            self.closed.set_result(None)
        if self.transport is not None:
            self.transport.close()

    # --- sending ---------------------------------------------------------------------------

    def send(self, opcode: int, payload: bytes) -> None:
        self.send_frames(client_frame(opcode, payload))

    def send_frames(self, data: bytes, count: int = 1) -> None:
        """Write ``count`` already encoded client frames."""
        if self.transport is None or self.transport.is_closing():
            raise ConnectionError("socket closed")
        self.transport.write(data)
        self.bytes_out += len(data)
        self.frames_out += count

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.send(OP_CLOSE, (1000).to_bytes(2, "big"))
            self.transport.close()


# --- Yjs over y-websocket -----------------------------------------------------------------------


class YjsPeer:
    """A Yjs document on ``/ws/docs/{key}``, speaking y-websocket as the stock provider does:
    it asks for what it lacks and answers the server's sync step 1 with what the server
    lacks, applies every update relayed to it (``on_update(update, arrival)`` is told of
    each first), and, like the provider, connects again and syncs when the server closes
    its socket (``reconnect``). ``edit`` makes a local change in one transaction and sends
    its update."""

    def __init__(self, name: str, *, on_update: Callable[[bytes, float], None] | None = None) -> None:
        self.name = name
        self.doc: Doc[Any] = Doc()
        self.text = self.doc.get(CONTENT, type=Text)
        self.on_update = on_update
        self.updates_in = 0
        # Set whenever an update arrives (``wait_updates``).
        self.arrived = asyncio.Event()
        self.denied: list[str] = []
        self.close_codes: list[int | None] = []
        self.socket: FrameSocket | None = None
        self.where: tuple[str, str, str] = ("", "", "")
        self.bytes_in = self.bytes_out = 0  # of the sockets closed so far
        self._local: list[bytes] = []
        self._capturing = False
        self.doc.observe(self._observed)
        self.synced: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def connect(self, ws_url: str, key: str, token: str, timeout: float = 30.0) -> None:
        self.where = (ws_url, key, token)
        await self.reconnect(timeout)

    async def reconnect(self, timeout: float = 30.0) -> None:
        """Open a socket (again) and sync: this document's state vector is sent, so the
        server answers with what it lacks and nothing more."""
        if self.socket is not None:
            self.close_codes.append(self.socket.closed.result() if self.socket.closed.done() else None)
            self.bytes_in += self.socket.bytes_in
            self.bytes_out += self.socket.bytes_out
            self.socket.close()
        ws_url, key, token = self.where
        self.synced = asyncio.get_running_loop().create_future()
        self.socket = await FrameSocket.open(ws_url, f"/ws/docs/{key}?token={token}", self._message, timeout)
        self.socket.send(OP_BINARY, protocol.sync_step1(self.doc.get_state()))
        await asyncio.wait_for(self.synced, timeout)

    @property
    def dropped(self) -> bool:
        """The server closed the socket (a provider would reconnect)."""
        return self.socket is not None and self.socket.closed.done()

    @property
    def total_bytes_in(self) -> int:
        return self.bytes_in + (self.socket.bytes_in if self.socket is not None else 0)

    def clocks(self) -> dict[int, int]:
        return decode_state_vector(self.doc.get_state())

    def _observed(self, event: TransactionEvent) -> None:
        if self._capturing:
            self._local.append(event.update)

    def _message(self, socket: FrameSocket, opcode: int, payload: bytes, arrival: float) -> None:
        if payload[:1] == bytes((protocol.MESSAGE_AUTH,)):
            self.denied.append(payload[3:].decode("utf-8", "replace"))
            return
        message = protocol.parse(payload)
        if not isinstance(message, protocol.Sync):
            return  # awareness: not P7's business
        if message.step == protocol.SYNC_STEP1:
            socket.send(OP_BINARY, protocol.sync_step2(self.doc.get_update(message.payload)))
            return
        if message.step == protocol.SYNC_UPDATE:
            self.updates_in += 1
            self.arrived.set()
        self.doc.apply_update(message.payload)
        if self.on_update is not None:
            self.on_update(message.payload, arrival)
        if message.step == protocol.SYNC_STEP2 and not self.synced.done():
            self.synced.set_result(None)

    def edit(self, change: Callable[[Text], None]) -> bytes:
        """Make ``change`` to the text in one transaction, send its update, return it."""
        self._capturing = True
        try:
            with self.doc.transaction():
                change(self.text)
        finally:
            self._capturing = False
        # One transaction, one update (pycrdt tells of each transaction once).
        (update,) = self._local
        self._local = []
        assert self.socket is not None
        if not self.dropped:
            self.socket.send(OP_BINARY, protocol.sync_update(update))
        return update

    async def wait_updates(self, count: int, timeout: float) -> None:
        """Return once ``count`` updates have arrived in all (TimeoutError otherwise)."""
        async with asyncio.timeout(timeout):
            while self.updates_in < count:
                self.arrived.clear()
                await self.arrived.wait()

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close()


def update_frames(updates: list[bytes]) -> list[bytes]:
    """Every update as its own y-websocket sync-update message in its own client frame."""
    return [client_frame(OP_BINARY, protocol.sync_update(update)) for update in updates]


# --- The OT mode --------------------------------------------------------------------------------


class OtClient:
    """A ShareDB-style client of ``/ws/docs/{key}/ot``: one operation in flight; operations
    made while it waits for its acknowledgement are composed into one pending operation,
    sent when the acknowledgement comes. ``text`` follows the operations relayed to it
    (a reader); a writer's own operations are not applied to it (the trace knows the text),
    and a writer must be the only one editing (no transformation here)."""

    def __init__(self, name: str, *, keep_text: bool) -> None:
        self.name = name
        self.client_id = f"{name}-{uuid.uuid4().hex[:8]}"
        self.keep_text = keep_text
        self.text = ""
        self.version = 0
        self.seq = 0
        self.inflight: ot_text.Op | None = None
        self.pending: ot_text.Op | None = None
        self.acks = 0
        self.ops_in = 0
        self.sent_ops = 0
        self.errors: list[dict[str, Any]] = []
        self.round_trips: list[float] = []
        self._sent_at = 0.0
        self.socket: FrameSocket | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.idle = asyncio.Event()
        self.idle.set()

    async def connect(self, ws_url: str, key: str, token: str, timeout: float = 30.0) -> None:
        self.socket = await FrameSocket.open(
            ws_url, f"/ws/docs/{key}/ot?token={token}", self._message, timeout
        )
        await asyncio.wait_for(self.ready, timeout)

    def _message(self, socket: FrameSocket, opcode: int, payload: bytes, arrival: float) -> None:
        frame = json.loads(payload)
        kind = frame.get("type")
        if kind == "init":
            self.version, self.text = int(frame["version"]), str(frame["text"])
            self.ready.set_result(None)
        elif kind == "ack":
            self.acks += 1
            self.round_trips.append(arrival - self._sent_at)
            self.version = int(frame["version"])
            self.inflight = None
            if self.pending is not None:
                op, self.pending = self.pending, None
                self._send(op)
            else:
                self.idle.set()
        elif kind == "op":
            if self.inflight is not None or self.pending is not None:
                raise RuntimeError(f"{self.name}: a remote operation while editing (no transformation here)")
            self.ops_in += 1
            self.version = int(frame["version"])
            if self.keep_text:
                self.text = ot_text.apply(self.text, frame["op"])
        elif kind == "error":
            self.errors.append(frame)

    def submit(self, op: ot_text.Op) -> None:
        """Make ``op`` (on the text with every earlier operation of this client applied)."""
        if self.inflight is None:
            self._send(op)
        else:
            self.pending = op if self.pending is None else ot_text.compose(self.pending, op)

    def _send(self, op: ot_text.Op) -> None:
        assert self.socket is not None
        self.idle.clear()
        self.inflight = op
        self.seq += 1
        self.sent_ops += 1
        frame = {"type": "op", "version": self.version, "op": op, "seq": self.seq, "client": self.client_id}
        self._sent_at = time.perf_counter()
        self.socket.send(OP_TEXT, json.dumps(frame, separators=(",", ":")).encode())

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close()


# --- Documents and members over the service API -------------------------------------------------


@dataclass(frozen=True)
class SeededDocument:
    key: str
    id: int
    tokens: list[str]  # one end-user token per member, in the order asked for


def seed_documents(stack: Stack, *, documents: int, members: int, label: str) -> list[SeededDocument]:
    """``documents`` text documents with ``members`` editors each (fresh recipients), over
    the service API as an application would make them."""
    run = uuid.uuid4().hex[:6]
    seeded = []
    with stack.client() as api:
        for number in range(documents):
            external_ids, tokens = [], []
            for member in range(members):
                external_id = f"{label}-{run}-{number}-{member}"
                response = api.put(f"/api/v1/recipients/{external_id}/", json={"name": external_id})
                response.raise_for_status()
                token = api.post(f"/api/v1/recipients/{external_id}/token/")
                token.raise_for_status()
                external_ids.append(external_id)
                tokens.append(str(token.json()["token"]))
            key = f"{label}-{run}-{number}"
            response = api.post(
                "/api/v1/documents/",
                json={
                    "key": key,
                    "title": f"P7 {label} {number}",
                    "kind": "text",
                    "members": [{"recipient": external_id, "role": "editor"} for external_id in external_ids],
                },
            )
            if response.status_code != 201:
                raise RuntimeError(f"creating document {key}: {response.status_code} {response.text}")
            seeded.append(SeededDocument(key=key, id=document_id(stack, key), tokens=tokens))
    return seeded


def document_id(stack: Stack, key: str) -> int:
    with stack.db_connect() as db:
        row = db.execute("SELECT id FROM collaboration_document WHERE key = %s", [key]).fetchone()
    if row is None:
        raise RuntimeError(f"no document {key}")
    return int(row[0])


def server_text(stack: Stack, key: str) -> str:
    """The document's text as the server serves it from what it stored."""
    with stack.client(timeout=120.0) as api:
        response = api.get(f"/api/v1/documents/{key}/content/")
    response.raise_for_status()
    return str(response.json()["text"])


# --- A trace's updates ------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodedTrace:
    """A trace applied to a local document with no server, one transaction per operation:
    the updates it emitted, and how long that took (P7's baseline)."""

    updates: list[bytes]
    implementation: str  # "yjs 13.6.x (Node.js)" or "pycrdt x.y"
    apply_seconds: float  # the trace, operation by operation, one transaction each
    peer_apply_seconds: float  # every update applied to a second document
    state_bytes: int  # the final document encoded as one update
    final_clocks: dict[int, int]  # its state vector

    @property
    def update_bytes(self) -> int:
        return sum(len(update) for update in self.updates)


def encode_trace(trace: Trace, *, prefer_node: bool = True) -> EncodedTrace:
    """The trace's updates as Yjs makes them (Node.js and the repository's node_modules), or,
    without Node.js, as pycrdt (Yrs) makes them."""
    node = shutil.which("node")
    if prefer_node and node is not None and (REPO_ROOT / "node_modules" / "yjs").is_dir():
        return _encode_with_node(node, trace)
    return _encode_with_pycrdt(trace)


def _encode_with_node(node: str, trace: Trace) -> EncodedTrace:
    with tempfile.TemporaryDirectory(prefix="p7-trace-") as directory:
        trace_path, updates_path = Path(directory) / "trace.json", Path(directory) / "updates.bin"
        trace_path.write_text(json.dumps({"operations": trace.operations, "final": trace.final_text}))
        completed = subprocess.run(
            [node, str(NODE_ENCODER), str(trace_path), str(updates_path)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if completed.returncode != 0:
            raise RuntimeError(f"{NODE_ENCODER.name} failed: {completed.stderr[-2000:]}")
        report = json.loads(completed.stdout.strip().splitlines()[-1])
        if not report["text_matches"]:
            raise RuntimeError("Yjs did not produce the trace's final text")
        data = updates_path.read_bytes()
    updates, at = [], 0
    while at < len(data):
        (length,) = struct.unpack_from(">I", data, at)
        updates.append(data[at + 4 : at + 4 + length])
        at += 4 + length
    return EncodedTrace(
        updates=updates,
        implementation=f"yjs {report['yjs']} (Node.js {_node_version(node)})",
        apply_seconds=float(report["apply_seconds"]),
        peer_apply_seconds=float(report["peer_apply_seconds"]),
        state_bytes=int(report["state_bytes"]),
        final_clocks={int(client): int(clock) for client, clock in report["state_vector"]},
    )


def _node_version(node: str) -> str:
    return subprocess.run([node, "--version"], capture_output=True, text=True, check=False).stdout.strip()


def _encode_with_pycrdt(trace: Trace) -> EncodedTrace:
    from importlib.metadata import version

    doc: Doc[Any] = Doc()
    text = doc.get(CONTENT, type=Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    started = time.perf_counter()
    for position, deleted, inserted in trace.operations:
        if deleted:
            del text[position : position + deleted]
        if inserted:
            text.insert(position, inserted)
    apply_seconds = time.perf_counter() - started
    peer: Doc[Any] = Doc()
    started = time.perf_counter()
    for update in updates:
        peer.apply_update(update)
    peer_seconds = time.perf_counter() - started
    if str(text) != trace.final_text or str(peer.get(CONTENT, type=Text)) != trace.final_text:
        raise RuntimeError("pycrdt did not produce the trace's final text")
    return EncodedTrace(
        updates=updates,
        implementation=f"pycrdt {version('pycrdt')} (Yrs)",
        apply_seconds=apply_seconds,
        peer_apply_seconds=peer_seconds,
        state_bytes=len(doc.get_update()),
        final_clocks=decode_state_vector(doc.get_state()),
    )
