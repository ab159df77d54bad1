"""P7: collaborative documents under an editing trace and under many editors.

1. **Trace replay** (target ≤ 15 s): an editing trace of 259,778 single-character
   operations (bench/editing_trace.py: shaped like the B4 trace, which no package ships)
   is made into Yjs updates by Yjs itself, one transaction per operation as an editor
   makes them (bench/p7_yjs_trace.mjs; pycrdt without Node.js). One writer sends every
   update as its own y-websocket message to ``/ws/docs/{key}``, pipelined (all of them
   handed to the kernel at once); a second client is connected to the same document. The
   clock runs from the first byte sent until the peer has every update and the text the
   trace leaves, and the server's stored state (``GET .../content/``) is that text too.
   Baseline, same run: the same trace applied to a local Yjs document with no server.
2. **Editing load** (target p95 ≤ 100 ms): D documents × E editors, each editor making a
   one-character edit (an insert, or a delete one time in four) at R edits/s, open loop,
   for S seconds; latency from just before an edit's update is sent until it arrives at
   each of the document's other editors (one clock: all clients run in this process).
3. **Bytes stored per edit**: the trace's document before compaction (every update is
   stored as sent, so its bytes are the updates' bytes) and after (``document_compact``:
   ``Document.stored_bytes`` is then the snapshot's size).
4. **The OT mode on the same trace**: a ShareDB-style client (one operation in flight,
   the ones made meanwhile composed into one) replays the trace through
   ``/ws/docs/{key}/ot`` to a reader; its time, frames and bytes on the wire, the web
   processes' memory, and what it stores. And both modes one operation at a time, each
   waiting until the other client has it, for the first operations of the trace: the
   per-operation round trip of each path.

The clients (bench/collab_clients.py) run in this process on uvloop; the stack is the
layout of ``make run`` (two uvicorn processes sharing the port, the Celery workers and
beat: compaction runs on the periodic queue as in production).
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import itertools
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from pycrdt import Text

from bench import editing_trace, ot_text
from bench.collab_clients import (
    EncodedTrace,
    OtClient,
    SeededDocument,
    YjsPeer,
    encode_trace,
    seed_documents,
    server_text,
    update_frames,
)
from bench.stack import (
    Progress,
    Stack,
    bench_stack,
    cpu_sample,
    cpu_seconds,
    percentile,
    raise_fd_limit,
    rss_kib_tree,
)
from project.processes import DEFAULT_WEB_PROCESSES

T = TypeVar("T")

TRACE_TARGET_S = 15.0
LATENCY_P95_TARGET_MS = 100.0
# A replay that makes no progress for this long has stalled: it is stopped and reported.
STALL_S = 120.0
# The Yjs writer's window: updates sent ahead of what the peer has, sent CHUNK at a time.
WINDOW = 10_000
CHUNK = 500
# Compaction held off (bytes stored before compaction are measured on such a stack).
NO_COMPACTION = {"COLLAB_COMPACT_AFTER_UPDATES": str(2**31 - 1)}
ALPHABET = "abcdefghijklmnopqrstuvwxyz "


@dataclass
class ModeRun:
    """One replay of the trace through one mode."""

    mode: str  # "yjs" or "ot"
    operations: int
    seconds: float  # first byte sent -> the other client and the server hold the final text
    peer_seconds: float  # first byte sent -> the other client has the final text
    converged: bool
    stored_matches: bool
    frames_sent: int
    bytes_sent: int  # by the writer, websocket frame headers included
    bytes_received_by_peer: int
    bytes_received_by_writer: int
    web_rss_before_kib: int
    web_rss_after_kib: int
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    relays_received: int = 0  # update messages the peer got (the server merges what waited to be stored)
    peer_reconnects: int = 0  # times the server closed the peer's socket and it connected again
    round_trip_p50_ms: float | None = None  # OT: operation sent -> acknowledged
    errors: list[str] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.operations / self.seconds if self.seconds else float("nan")


@dataclass
class OneAtATime:
    """The first operations of the trace sent one at a time, each once the previous one
    reached the other client (Yjs) or was acknowledged (OT), on the document the trace left."""

    mode: str
    operations: int
    seconds: float
    p50_ms: float
    p95_ms: float
    document_characters: int


@dataclass
class LoadRun:
    documents: int
    editors: int
    rate: float  # edits per second per editor
    seconds: float
    edits: int
    expected: int  # deliveries: edits x (editors - 1)
    received: int
    lost: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    send_lag_p99_ms: float  # how late the load generator sent, against its schedule
    converged: bool  # every editor and the server hold one text, per document
    reconnects: int = 0  # sockets the server closed (a client that could not keep up), reconnected
    web_processes: int = DEFAULT_WEB_PROCESSES
    cpu_seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class Storage:
    """The trace's document with compaction held off, then compacted."""

    edits: int
    update_bytes: int  # every update as the writer sent it
    final_characters: int
    rows_before: int  # DocumentUpdate rows (a batch stored at once is one row)
    row_bytes_before: int
    stored_bytes_before: int  # Document.stored_bytes before the compaction
    stored_bytes_compacted: int  # after document_compact: the snapshot
    replay_seconds: float  # that replay's time (no compaction running)
    replay_converged: bool
    replay_errors: list[str] = field(default_factory=list)
    stored_bytes_default: int | None = None  # the headline replay's document (compaction on)
    ot_text_bytes: int | None = None
    ot_operation_bytes: int | None = None  # the OT mode's stored operations (jsonb, as stored)
    ot_operations: int | None = None

    @property
    def bytes_per_edit_before(self) -> float:
        return self.stored_bytes_before / self.edits

    @property
    def bytes_per_edit_after(self) -> float:
        return self.stored_bytes_compacted / self.edits


@dataclass
class P7Result:
    trace: dict[str, Any]
    baseline: dict[str, Any]
    yjs: ModeRun
    storage: Storage
    load: LoadRun | None  # in the layout of make run: the headline
    other_loads: list[LoadRun]
    ot: ModeRun | None
    one_at_a_time: list[OneAtATime]
    web_processes: int
    notes: list[str] = field(default_factory=list)

    @property
    def meets_trace_target(self) -> bool:
        return self.yjs.converged and self.yjs.stored_matches and self.yjs.seconds <= TRACE_TARGET_S

    @property
    def meets_latency_target(self) -> bool | None:
        if self.load is None:
            return None
        return self.load.lost == 0 and self.load.converged and self.load.p95_ms <= LATENCY_P95_TARGET_MS

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["yjs"]["per_second"] = self.yjs.per_second
        if self.ot is not None:
            data["ot"]["per_second"] = self.ot.per_second
        data["storage"]["bytes_per_edit_before"] = self.storage.bytes_per_edit_before
        data["storage"]["bytes_per_edit_after"] = self.storage.bytes_per_edit_after
        data["window"] = WINDOW
        data["meets_trace_target"] = self.meets_trace_target
        data["meets_latency_target"] = self.meets_latency_target
        return data

    def summary(self) -> str:
        lines = [
            f"P7 trace: {self.yjs.operations:,} operations through /ws/docs in {self.yjs.seconds:.1f} s "
            f"({self.yjs.per_second:,.0f}/s; target ≤ {TRACE_TARGET_S:.0f} s; converged {self.yjs.converged}, "
            f"stored {self.yjs.stored_matches}); local {self.baseline['implementation']} "
            f"{self.baseline['apply_seconds']:.2f} s",
            f"P7 storage: {self.storage.bytes_per_edit_before:.1f} bytes/edit before compaction, "
            f"{self.storage.bytes_per_edit_after:.2f} after",
        ]
        for load in [self.load, *self.other_loads] if self.load is not None else []:
            lines.append(
                f"P7 load ({load.web_processes} web processes): {load.documents}×{load.editors} editors at "
                f"{load.rate:g}/s: edit → peer p50 {load.p50_ms:.1f} ms, p95 {load.p95_ms:.1f} ms, "
                f"p99 {load.p99_ms:.1f} ms, lost {load.lost}"
            )
        if self.ot is not None:
            lines.append(
                f"P7 OT: {self.ot.operations:,} operations in {self.ot.seconds:.1f} s ({self.ot.per_second:,.0f}/s) "
                f"in {self.ot.frames_sent:,} frames; converged {self.ot.converged}, stored {self.ot.stored_matches}"
            )
        for one in self.one_at_a_time:
            lines.append(
                f"P7 one at a time, {one.mode}: {one.operations:,} operations, p50 {one.p50_ms:.2f} ms, "
                f"p95 {one.p95_ms:.2f} ms"
            )
        return "\n".join(lines)


# --- helpers -------------------------------------------------------------------------------------


def _run(coroutine_function: Callable[[], Coroutine[Any, Any, T]]) -> T:
    import uvloop

    return uvloop.run(coroutine_function())


def _web_rss_kib(stack: Stack) -> int:
    return sum(
        rss_kib_tree(process.pid)
        for name, process in stack.platform.processes.items()
        if name.startswith("web") and process.pid is not None
    )


async def _wait(
    done: Callable[[], bool],
    progress: Callable[[], int],
    *,
    timeout: float,
    what: str,
    bar: Progress | None = None,
) -> bool:
    """Poll ``done`` every 20 ms until it holds (True), ``timeout`` passes or ``progress()``
    stops moving for STALL_S (False)."""
    deadline = time.monotonic() + timeout
    last, moved = progress(), time.monotonic()
    while not done():
        now = time.monotonic()
        if now > deadline or now - moved > STALL_S:
            return False
        await asyncio.sleep(0.02)
        current = progress()
        if current != last:
            last, moved = current, now
            if bar is not None:
                bar.update(current)
    return True


def _db_one(stack: Stack, query: str, args: list[Any]) -> tuple[Any, ...]:
    with stack.db_connect() as db:
        row = db.execute(query, args).fetchone()
    return tuple(row) if row is not None else ()


def _compact(stack: Stack, document_id: int) -> int:
    output = stack.database.run_manage(
        "shell",
        "-c",
        f"from collaboration.services.updates import document_compact; print('MERGED', document_compact({document_id}))",
    )
    merged = [line for line in output.splitlines() if line.startswith("MERGED ")]
    return int(merged[-1].split()[1]) if merged else 0


# --- 1. the trace through /ws/docs ------------------------------------------------------------------


def replay_yjs(
    stack: Stack,
    document: SeededDocument,
    encoded: EncodedTrace,
    trace: editing_trace.Trace,
    *,
    timeout: float,
    progress: bool,
) -> ModeRun:
    """The trace's updates, each its own message, pipelined by one writer; a peer follows.
    The server may merge what one socket sent while it stored the previous batch (a group
    commit), so the peer is done when its state vector and text are the trace's.

    The writer keeps at most WINDOW updates ahead of what the peer has (known by the
    writer's clock in the peer's state vector: every inserted character is one tick), as
    TCP keeps a window: written all at once, the 8.7 MB of a full trace sat in socket
    buffers and the server closed the writer's socket (1011) after 39 s (revision 4c9213b)."""
    count = len(encoded.updates)
    final_text = trace.final_text
    final_total = sum(encoded.final_clocks.values())
    (writer_client,) = encoded.final_clocks
    # The writer's clock after each update.
    clock_after = list(itertools.accumulate(len(inserted) for _, _, inserted in trace.operations))

    async def scenario() -> ModeRun:
        writer, peer = YjsPeer("writer"), YjsPeer("peer")
        await writer.connect(stack.ws_url, document.key, document.tokens[0])
        await peer.connect(stack.ws_url, document.key, document.tokens[1])
        assert writer.socket is not None and peer.socket is not None
        frames = update_frames(encoded.updates)
        rss_before = _web_rss_kib(stack)
        bar = Progress("P7 trace through /ws/docs (clock)", final_total, enabled=progress)
        errors: list[str] = []
        sent = 0

        def send_more() -> None:
            nonlocal sent
            assert writer.socket is not None
            have = bisect.bisect_right(clock_after, peer.clocks().get(writer_client, 0))
            while sent < count and sent - have < WINDOW:
                end = min(count, sent + CHUNK)
                writer.socket.send_frames(b"".join(frames[sent:end]), end - sent)
                sent = end

        before = cpu_sample()
        started = time.perf_counter()
        deadline, moved, last = started + timeout, started, -1
        converged = False
        while True:
            if not writer.dropped:
                send_more()
            clocks = peer.clocks()
            if clocks == encoded.final_clocks and str(peer.text) == final_text:
                converged = True
                break
            now = time.perf_counter()
            if sum(clocks.values()) != last:
                last, moved = sum(clocks.values()), now
                bar.update(last)
            if now > deadline or now - moved > STALL_S:
                errors.append(f"the peer had {last:,} of {final_total:,} characters' structs when it stopped")
                break
            if peer.dropped:
                # The server closed it (it could not keep up): as a provider, connect again.
                await peer.reconnect()
            if writer.dropped:
                errors.append(
                    f"the server closed the writer's socket ({writer.socket.closed.result()} "
                    f"{writer.socket.close_reason!r}) after {now - started:.1f} s, {sent:,} updates sent"
                )
                break
            await asyncio.sleep(0.005)
        bar.finish(last)
        peer_seconds = time.perf_counter() - started
        stored = await asyncio.get_running_loop().run_in_executor(None, server_text, stack, document.key)
        seconds = time.perf_counter() - started
        cpu = cpu_seconds(stack, before, cpu_sample())
        run = ModeRun(
            mode="yjs",
            operations=count,
            seconds=seconds,
            peer_seconds=peer_seconds,
            converged=converged,
            stored_matches=stored == final_text,
            frames_sent=writer.socket.frames_out,
            bytes_sent=writer.socket.bytes_out,
            bytes_received_by_peer=peer.total_bytes_in,
            bytes_received_by_writer=writer.socket.bytes_in,
            web_rss_before_kib=rss_before,
            web_rss_after_kib=_web_rss_kib(stack),
            cpu_seconds={name: round(value, 3) for name, value in cpu.items()},
            relays_received=peer.updates_in,
            peer_reconnects=len(peer.close_codes),
            errors=errors,
        )
        writer.close()
        peer.close()
        return run

    return _run(scenario)


def measure_storage(
    stack: Stack, document: SeededDocument, encoded: EncodedTrace, final_text: str, replay: ModeRun
) -> Storage:
    """On a stack whose compaction is held off: what the replayed trace stored, then what a
    compaction leaves."""
    stored_bytes, tail = _db_one(
        stack, "SELECT stored_bytes, tail_updates FROM collaboration_document WHERE id = %s", [document.id]
    )
    rows, row_bytes = _db_one(
        stack,
        "SELECT count(*), coalesce(sum(octet_length(data)), 0) FROM collaboration_documentupdate WHERE document_id = %s",
        [document.id],
    )
    _compact(stack, document.id)
    (compacted,) = _db_one(
        stack, "SELECT stored_bytes FROM collaboration_document WHERE id = %s", [document.id]
    )
    return Storage(
        edits=len(encoded.updates),
        update_bytes=encoded.update_bytes,
        final_characters=len(final_text),
        rows_before=int(rows),
        row_bytes_before=int(row_bytes),
        stored_bytes_before=int(stored_bytes),
        stored_bytes_compacted=int(compacted),
        replay_seconds=replay.seconds,
        replay_converged=replay.converged and replay.stored_matches,
        replay_errors=[
            *replay.errors,
            *([] if replay.converged else ["the peer did not converge"]),
            *([] if replay.stored_matches else ["the stored text differs from the trace's"]),
        ],
    )


# --- 4. the trace through the OT mode ------------------------------------------------------------


def replay_ot(
    stack: Stack, document: SeededDocument, trace: editing_trace.Trace, *, timeout: float, progress: bool
) -> ModeRun:
    operations = [
        ot_text.op_at(position, insert=inserted, delete=deleted)
        for position, deleted, inserted in trace.operations
    ]
    count = len(operations)

    async def scenario() -> ModeRun:
        writer, reader = OtClient("writer", keep_text=False), OtClient("reader", keep_text=True)
        await writer.connect(stack.ws_url, document.key, document.tokens[0])
        await reader.connect(stack.ws_url, document.key, document.tokens[1])
        assert writer.socket is not None and reader.socket is not None
        rss_before = _web_rss_kib(stack)
        bar = Progress("P7 trace through /ws/docs/{key}/ot", count, enabled=progress)
        before = cpu_sample()
        started = time.perf_counter()
        # The editor types as fast as it can; acknowledgements are taken between keystrokes,
        # so what is typed while one operation is in flight is composed into the next.
        for number, op in enumerate(operations, start=1):
            writer.submit(op)
            await asyncio.sleep(0)
            if number % 10_000 == 0:
                bar.update(number)
        bar.finish(count)
        await _wait(
            lambda: (
                writer.inflight is None
                and reader.version == writer.version
                and reader.text == trace.final_text
            ),
            lambda: reader.ops_in,
            timeout=timeout,
            what="OT replay",
        )
        peer_seconds = time.perf_counter() - started
        text, _version = await asyncio.get_running_loop().run_in_executor(
            None,
            _db_one,
            stack,
            "SELECT ot_text, ot_version FROM collaboration_document WHERE id = %s",
            [document.id],
        )
        seconds = time.perf_counter() - started
        cpu = cpu_seconds(stack, before, cpu_sample())
        run = ModeRun(
            mode="ot",
            operations=count,
            seconds=seconds,
            peer_seconds=peer_seconds,
            converged=reader.text == trace.final_text,
            stored_matches=text == trace.final_text,
            frames_sent=writer.socket.frames_out,
            bytes_sent=writer.socket.bytes_out,
            bytes_received_by_peer=reader.socket.bytes_in,
            bytes_received_by_writer=writer.socket.bytes_in,
            web_rss_before_kib=rss_before,
            web_rss_after_kib=_web_rss_kib(stack),
            cpu_seconds={name: round(value, 3) for name, value in cpu.items()},
            round_trip_p50_ms=percentile(writer.round_trips, 0.5) * 1000,
            errors=[str(error) for error in writer.errors + reader.errors][:5],
        )
        writer.close()
        reader.close()
        return run

    return _run(scenario)


def _ot_storage(stack: Stack, document: SeededDocument) -> tuple[int, int, int]:
    """(bytes of the OT text, operations stored, their bytes as stored)."""
    text_bytes, operations, operation_bytes = _db_one(
        stack,
        """SELECT octet_length(d.ot_text), count(o.id), coalesce(sum(pg_column_size(o.op)), 0)
           FROM collaboration_document d LEFT JOIN collaboration_documentoperation o ON o.document_id = d.id
           WHERE d.id = %s GROUP BY d.id""",
        [document.id],
    )
    return int(text_bytes), int(operations), int(operation_bytes)


def one_at_a_time(
    stack: Stack,
    yjs_document: SeededDocument,
    ot_document: SeededDocument,
    trace: editing_trace.Trace,
    count: int,
) -> list[OneAtATime]:
    """Each mode, operation by operation, on the document the trace left (the trace's first
    ``count`` operations again: their positions are all inside it): the next one sent once
    the last reached the other client (Yjs: the peer applied it) or was acknowledged (OT,
    which acknowledges after storing and before relaying)."""
    operations = trace.operations[:count]
    characters = len(trace.final_text)

    async def yjs() -> OneAtATime:
        writer, peer = YjsPeer("writer"), YjsPeer("peer")
        await writer.connect(stack.ws_url, yjs_document.key, yjs_document.tokens[0])
        await peer.connect(stack.ws_url, yjs_document.key, yjs_document.tokens[1])
        times = []
        started = time.perf_counter()
        for position, deleted, inserted in operations:
            before = peer.updates_in
            sent = time.perf_counter()
            writer.edit(functools.partial(_trace_edit, position=position, deleted=deleted, inserted=inserted))
            await peer.wait_updates(before + 1, timeout=30)
            times.append(time.perf_counter() - sent)
        seconds = time.perf_counter() - started
        writer.close()
        peer.close()
        return OneAtATime(
            "yjs",
            len(times),
            seconds,
            percentile(times, 0.5) * 1000,
            percentile(times, 0.95) * 1000,
            characters,
        )

    async def ot() -> OneAtATime:
        writer = OtClient("writer", keep_text=False)
        await writer.connect(stack.ws_url, ot_document.key, ot_document.tokens[0])
        started = time.perf_counter()
        for position, deleted, inserted in operations:
            writer.submit(ot_text.op_at(position, insert=inserted, delete=deleted))
            await asyncio.wait_for(writer.idle.wait(), 30)
        seconds = time.perf_counter() - started
        writer.close()
        trips = writer.round_trips
        return OneAtATime(
            "ot",
            len(trips),
            seconds,
            percentile(trips, 0.5) * 1000,
            percentile(trips, 0.95) * 1000,
            characters,
        )

    return [_run(yjs), _run(ot)]


def _trace_edit(text: Any, *, position: int, deleted: int, inserted: str) -> None:
    if deleted:
        del text[position : position + deleted]
    if inserted:
        text.insert(position, inserted)


# --- 2. many documents, many editors -------------------------------------------------------------


def editing_load(
    stack: Stack,
    documents: list[SeededDocument],
    *,
    rate: float,
    seconds: float,
    seed: int = 7,
    progress: bool,
) -> LoadRun:
    """Every editor of every document edits at ``rate`` per second, open loop. An edit is
    known at a peer by its client's clock: every edit adds a character (an insert, or one
    time in four a replacement: a deletion and an insertion in one transaction), so the
    first message after which the peer's state vector reaches an edit's clock brought it,
    whether the server relayed it alone, merged with others, or in a sync after a
    reconnect."""
    editors = len(documents[0].tokens)
    rng = random.Random(seed)

    async def scenario() -> LoadRun:
        # Per editor (client id): (clock after the edit, when it was sent, measured?).
        sent: dict[int, list[tuple[int, float, bool]]] = {}
        # Per (peer, editor): how many of the editor's edits the peer has.
        credited: dict[tuple[str, int], int] = {}
        latencies: list[float] = []
        delivered = 0

        def arrived(peer: YjsPeer, update: bytes, arrival: float) -> None:
            nonlocal delivered
            # The document's state vector once the message is applied: an update's own
            # counts only structs from clock 0, so the document's is what tells.
            for client, clock in peer.clocks().items():
                edits = sent.get(client)
                if not edits or client == peer.doc.client_id:
                    continue
                at = credited.get((peer.name, client), 0)
                while at < len(edits) and edits[at][0] <= clock:
                    if edits[at][2]:
                        latencies.append(arrival - edits[at][1])
                        delivered += 1
                    at += 1
                credited[(peer.name, client)] = at

        rooms = [[YjsPeer(f"d{d}e{e}") for e in range(editors)] for d in range(len(documents))]
        for room in rooms:
            for peer in room:
                peer.on_update = functools.partial(arrived, peer)
        gate = asyncio.Semaphore(20)

        async def join(peer: YjsPeer, document: SeededDocument, token: str) -> None:
            async with gate:
                await peer.connect(stack.ws_url, document.key, token)

        await asyncio.gather(
            *(
                join(peer, document, document.tokens[number])
                for document, room in zip(documents, rooms, strict=True)
                for number, peer in enumerate(room)
            )
        )
        peers = [peer for room in rooms for peer in room]
        measuring = False

        def one_edit(peer: YjsPeer) -> None:
            length = len(peer.text)
            at = rng.randint(0, length)
            character = rng.choice(ALPHABET)
            replace = length > 0 and rng.random() < 0.25
            stamp = time.perf_counter()

            def change(text: Text) -> None:
                if replace:
                    del text[min(at, length - 1) : min(at, length - 1) + 1]
                text.insert(min(at, len(text)), character)

            peer.edit(change)
            sent.setdefault(peer.doc.client_id, []).append(
                (peer.clocks()[peer.doc.client_id], stamp, measuring)
            )

        async def keep_connected() -> None:
            # A provider reconnects when the server closes its socket; so do these.
            for peer in peers:
                if peer.dropped:
                    await peer.reconnect()

        # Warm-up: every editor types once and everyone has it.
        for peer in peers:
            one_edit(peer)
        await _wait(
            lambda: all(
                credited.get((p.name, q.doc.client_id), 0) >= 1
                for room in rooms
                for p in room
                for q in room
                if p is not q
            ),
            lambda: len(credited),
            timeout=60,
            what="warm-up",
        )
        lags: list[float] = []
        edits = 0
        interval = 1.0 / rate
        bar = Progress("P7 editing load", int(seconds), enabled=progress)

        async def editor(peer: YjsPeer, start: float) -> None:
            nonlocal edits
            due = start + rng.uniform(0, interval)
            while due < start + seconds:
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                lags.append(max(0.0, time.perf_counter() - due))
                one_edit(peer)
                edits += 1
                due += interval

        async def ticker(start: float) -> None:
            while (elapsed := time.perf_counter() - start) < seconds:
                bar.update(int(elapsed))
                await keep_connected()
                await asyncio.sleep(0.5)
            bar.finish(int(seconds))

        measuring = True
        before = cpu_sample()
        start = time.perf_counter() + 0.1
        await asyncio.gather(*(editor(peer, start) for peer in peers), ticker(start))
        expected = edits * (editors - 1)
        grace_until = time.perf_counter() + 30
        while delivered < expected and time.perf_counter() < grace_until:
            await keep_connected()
            await asyncio.sleep(0.05)
        cpu = cpu_seconds(stack, before, cpu_sample())
        converged = True
        for document, room in zip(documents, rooms, strict=True):
            texts = {str(peer.text) for peer in room}
            stored = await asyncio.get_running_loop().run_in_executor(None, server_text, stack, document.key)
            converged = converged and len(texts) == 1 and texts.pop() == stored
        for peer in peers:
            peer.close()
        return LoadRun(
            documents=len(documents),
            editors=editors,
            rate=rate,
            seconds=seconds,
            edits=edits,
            expected=expected,
            received=delivered,
            lost=max(0, expected - delivered),
            p50_ms=percentile(latencies, 0.5) * 1000,
            p95_ms=percentile(latencies, 0.95) * 1000,
            p99_ms=percentile(latencies, 0.99) * 1000,
            max_ms=max(latencies, default=float("nan")) * 1000,
            send_lag_p99_ms=percentile(lags, 0.99) * 1000,
            converged=converged,
            reconnects=sum(len(peer.close_codes) for peer in peers),
            cpu_seconds={name: round(value, 3) for name, value in cpu.items()},
        )

    return _run(scenario)


# --- the whole benchmark -----------------------------------------------------------------------------


def run(
    *,
    template: str | None,
    operations: int = editing_trace.B4_OPERATIONS,
    documents: int = 20,
    editors: int = 5,
    rate: float = 5.0,
    seconds: float = 30.0,
    sequential: int = 2_000,
    ot: bool = True,
    timeout: float = 1_800.0,
    load_web_processes: tuple[int, ...] = (DEFAULT_WEB_PROCESSES, 1),
    progress: bool = True,
) -> P7Result:
    trace = (
        editing_trace.b4_shaped()
        if operations == editing_trace.B4_OPERATIONS
        else editing_trace.scaled(operations)
    )
    encoded = encode_trace(trace)
    raise_fd_limit(4 * documents * editors + 1024)
    notes: list[str] = []
    with bench_stack(template=template, label="p7", web_processes=DEFAULT_WEB_PROCESSES) as stack:
        (yjs_document, ot_document) = seed_documents(stack, documents=2, members=2, label="p7")
        yjs = replay_yjs(stack, yjs_document, encoded, trace, timeout=timeout, progress=progress)
        stack.check_alive()
        (stored_default,) = _db_one(
            stack, "SELECT stored_bytes FROM collaboration_document WHERE id = %s", [yjs_document.id]
        )
        ot_run = replay_ot(stack, ot_document, trace, timeout=timeout, progress=progress) if ot else None
        ot_bytes = _ot_storage(stack, ot_document) if ot else None
        steps = (
            one_at_a_time(stack, yjs_document, ot_document, trace, min(sequential, len(trace.operations)))
            if sequential
            else []
        )
        stack.check_alive()
    # Storage: the same replay on a stack that never compacts on its own, then one compaction.
    with bench_stack(
        template=template, label="p7-storage", web_processes=DEFAULT_WEB_PROCESSES, env=NO_COMPACTION
    ) as stack:
        (document,) = seed_documents(stack, documents=1, members=2, label="p7-storage")
        replay = replay_yjs(stack, document, encoded, trace, timeout=timeout, progress=progress)
        storage = measure_storage(stack, document, encoded, trace.final_text, replay)
    storage.stored_bytes_default = int(stored_default)
    if ot_bytes is not None:
        storage.ot_text_bytes, storage.ot_operations, storage.ot_operation_bytes = ot_bytes
    loads: list[LoadRun] = []
    # The layout of make run, then one web process: the same load on fewer processes
    # (each document's sockets on one process, no stream read twice), for comparison.
    for web_processes in load_web_processes if documents and editors > 1 else ():
        with bench_stack(template=template, label="p7-load", web_processes=web_processes) as stack:
            seeded = seed_documents(stack, documents=documents, members=editors, label="p7-load")
            measured = editing_load(stack, seeded, rate=rate, seconds=seconds, progress=progress)
            measured.web_processes = web_processes
            loads.append(measured)
            stack.check_alive()
    return P7Result(
        trace={
            "operations": len(trace.operations),
            "inserts": trace.inserts,
            "deletes": trace.deletes,
            "final_characters": len(trace.final_text),
            "source": f"synthetic, B4-shaped (bench/editing_trace.py, seed {editing_trace.SEED})",
        },
        baseline={
            "implementation": encoded.implementation,
            "apply_seconds": encoded.apply_seconds,
            "peer_apply_seconds": encoded.peer_apply_seconds,
            "updates": len(encoded.updates),
            "update_bytes": encoded.update_bytes,
            "state_bytes": encoded.state_bytes,
        },
        yjs=yjs,
        storage=storage,
        load=loads[0] if loads else None,
        other_loads=loads[1:],
        ot=ot_run,
        one_at_a_time=steps,
        web_processes=DEFAULT_WEB_PROCESSES,
        notes=notes,
    )
