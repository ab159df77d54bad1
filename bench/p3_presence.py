"""P3 presence: what presence deltas cost with 5,000 subscribers watching 500 users each.

N users each hold one inbox socket on ONE web process (no Celery workers: presence runs
in the web process) and each subscribes to the presence of W others (user i watches users
i+1 .. i+W, wrapping around), so every user is watched by W subscribers, as in a contact
list. Measured:

- subscribing: every socket sends its ``presence.subscribe`` at once; the time until every
  socket has its snapshot frame, and what the subscriptions cost: the web process's
  resident memory, Redis's memory, keys and pub/sub channels, and CPU;
- deltas: users change status (an ``activity`` frame: active -> idle) at each of ``rates``
  per second for ``seconds``, each user once; every watcher should get a ``presence``
  frame naming that user with the new status (batched per PRESENCE_BATCH_SECONDS). The
  run waits until no frame has come for 2 s (60 s at most). Latency is from the activity
  frame's send to each watcher's frame; delivered and lost are counted per (watcher,
  change); CPU per change and per delivered entry.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.p3_sockets import inbox_paths, mint_tokens, redis_figures, seed_recipients, settled_rss_kib
from bench.stack import Progress, Stack, bench_stack, cpu_sample, cpu_seconds, percentile, raise_fd_limit
from bench.wsclient import ClientPool

PREFIX = "pr-"


@dataclass
class DeltaRun:
    """Status changes at one rate, and what the watchers got."""

    rate: float
    seconds: float
    changes: int
    expected: int
    delivered: int
    delta_frames: int
    # From the first change sent to the last entry delivered.
    span_s: float
    entries_per_second: float
    frames_per_second: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        return self.expected - self.delivered

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "lost": self.lost}


@dataclass
class PresenceResult:
    users: int
    watching: int
    subscribed: int
    subscribe_errors: int
    subscribe_seconds: float
    snapshot_entries: int
    web_rss_before_kib: int
    web_rss_after_kib: int
    redis_before: dict[str, Any]
    redis_after: dict[str, Any]
    subscribe_cpu: dict[str, float]
    runs: list[DeltaRun]
    client_processes: int = 2

    @property
    def web_kib_per_watch(self) -> float:
        watches = self.subscribed * self.watching
        return (self.web_rss_after_kib - self.web_rss_before_kib) / watches if watches else math.nan

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["runs"] = [run.as_dict() for run in self.runs]
        data["web_kib_per_watch"] = self.web_kib_per_watch
        return data

    def summary(self) -> str:
        runs = "; ".join(
            f"{run.changes} changes at {run.rate:.0f}/s: {run.delivered:,}/{run.expected:,} entries delivered "
            f"({run.entries_per_second:,.0f}/s in {run.frames_per_second:,.0f} frames/s), p50 {run.p50_ms:.0f} ms, "
            f"p99 {run.p99_ms:.0f} ms, max {run.max_ms:.0f} ms, web CPU {run.cpu.get('web', 0):.1f} s"
            for run in self.runs
        )
        return (
            f"P3 presence: {self.subscribed:,}/{self.users:,} sockets subscribed to {self.watching} users each in "
            f"{self.subscribe_seconds:.1f} s (web RSS +{(self.web_rss_after_kib - self.web_rss_before_kib) / 1024:.0f} MiB, "
            f"Redis +{(self.redis_after['used_memory'] - self.redis_before['used_memory']) / 2**20:.1f} MiB, "
            f"{self.redis_after['pubsub_channels']:,} pub/sub channels); {runs}"
        )


def _rounded(cpu: dict[str, float]) -> dict[str, float]:
    return {name: round(value, 3) for name, value in cpu.items()}


def _settle(pool: ClientPool, quiet: float = 2.0, limit: float = 60.0) -> None:
    """Wait until no frame has arrived for ``quiet`` seconds (or ``limit`` passes)."""
    deadline = time.monotonic() + limit
    count, since = pool.recorded(), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < quiet:
        time.sleep(0.2)
        now = pool.recorded()
        if now != count:
            count, since = now, time.monotonic()


def _changes(
    stack: Stack, pool: ClientPool, users: list[int], external_ids: list[str], rate: float, watching: int
) -> DeltaRun:
    """``users`` go idle, one after the other at ``rate`` per second; what their watchers got."""
    sent_at: dict[str, float] = {}
    idle = json.dumps({"type": "activity", "state": "idle"})
    pool.record(True)
    cpu_before = cpu_sample()
    start = time.perf_counter()
    for n, index in enumerate(users):
        delay = start + n / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        for _, at in pool.send([(index, idle)]):
            sent_at[external_ids[index]] = at
    seconds = time.perf_counter() - start
    _settle(pool)
    cpu = cpu_seconds(stack, cpu_before, cpu_sample())
    pool.record(False)
    deltas = pool.take("presence")
    latencies: list[float] = []
    delivered: set[tuple[int, str]] = set()
    last = start
    for watcher, arrival, entries in deltas:
        for external_id, status in entries:
            if status == "idle" and external_id in sent_at and (watcher, external_id) not in delivered:
                delivered.add((watcher, external_id))
                latencies.append((arrival - sent_at[external_id]) * 1000)
                last = max(last, arrival)
    span = max(last - start, seconds)
    return DeltaRun(
        rate=rate,
        seconds=seconds,
        changes=len(sent_at),
        expected=len(sent_at) * watching,
        delivered=len(delivered),
        delta_frames=len(deltas),
        span_s=span,
        entries_per_second=len(delivered) / span,
        frames_per_second=len(deltas) / span,
        p50_ms=percentile(latencies, 0.50),
        p99_ms=percentile(latencies, 0.99),
        max_ms=max(latencies, default=math.nan),
        cpu=_rounded(cpu),
    )


def measure(
    stack: Stack,
    *,
    users: int,
    watching: int,
    rates: Sequence[float],
    seconds: float,
    client_processes: int,
    subscribe_timeout: float,
    progress: bool,
) -> PresenceResult:
    seed_recipients(stack, PREFIX, users)
    tokens = mint_tokens(stack, PREFIX)
    external_ids = [f"{PREFIX}{n}" for n in range(1, users + 1)]
    with ClientPool(client_processes) as pool:
        bar = Progress(f"P3 presence: opening {users:,} sockets", users, enabled=progress)
        opened, errors, _ = pool.open(stack.ws_url, inbox_paths(tokens, external_ids), concurrency=50)
        bar.finish(opened)
        if opened < users:
            raise RuntimeError(f"P3 presence: {opened:,}/{users:,} sockets opened: {errors}")
        time.sleep(1.0)
        web = stack.web_pid()
        rss_before, redis_before = settled_rss_kib(web), redis_figures(stack)

        # Subscribing: every socket at once.
        frames = [
            (
                i,
                json.dumps(
                    {
                        "type": "presence.subscribe",
                        "recipients": [external_ids[(i + k) % users] for k in range(1, watching + 1)],
                    }
                ),
            )
            for i in range(users)
        ]
        pool.record(True)
        cpu_before = cpu_sample()
        started = time.perf_counter()
        pool.send(frames)
        pool.wait_recorded(users, subscribe_timeout)
        subscribe_cpu = cpu_seconds(stack, cpu_before, cpu_sample())
        pool.record(False)
        snapshots = pool.take("presence_count")
        # socket index -> (arrival, entries) of its first presence frame (-1: an error frame)
        firsts: dict[int, tuple[float, int]] = {}
        for index, arrival, entries in snapshots:
            firsts.setdefault(index, (arrival, entries))
        subscribed = sum(1 for _, entries in firsts.values() if entries == watching)
        subscribe_seconds = max((at for at, _ in firsts.values()), default=math.nan) - started
        time.sleep(1.0)
        rss_after, redis_after = settled_rss_kib(web), redis_figures(stack)
        if progress:
            print(f"P3 presence: {subscribed:,} sockets subscribed in {subscribe_seconds:.1f} s", flush=True)

        # Deltas: users go idle, each once (never the same user twice), at each rate in turn.
        order = random.Random(7).sample(range(users), users)
        runs = []
        for rate in rates:
            count = min(len(order), max(1, int(rate * seconds)))
            changing, order = order[:count], order[count:]
            runs.append(_changes(stack, pool, changing, external_ids, rate, watching))
            if progress:
                print(f"P3 presence: {runs[-1].as_dict()}", flush=True)
        stack.check_alive()

    return PresenceResult(
        users=users,
        watching=watching,
        subscribed=subscribed,
        subscribe_errors=sum(1 for _, entries in firsts.values() if entries < 0),
        subscribe_seconds=subscribe_seconds,
        snapshot_entries=sum(entries for _, entries in firsts.values() if entries > 0),
        web_rss_before_kib=rss_before,
        web_rss_after_kib=rss_after,
        redis_before=redis_before,
        redis_after=redis_after,
        subscribe_cpu=_rounded(subscribe_cpu),
        runs=runs,
        client_processes=client_processes,
    )


def run(
    *,
    template: str | None,
    users: int = 5_000,
    watching: int = 500,
    rates: Sequence[float] = (5.0, 20.0),
    seconds: float = 15.0,
    client_processes: int = 2,
    subscribe_timeout: float = 600.0,
    progress: bool = True,
) -> PresenceResult:
    """On a fresh stack: one uvicorn process, no Celery workers or beat."""
    raise_fd_limit(2 * users + 4096)
    with bench_stack(template=template, workers=(), beat=False, label="p3-presence") as stack:
        return measure(
            stack,
            users=users,
            watching=min(watching, users - 1),
            rates=rates,
            seconds=seconds,
            client_processes=client_processes,
            subscribe_timeout=subscribe_timeout,
            progress=progress,
        )
