"""P5: an email campaign through the provider sandbox's ESP (the Mailgun HTTP API), and
what it does to transactional traffic meanwhile.

On one stack with the provider sandbox (provider pacing lifted, as for the other provider
benchmarks):

1. *Baseline*: a transactional probe alone: PROBE_RATE in-app events a second, each to one
   recipient, for ``probe_seconds``; latency of each from its acceptance to its inbox item
   written (both stamped by the platform: ``InboxItem.accepted_at`` and ``created_at``).
2. *Campaign*: ``recipients`` seeded with an address (SQL ``generate_series``) on a topic;
   a marketing email type; a campaign to the topic created and started over the API,
   unthrottled (``throttle_per_second`` at its maximum), while the same probe runs again.
   *Sends/s* is the distinct idempotency keys the sandbox's Mailgun accepted over the time
   from its first to its last acceptance (the sandbox's counters: its recordings are
   capped below a million); the probe stops when every email is accepted, and the run
   ends when every receipt is read back (the bulk domain's events API, polled by the
   campaign worker).

Beside them, for reading the ratio: the part of each probe's latency before its fan-out
started (the request's commit and the hand-over), and ``CPU_LOOP``'s CPU time on the idle
machine and during the campaign (is a core itself slower, or is the time spent waiting?).

Targets (docs/benchmarks.md): at least 5,000 sends/s, and the probe's p99 during the
campaign at most 1.5 times its baseline p99.
"""

from __future__ import annotations

import math
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from bench.provider_sends import (
    IN_PROGRESS,
    SENDS_ENV,
    create_type,
    seed_audience,
    wait_settled,
)
from bench.stack import Progress, Stack, bench_stack, cpu_sample, cpu_seconds, wait_for

TARGET_SENDS_PER_SECOND = 5_000.0
TARGET_P99_RATIO = 1.5
PROBE_RATE = 20.0
THROTTLE_MAX = 100_000
PROBE_TYPE = "bench.p5.receipt"
CAMPAIGN_TYPE = "bench.p5.offer"
OFFER = {
    "subject": "{{ data.headline }}",
    "html": "<p>{{ data.headline }} for {{ recipient.external_id }}</p>",
    "text": "{{ data.headline }} for {{ recipient.external_id }}",
}


@dataclass
class Probe:
    """Transactional in-app events at a steady rate; latency acceptance -> item written,
    and the part of it before the fan-out started (the delivery row's ``created_at``)."""

    sent: int
    written: int
    p50_s: float
    p99_s: float
    to_fanout_p50_s: float = math.nan
    to_fanout_p99_s: float = math.nan


# A fixed piece of CPU-bound Python, timed in CPU seconds (time.process_time) in a process
# of its own: waiting for a core is not counted, so what it measures is how much slower a
# core runs while the other cores are busy (cores that share a physical core or its caches
# run slower together).
CPU_LOOP = (
    "import time\n"
    "t = time.process_time()\n"
    "s = 0\n"
    "for i in range(400_000):\n"
    "    s += i * i % 7\n"
    "print(time.process_time() - t)\n"
)


def _cpu_loop_s() -> float:
    done = subprocess.run([sys.executable, "-c", CPU_LOOP], capture_output=True, text=True, check=True)
    return float(done.stdout)


class CpuLoops:
    """The CPU loop timed every ``interval`` seconds in a thread until stopped (a process
    start and 40 ms of CPU every 5 s, 1-2% of a core: it must not weigh on what it measures)."""

    def __init__(self, interval: float = 5.0) -> None:
        self.interval = interval
        self.samples: list[float] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="p5-cpu-loop", daemon=True)

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.samples.append(_cpu_loop_s())

    def __enter__(self) -> CpuLoops:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(30)


@dataclass
class P5Result:
    recipients: int
    accepted: int
    duplicates: int
    first_accept_s: float
    last_accept_s: float
    failed: int
    baseline: Probe
    during: Probe
    statuses: dict[str, int]
    cpu_s: dict[str, float] = field(default_factory=dict)
    # Seconds from the start until every receipt was read back (none left "sent").
    receipts_s: float = math.nan
    # CPU_LOOP's CPU seconds (median), on the idle machine and during the campaign.
    loop_alone_s: float = math.nan
    loop_during_s: float = math.nan

    @property
    def loop_ratio(self) -> float:
        return self.loop_during_s / self.loop_alone_s if self.loop_alone_s > 0 else math.nan

    @property
    def sends_per_second(self) -> float:
        span = self.last_accept_s - self.first_accept_s
        return self.accepted / span if span > 0 else math.nan

    @property
    def overall_per_second(self) -> float:
        """Sends over the whole campaign, from its start (audience snapshot and first page
        included) to the last acceptance."""
        return self.accepted / self.last_accept_s if self.last_accept_s > 0 else math.nan

    @property
    def p99_ratio(self) -> float:
        return self.during.p99_s / self.baseline.p99_s if self.baseline.p99_s > 0 else math.nan

    @property
    def meets_target(self) -> bool:
        return (
            self.accepted == self.recipients
            and self.sends_per_second >= TARGET_SENDS_PER_SECOND
            and self.p99_ratio <= TARGET_P99_RATIO
        )

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            sends_per_second=self.sends_per_second,
            overall_per_second=self.overall_per_second,
            p99_ratio=self.p99_ratio,
            loop_ratio=self.loop_ratio,
            meets_target=self.meets_target,
        )
        return data

    def summary(self) -> str:
        return (
            f"P5 campaign of {self.recipients:,} emails: {self.sends_per_second:,.0f} sends/s accepted "
            f"(target {TARGET_SENDS_PER_SECOND:,.0f}; {self.overall_per_second:,.0f}/s from the start); "
            f"{self.accepted:,} accepted, {self.duplicates} duplicates, "
            f"{self.failed} failed; transactional p99 {self.during.p99_s * 1000:.0f} ms during against "
            f"{self.baseline.p99_s * 1000:.0f} ms alone ({self.p99_ratio:.2f}x, target <= {TARGET_P99_RATIO}x; "
            f"p50 {self.during.p50_s * 1000:.0f} ms against {self.baseline.p50_s * 1000:.0f} ms); "
            f"every receipt read back {self.receipts_s:.0f} s after the start; "
            f"a fixed CPU loop took {self.loop_ratio:.2f}x its CPU time alone during the campaign\n"
            "CPU per email: "
            + ", ".join(
                f"{name} {seconds * 1e6 / max(1, self.accepted):.0f} µs"
                for name, seconds in sorted(self.cpu_s.items(), key=lambda item: -item[1])
                if seconds > 0
            )
        )


def _percentile(values: list[float], share: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def _probe(stack: Stack, *, seconds: float, recipient: str, stop: threading.Event | None = None) -> Probe:
    """POST transactional events at PROBE_RATE for ``seconds`` (or until ``stop``), then
    read each one's latency from the inbox rows."""
    event_ids: list[str] = []
    interval = 1.0 / PROBE_RATE
    with stack.client() as client:
        started = time.monotonic()
        next_at = started
        while time.monotonic() - started < seconds and not (stop is not None and stop.is_set()):
            response = client.post(
                "/api/v1/events/",
                json={"type": PROBE_TYPE, "recipients": [recipient], "data": {"n": len(event_ids)}},
            )
            if response.status_code == 202:
                event_ids.append(str(response.json()["id"]))
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
    deadline = time.monotonic() + 60
    rows: list[tuple[Any, ...]] = []
    while time.monotonic() < deadline:
        with psycopg.connect(stack.database.url, autocommit=True) as connection:
            rows = connection.execute(
                """SELECT extract(epoch FROM i.created_at - i.accepted_at),
                          extract(epoch FROM d.created_at - i.accepted_at)
                   FROM notifications_inboxitem i
                   JOIN notifications_delivery d ON d.id = i.delivery_id
                   WHERE i.event_id = ANY(%s::uuid[])""",
                [event_ids],
            ).fetchall()
        if len(rows) >= len(event_ids):
            break
        time.sleep(0.2)
    latencies = [float(row[0]) for row in rows]
    to_fanout = [float(row[1]) for row in rows]
    return Probe(
        sent=len(event_ids),
        written=len(latencies),
        p50_s=_percentile(latencies, 0.50),
        p99_s=_percentile(latencies, 0.99),
        to_fanout_p50_s=_percentile(to_fanout, 0.50),
        to_fanout_p99_s=_percentile(to_fanout, 0.99),
    )


def _wait_accepted(stack: Stack, recipients: int, *, timeout: float, progress: bool) -> None:
    """Until the sandbox's Mailgun accepted every recipient's key: its counters, so the
    measurement adds nothing to the database the campaign and the probe share."""
    assert stack.sandbox is not None
    bar = Progress("P5 campaign: emails accepted by the ESP", recipients, enabled=progress)
    seen = [0]

    def all_accepted() -> bool:
        stack.check_alive()
        seen[0] = int(stack.sandbox.control.stats()["providers"]["mailgun"]["keys"])  # type: ignore[union-attr]
        bar.update(seen[0])
        return seen[0] >= recipients

    try:
        wait_for(all_accepted, timeout, "P5: every email accepted", interval=0.5)
    except TimeoutError:
        raise TimeoutError(
            f"P5: {seen[0]:,} of {recipients:,} emails accepted\n{stack.log_tails(30)}"
        ) from None
    finally:
        bar.finish(seen[0])


def measure(
    stack: Stack, *, recipients: int, probe_seconds: float, timeout: float, progress: bool
) -> P5Result:
    assert stack.sandbox is not None, "P5 needs the provider sandbox"
    (topic,) = seed_audience(stack.database.url, prefix="p5-", count=recipients, email=True)
    control = stack.sandbox.control
    with stack.client() as client:
        create_type(client, key=CAMPAIGN_TYPE, channel="email", category="marketing", template=OFFER)
        create_type(
            client, key=PROBE_TYPE, channel="inapp", template={"title": "Receipt {{ data.n }}", "body": ""}
        )
        probe_recipient = "p5-probe"
        assert client.put(f"/api/v1/recipients/{probe_recipient}/", json={"name": "probe"}).status_code in (
            200,
            201,
        )
        loop_alone = statistics.median(_cpu_loop_s() for _ in range(5))
        baseline = _probe(stack, seconds=probe_seconds, recipient=probe_recipient)
        created = client.post(
            "/api/v1/campaigns/",
            json={
                "name": "P5",
                "type": CAMPAIGN_TYPE,
                "audience": {"topic": topic},
                "data": {"headline": "Winter sale"},
                "throttle_per_second": THROTTLE_MAX,
            },
        )
        if created.status_code != 201:
            raise RuntimeError(f"creating the campaign failed: {created.status_code} {created.text}")
        campaign_id = created.json()["id"]
        control.reset()
        cpu_before = cpu_sample()
        posted_at = time.time()
        started = client.post(f"/api/v1/campaigns/{campaign_id}/start/")
        if started.status_code != 200:
            raise RuntimeError(f"starting the campaign failed: {started.status_code} {started.text}")
    with psycopg.connect(stack.database.url, autocommit=True) as connection:
        event_ids = [
            str(row[0])
            for row in connection.execute(
                "SELECT event_id FROM notifications_campaignvariant WHERE campaign_id = %s", [campaign_id]
            ).fetchall()
        ]
    stop = threading.Event()
    during: list[Probe] = []
    prober = threading.Thread(
        target=lambda: during.append(
            _probe(stack, seconds=max(probe_seconds, timeout), recipient=probe_recipient, stop=stop)
        ),
        daemon=True,
    )
    prober.start()
    try:
        with CpuLoops() as loops:
            _wait_accepted(stack, recipients, timeout=timeout, progress=progress)
    finally:
        stop.set()
        prober.join(120)
    cpu = cpu_seconds(stack, cpu_before, cpu_sample())
    # Counting a million deliveries by status takes a while: poll less often when big.
    interval = 0.2 if recipients <= 50_000 else 2.0
    statuses = wait_settled(
        stack,
        event_ids,
        recipients,
        label="P5 campaign: receipts read back",
        timeout=timeout,
        progress=progress,
        interval=interval,
        in_progress=(*IN_PROGRESS, "sent"),
    )
    receipts_s = time.time() - posted_at
    counters = control.stats()["providers"]["mailgun"]
    first_at, last_at = counters.get("first_accepted_at"), counters.get("last_accepted_at")
    return P5Result(
        recipients=recipients,
        accepted=int(counters["keys"]),
        duplicates=int(counters["duplicates"]),
        first_accept_s=(float(first_at) - posted_at) if first_at else math.nan,
        last_accept_s=(float(last_at) - posted_at) if last_at else math.nan,
        failed=sum(statuses[s] for s in ("failed", "dead", "suppressed")),
        baseline=baseline,
        during=during[0] if during else Probe(0, 0, math.nan, math.nan),
        statuses=dict(statuses),
        cpu_s=cpu,
        receipts_s=receipts_s,
        loop_alone_s=loop_alone,
        loop_during_s=statistics.median(loops.samples) if loops.samples else math.nan,
    )


def run(
    *,
    template: str | None,
    recipients: int = 50_000,
    probe_seconds: float = 30.0,
    timeout: float = 1800.0,
    progress: bool = True,
) -> P5Result:
    """P5 on a fresh stack of the default layout (its campaign worker included)."""
    env = {**SENDS_ENV, "MARKETING_CAPS": ""}
    with bench_stack(template=template, env=env, label="p5", sandbox=True) as stack:
        result = measure(
            stack, recipients=recipients, probe_seconds=probe_seconds, timeout=timeout, progress=progress
        )
        stack.check_alive()
        return result
