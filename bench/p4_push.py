"""P4: event → push accepted by the (sandbox) provider for offline users, at a target rate.

N recipients, each with one active FCM device (token ``bench-<external_id>``) and no open
socket (offline), are seeded with SQL (``generate_series``); a notification type with only
the push channel is created over HTTP. An open-loop load generator (httpx, asyncio, a few
concurrent keep-alive connections) POSTs events on a fixed schedule, each event once:

- ``per-recipient``: one event per push, ``recipients: [one]``, at the target rate;
- ``topic``: events to topics of ``per_event`` recipients each, at target / per_event
  events per second (for when the API cannot accept one event per push at the target
  rate on two cores).

The time each POST was sent is kept by the event id the API returns. The sandbox records
every FCM request with the time it arrived and the FCM data payload, which carries the
event id and the delivery's idempotency key: the latency of a push is the arrival of the
first accepted request with its key minus the send time of its event. Pushes of posted
events that the sandbox never accepted within the grace period are lost.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from bench.p1_fanout import Layout
from bench.p2_latency import percentile
from bench.provider_sends import (
    UNPACED_ENV,
    accepted_records,
    create_type,
    delivery_statuses,
    first_acceptances,
    post_event,
    seed_audience,
    topic_key,
    wait_settled,
)
from bench.stack import Progress, Stack, bench_stack, cpu_sample, cpu_seconds
from harness.processes import DEFAULT_WORKERS, WorkerSpec

TYPE_KEY = "bench.p4"
# Recipients are <PREFIX><tag>-<n>, warm-up recipients <WARMUP_PREFIX><tag>-<n>.
PREFIX = "p4"
WARMUP_PREFIX = "p4w"
# Two provider dispatch batches (200 each), so that both pool processes of the send worker
# make their first calls (OAuth token exchange, connection pools) before the measurement.
WARMUP_RECIPIENTS = 400
TARGET_RATE = 1_000.0
TARGET_P99_S = 5.0
MODES = ("topic", "per-recipient")

SEND_QUEUES = ("push", "sms", "email", "webhook")
DEFAULT_LAYOUT = Layout("default (send -c2)")
LAYOUTS: tuple[Layout, ...] = (
    DEFAULT_LAYOUT,
    Layout(
        "send -c3",
        workers=(*DEFAULT_WORKERS[:2], WorkerSpec("send", SEND_QUEUES, concurrency=3)),
    ),
    # One claim and one record transaction per dispatch batch (200) instead of four, and
    # twice the provider calls in flight per pool process.
    Layout(
        "send -c2, SEND_CHUNK 200, SEND_CONCURRENCY 32", env={"SEND_CHUNK": "200", "SEND_CONCURRENCY": "32"}
    ),
)


def below_saturation_rate(result: P4Result) -> float:
    """A rate this stack sustained with room to spare (80% of what it accepted, in steps of
    50/s): the run there shows the path's latency rather than a growing backlog."""
    accepted = result.accepted_per_second if not math.isnan(result.accepted_per_second) else 0.0
    return max(50.0, math.floor(0.8 * accepted / 50) * 50)


@dataclass
class P4Result:
    mode: str
    layout: str
    settings: str
    target_rate: float
    seconds: float
    per_event: int
    events_scheduled: int
    events_posted: int
    http_errors: int
    post_rate: float  # events/s accepted by the API while posting
    expected: int  # pushes the posted events stand for
    accepted: int  # of those, distinct idempotency keys the sandbox accepted
    duplicates: int
    lost: int
    first_accept_s: float  # after the first POST
    last_accept_s: float
    p50_s: float
    p95_s: float
    p99_s: float
    max_s: float
    mean_s: float
    post_lag_max_s: float  # how far the generator fell behind its schedule
    accept_p50_ms: float  # HTTP answer time of the POSTs
    accept_p99_ms: float
    statuses: dict[str, int]
    load_before: float
    # CPU seconds per part of the stack from the first POST until the last push was
    # accepted (bench.stack.cpu_seconds), and that window's length.
    cpu_s: dict[str, float] = field(default_factory=dict)
    window_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list, repr=False)

    @property
    def cpu_ms_per_push(self) -> dict[str, float]:
        """CPU milliseconds per accepted push, by part of the stack."""
        if not self.accepted:
            return {}
        return {name: seconds * 1000 / self.accepted for name, seconds in self.cpu_s.items()}

    @property
    def machine_busy(self) -> float:
        """Average busy cores over the window."""
        return self.cpu_s.get("machine", 0.0) / self.window_s if self.window_s > 0 else math.nan

    @property
    def offered_rate(self) -> float:
        """Pushes per second the posted events asked for."""
        return self.post_rate * self.per_event

    @property
    def accepted_per_second(self) -> float:
        """Pushes per second the sandbox accepted, first to last acceptance."""
        span = self.last_accept_s - self.first_accept_s
        return self.accepted / span if span > 0 else math.nan

    @property
    def meets_target(self) -> bool:
        return (
            self.lost == 0
            and self.events_posted == self.events_scheduled
            and self.accepted_per_second >= 0.95 * self.target_rate
            and self.p99_s <= TARGET_P99_S
        )

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("latencies_s")
        data.update(
            offered_rate=self.offered_rate,
            accepted_per_second=self.accepted_per_second,
            meets_target=self.meets_target,
            cpu_ms_per_push=self.cpu_ms_per_push,
            machine_busy=self.machine_busy,
        )
        return data

    def summary(self) -> str:
        return (
            f"P4 [{self.mode}, {self.layout}] target {self.target_rate:,.0f} pushes/s for {self.seconds:.0f}s: "
            f"posted {self.events_posted:,}/{self.events_scheduled:,} events ({self.post_rate:,.0f} events/s = "
            f"{self.offered_rate:,.0f} pushes/s offered); accepted {self.accepted:,}/{self.expected:,} at "
            f"{self.accepted_per_second:,.0f}/s; p50 {self.p50_s:.2f}s, p95 {self.p95_s:.2f}s, "
            f"p99 {self.p99_s:.2f}s, max {self.max_s:.2f}s; lost {self.lost}, duplicates {self.duplicates}, "
            f"HTTP errors {self.http_errors}; target met: {'yes' if self.meets_target else 'no'}; "
            f"{self.machine_busy:.2f} cores busy; CPU ms per push: "
            + ", ".join(f"{name} {ms:.2f}" for name, ms in self.cpu_ms_per_push.items())
        )


@dataclass
class _Posting:
    sent_at: dict[str, float] = field(default_factory=dict)  # event id -> wall time before its POST
    pushes: dict[str, int] = field(default_factory=dict)  # event id -> recipients it stands for
    accept_ms: list[float] = field(default_factory=list)
    lags_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


async def _post_schedule(
    client: httpx.AsyncClient,
    bodies: list[tuple[dict[str, Any], int]],
    *,
    event_rate: float,
    seconds: float,
    senders: int,
    progress: Progress,
) -> _Posting:
    """POST ``bodies`` open loop, body i at ``i / event_rate`` s, at most ``senders`` in
    flight. A body that could not start by ``seconds`` (+1 s) after the first is not posted:
    when the API cannot keep up, the run measures what it accepted in the window."""
    posting = _Posting()
    gate = asyncio.Semaphore(senders)
    started = time.perf_counter()
    stop_at = started + seconds + 1.0

    async def one(body: dict[str, Any], pushes: int, scheduled: float) -> None:
        async with gate:
            now = time.perf_counter()
            if now > stop_at:
                return
            posting.lags_s.append(now - scheduled)
            before = time.time()
            try:
                response = await client.post("/api/v1/events/", json=body)
            except httpx.HTTPError as exc:
                posting.errors.append(f"{type(exc).__name__}: {exc}")
                return
            if response.status_code != 202:
                posting.errors.append(f"{response.status_code}: {response.text[:200]}")
                return
            posting.accept_ms.append((time.time() - before) * 1000)
            event_id = str(response.json()["id"])
            posting.sent_at[event_id] = before
            posting.pushes[event_id] = pushes
            progress.update(len(posting.sent_at))

    tasks = []
    for index, (body, pushes) in enumerate(bodies):
        scheduled = started + index / event_rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(body, pushes, scheduled)))
    await asyncio.gather(*tasks)
    posting.seconds = time.perf_counter() - started
    return posting


def _post(
    stack: Stack,
    bodies: list[tuple[dict[str, Any], int]],
    *,
    event_rate: float,
    seconds: float,
    senders: int,
    progress: bool,
) -> _Posting:
    bar = Progress("P4: events accepted by the API", len(bodies), enabled=progress)

    async def main() -> _Posting:
        async with stack.async_client(connections=senders) as client:
            return await _post_schedule(
                client, bodies, event_rate=event_rate, seconds=seconds, senders=senders, progress=bar
            )

    posting = asyncio.run(main())
    bar.finish(len(posting.sent_at))
    return posting


def _warm_up(stack: Stack, *, tag: str, type_key: str, progress: bool) -> None:
    """One topic event to WARMUP_RECIPIENTS others, waited for: first-use costs (OAuth token,
    connections, template compilation, imports in each pool process) are not measured."""
    (topic,) = seed_audience(
        stack.database.url, prefix=f"{WARMUP_PREFIX}{tag}-", count=WARMUP_RECIPIENTS, device="fcm"
    )
    with stack.client() as client:
        event_id = post_event(client, {"type": type_key, "topic": topic, "data": {"warmup": True}})
    wait_settled(
        stack, [event_id], WARMUP_RECIPIENTS, label="P4: warm-up pushes", timeout=120, progress=progress
    )


def _wait_for_pushes(stack: Stack, posting: _Posting, expected: int, grace: float, progress: bool) -> None:
    """Until the sandbox holds ``expected`` FCM keys, or the posted events' deliveries are
    all settled, or ``grace`` seconds pass."""
    assert stack.sandbox is not None
    control = stack.sandbox.control
    bar = Progress("P4: pushes accepted by the sandbox", expected, enabled=progress)
    deadline = time.monotonic() + grace
    next_db_check = time.monotonic() + 2.0
    keys = 0
    while time.monotonic() < deadline:
        keys = int(control.stats()["providers"]["fcm"]["keys"])
        bar.update(keys)
        if keys >= expected:
            break
        if time.monotonic() >= next_db_check:
            next_db_check = time.monotonic() + 2.0
            statuses = delivery_statuses(stack.database.url, list(posting.sent_at))
            in_progress = sum(statuses[s] for s in ("pending", "scheduled", "retrying"))
            if sum(statuses.values()) >= expected and not in_progress:
                break
        stack.check_alive()
        time.sleep(0.25)
    bar.finish(keys)


def measure(
    stack: Stack,
    *,
    mode: str,
    layout: Layout,
    rate: float,
    seconds: float,
    per_event: int,
    senders: int = 16,
    grace: float = 120.0,
    progress: bool = True,
    tag: str = "",
) -> P4Result:
    """Seed, warm up, post for ``seconds`` and collect the pushes on a running stack;
    ``tag`` names this run's recipients, topics and type, so that one stack can hold
    several runs."""
    assert stack.sandbox is not None, "P4 needs a stack with the provider sandbox"
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    per_event = per_event if mode == "topic" else 1
    events = max(1, math.ceil(rate * seconds / per_event))
    recipients = events * per_event
    prefix = f"{PREFIX}{tag}-"
    type_key = f"{TYPE_KEY}.{tag}" if tag else TYPE_KEY
    seed_audience(stack.database.url, prefix=prefix, count=recipients, topic_size=per_event, device="fcm")
    with stack.client() as client:
        create_type(client, key=type_key, channel="push")
    _warm_up(stack, tag=tag, type_key=type_key, progress=progress)
    control = stack.sandbox.control
    control.reset()

    if mode == "topic":
        bodies = [
            ({"type": type_key, "topic": topic_key(prefix, k), "data": {"n": k}}, per_event)
            for k in range(events)
        ]
    else:
        bodies = [
            ({"type": type_key, "recipients": [f"{prefix}{i}"], "data": {"n": i}}, 1)
            for i in range(1, events + 1)
        ]
    load_before = os.getloadavg()[0]
    cpu_before, window_started = cpu_sample(), time.monotonic()
    posting = _post(
        stack, bodies, event_rate=rate / per_event, seconds=seconds, senders=senders, progress=progress
    )
    if posting.errors:
        print(f"P4 first HTTP errors: {posting.errors[:3]}", flush=True)
    expected = sum(posting.pushes.values())
    _wait_for_pushes(stack, posting, expected, grace, progress)
    cpu = cpu_seconds(stack, cpu_before, cpu_sample())
    window_s = time.monotonic() - window_started

    first_post = min(posting.sent_at.values()) if posting.sent_at else time.time()
    first = first_acceptances(accepted_records(control, "fcm", since=first_post - 1))
    latencies: list[float] = []
    accept_times: list[float] = []
    for record in first.values():
        data = (record.get("summary") or {}).get("data") or {}
        sent = posting.sent_at.get(str(data.get("event_id")))
        if sent is None:
            continue
        accept_times.append(float(record["received_at"]))
        latencies.append(float(record["received_at"]) - sent)
    statuses = delivery_statuses(stack.database.url, list(posting.sent_at))
    stack.check_alive()
    return P4Result(
        mode=mode,
        layout=layout.name,
        settings=layout.describe(),
        target_rate=rate,
        seconds=seconds,
        per_event=per_event,
        events_scheduled=events,
        events_posted=len(posting.sent_at),
        http_errors=len(posting.errors),
        post_rate=len(posting.sent_at) / posting.seconds if posting.seconds > 0 else 0.0,
        expected=expected,
        accepted=len(latencies),
        duplicates=int(control.stats()["providers"]["fcm"]["duplicates"]),
        lost=expected - len(latencies),
        first_accept_s=(min(accept_times) - first_post) if accept_times else math.nan,
        last_accept_s=(max(accept_times) - first_post) if accept_times else math.nan,
        p50_s=percentile(latencies, 0.50),
        p95_s=percentile(latencies, 0.95),
        p99_s=percentile(latencies, 0.99),
        max_s=max(latencies) if latencies else math.nan,
        mean_s=sum(latencies) / len(latencies) if latencies else math.nan,
        post_lag_max_s=max(posting.lags_s) if posting.lags_s else 0.0,
        accept_p50_ms=percentile(posting.accept_ms, 0.50),
        accept_p99_ms=percentile(posting.accept_ms, 0.99),
        statuses=dict(statuses),
        load_before=load_before,
        cpu_s=cpu,
        window_s=window_s,
        latencies_s=latencies,
    )


def run(
    *,
    template: str | None,
    mode: str = "topic",
    layout: Layout = DEFAULT_LAYOUT,
    rate: float = TARGET_RATE,
    seconds: float = 20.0,
    per_event: int = 50,
    senders: int = 16,
    grace: float = 120.0,
    progress: bool = True,
) -> P4Result:
    """One P4 run on a fresh stack with the provider sandbox and the layout's workers;
    provider pacing is raised out of the way (UNPACED_ENV)."""
    env = {**UNPACED_ENV, **layout.env}
    with bench_stack(template=template, workers=layout.workers, env=env, label="p4", sandbox=True) as stack:
        return measure(
            stack,
            mode=mode,
            layout=layout,
            rate=rate,
            seconds=seconds,
            per_event=per_event,
            senders=senders,
            grace=grace,
            progress=progress,
        )


def best(results: list[P4Result]) -> P4Result:
    """The run that met the target with the lowest p99; else the one closest to it (no
    loss first, then the highest accepted rate). Give it runs at the target rate only."""

    def rank(result: P4Result) -> tuple[bool, bool, float, float]:
        rate = result.accepted_per_second if not math.isnan(result.accepted_per_second) else 0.0
        p99 = result.p99_s if not math.isnan(result.p99_s) else math.inf
        if result.meets_target:
            return True, True, -p99, rate
        return False, result.lost == 0, rate, -p99

    return max(results, key=rank)
