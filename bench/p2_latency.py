"""P2: API accept to websocket frame, at a fixed event rate.

K recipients each hold one inbox websocket. Events are POSTed at ``rate`` per second, each
to one recipient (round-robin, explicit ``recipients`` list), by a few concurrent HTTP
connections. For every event the latency is the time from just before its POST to the
arrival of the ``notification`` frame whose ``item.event_id`` is the id the API returned.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import uvloop
from websockets.asyncio.client import ClientConnection, connect

from bench import p2_baseline
from bench.provider_sends import create_type
from bench.stack import Progress, Stack, bench_stack, cpu_sample, cpu_seconds, percentile
from harness.processes import Server
from project.processes import DEFAULT_WEB_PROCESSES

TYPE_KEY = "bench.p2"
DEFAULT_SERVER: Server = "uvicorn"  # make run's web server
TARGET_P50_MS = 50.0
TARGET_P99_MS = 250.0


@dataclass
class P2Result:
    server: str
    clients: int
    target_rate: float
    seconds: float
    sent: int
    accepted: int
    received: int
    lost: int
    http_errors: int
    achieved_rate: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    accept_p50_ms: float
    accept_p99_ms: float
    send_lag_max_ms: float
    inbox_rows: int
    seq_gaps: int
    late_over_1s: int
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    # CPU milliseconds per accepted event, by process (web, each worker, PostgreSQL, Redis,
    # the load generator, the whole machine), over the measured phase.
    cpu_ms_per_event: dict[str, float] = field(default_factory=dict)
    web_processes: int = 1
    # Where the time goes, p50 of each stage in ms (stage_medians).
    stage_p50_ms: dict[str, float] = field(default_factory=dict)
    # The first HTTP errors the load generator saw (exception or status and body), if any.
    http_error_sample: list[str] = field(default_factory=list)
    # The same rate through a bare Redis publish to a bare websocket client on this machine,
    # measured right after (bench/p2_baseline.py): p50, p99, lost.
    baseline: dict[str, float] = field(default_factory=dict)

    @property
    def meets_target(self) -> bool:
        return self.lost == 0 and self.p50_ms <= TARGET_P50_MS and self.p99_ms <= TARGET_P99_MS

    @property
    def holds_p99(self) -> bool:
        """Nothing lost, every event accepted, and p99 within the loaded target."""
        return self.lost == 0 and self.http_errors == 0 and self.p99_ms <= TARGET_P99_MS

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("latencies_ms")
        data["meets_target"] = self.meets_target
        data["holds_p99"] = self.holds_p99
        return data

    def summary(self) -> str:
        return (
            f"P2 [{self.server}] {self.clients} clients, {self.achieved_rate:.0f}/{self.target_rate:.0f} events/s "
            f"for {self.seconds:.0f}s: p50 {self.p50_ms:.1f} ms, p95 {self.p95_ms:.1f} ms, p99 {self.p99_ms:.1f} ms, "
            f"max {self.max_ms:.1f} ms; {self.received}/{self.accepted} frames, lost {self.lost}, "
            f"HTTP errors {self.http_errors}, >1s {self.late_over_1s}"
            + (
                "; stages p50 "
                + ", ".join(f"{name} {ms:.1f}" for name, ms in self.stage_p50_ms.items())
                + " ms"
                if self.stage_p50_ms
                else ""
            )
            + (
                f"; bare publish -> frame p50 {self.baseline['p50_ms']:.2f} ms, p99 {self.baseline['p99_ms']:.2f} ms "
                f"(P2 p50 {self.p50_ms / self.baseline['p50_ms']:.0f}x)"
                if self.baseline.get("p50_ms")
                else ""
            )
            + (
                "; CPU ms/event "
                + ", ".join(f"{name} {ms:.2f}" for name, ms in self.cpu_ms_per_event.items())
                if self.cpu_ms_per_event
                else ""
            )
        )


def prepare(stack: Stack, clients: int) -> list[str]:
    """Create the type and ``clients`` recipients over HTTP; return one token each."""
    tokens = []
    with stack.client() as client:
        create_type(
            client,
            key=TYPE_KEY,
            channel="inapp",
            template={"title": "P2 {{ data.i }}", "body": "latency probe", "url": ""},
        )
        for index in range(clients):
            external_id = f"p2-{index}"
            response = client.put(f"/api/v1/recipients/{external_id}/", json={"name": external_id})
            response.raise_for_status()
            response = client.post(f"/api/v1/recipients/{external_id}/token/")
            response.raise_for_status()
            tokens.append(response.json()["token"])
    return tokens


class Listener:
    """One inbox websocket: records when each notification frame arrives."""

    def __init__(self, index: int, socket: ClientConnection, arrivals: dict[str, float]) -> None:
        self.index = index
        self.socket = socket
        self.arrivals = arrivals
        self.seqs: list[int] = []
        self.first_frame = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        async for raw in self.socket:
            now = time.perf_counter()
            frame = json.loads(raw)
            kind = frame.get("type")
            if kind == "notification":
                self.arrivals.setdefault(str(frame["item"]["event_id"]), now)
                self.seqs.append(int(frame["seq"]))
            elif kind == "unread_count":
                self.first_frame.set()

    def seq_gaps(self) -> int:
        """Missing or repeated sequence numbers among the frames received."""
        if not self.seqs:
            return 0
        expected = list(range(1, max(self.seqs) + 1))
        return len(set(expected) - set(self.seqs)) + (len(self.seqs) - len(set(self.seqs)))


STAGES = (
    ("request", "POST sent -> event stored (HTTP, Django, ingest up to its INSERT)"),
    ("to fan-out", "event stored -> fan-out planned it (commit, the web process's fan-out thread)"),
    ("fan-out", "fan-out planned -> in-app item written (plan, deliveries, inbox)"),
    ("to frame", "item written -> frame at the client (commit, channel layer, web, socket)"),
)


def stage_medians(
    stamps: Sequence[tuple[str, Any, Any, Any]],
    sent_at: dict[str, float],
    arrivals: dict[str, float],
    wall_offset: float,
) -> dict[str, float]:
    """p50 in ms of each stage of STAGES, from the rows' timestamps (event, delivery and
    inbox item ``created_at``, all from this machine's clock) and the client's times."""
    spans: dict[str, list[float]] = {name: [] for name, _ in STAGES}
    for event_id, event_at, delivery_at, item_at in stamps:
        if event_id not in sent_at or event_id not in arrivals:
            continue
        sent = sent_at[event_id] + wall_offset
        arrived = arrivals[event_id] + wall_offset
        points = (sent, float(event_at), float(delivery_at), float(item_at), arrived)
        for (name, _), start, end in zip(STAGES, points, points[1:], strict=False):
            spans[name].append((end - start) * 1000)
    return {name: round(percentile(values, 0.5), 2) for name, values in spans.items() if values}


async def _open_listeners(stack: Stack, tokens: Sequence[str], arrivals: dict[str, float]) -> list[Listener]:
    listeners = []
    for index, token in enumerate(tokens):
        socket = await connect(f"{stack.ws_url}/ws/inbox/?token={token}", open_timeout=30, max_size=2**22)
        listener = Listener(index, socket, arrivals)
        listener.task = asyncio.create_task(listener.run())
        listeners.append(listener)
    await asyncio.wait_for(asyncio.gather(*(listener.first_frame.wait() for listener in listeners)), 30)
    return listeners


async def _send_events(
    client: aiohttp.ClientSession,
    *,
    count: int,
    rate: float,
    clients: int,
    senders: int,
    tag: str,
    sent_at: dict[str, float],
    accept_ms: list[float],
    lags_ms: list[float],
    errors: list[str],
    progress: Progress | None = None,
) -> float:
    """POST ``count`` events at ``rate``/s, open loop (each at its scheduled time, at most
    ``senders`` in flight). Returns the seconds the sending took."""
    gate = asyncio.Semaphore(senders)
    done = 0

    async def one(index: int, scheduled: float) -> None:
        nonlocal done
        async with gate:
            body = {
                "type": TYPE_KEY,
                "recipients": [f"p2-{index % clients}"],
                "data": {"i": index, "tag": tag},
            }
            before = time.perf_counter()
            lags_ms.append((before - scheduled) * 1000)
            try:
                async with client.post("/api/v1/events/", json=body) as response:
                    status, text = response.status, await response.text()
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                return
            after = time.perf_counter()
            if status != 202:
                errors.append(f"{status}: {text[:200]}")
                return
            sent_at[json.loads(text)["id"]] = before
            accept_ms.append((after - before) * 1000)
            done += 1
            if progress is not None:
                progress.update(done)

    started = time.perf_counter()
    tasks = []
    for index in range(count):
        scheduled = started + index / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(index, scheduled)))
    await asyncio.gather(*tasks)
    return time.perf_counter() - started


async def _wait_for_frames(ids: Sequence[str], arrivals: dict[str, float], timeout: float) -> None:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if all(event_id in arrivals for event_id in ids):
            return
        await asyncio.sleep(0.05)


async def measure(
    stack: Stack,
    *,
    clients: int,
    rate: float,
    seconds: float,
    senders: int = 8,
    grace: float = 90.0,
    progress: bool = True,
) -> P2Result:
    tokens = prepare(stack, clients)
    # The client times with perf_counter; the platform stamps rows with the wall clock.
    wall_offset = time.time() - time.perf_counter()
    arrivals: dict[str, float] = {}
    listeners = await _open_listeners(stack, tokens, arrivals)
    try:
        # aiohttp on uvloop (run): the load generator shares the machine with the platform,
        # and httpx on asyncio's own loop cost it 3.5 ms of CPU per event against 0.9.
        async with aiohttp.ClientSession(
            base_url=stack.web_url,
            headers=stack.headers,
            connector=aiohttp.TCPConnector(limit=senders),
            timeout=aiohttp.ClientTimeout(total=30),
        ) as client:
            # Warm-up: one event per client, so that first-use costs (connections, template
            # compilation, imports) are not measured.
            warm_sent: dict[str, float] = {}
            await _send_events(
                client,
                count=clients,
                rate=max(rate, 50.0),
                clients=clients,
                senders=senders,
                tag="warmup",
                sent_at=warm_sent,
                accept_ms=[],
                lags_ms=[],
                errors=[],
            )
            await _wait_for_frames(list(warm_sent), arrivals, grace)

            count = max(1, int(round(rate * seconds)))
            sent_at: dict[str, float] = {}
            accept_ms: list[float] = []
            lags_ms: list[float] = []
            errors: list[str] = []
            bar = Progress(f"P2 {stack.platform.server}: events accepted", count, enabled=progress)
            cpu_before = cpu_sample()
            took = await _send_events(
                client,
                count=count,
                rate=rate,
                clients=clients,
                senders=senders,
                tag="measure",
                sent_at=sent_at,
                accept_ms=accept_ms,
                lags_ms=lags_ms,
                errors=errors,
                progress=bar,
            )
            bar.finish(len(sent_at))
            await _wait_for_frames(list(sent_at), arrivals, grace)
            cpu = cpu_seconds(stack, cpu_before, cpu_sample())
    finally:
        for listener in listeners:
            await listener.socket.close()
            if listener.task is not None:
                listener.task.cancel()
        await asyncio.gather(
            *(listener.task for listener in listeners if listener.task), return_exceptions=True
        )

    latencies = [
        (arrivals[event_id] - before) * 1000 for event_id, before in sent_at.items() if event_id in arrivals
    ]
    received = len(latencies)
    with stack.db_connect() as connection:
        inbox_rows = connection.execute(
            "SELECT count(*) FROM notifications_inboxitem WHERE event_id = ANY(%s::uuid[])", [list(sent_at)]
        ).fetchone()[0]
        stamps = connection.execute(
            """SELECT e.id::text, extract(epoch FROM e.created_at), extract(epoch FROM d.created_at),
                      extract(epoch FROM i.created_at)
               FROM notifications_event e
               JOIN notifications_delivery d ON d.event_id = e.id AND d.channel = 'inapp'
               JOIN notifications_inboxitem i ON i.delivery_id = d.id
               WHERE e.id = ANY(%s::uuid[])""",
            [list(sent_at)],
        ).fetchall()
    stages = stage_medians(stamps, sent_at, arrivals, wall_offset)
    if errors:
        print(f"P2 [{stack.platform.server}] first HTTP errors: {errors[:3]}", flush=True)
    return P2Result(
        http_error_sample=errors[:3],
        web_processes=stack.platform.web_processes,
        server=stack.platform.server,
        clients=clients,
        target_rate=rate,
        seconds=seconds,
        sent=count,
        accepted=len(sent_at),
        received=received,
        lost=len(sent_at) - received,
        http_errors=len(errors),
        achieved_rate=len(sent_at) / took if took > 0 else 0.0,
        p50_ms=percentile(latencies, 0.50),
        p95_ms=percentile(latencies, 0.95),
        p99_ms=percentile(latencies, 0.99),
        max_ms=max(latencies) if latencies else math.nan,
        mean_ms=sum(latencies) / received if received else math.nan,
        accept_p50_ms=percentile(accept_ms, 0.50),
        accept_p99_ms=percentile(accept_ms, 0.99),
        send_lag_max_ms=max(lags_ms) if lags_ms else 0.0,
        inbox_rows=inbox_rows,
        seq_gaps=sum(listener.seq_gaps() for listener in listeners),
        late_over_1s=sum(1 for value in latencies if value > 1000),
        stage_p50_ms=stages,
        latencies_ms=latencies,
        cpu_ms_per_event={
            name: round(seconds * 1000 / len(sent_at), 2) for name, seconds in cpu.items() if sent_at
        },
    )


def run(
    *,
    template: str | None,
    server: Server = "uvicorn",
    clients: int = 50,
    rate: float = 200.0,
    seconds: float = 20.0,
    senders: int = 8,
    grace: float = 90.0,
    progress: bool = True,
    web_processes: int | None = None,
    baseline: bool = True,
) -> P2Result:
    """One P2 run on a fresh stack with ``server`` as the web server: as make run runs it
    (DEFAULT_WEB_PROCESSES uvicorn processes sharing the port, one daphne) unless
    ``web_processes`` says otherwise; then, with ``baseline``, the same rate through a bare
    Redis publish to bare websocket clients (bench/p2_baseline.py)."""
    if web_processes is None:
        web_processes = DEFAULT_WEB_PROCESSES if server == "uvicorn" else 1
    with bench_stack(template=template, server=server, label="p2", web_processes=web_processes) as stack:
        result = uvloop.run(
            measure(
                stack,
                clients=clients,
                rate=rate,
                seconds=seconds,
                senders=senders,
                grace=grace,
                progress=progress,
            )
        )
        stack.check_alive()
        if baseline:
            bare = p2_baseline.measure(stack, clients=clients, rate=rate, seconds=seconds)
            result.baseline = {"p50_ms": bare.p50_ms, "p99_ms": bare.p99_ms, "lost": bare.lost}
        return result
