"""The stack a benchmark runs against: private Redis, temporary database, real processes.

``template_database()`` migrates one database per ``python -m bench`` run; every stack
clones it (``CREATE DATABASE ... TEMPLATE``), which takes a fraction of a second.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import resource
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from harness.processes import (
    DEFAULT_WORKERS,
    LOCALHOST,
    REPO_ROOT,
    PlatformProcesses,
    PrivateRedis,
    Server,
    TemporaryDatabase,
    WorkerSpec,
    free_port,
    proc_stats,
    wait_until,
)
from harness.sandbox import SandboxProcess

BENCH_DIR = Path(__file__).resolve().parent
LOG_ROOT = BENCH_DIR / ".tmp"

# Settings every benchmark runs with. The per-user rate cap would suppress most of P2's
# traffic to its few recipients, so it is lifted; logging drops to WARNING so that the
# processes do not spend the benchmark writing one INFO line per task.
BENCH_ENV: dict[str, str] = {
    "RATE_CAP_INAPP": "1000000/60",
    "LOG_LEVEL": "WARNING",
    "CELERY_LOG_LEVEL": "WARNING",
    "DEBUG": "false",
}

_API_KEY_LINE = re.compile(r"^nk_\S+$")


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's open-file soft limit towards ``wanted`` (children inherit it);
    returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


@contextlib.contextmanager
def template_database() -> Iterator[str]:
    """A migrated database that stacks clone; dropped on exit. Yields its name."""
    with TemporaryDatabase(prefix="bench_tpl", env=BENCH_ENV) as database:
        yield database.name


def progress_bar(label: str, done: int, total: int, started: float, width: int = 30) -> str:
    """One line of a text progress bar: ``label [#####.....]  52% 52,000/100,000 3.1s``."""
    fraction = 0.0 if total <= 0 else min(1.0, max(0.0, done / total))
    filled = int(round(fraction * width))
    bar = "#" * filled + "." * (width - filled)
    return f"{label} [{bar}] {fraction * 100:5.1f}% {done:,}/{total:,} {time.monotonic() - started:6.1f}s"


class Progress:
    """A one-line text progress bar on stderr, redrawn in place (``\\r``) on a terminal and
    printed every tenth otherwise, so that logs stay readable."""

    def __init__(self, label: str, total: int, *, enabled: bool = True) -> None:
        self.label = label
        self.total = total
        self.enabled = enabled
        self.started = time.monotonic()
        self.tty = sys.stderr.isatty()
        self.last_printed = -1.0

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        line = progress_bar(self.label, done, self.total, self.started)
        if self.tty:
            sys.stderr.write("\r" + line)
            sys.stderr.flush()
            return
        fraction = done / self.total if self.total else 1.0
        if fraction - self.last_printed >= 0.1 or (done >= self.total and self.last_printed < 1.0):
            self.last_printed = fraction
            sys.stderr.write(line + "\n")
            sys.stderr.flush()

    def finish(self, done: int) -> None:
        if not self.enabled:
            return
        self.update(done)
        if self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


@dataclass
class Stack:
    """A running platform on private services, and a service API key for it."""

    redis: PrivateRedis
    database: TemporaryDatabase
    platform: PlatformProcesses
    api_key: str
    env: dict[str, str] = field(default_factory=dict)
    # The provider sandbox the platform's provider clients talk to (``sandbox=True``).
    sandbox: SandboxProcess | None = None

    @property
    def processes(self) -> PlatformProcesses:
        """The platform's processes (the name end-to-end tests use for them)."""
        return self.platform

    @property
    def web_url(self) -> str:
        return self.platform.web_url

    @property
    def ws_url(self) -> str:
        return self.platform.ws_url

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Api-Key {self.api_key}"}

    def client(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.web_url, headers=self.headers, timeout=timeout)

    def async_client(self, *, connections: int = 16, timeout: float = 30.0) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        return httpx.AsyncClient(base_url=self.web_url, headers=self.headers, timeout=timeout, limits=limits)

    def db_connect(self) -> Any:
        """A psycopg connection (autocommit) to the stack's database."""
        import psycopg

        return psycopg.connect(self.database.url, autocommit=True)

    def web_pid(self) -> int:
        pid = self.platform.processes["web"].pid
        assert pid is not None
        return pid

    def check_alive(self) -> None:
        """RuntimeError naming any process that died during the benchmark."""
        exited = self.platform.unexpected_exits()
        if self.sandbox is not None and not self.sandbox.alive:
            process = self.sandbox.process
            code = process.returncode if process is not None else None
            exited.append(("provider-sandbox", -1 if code is None else code))
        if exited:
            raise RuntimeError(f"processes exited during the benchmark: {exited}\n{self.log_tails(30)}")

    def log_tails(self, lines: int = 40) -> str:
        """Every process's log tail (the sandbox's too), for error messages."""
        tails = self.platform.log_tails(lines)
        if self.sandbox is not None:
            tails += (
                f"\n----- provider sandbox ({self.sandbox.log_path}) -----\n{self.sandbox.log_tail(lines)}"
            )
        return tails


def create_api_key(database: TemporaryDatabase, name: str = "bench") -> str:
    """Run ``manage.py create_api_key`` against the database; return the raw key."""
    output = database.run_manage("create_api_key", name)
    for line in reversed(output.splitlines()):
        if _API_KEY_LINE.match(line.strip()):
            return line.strip()
    raise RuntimeError(f"create_api_key printed no key:\n{output}")


@contextlib.contextmanager
def bench_stack(
    *,
    template: str | None,
    server: Server = "uvicorn",
    workers: Iterable[WorkerSpec] = DEFAULT_WORKERS,
    env: Mapping[str, str] | None = None,
    web: bool = True,
    beat: bool = True,
    label: str = "bench",
    cwd: Path | None = None,
    sandbox: bool = False,
    web_processes: int = 1,
    uvicorn_ws: str | None = None,
) -> Iterator[Stack]:
    """Start private Redis, a database cloned from ``template`` (migrated when None), and
    the platform's processes; stop and drop everything on exit. ``cwd`` runs the processes
    from another checkout (to measure a candidate change side by side). ``sandbox`` also
    starts a provider sandbox (keys and log in the stack's log directory) whose callbacks
    reach the stack's web server, and points the platform's provider clients at it.
    ``uvicorn_ws`` runs uvicorn with another websocket protocol than the platform's."""
    LOG_ROOT.mkdir(parents=True, exist_ok=True)
    log_dir = LOG_ROOT / f"{label}-{server}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(PrivateRedis())
        merged_env = {**BENCH_ENV, **(env or {})}
        database = stack.enter_context(
            TemporaryDatabase(prefix=f"bench_{label}", template=template, env=merged_env)
        )
        process_env = {
            **merged_env,
            "DATABASE_URL": database.url,
            "REDIS_URL": redis.url,
            "CELERY_BROKER_URL": redis.url,
        }
        api_key = create_api_key(database)
        # The web port is chosen first: the sandbox must know where to send callbacks.
        port = free_port()
        provider_sandbox: SandboxProcess | None = None
        if sandbox:
            provider_sandbox = stack.enter_context(
                # Niced: it stands in for the providers' own servers, which do not take
                # the platform's CPU; here it must at least not take it first.
                SandboxProcess(
                    directory=log_dir / "sandbox", platform_url=f"http://{LOCALHOST}:{port}", nice=10
                )
            )
            process_env.update(provider_sandbox.env())
        worker_specs = list(workers)
        platform = PlatformProcesses(
            process_env,
            server=server,
            port=port,
            workers=worker_specs,
            log_dir=log_dir,
            loglevel=merged_env.get("CELERY_LOG_LEVEL", "WARNING"),
            cwd=cwd if cwd is not None else REPO_ROOT,
            web_processes=web_processes,
            uvicorn_ws=uvicorn_ws,
        )
        stack.callback(platform.stop_all)
        for spec in worker_specs:
            platform.start_worker(spec.name, wait=False)
        if beat:
            platform.start_beat()
        if web:
            platform.start_web()
        for spec in worker_specs:
            platform.wait_for_worker(spec.name)
        yield Stack(
            redis=redis,
            database=database,
            platform=platform,
            api_key=api_key,
            env=process_env,
            sandbox=provider_sandbox,
        )


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuSample:
    """CPU time consumed so far (clock ticks): per process group (user + system, with
    reaped children), by all PostgreSQL processes, by the whole machine (busy time of all
    cores, from /proc/stat); and by this process (seconds)."""

    groups: dict[int, int]
    postgres: int
    machine_busy: int
    own_seconds: float


def cpu_sample() -> CpuSample:
    groups: dict[int, int] = {}
    postgres = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        command = stat[stat.find("(") + 1 : stat.rfind(")")]
        # fields[0] is /proc/<pid>/stat field 3 (state): pgrp is field 5, utime..cstime 14..17.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) <= 14:
            continue
        ticks = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
        groups[int(fields[2])] = groups.get(int(fields[2]), 0) + ticks
        # Every PostgreSQL process leads a group of its own; ended backends are counted in
        # the postmaster's reaped-children time.
        if command == "postgres":
            postgres += ticks
    busy = 0
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1:]]
            # user nice system idle iowait irq softirq steal ...: busy is all but idle and iowait.
            busy = sum(values[:8]) - values[3] - values[4]
            break
    times = os.times()
    return CpuSample(
        groups=groups, postgres=postgres, machine_busy=busy, own_seconds=times.user + times.system
    )


POSTGRES_CPU = "postgres"
OTHER_CPU = "other processes"
MACHINE_CPU = "machine"


def cpu_seconds(stack: Stack, before: CpuSample, after: CpuSample) -> dict[str, float]:
    """CPU seconds each part of the stack used between two samples: its processes (each
    with its process group: Celery pool processes count with their worker), the provider
    sandbox, the private Redis, the load generator (this process), PostgreSQL (the whole
    server: other databases' work too), the machine's other processes, and the machine."""
    leaders: dict[str, int | None] = {name: process.pid for name, process in stack.platform.processes.items()}
    if stack.sandbox is not None and stack.sandbox.process is not None:
        leaders["provider-sandbox"] = stack.sandbox.process.pid
    leaders["redis"] = stack.redis.process.pid
    result: dict[str, float] = {}
    for name, pid in leaders.items():
        if pid is not None:
            result[name] = (after.groups.get(pid, 0) - before.groups.get(pid, 0)) / CLOCK_TICKS
    # "web" is every web process (web, web-2, ... share the port).
    for name in [name for name in result if name.startswith("web-")]:
        result["web"] = result.get("web", 0.0) + result.pop(name)
    result["load generator"] = after.own_seconds - before.own_seconds
    result[POSTGRES_CPU] = (after.postgres - before.postgres) / CLOCK_TICKS
    machine = (after.machine_busy - before.machine_busy) / CLOCK_TICKS
    result[OTHER_CPU] = max(0.0, machine - sum(result.values()))
    result[MACHINE_CPU] = machine
    return result


def wait_for(predicate: Any, timeout: float, message: str, interval: float = 0.05) -> Any:
    """``harness.processes.wait_until`` re-exported for the benchmark modules."""
    return wait_until(predicate, timeout, interval=interval, message=message)


def rss_kib_tree(pid: int) -> int:
    """Resident memory (VmRSS, KiB) of ``pid`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for child, fields in proc_stats():
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(child)
    total = 0
    pending = [pid]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        total += _vmrss_kib(current)
        pending.extend(children.get(current, []))
    return total


def _vmrss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]
