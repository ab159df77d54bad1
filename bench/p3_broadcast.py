"""P3 broadcast: one event to 10,000 connected users, accept → frame at every socket.

N recipients subscribed to one topic each hold one inbox websocket on ONE web process
(the process P3's memory figure is measured on), opened by a light client in a few
processes (bench/wsclient.py). One event is POSTed to the topic; the latency of each
socket is the time from the API's answer (202) to the arrival of its ``notification``
frame for that event. Several rounds, each a new event to all. The platform runs as
``make run`` runs it otherwise (its Celery workers and beat).

Baseline, in the same run on the same machine and Redis: the same number of bare websocket
clients on a bare websocket server (bench/p2_baseline.py, on uvloop) and ONE Redis
PUBLISH that the server writes to every socket; latency from just before the PUBLISH.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from bench import p1_fanout, p2_baseline
from bench.p3_sockets import inbox_paths, mint_tokens
from bench.stack import Progress, Stack, bench_stack, cpu_sample, cpu_seconds, percentile, raise_fd_limit
from bench.wsclient import ClientPool

TARGET_P99_S = 1.0
# Each recipient gets its notification frame and then its unread count.
FRAMES_PER_RECIPIENT = 2


@dataclass
class BroadcastRound:
    round: int
    received: int
    # Seconds from the API's answer to each frame; and from just before the POST.
    p50_s: float
    p99_s: float
    max_s: float
    p99_from_post_s: float
    accept_s: float
    # Seconds after the POST: the first and last inbox row of the event were written.
    first_row_s: float
    last_row_s: float
    first_frame_s: float
    cpu_seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class BroadcastResult:
    recipients: int
    sockets: int
    web_processes: int
    connect_seconds: float
    rounds: list[BroadcastRound]
    baseline_sockets: int
    baseline_received: int
    baseline_p50_s: float
    baseline_p99_s: float
    baseline_max_s: float
    client_processes: int

    @property
    def headline(self) -> BroadcastRound:
        """The round with the median p99 (the worst of the two middle ones)."""
        ordered = sorted(self.rounds, key=lambda r: r.p99_s)
        return ordered[len(ordered) // 2]

    @property
    def meets_target(self) -> bool:
        best = self.headline
        return best.received == self.recipients and best.p99_s <= TARGET_P99_S

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["headline"] = asdict(self.headline)
        data["meets_target"] = self.meets_target
        return data

    def summary(self) -> str:
        rounds = "; ".join(
            f"round {r.round}: {r.received:,} received, p50 {r.p50_s * 1000:.0f} ms, p99 {r.p99_s * 1000:.0f} ms, "
            f"max {r.max_s * 1000:.0f} ms (last row {r.last_row_s * 1000:.0f} ms after the POST)"
            for r in self.rounds
        )
        return (
            f"P3 broadcast to {self.recipients:,} sockets on {self.web_processes} web process(es): {rounds}; "
            f"bare publish -> {self.baseline_sockets:,} bare websockets: p50 {self.baseline_p50_s * 1000:.0f} ms, "
            f"p99 {self.baseline_p99_s * 1000:.0f} ms, {self.baseline_received:,} received"
        )


def _rows(stack: Stack, event_id: str) -> tuple[float, float]:
    with stack.db_connect() as connection:
        row = connection.execute(
            """SELECT extract(epoch FROM min(i.created_at)), extract(epoch FROM max(i.created_at))
               FROM notifications_inboxitem i WHERE i.event_id = %s""",
            [event_id],
        ).fetchone()
    return (float(row[0]), float(row[1])) if row and row[0] is not None else (math.nan, math.nan)


def _broadcast(
    stack: Stack, pool: ClientPool, number: int, recipients: int, timeout: float
) -> BroadcastRound:
    wall_offset = time.time() - time.perf_counter()
    pool.record(True)
    with stack.client(timeout=60) as client:
        cpu_before = cpu_sample()
        posted = time.perf_counter()
        response = client.post(
            "/api/v1/events/",
            json={"type": p1_fanout.TYPE_KEY, "topic": p1_fanout.TOPIC_KEY, "data": {"n": number}},
        )
        accepted = time.perf_counter()
    if response.status_code != 202:
        raise RuntimeError(f"POST /api/v1/events/ answered {response.status_code}: {response.text}")
    event_id = str(response.json()["id"])
    pool.wait_recorded(recipients * FRAMES_PER_RECIPIENT, timeout)
    cpu = cpu_seconds(stack, cpu_before, cpu_sample())
    pool.record(False)
    arrivals = {index: at for index, at, event in pool.take("notification") if event == event_id}
    latencies = [at - accepted for at in arrivals.values()]
    first_row, last_row = _rows(stack, event_id)
    post_wall = posted + wall_offset
    return BroadcastRound(
        round=number,
        received=len(arrivals),
        p50_s=percentile(latencies, 0.50),
        p99_s=percentile(latencies, 0.99),
        max_s=max(latencies, default=math.nan),
        p99_from_post_s=percentile([at - posted for at in arrivals.values()], 0.99),
        accept_s=accepted - posted,
        first_row_s=first_row - post_wall,
        last_row_s=last_row - post_wall,
        first_frame_s=min(arrivals.values(), default=math.nan) - posted,
        cpu_seconds={name: round(value, 3) for name, value in cpu.items()},
    )


def _baseline(
    stack: Stack, sockets: int, client_processes: int, progress: bool
) -> tuple[int, int, list[float]]:
    """(sockets open, frames received, latencies) of one bare publish to every bare socket."""
    with p2_baseline.bare_server(stack, uvloop=True) as server, ClientPool(client_processes) as pool:
        opened, errors, _ = pool.open(
            f"ws://127.0.0.1:{server.port}", ["/all"] * sockets, concurrency=100, wait_first=False
        )
        if errors:
            print(f"P3 broadcast baseline: {sockets - opened} sockets not opened: {errors}", flush=True)
        publisher = redis.Redis.from_url(stack.redis.url)
        try:
            # A warm-up publish (the server's first send to each socket), then the measured one.
            for key in ("warm", "measured"):
                pool.record(True)
                sent = time.perf_counter()
                publisher.publish(f"{p2_baseline.CHANNEL_PREFIX}all", json.dumps({"id": key}))
                pool.wait_recorded(opened, 60)
                pool.record(False)
                rows = pool.take("raw")
        finally:
            publisher.close()
        latencies = [at - sent for _, at, payload in rows if b'"measured"' in payload]
        if progress:
            print(
                f"P3 broadcast baseline: {len(latencies):,}/{opened:,} bare sockets got the publish",
                flush=True,
            )
        return opened, len(latencies), latencies


def measure(
    stack: Stack,
    *,
    recipients: int,
    rounds: int = 3,
    client_processes: int = 2,
    timeout: float = 120.0,
    progress: bool = True,
) -> BroadcastResult:
    p1_fanout.seed(stack, recipients)
    p1_fanout.create_type(stack)
    tokens = mint_tokens(stack, "p1-")
    external_ids = [f"p1-{n}" for n in range(1, recipients + 1)]
    with ClientPool(client_processes) as pool:
        bar = Progress(f"P3 broadcast: opening {recipients:,} sockets", recipients, enabled=progress)
        opened, errors, connect_seconds = pool.open(
            stack.ws_url, inbox_paths(tokens, external_ids), concurrency=50
        )
        bar.finish(opened)
        if opened < recipients:
            raise RuntimeError(f"P3 broadcast: {opened:,}/{recipients:,} sockets opened: {errors}")
        # A warm-up event to a few of them (template, first publish), not measured.
        with stack.client(timeout=60) as client:
            client.post(
                "/api/v1/events/",
                json={"type": p1_fanout.TYPE_KEY, "recipients": external_ids[:10], "data": {"n": 0}},
            ).raise_for_status()
        time.sleep(2.0)
        results = []
        for number in range(1, rounds + 1):
            result = _broadcast(stack, pool, number, recipients, timeout)
            if progress:
                print(
                    f"P3 broadcast round {number}: {result.received:,}/{recipients:,} frames, "
                    f"p50 {result.p50_s * 1000:.0f} ms, p99 {result.p99_s * 1000:.0f} ms",
                    flush=True,
                )
            results.append(result)
            time.sleep(2.0)
        stack.check_alive()
    base_open, base_received, base_latencies = _baseline(stack, recipients, client_processes, progress)
    return BroadcastResult(
        recipients=recipients,
        sockets=opened,
        web_processes=stack.platform.web_processes,
        connect_seconds=connect_seconds,
        rounds=results,
        baseline_sockets=base_open,
        baseline_received=base_received,
        baseline_p50_s=percentile(base_latencies, 0.50),
        baseline_p99_s=percentile(base_latencies, 0.99),
        baseline_max_s=max(base_latencies, default=math.nan),
        client_processes=client_processes,
    )


def run(
    *,
    template: str | None,
    recipients: int = 10_000,
    rounds: int = 3,
    web_processes: int = 1,
    client_processes: int = 2,
    progress: bool = True,
) -> BroadcastResult:
    """Broadcast on a fresh stack (uvicorn, ``web_processes`` web processes, the default
    workers and beat), then the bare baseline on the same Redis."""
    raise_fd_limit(2 * recipients + 4096)
    with bench_stack(template=template, label="p3-broadcast", web_processes=web_processes) as stack:
        return measure(
            stack, recipients=recipients, rounds=rounds, client_processes=client_processes, progress=progress
        )
