"""P8: authoritative matches (docs/gaming.md).

Target (DESIGN 5): 20 Hz, p99 tick lateness ≤ 5 ms with ≥ 1,000 players in ≥ 100 matches.

1. **Matchmaking through the API.** M × P players (recipients seeded with SQL, tokens
   minted in one ``manage.py shell``, bench/p3_sockets.py) each ``POST
   /api/v1/matchmaking/tickets/`` with their own token; the beat's matchmaking pass (every
   second, gaming/tasks.py) forms the matches and a real ``manage.py match_server``
   process claims them. Each group of P players has a rating of its own, further apart
   than any search window, so exactly M matches of P players form. Figure: tickets from
   the first POST until the last is matched (tickets/s), and each ticket's wait.
2. **The matches played.** Every player opens ``/ws/matches/{id}/?token=`` (light
   clients, bench/wsclient.py's socket, in a few processes) and sends arena inputs with
   sequence numbers at R per second, as gaming/static/gaming/play.js does while a key is
   held (a new stick now and then, the aim moving, the trigger held one time in three).
   Over a steady window: every tick's lateness and the ticks skipped (read out of the
   match server: below), state frames and bytes received by all clients, inputs sent and
   how long until a state acknowledged each (its ``ack``), inputs the server dropped (by
   the field its gate or the mode named), the players connected (clients' sockets open,
   and seats the server holds as connected), and CPU by process. Then the same window
   with the players connected and sending nothing, to show what the inputs cost.
3. **The matchmaking pass itself**, timed directly (``matchmaking_run``, the function
   behind the beat task) in a ``manage.py shell`` against a stack's database with 1,000
   and 10,000 waiting single-player tickets of spread ratings and waits, so that the
   throughput is not just the beat's period.
4. **Baseline, same run:** bare asyncio timers: 100 tasks in one plain process (stdlib
   asyncio, as the match server runs), each sleeping to absolute 50 ms deadlines with
   TickClock's rule (gaming/services/runtime.py) and nothing else to do; their lateness
   measured on the quiet machine before the stack starts, and again beside the headline
   window (the same cores under the same load).

**Reading lateness out of the match server.** ``MatchServer`` records every tick's
lateness per clock (``TickClock.lateness``) but nothing outside its process reads it:
its heartbeat in Redis carries the match count and capacity only. So the match server
runs as ``python -m bench.p8_games match-server``: the very ``match_server`` management
command (``call_command``) in its own process, with a readout added from here that once a
second pushes to a Redis list the lateness samples taken since the last readout, the
time of each ``MatchRuntime.step``, the inbound messages read, the inputs dropped and the
seats connected (``_install_readout``). docs/benchmarks.md names the hook that would make
the wrapper unnecessary.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import json
import math
import os
import random
import re
import shutil
import socket as socketlib
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.p3_sockets import mint_tokens, seed_recipients
from bench.stack import (
    Progress,
    Stack,
    bench_stack,
    cpu_sample,
    cpu_seconds,
    percentile,
    raise_fd_limit,
    wait_for,
)
from bench.wsclient import LightSocket, open_sockets
from harness.processes import REPO_ROOT, ManagedProcess
from project.processes import DEFAULT_WEB_PROCESSES

LATENESS_P99_TARGET_MS = 5.0
PLAYERS_TARGET = 1_000
MATCHES_TARGET = 100
TICK_RATE = 20  # the arena's (gaming/modes/arena.py)
MODE = "arena"
MODE_MAX_PLAYERS = 10
SERVER_NAME = "1"  # the process is match-1, as make run's
READOUT_KEY = "bench:p8:readout"
READOUT_SECONDS = 1.0
# Seeded ratings of the groups of players are this far apart: more than GAMING_WINDOW_MAX
# (60 by default), so that no search window ever reaches another group.
GROUP_RATING_GAP = 61.0
DEFAULT_SIGMA = 25.0 / 3.0
# The match server on the kernel's real-time policy (match_server --realtime): on two cores
# shared with the web processes and the clients, its clocks otherwise wait their turn
# behind them. Only root may ask for it.
DEFAULT_SERVER_REALTIME = 10 if os.geteuid() == 0 else 0
# The client's input scheduler wakes this often and sends for the sockets whose turn it is.
SLOT_SECONDS = 0.01
# Timer baseline: tasks, each at the arena's rate.
BASELINE_TASKS = 100


# --- Results ---------------------------------------------------------------------------------------


@dataclass
class Lateness:
    """Lateness of timer wake-ups (ticks) after their deadlines."""

    samples: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    skipped: int

    @classmethod
    def of(cls, values: Sequence[float], skipped: int) -> Lateness:
        return cls(
            samples=len(values),
            p50_ms=percentile(values, 0.5) * 1000,
            p99_ms=percentile(values, 0.99) * 1000,
            max_ms=max(values, default=math.nan) * 1000,
            mean_ms=(sum(values) / len(values) * 1000) if values else math.nan,
            skipped=skipped,
        )


@dataclass
class TimerBaseline:
    """Bare asyncio timers in a plain process (``timer_baseline``)."""

    tasks: int
    rate: float
    seconds: float
    lateness: Lateness
    when: str  # "quiet machine" or "beside the load"


@dataclass
class ServerWindow:
    """What the match server's readouts say of a window."""

    seconds: float  # covered by the readouts taken
    matches: int
    seats_connected: int
    seats_forfeited: int
    ticks: int
    lateness: Lateness
    step_p50_ms: float
    step_p99_ms: float
    step_max_ms: float
    inbound_messages: int  # messages read from the matches' channels (a web process batches signals)
    inputs_received: int  # input frames that reached a match (MatchRuntime.receive)
    inputs_dropped: dict[str, int]  # by the field the gate or the mode named

    @property
    def ticks_per_second(self) -> float:
        return self.ticks / self.seconds if self.seconds else math.nan


@dataclass
class Phase:
    name: str
    input_rate: float  # per player per second
    seconds: float
    players: int
    connected: int  # client sockets open at the end
    state_frames: int
    snapshots: int  # whole states (a client starting again after falling behind)
    bytes_received: int  # websocket frames, headers included
    other_frames: dict[str, int]
    inputs_sent: int
    input_ack_p50_ms: float
    input_ack_p99_ms: float
    send_lag_p99_ms: float  # how late the clients' input scheduler woke
    closed: int  # sockets the server closed during the window
    why_closed: dict[str, int]  # by close code (or the error that ended the connection)
    server: ServerWindow | None
    baseline_beside: TimerBaseline | None
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    match_status: dict[str, int] = field(default_factory=dict)  # the database's, after the window
    # What the match server's own heartbeat said of its clocks during the window (``_beats``).
    heartbeat: dict[str, Any] = field(default_factory=dict)
    # py-spy's view of processes during the window (``profile_summary``), when asked for.
    profiles: dict[str, Any] = field(default_factory=dict)
    # Lines of the processes' logs during the window that tell of trouble (LOG_EVENTS).
    log_events: dict[str, int] = field(default_factory=dict)

    @property
    def frames_per_second(self) -> float:
        return self.state_frames / self.seconds if self.seconds else math.nan

    @property
    def bytes_per_player_per_second(self) -> float:
        return (
            self.bytes_received / self.players / self.seconds if self.players and self.seconds else math.nan
        )

    @property
    def inputs_per_second(self) -> float:
        return self.inputs_sent / self.seconds if self.seconds else math.nan

    @property
    def meets_target(self) -> bool:
        server = self.server
        return (
            server is not None
            and self.connected >= PLAYERS_TARGET
            and server.seats_connected >= PLAYERS_TARGET
            and server.matches >= MATCHES_TARGET
            and server.lateness.p99_ms <= LATENESS_P99_TARGET_MS
        )


@dataclass
class Matchmaking:
    """Tickets through the API until every one is in a match."""

    tickets: int
    matches: int
    match_sizes: dict[str, int]  # players per match -> matches
    post_seconds: float  # first POST sent -> last answered
    matched_seconds: float  # first POST sent -> the last ticket matched
    http_errors: int
    wait_p50_s: float  # a ticket's created_at -> matched_at
    wait_p99_s: float
    errors: list[str] = field(default_factory=list)

    @property
    def posted_per_second(self) -> float:
        return self.tickets / self.post_seconds if self.post_seconds else math.nan

    @property
    def tickets_per_second(self) -> float:
        return self.tickets / self.matched_seconds if self.matched_seconds else math.nan


@dataclass
class PassTiming:
    """``matchmaking_run`` timed directly over ``waiting`` searching tickets."""

    waiting: int
    matches: int
    tickets_matched: int
    seconds: float
    second_pass_seconds: float  # the same function again over what was left
    second_pass_matches: int
    left_searching: int

    @property
    def tickets_per_second(self) -> float:
        return self.tickets_matched / self.seconds if self.seconds else math.nan


@dataclass
class P8Result:
    matches: int
    players: int  # per match
    input_rate: float  # the headline window's, per player
    seconds: float
    web_processes: int
    client_processes: int
    load_before: str  # /proc/loadavg when the run began
    baseline: TimerBaseline
    matchmaking: Matchmaking  # the headline's stack
    phases: list[Phase]
    passes: list[PassTiming]
    env: dict[str, str]
    notes: list[str] = field(default_factory=list)
    # Every stack's (one per input rate): the same measurement again.
    matchmaking_runs: list[Matchmaking] = field(default_factory=list)

    @property
    def headline(self) -> Phase | None:
        """The window at the headline input rate."""
        return next(
            (phase for phase in self.phases if phase.input_rate == self.input_rate and phase.players), None
        )

    @property
    def meets_target(self) -> bool:
        return self.headline is not None and self.headline.meets_target

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for phase, row in zip(self.phases, data["phases"], strict=True):
            row["frames_per_second"] = phase.frames_per_second
            row["bytes_per_player_per_second"] = phase.bytes_per_player_per_second
            row["inputs_per_second"] = phase.inputs_per_second
            row["meets_target"] = phase.meets_target
            if phase.server is not None:
                row["server"]["ticks_per_second"] = phase.server.ticks_per_second
        for made, row in [
            (self.matchmaking, data["matchmaking"]),
            *zip(self.matchmaking_runs, data["matchmaking_runs"], strict=True),
        ]:
            row["posted_per_second"] = made.posted_per_second
            row["tickets_per_second"] = made.tickets_per_second
        for timing, row in zip(self.passes, data["passes"], strict=True):
            row["tickets_per_second"] = timing.tickets_per_second
        data["meets_target"] = self.meets_target
        data["target"] = {
            "lateness_p99_ms": LATENESS_P99_TARGET_MS,
            "players": PLAYERS_TARGET,
            "matches": MATCHES_TARGET,
            "tick_rate": TICK_RATE,
        }
        return data

    def summary(self) -> str:
        base = self.baseline.lateness
        lines = [
            f"P8 baseline: {self.baseline.tasks} bare asyncio timers at {self.baseline.rate:g} Hz, "
            f"{self.baseline.when}: lateness p50 {base.p50_ms:.2f} ms, p99 {base.p99_ms:.2f} ms, "
            f"max {base.max_ms:.2f} ms",
        ]
        for phase in self.phases:
            server = phase.server
            late = server.lateness if server else None
            beside = phase.baseline_beside.lateness if phase.baseline_beside else None
            lines.append(
                f"P8 {phase.name}: {phase.connected:,} players connected"
                + (f" ({server.seats_connected:,} seated, {server.matches} matches)" if server else "")
                + (
                    f"; tick lateness p50 {late.p50_ms:.2f} ms, p99 {late.p99_ms:.2f} ms, max {late.max_ms:.1f} ms, "
                    f"skipped {late.skipped:,} (target p99 ≤ {LATENESS_P99_TARGET_MS:g} ms)"
                    if late
                    else "; no readout from the match server"
                )
                + (f"; bare timers beside p99 {beside.p99_ms:.2f} ms" if beside else "")
                + f"; {phase.frames_per_second:,.0f} state frames/s, "
                f"{phase.bytes_per_player_per_second:,.0f} B/player/s, inputs {phase.inputs_per_second:,.0f}/s, "
                f"input → ack p50 {phase.input_ack_p50_ms:.1f} ms"
            )
        mm = self.matchmaking
        lines.append(
            f"P8 matchmaking: {mm.tickets:,} tickets through the API in {mm.matches} matches after "
            f"{mm.matched_seconds:.1f} s ({mm.tickets_per_second:,.0f} tickets/s; POSTs {mm.posted_per_second:,.0f}/s)"
        )
        for timing in self.passes:
            lines.append(
                f"P8 matchmaking pass over {timing.waiting:,} waiting tickets: {timing.matches:,} matches "
                f"({timing.tickets_matched:,} tickets) in {timing.seconds * 1000:,.0f} ms "
                f"({timing.tickets_per_second:,.0f} tickets/s)"
            )
        lines.append(f"P8 target met: {self.meets_target}")
        return "\n".join(lines)


# --- The bare timer baseline -----------------------------------------------------------------------


async def _timers(tasks: int, rate: float, seconds: float) -> tuple[list[float], int]:
    """``tasks`` tasks, each sleeping to absolute deadlines ``rate`` times a second with
    TickClock's rule (a whole period behind skips to the next deadline) and doing nothing."""
    loop = asyncio.get_running_loop()
    period = 1.0 / rate
    samples: list[float] = []
    skipped = 0
    until = loop.time() + seconds

    async def one() -> None:
        nonlocal skipped
        start = loop.time()
        n = 1
        while True:
            deadline = start + n * period
            if deadline > until:
                return
            wait = deadline - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            late = loop.time() - deadline
            samples.append(late)
            if late >= period:
                behind = int(late // period)
                skipped += behind
                n += behind
            n += 1

    await asyncio.gather(*(one() for _ in range(tasks)))
    return samples, skipped


def _timers_main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.p8_games timers")
    parser.add_argument("--tasks", type=int, default=BASELINE_TASKS)
    parser.add_argument("--rate", type=float, default=TICK_RATE)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    samples, skipped = asyncio.run(_timers(args.tasks, args.rate, args.seconds))
    sys.stdout.write(json.dumps(asdict(Lateness.of(samples, skipped))) + "\n")


def _start_timers(tasks: int, rate: float, seconds: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.p8_games", "timers", "--tasks", str(tasks), "--rate", str(rate),
         "--seconds", str(seconds)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
    )  # fmt: skip


def _finish_timers(
    process: subprocess.Popen[bytes], tasks: int, rate: float, seconds: float, when: str
) -> TimerBaseline:
    out, _ = process.communicate(timeout=seconds + 60)
    if process.returncode != 0:
        raise RuntimeError(f"the timer baseline failed (exit {process.returncode})")
    return TimerBaseline(
        tasks, rate, seconds, Lateness(**json.loads(out.decode().strip().splitlines()[-1])), when
    )


def timer_baseline(
    *, tasks: int = BASELINE_TASKS, rate: float = TICK_RATE, seconds: float = 10.0
) -> TimerBaseline:
    """Bare asyncio timers in a process of their own, now."""
    return _finish_timers(_start_timers(tasks, rate, seconds), tasks, rate, seconds, "quiet machine")


# --- The match server, with a readout ----------------------------------------------------------------


def _install_readout(key: str) -> None:
    """Make every MatchServer of this process push, once a second, what it measured since the
    last push to the Redis list ``key``: a JSON header line, then the lateness samples and
    then the step durations, as doubles. Only counters and timestamps are added to the
    server's own work (one ``perf_counter`` pair per tick, one increment per inbound
    message and per input); the push itself is one RPUSH of a few kilobytes a second."""
    from gaming.services.runtime import MatchRuntime
    from gaming.services.server import MatchServer

    steps = array.array("d")
    counters = {"inbound": 0, "inputs": 0}
    original_step = MatchRuntime.step
    original_receive = MatchRuntime.receive
    original_inbound = MatchServer.inbound
    original_run = MatchServer.run

    def timed_step(self: Any, now: float) -> Any:
        started = time.perf_counter()
        try:
            return original_step(self, now)
        finally:
            steps.append(time.perf_counter() - started)

    def counted_inbound(self: Any, channel: bytes | str, data: bytes | str) -> None:
        counters["inbound"] += 1
        original_inbound(self, channel, data)

    def counted_receive(self: Any, player: str, frame: dict[str, Any], now: float) -> None:
        counters["inputs"] += 1
        original_receive(self, player, frame, now)

    async def readout_forever(server: Any) -> None:
        import redis.asyncio as aioredis
        from django.conf import settings

        # A connection of its own: the server's pool may be exhausted when it is overloaded,
        # and then its readouts would be lost with its heartbeats.
        client = aioredis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1)
        cursors: dict[str, tuple[int, int]] = {}
        while True:
            await asyncio.sleep(READOUT_SECONDS)
            lateness = array.array("d")
            skipped = 0
            connected = forfeited = 0
            dropped: dict[str, int] = {}
            for match_id, running in list(server.matches.items()):
                samples = running.clock.lateness.samples
                at, skipped_before = cursors.get(match_id, (0, 0))
                lateness.extend(samples[at:])
                skipped += running.clock.lateness.skipped - skipped_before
                cursors[match_id] = (len(samples), running.clock.lateness.skipped)
                for seat in running.runtime.seats.values():
                    connected += seat.connected
                    forfeited += seat.forfeited
                for name, count in running.runtime.dropped().items():
                    dropped[name] = dropped.get(name, 0) + count
            taken = array.array("d", steps)
            del steps[:]
            header = {
                "t": time.monotonic(),
                "matches": len(server.matches),
                "connected": connected,
                "forfeited": forfeited,
                "skipped": skipped,
                "inbound": counters["inbound"],
                "inputs": counters["inputs"],
                "dropped": dropped,
                "lateness": len(lateness),
                "steps": len(taken),
            }
            payload = json.dumps(header).encode() + b"\n" + lateness.tobytes() + taken.tobytes()
            with contextlib.suppress(Exception):
                await client.rpush(key, payload)

    async def run_with_readout(self: Any, *, ready: asyncio.Event | None = None) -> None:
        task = asyncio.create_task(readout_forever(self))
        try:
            await original_run(self, ready=ready)
        finally:
            task.cancel()

    MatchRuntime.step = timed_step  # type: ignore[method-assign]
    MatchRuntime.receive = counted_receive  # type: ignore[method-assign]
    MatchServer.inbound = counted_inbound  # type: ignore[method-assign]
    MatchServer.run = run_with_readout  # type: ignore[method-assign]


def _match_server_main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.p8_games match-server")
    parser.add_argument("--name", default=SERVER_NAME)
    parser.add_argument("--capacity", type=int, default=200)
    parser.add_argument("--ready-file", required=True)
    parser.add_argument("--readout-key", default=READOUT_KEY)
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()
    _install_readout(args.readout_key)
    from django.core.management import call_command

    call_command(
        "match_server", "--name", args.name, "--capacity", str(args.capacity), "--ready-file", args.ready_file
    )


def start_match_server(stack: Stack, *, capacity: int) -> ManagedProcess:
    """``match_server`` (with the readout) as the stack's process ``match-1``, once it beats
    and claims (its ready file)."""
    name = f"match-{SERVER_NAME}"
    ready = stack.platform.log_dir / f"{name}.ready"
    ready.unlink(missing_ok=True)
    process = ManagedProcess(
        name,
        [sys.executable, "-m", "bench.p8_games", "match-server", "--name", SERVER_NAME,
         "--capacity", str(capacity), "--ready-file", str(ready), "--readout-key", READOUT_KEY],
        log_path=stack.platform.log_dir / f"{name}.log",
        env=stack.platform.env,
        cwd=REPO_ROOT,
    )  # fmt: skip
    stack.platform.processes[name] = process
    process.start()

    def started() -> bool:
        if not process.alive:
            raise RuntimeError(f"{name} exited while starting:\n{process.log_tail(60)}")
        return ready.exists()

    wait_for(started, 90, f"{name} never started", interval=0.1)
    return process


@dataclass
class _Readout:
    t: float
    header: dict[str, Any]
    lateness: array.array[float]
    steps: array.array[float]


def _readouts(stack: Stack) -> list[_Readout]:
    import redis

    client = redis.Redis.from_url(stack.redis.url)
    try:
        raw = client.lrange(READOUT_KEY, 0, -1)
    finally:
        client.close()
    out = []
    for payload in raw:
        head, _, body = (payload.encode() if isinstance(payload, str) else bytes(payload)).partition(b"\n")
        header = json.loads(head)
        values = array.array("d")
        values.frombytes(body)
        count = int(header["lateness"])
        out.append(
            _Readout(
                float(header["t"]), header, array.array("d", values[:count]), array.array("d", values[count:])
            )
        )
    return out


def server_window(readouts: list[_Readout], start: float, end: float) -> ServerWindow | None:
    """The readouts whose second lies mostly inside [start, end] (monotonic clock)."""
    inside = [r for r in readouts if start <= r.t - READOUT_SECONDS / 2 <= end]
    if not inside:
        return None
    before = [r for r in readouts if r.t < inside[0].t]
    base = before[-1].header if before else {"inbound": 0, "inputs": 0, "dropped": {}}
    last = inside[-1].header
    lateness = [value for r in inside for value in r.lateness]
    steps = [value for r in inside for value in r.steps]
    dropped = {
        name: count - int(base["dropped"].get(name, 0))
        for name, count in last["dropped"].items()
        if count - int(base["dropped"].get(name, 0))
    }
    return ServerWindow(
        seconds=len(inside) * READOUT_SECONDS,
        matches=int(last["matches"]),
        seats_connected=int(last["connected"]),
        seats_forfeited=int(last["forfeited"]),
        ticks=len(lateness),
        lateness=Lateness.of(lateness, sum(int(r.header["skipped"]) for r in inside)),
        step_p50_ms=percentile(steps, 0.5) * 1000,
        step_p99_ms=percentile(steps, 0.99) * 1000,
        step_max_ms=max(steps, default=math.nan) * 1000,
        inbound_messages=int(last["inbound"]) - int(base["inbound"]),
        inputs_received=int(last.get("inputs", 0)) - int(base.get("inputs", 0)),
        inputs_dropped=dropped,
    )


# --- The players' clients -------------------------------------------------------------------------

_STATE_HEAD = re.compile(rb'\{"type":"state","tick":(\d+),"ack":(\d+),"(state|delta)"')
_TYPE_HEAD = re.compile(rb'\{"type":"([a-z_.]+)"')
_ZERO_MASK = b"\x00\x00\x00\x00"


def _text_frame(payload: bytes) -> bytes:
    """A final, masked text frame from the client (the all-zero mask: RFC 6455 lets the
    client choose its key, and XOR with zero costs nothing)."""
    length = len(payload)
    if length < 126:
        return bytes((0x81, 0x80 | length)) + _ZERO_MASK + payload
    return bytes((0x81, 0x80 | 126)) + length.to_bytes(2, "big") + _ZERO_MASK + payload


class _PlayerSocket(LightSocket):
    """bench/wsclient.py's socket, remembering why it closed (the server's close code)."""

    why_closed = ""

    def _fail(self, exc: BaseException) -> None:
        if not self.why_closed:
            text = str(exc)
            code = text.rpartition(": ")[2] if text.startswith("closed by the server") else ""
            self.why_closed = str(int(code, 16)) if len(code) == 4 else type(exc).__name__
        super()._fail(exc)


class _Player:
    """One player's socket and what it counts."""

    def __init__(self, index: int, rng: random.Random) -> None:
        self.index = index
        self.socket: _PlayerSocket | None = None
        self.seq = 0
        self.acked = 0
        self.sent: deque[tuple[int, float]] = deque()
        self.move = (0, 0)
        self.aim = rng.uniform(-math.pi, math.pi)
        self.shoot = False
        self.closed_seen = False


class _ClientWorker:
    """The players of one client process: their sockets, their inputs, their counts."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.players: dict[int, _Player] = {}
        self.rate = 0.0
        self.driver: asyncio.Task[None] | None = None
        self._reset()

    def _reset(self) -> None:
        self.why_closed: dict[str, int] = {}
        self.states = self.snapshots = self.bytes = self.inputs = 0
        self.other: dict[str, int] = {}
        self.acks = array.array("d")
        self.lags = array.array("d")

    def on_message(self, socket: LightSocket, arrival: float, payload: bytes) -> None:
        size = len(payload)
        self.bytes += size + (2 if size < 126 else 4 if size < 65536 else 10)
        state = _STATE_HEAD.match(payload)
        if state is None:
            kind = _TYPE_HEAD.match(payload)
            name = kind.group(1).decode() if kind else "?"
            self.other[name] = self.other.get(name, 0) + 1
            return
        self.states += 1
        if state.group(3) == b"state":
            self.snapshots += 1
        player = self.players.get(socket.index)
        if player is None:
            return
        ack = int(state.group(2))
        if ack > player.acked:
            player.acked = ack
            sent = player.sent
            while sent and sent[0][0] <= ack:
                self.acks.append(arrival - sent.popleft()[1])

    async def open(
        self, host: str, port: int, paths: Sequence[tuple[int, str]], concurrency: int
    ) -> list[Any]:
        def seat(socket: _PlayerSocket) -> None:
            player = _Player(socket.index, self.rng)
            player.socket = socket
            self.players[socket.index] = player

        errors = await open_sockets(
            host,
            port,
            paths,
            concurrency,
            lambda index, path: _PlayerSocket(
                index, f"{host}:{port}", path, self.on_message, wait_first_message=True
            ),
            seat,
        )
        return [len(self.players), errors]

    def _input(self, player: _Player) -> bytes:
        rng = self.rng
        if rng.random() < 0.05:  # a new stick about once a second at 20/s
            player.move = (rng.choice((-1, 0, 1)), rng.choice((-1, 0, 1)))
        if rng.random() < 0.05:
            player.shoot = rng.random() < 0.33
        # within [-3.14, 3.14]: the aim is sent with three decimals, and 3.142 is above pi
        player.aim = max(-3.14, min(3.14, player.aim + rng.uniform(-0.2, 0.2)))
        player.seq += 1
        return (
            f'{{"type":"input","seq":{player.seq},"move":[{player.move[0]},{player.move[1]}],'
            f'"aim":{player.aim:.3f},"shoot":{"true" if player.shoot else "false"}}}'
        ).encode()

    async def _drive(self, rate: float) -> None:
        """Each player sends ``rate`` inputs a second at its own phase: the players are
        spread over the slots of one period, and each wake-up sends for one slot."""
        loop = asyncio.get_running_loop()
        slots = max(1, round(1.0 / rate / SLOT_SECONDS))
        groups: list[list[_Player]] = [[] for _ in range(slots)]
        for player in self.players.values():
            groups[player.index % slots].append(player)
        step = 1.0 / rate / slots
        due = loop.time()
        turn = 0
        while True:
            due += step
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self.lags.append(max(0.0, loop.time() - due))
            for player in groups[turn % slots]:
                socket = player.socket
                if socket is None or socket.closed:
                    continue
                frame = _text_frame(self._input(player))
                player.sent.append((player.seq, time.perf_counter()))
                socket.transport.write(frame)
                self.inputs += 1
            turn += 1

    def inputs_at(self, rate: float) -> None:
        if self.driver is not None:
            self.driver.cancel()
            self.driver = None
        for player in self.players.values():
            player.sent.clear()
        if rate > 0:
            self.driver = asyncio.ensure_future(self._drive(rate))

    def take(self) -> dict[str, Any]:
        closed = 0
        for player in self.players.values():
            if player.socket is not None and player.socket.closed and not player.closed_seen:
                player.closed_seen = True
                closed += 1
                why = player.socket.why_closed or "?"
                self.why_closed[why] = self.why_closed.get(why, 0) + 1
        out = {
            "why_closed": dict(self.why_closed),
            "states": self.states,
            "snapshots": self.snapshots,
            "bytes": self.bytes,
            "inputs": self.inputs,
            "other": self.other,
            "acks": self.acks.tobytes(),
            "lags": self.lags.tobytes(),
            "open": sum(1 for p in self.players.values() if p.socket is not None and not p.socket.closed),
            "closed": closed,
        }
        self._reset()
        return out

    def close(self) -> None:
        if self.driver is not None:
            self.driver.cancel()
        for player in self.players.values():
            if player.socket is not None:
                player.socket.close()


async def _client_serve(connection: Connection, seed: int) -> None:
    loop = asyncio.get_running_loop()
    worker = _ClientWorker(seed)
    while True:
        command, args = await loop.run_in_executor(None, connection.recv)
        try:
            if command == "open":
                reply: Any = await worker.open(*args)
            elif command == "inputs":
                worker.inputs_at(float(args))
                reply = None
            elif command == "take":
                reply = worker.take()
            elif command == "close":
                worker.close()
                await asyncio.sleep(0.2)
                connection.send(("ok", None))
                return
            else:
                raise ValueError(f"unknown command {command!r}")
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises
            connection.send(("error", f"{type(exc).__name__}: {exc}"))
            continue
        connection.send(("ok", reply))


def _client_main(argv: Sequence[str]) -> None:
    import uvloop

    uvloop.run(_client_serve(Connection(int(argv[0])), int(argv[1])))


class Players:
    """Client processes holding the players' sockets (player ``i`` in process ``i % n``),
    each ``python -m bench.p8_games client <fd> <seed>``: a fresh interpreter on uvloop,
    driven over a socket pair."""

    def __init__(self, processes: int) -> None:
        self.pipes: list[Connection] = []
        self.workers: list[subprocess.Popen[bytes]] = []
        try:
            for number in range(processes):
                ours, theirs = socketlib.socketpair()
                self.workers.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "bench.p8_games", "client", str(theirs.fileno()), str(number)],
                        pass_fds=[theirs.fileno()],
                        cwd=REPO_ROOT,
                    )
                )
                theirs.close()
                self.pipes.append(Connection(ours.detach()))
        except BaseException:
            self.close()
            raise

    def _all(self, command: str, args: Sequence[Any]) -> list[Any]:
        for pipe, arg in zip(self.pipes, args, strict=True):
            pipe.send((command, arg))
        replies = []
        for pipe in self.pipes:
            status, reply = pipe.recv()
            if status != "ok":
                raise RuntimeError(f"client process: {reply}")
            replies.append(reply)
        return replies

    @property
    def pids(self) -> list[int]:
        return [worker.pid for worker in self.workers]

    def open(self, ws_url: str, paths: Sequence[str], concurrency: int = 25) -> tuple[int, list[str]]:
        """One socket per path, each counted once its first frame came."""
        host, _, port = ws_url.removeprefix("ws://").partition(":")
        parts: list[list[tuple[int, str]]] = [[] for _ in self.pipes]
        for index, path in enumerate(paths):
            parts[index % len(parts)].append((index, path))
        replies = self._all("open", [(host, int(port), part, concurrency) for part in parts])
        return sum(r[0] for r in replies), [e for r in replies for e in r[1]][:5]

    def inputs_at(self, rate: float) -> None:
        self._all("inputs", [rate] * len(self.pipes))

    def take(self) -> dict[str, Any]:
        """Counts since the last take, all processes together."""
        replies = self._all("take", [None] * len(self.pipes))
        acks, lags = array.array("d"), array.array("d")
        other: dict[str, int] = {}
        why_closed: dict[str, int] = {}
        for reply in replies:
            acks.frombytes(reply["acks"])
            lags.frombytes(reply["lags"])
            for name, count in reply["other"].items():
                other[name] = other.get(name, 0) + count
            for code, count in reply["why_closed"].items():
                why_closed[code] = why_closed.get(code, 0) + count
        return {
            **{
                key: sum(r[key] for r in replies)
                for key in ("states", "snapshots", "bytes", "inputs", "open", "closed")
            },
            "other": other,
            "why_closed": why_closed,
            "acks": acks,
            "lags": lags,
        }

    def close(self) -> None:
        with contextlib.suppress(OSError, EOFError, RuntimeError):
            self._all("close", [None] * len(self.pipes))
        for process in self.workers:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pipe in self.pipes:
            pipe.close()

    def __enter__(self) -> Players:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _cpu_of(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


# --- Seeding and matchmaking ------------------------------------------------------------------------


def seed_players(stack: Stack, *, prefix: str, matches: int, players: int) -> dict[str, str]:
    """``matches × players`` recipients ``<prefix>1..N``, each group of ``players`` (by
    number) with a rating of its own GROUP_RATING_GAP above the last; {external id: token}."""
    count = matches * players
    seed_recipients(stack, prefix, count)
    with stack.db_connect() as db:
        db.execute(
            """INSERT INTO gaming_rating (recipient_id, mode, mu, sigma, ordinal, matches, wins, updated_at)
               SELECT r.id, %s, %s + g.group_number * %s, %s, g.group_number * %s, 0, 0, now()
               FROM notifications_recipient r
               JOIN (SELECT n, (n - 1) / %s AS group_number FROM generate_series(1, %s) AS n) g
                 ON r.external_id = %s || g.n""",
            [
                MODE,
                3 * DEFAULT_SIGMA,
                GROUP_RATING_GAP,
                DEFAULT_SIGMA,
                GROUP_RATING_GAP,
                players,
                count,
                prefix,
            ],
        )
    tokens = mint_tokens(stack, prefix)
    if len(tokens) != count:
        raise RuntimeError(f"minted {len(tokens)} tokens for {count} players")
    return tokens


async def _post_tickets(stack: Stack, tokens: list[str], concurrency: int) -> tuple[int, list[str], float]:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    errors: list[str] = []
    failed = 0
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=stack.web_url, timeout=60.0, limits=limits) as client:

        async def one(token: str) -> None:
            nonlocal failed
            async with gate:
                try:
                    answer = await client.post(
                        "/api/v1/matchmaking/tickets/",
                        json={"mode": MODE, "latencies": {"local": 5}},
                        headers={"Authorization": f"Bearer {token}"},
                    )
                except httpx.HTTPError as exc:
                    failed += 1
                    errors.append(f"{type(exc).__name__}: {exc}")
                    return
                if answer.status_code != 201:
                    failed += 1
                    errors.append(f"{answer.status_code} {answer.text[:200]}")

        started = time.perf_counter()
        await asyncio.gather(*(one(token) for token in tokens))
        return failed, errors[:5], time.perf_counter() - started


def matchmake(stack: Stack, tokens: dict[str, str], *, players: int, timeout: float) -> Matchmaking:
    """Every player asks for a match through the API (in random order); returns once every
    ticket is matched."""
    order = list(tokens.values())
    random.Random(8).shuffle(order)
    first_post = time.time()
    failed, errors, post_seconds = asyncio.run(_post_tickets(stack, order, concurrency=16))
    expected = len(order) - failed

    def all_matched() -> bool:
        stack.check_alive()
        with stack.db_connect() as db:
            row = db.execute("SELECT count(*) FROM gaming_ticket WHERE status = 'matched'").fetchone()
        return bool(row and row[0] >= expected)

    try:
        wait_for(all_matched, timeout, "tickets still searching", interval=0.1)
    except TimeoutError as error:
        errors.append(str(error))
    with stack.db_connect() as db:
        waits = [
            float(seconds)
            for (seconds,) in db.execute(
                "SELECT extract(epoch FROM matched_at - created_at) FROM gaming_ticket WHERE status = 'matched'"
            ).fetchall()
        ]
        last = db.execute("SELECT extract(epoch FROM max(matched_at)) FROM gaming_ticket").fetchone()
        sizes = db.execute(
            "SELECT size, count(*) FROM (SELECT match_id, count(*) AS size FROM gaming_matchplayer GROUP BY match_id) s "
            "GROUP BY size ORDER BY size"
        ).fetchall()
    return Matchmaking(
        tickets=len(order),
        matches=sum(int(count) for _, count in sizes),
        match_sizes={str(size): int(count) for size, count in sizes},
        post_seconds=post_seconds,
        matched_seconds=(float(last[0]) - first_post) if last and last[0] is not None else math.nan,
        http_errors=failed,
        wait_p50_s=percentile(waits, 0.5),
        wait_p99_s=percentile(waits, 0.99),
        errors=errors,
    )


def match_paths(stack: Stack, tokens: dict[str, str]) -> list[str]:
    """Each matched player's match socket path with their token."""
    with stack.db_connect() as db:
        rows = db.execute(
            """SELECT r.external_id, p.match_id FROM gaming_matchplayer p
               JOIN notifications_recipient r ON r.id = p.recipient_id ORDER BY p.match_id, r.id"""
        ).fetchall()
    return [f"/ws/matches/{match_id}/?token={tokens[external_id]}" for external_id, match_id in rows]


# --- The matchmaking pass, timed directly -------------------------------------------------------------

_PASS_SCRIPT = """
import json, random, time, uuid
from datetime import timedelta
from django.db import transaction
from django.utils import timezone
from gaming.models import Ticket, TicketMember, TicketStatus
from gaming.services.matchmaking import matchmaking_run
from notifications.models import Recipient

waiting = {waiting}
rng = random.Random(waiting)
matchmaking_run(mode={mode!r})  # warm: imports, the connection, an empty pass
Ticket.objects.filter(status=TicketStatus.SEARCHING).update(status=TicketStatus.CANCELLED)
TicketMember.objects.filter(searching=True).update(searching=False)
run = uuid.uuid4().hex[:6]
now = timezone.now()
with transaction.atomic():
    people = Recipient.objects.bulk_create(
        [Recipient(external_id=f"pass-{{run}}-{{n}}", name="") for n in range(waiting)], batch_size=2000
    )
    tickets = Ticket.objects.bulk_create(
        [
            Ticket(
                mode={mode!r},
                owner=person,
                size=1,
                rating=max(0.0, rng.gauss(15.0, 10.0)),
                latencies={{"local": rng.uniform(5, 80)}},
                created_at=now - timedelta(seconds=rng.uniform(0, 10)),
            )
            for person in people
        ],
        batch_size=2000,
    )
    TicketMember.objects.bulk_create(
        [TicketMember(ticket=ticket, recipient=ticket.owner) for ticket in tickets], batch_size=2000
    )
started = time.perf_counter()
formed = matchmaking_run(mode={mode!r})
seconds = time.perf_counter() - started
matched = Ticket.objects.filter(match__in=formed).count()
started = time.perf_counter()
again = matchmaking_run(mode={mode!r})
second = time.perf_counter() - started
left = Ticket.objects.filter(status=TicketStatus.SEARCHING).count()
print("P8PASS " + json.dumps(dict(waiting=waiting, matches=len(formed), tickets_matched=matched, seconds=seconds,
      second_pass_seconds=second, second_pass_matches=len(again), left_searching=left)))
"""


def time_passes(stack: Stack, sizes: Sequence[int]) -> list[PassTiming]:
    """``matchmaking_run`` over each number of waiting tickets, in a ``manage.py shell``
    with the stack's environment (its database and Redis: matches are placed and announced
    as the beat task's pass does it)."""
    timings = []
    for waiting in sizes:
        completed = subprocess.run(
            [
                sys.executable,
                str(REPO_ROOT / "manage.py"),
                "shell",
                "-c",
                _PASS_SCRIPT.format(waiting=waiting, mode=MODE),
            ],
            cwd=REPO_ROOT,
            env=stack.platform.env,
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        lines = [line for line in completed.stdout.splitlines() if line.startswith("P8PASS ")]
        if completed.returncode != 0 or not lines:
            raise RuntimeError(
                f"the timed matchmaking pass failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}"
            )
        timings.append(PassTiming(**json.loads(lines[-1].removeprefix("P8PASS "))))
    return timings


# --- The phases ---------------------------------------------------------------------------------------


def _cpu(stack: Stack, before: Any, after: Any, clients: float) -> dict[str, float]:
    cpu = cpu_seconds(stack, before, after)
    cpu["clients"] = clients
    cpu["other processes"] = max(0.0, cpu.get("other processes", 0.0) - clients)
    return {name: round(value, 3) for name, value in cpu.items()}


# Lines of the stack's logs that tell of trouble during a window, counted per window.
LOG_EVENTS = {
    "match server heartbeat failed": ("match-1", "heartbeat failed"),
    "match server Redis pool exhausted": ("match-1", "Too many connections"),
    "web Redis pool exhausted": ("web", "MaxConnectionsError"),
}


def _log_sizes(stack: Stack) -> dict[str, int]:
    sizes = {}
    for name, path in stack.platform.log_paths().items():
        with contextlib.suppress(OSError):
            sizes[name] = path.stat().st_size
    return sizes


def _log_events(stack: Stack, since: dict[str, int]) -> dict[str, int]:
    """How many lines of each LOG_EVENTS the processes logged since ``since`` (sizes)."""
    texts: dict[str, str] = {}
    for name, path in stack.platform.log_paths().items():
        try:
            with path.open("rb") as log:
                log.seek(since.get(name, 0))
                texts[name] = log.read().decode("utf-8", errors="replace")
        except OSError:
            continue
    counts = {}
    for event, (process, needle) in LOG_EVENTS.items():
        count = sum(
            sum(1 for line in text.splitlines() if needle in line)
            for name, text in texts.items()
            if name == process or name.startswith(process + "-")
        )
        if count:
            counts[event] = count
    return counts


def _match_status(stack: Stack) -> dict[str, int]:
    with stack.db_connect() as db:
        rows = db.execute("SELECT status, count(*) FROM gaming_match GROUP BY status").fetchall()
    return {str(status): int(count) for status, count in rows}


class _Beats:
    """The match server's heartbeats read during a window: since 0c449ca each says how its
    clocks kept time since the beat before (``ticks``: count, lateness p50/p99/max in ms)."""

    def __init__(self, stack: Stack) -> None:
        import redis

        self.client = redis.Redis.from_url(stack.redis.url, socket_timeout=2)
        self.key = f"{stack.platform.env.get('REDIS_NAMESPACE', '')}gaming:server:match-{SERVER_NAME}"
        self.seen: list[dict[str, Any]] = []
        self.last: Any = None

    def poll(self) -> None:
        with contextlib.suppress(Exception):
            raw = self.client.get(self.key)
            if raw is not None and raw != self.last:
                self.last = raw
                ticks = json.loads(raw).get("ticks")
                if isinstance(ticks, dict) and ticks.get("count"):
                    self.seen.append(ticks)

    def summary(self) -> dict[str, Any]:
        self.client.close()
        if not self.seen:
            return {}
        p99s = sorted(float(beat["late_p99_ms"]) for beat in self.seen)
        return {
            "beats": len(self.seen),
            "ticks": sum(int(beat["count"]) for beat in self.seen),
            "p99_ms_median": p99s[len(p99s) // 2],
            "p99_ms_worst": p99s[-1],
            "max_ms": max(float(beat["late_max_ms"]) for beat in self.seen),
        }


def _profile_start(pid: int, seconds: float, path: Path) -> subprocess.Popen[bytes] | None:
    """py-spy sampling ``pid`` (100 Hz, without pausing it) for ``seconds``, if installed."""
    executable = py_spy()
    if executable is None:
        return None
    return subprocess.Popen(
        [executable, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))), "--rate", "100",
         "--nonblocking", "--format", "raw", "--output", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def profile_summary(path: Path, top: int = 15) -> dict[str, Any]:
    """From py-spy's collapsed stacks: the samples, and the functions (``name (file)``) with
    the largest shares of them, by their own time (the stack's last frame) and inclusive."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count

    def shares(counts: dict[str, int]) -> list[tuple[str, float]]:
        ranked = sorted(counts.items(), key=lambda item: -item[1])[:top]
        return [(name, round(count / total, 4)) for name, count in ranked] if total else []

    return {"samples": total, "own": shares(own), "inclusive": shares(inclusive)}


def play_phase(
    stack: Stack,
    players: Players,
    *,
    name: str,
    rate: float,
    seconds: float,
    warmup: float,
    expected_players: int,
    baseline_beside: bool,
    profile_dir: Path | None,
    progress: bool,
) -> Phase:
    """Inputs at ``rate`` per player (0: none), ``warmup`` seconds, then a window of
    ``seconds`` measured at the clients and read out of the match server; with
    ``profile_dir``, py-spy samples the match server and a web process meanwhile."""
    players.inputs_at(rate)
    time.sleep(warmup)
    players.take()
    beside = _start_timers(BASELINE_TASKS, TICK_RATE, seconds) if baseline_beside else None
    profilers: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    if profile_dir is not None:
        for process_name in (f"match-{SERVER_NAME}", "web"):
            pid = stack.platform.processes[process_name].pid
            path = profile_dir / f"p8-{process_name}-{name.replace(' ', '-').replace('/', '')}.txt"
            profiler = _profile_start(pid, seconds, path) if pid is not None else None
            if profiler is not None:
                profilers[process_name] = (profiler, path)
    logs = _log_sizes(stack)
    beats = _Beats(stack)
    before, clients_before = cpu_sample(), _cpu_of(players.pids)
    start = time.monotonic()
    bar = Progress(f"P8 {name}", int(seconds), enabled=progress)
    while (elapsed := time.monotonic() - start) < seconds:
        bar.update(int(elapsed))
        beats.poll()
        time.sleep(min(0.4, max(0.0, seconds - elapsed)))
    end = time.monotonic()
    taken = players.take()
    after, clients_after = cpu_sample(), _cpu_of(players.pids)
    bar.finish(int(seconds))
    baseline = (
        _finish_timers(beside, BASELINE_TASKS, TICK_RATE, seconds, "beside the load")
        if beside is not None
        else None
    )
    profiles = {}
    for process_name, (profiler, path) in profilers.items():
        with contextlib.suppress(subprocess.TimeoutExpired):
            profiler.wait(30)
        if path.exists():
            profiles[process_name] = profile_summary(path)
    # The readout of the window's last second comes up to a second later.
    time.sleep(READOUT_SECONDS * 1.5)
    window = server_window(_readouts(stack), start, end)
    stack.check_alive()
    return Phase(
        name=name,
        input_rate=rate,
        seconds=end - start,
        players=expected_players,
        connected=int(taken["open"]),
        state_frames=int(taken["states"]),
        snapshots=int(taken["snapshots"]),
        bytes_received=int(taken["bytes"]),
        other_frames=dict(taken["other"]),
        inputs_sent=int(taken["inputs"]),
        input_ack_p50_ms=percentile(taken["acks"], 0.5) * 1000,
        input_ack_p99_ms=percentile(taken["acks"], 0.99) * 1000,
        send_lag_p99_ms=percentile(taken["lags"], 0.99) * 1000,
        closed=int(taken["closed"]),
        why_closed=dict(taken["why_closed"]),
        server=window,
        baseline_beside=baseline,
        cpu_seconds=_cpu(stack, before, after, clients_after - clients_before),
        match_status=_match_status(stack),
        log_events=_log_events(stack, logs),
        profiles=profiles,
        heartbeat=beats.summary(),
    )


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


NOBODY = "no players connected"
# Five seconds after a match begins, its players not on its socket are notified through the
# pipeline (gaming/services/server.py, NOTIFY_ABSENT_SECONDS): the window with nobody
# connected starts once that burst has passed.
SETTLE_SECONDS = 8.0


def _window_name(rate: float) -> str:
    return f"{rate:g} inputs/s per player" if rate else "no inputs"


def _session(
    *,
    template: str | None,
    env: dict[str, str],
    matches: int,
    players: int,
    windows: Sequence[tuple[str, float, float]],
    warmup: float,
    headline_rate: float,
    client_processes: int,
    profile: bool,
    progress: bool,
) -> tuple[Matchmaking, list[Phase], list[str]]:
    """One stack: the matchmaking, then each of ``windows`` (name, input rate, seconds)."""
    total = matches * players
    notes: list[str] = []
    phases: list[Phase] = []
    with bench_stack(template=template, label="p8", web_processes=DEFAULT_WEB_PROCESSES, env=env) as stack:
        start_match_server(stack, capacity=max(200, matches))
        tokens = seed_players(stack, prefix=f"p8-{uuid.uuid4().hex[:6]}-", matches=matches, players=players)
        made = matchmake(stack, tokens, players=players, timeout=120 + total / 5)
        if made.matches != matches:
            notes.append(f"matchmaking formed {made.matches} matches, not {matches}: {made.match_sizes}")

        def all_running() -> bool:
            stack.check_alive()
            with stack.db_connect() as db:
                row = db.execute("SELECT count(*) FROM gaming_match WHERE status = 'running'").fetchone()
            return bool(row and row[0] >= made.matches)

        wait_for(all_running, 60, "the match server did not claim every match", interval=0.1)
        paths = match_paths(stack, tokens)
        with Players(client_processes) as clients:
            opened = False
            for name, window_rate, window_seconds in windows:
                if name != NOBODY and not opened:
                    count, errors = clients.open(stack.ws_url, paths)
                    opened = True
                    if count < len(paths):
                        notes.append(
                            f"{len(paths) - count} of {len(paths)} match sockets did not open: {errors}"
                        )
                phase = play_phase(
                    stack, clients, name=name, rate=window_rate, seconds=window_seconds,
                    warmup=SETTLE_SECONDS if name == NOBODY else warmup if window_rate else 2.0,
                    expected_players=len(paths) if opened else 0,
                    baseline_beside=window_rate == headline_rate and opened,
                    profile_dir=stack.platform.log_dir if profile else None, progress=progress,
                )  # fmt: skip
                phases.append(phase)
                aborted = phase.match_status.get("aborted", 0)
                if aborted:
                    notes.append(
                        f"By the end of the window {phase.name!r}, {aborted} of its stack's matches had been ended "
                        f"as aborted (the processes' logs: {phase.log_events or 'nothing'})."
                    )
        stack.check_alive()
    return made, phases, notes


def run(
    *,
    template: str | None,
    matches: int = MATCHES_TARGET,
    players: int = MODE_MAX_PLAYERS,
    seconds: float = 30.0,
    rate: float = TICK_RATE,
    other_rates: Sequence[float] = (0.0, 5.0),
    other_seconds: float = 15.0,
    warmup: float = 5.0,
    passes: Sequence[int] = (1_000, 10_000),
    client_processes: int = 2,
    baseline_seconds: float = 10.0,
    profile: bool = False,
    progress: bool = True,
    server_nice: int = 0,
    server_realtime: int = DEFAULT_SERVER_REALTIME,
) -> P8Result:
    """The headline window (``seconds`` with inputs at ``rate``) and a window of
    ``other_seconds`` at each of ``other_rates``, lightest first. Each input rate above 0
    gets a stack and matches of its own: a load that overwhelms the stack (sockets closed,
    matches aborted, clocks still ticking in the server) spoils nothing after it. The
    first stack also measures a window with the matches ticking and nobody connected
    (unless ``other_seconds`` is 0). With ``profile``, py-spy samples the match server and
    a web process in every window."""
    if not 2 <= players <= MODE_MAX_PLAYERS:
        raise ValueError(f"players per match: 2 to {MODE_MAX_PLAYERS}, not {players}")
    load_before = _load()
    baseline = timer_baseline(seconds=baseline_seconds)
    total = matches * players
    raise_fd_limit(4 * total + 1024)
    rates = sorted({rate, *other_rates})
    sessions: list[list[tuple[str, float, float]]] = [
        [(_window_name(r), r, seconds if r == rate else other_seconds)] for r in rates if r > 0
    ]
    first = [(NOBODY, 0.0, other_seconds)] if other_seconds > 0 else []
    if 0 in rates:
        first.append((_window_name(0.0), 0.0, seconds if rate == 0 else other_seconds))
    if first:
        sessions.insert(0, first)
    # The matches tick from the moment they are formed, and the players connect once all
    # are: the grace period and the round outlast the setup and the windows, so that no one
    # forfeits and no match ends during them.
    env = {
        "GAMING_GRACE_SECONDS": str(int(600 + total / 5)),
        "GAMING_ARENA_ROUND_SECONDS": str(
            int(1200 + seconds + 2 * (other_seconds + SETTLE_SECONDS) + total / 5)
        ),
    }
    if server_nice:
        # The match server's scheduling priority (match_server --nice, GAMING_SERVER_NICE).
        env["GAMING_SERVER_NICE"] = str(server_nice)
    if server_realtime:
        # SCHED_FIFO at this priority (match_server --realtime, GAMING_SERVER_REALTIME).
        env["GAMING_SERVER_REALTIME"] = str(server_realtime)
    if players < MODE_MAX_PLAYERS:
        # A match of fewer than the mode's most forms once its tickets waited this long.
        env["GAMING_FILL_SECONDS"] = "1"
    notes: list[str] = []
    phases: list[Phase] = []
    made_runs: list[Matchmaking] = []
    for windows in sessions:
        made, session_phases, session_notes = _session(
            template=template, env=env, matches=matches, players=players, windows=windows, warmup=warmup,
            headline_rate=rate, client_processes=client_processes, profile=profile, progress=progress,
        )  # fmt: skip
        made_runs.append(made)
        phases += session_phases
        notes += session_notes
    timings: list[PassTiming] = []
    if passes:
        with bench_stack(template=template, label="p8-pass", web=False, beat=False, workers=()) as stack:
            timings = time_passes(stack, passes)
    headline_session = next(
        (number for number, windows in enumerate(sessions) if any(r == rate for _, r, _ in windows)), 0
    )
    return P8Result(
        matches=matches,
        players=players,
        input_rate=rate,
        seconds=seconds,
        web_processes=DEFAULT_WEB_PROCESSES,
        client_processes=client_processes,
        load_before=load_before,
        baseline=baseline,
        matchmaking=made_runs[headline_session],
        phases=phases,
        passes=timings,
        env=env,
        notes=notes,
        matchmaking_runs=made_runs,
    )


def py_spy() -> str | None:
    """The py-spy executable, when one is installed (PATH, or PY_SPY)."""
    return os.environ.get("PY_SPY") or shutil.which("py-spy")


if __name__ == "__main__":
    command, rest = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if command == "match-server":
        _match_server_main(rest)
    elif command == "client":
        _client_main(rest)
    elif command == "timers":
        _timers_main(rest)
    else:
        sys.exit("usage: python -m bench.p8_games match-server|client|timers ...")
