"""Memory per idle inbox websocket held by one ASGI process (P3's per-connection figure).

One web process (no workers, no beat) on a private Redis and a temporary database. C
recipients are seeded with SQL and get a token each (bench/p3_sockets.py); after a
warm-up the resident memory (VmRSS, summed over the process tree, from /proc) is read, C
sockets are opened and each waits for its first ``unread_count`` frame, and the memory is
read again. Then every socket must still answer a ping: the figure is the cost of sockets
the server really holds. Both readings are of one server process, identified by pid and
start time.

Baseline, in the same run on the same machine: the bare websocket server of the P2 and P3
baselines (bench/p2_baseline.py: the ``websockets`` library on uvloop, one process) holding
as many idle sockets, read the same way. ``uvicorn_ws`` runs uvicorn with another websocket
protocol than the platform's (uvicorn's own ``websockets-sansio``, to show what the
platform's protocol saves: realtime/uvicorn_websocket.py).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bench import p2_baseline
from bench.p3_sockets import mint_tokens, seed_recipients, settled_rss_kib
from bench.stack import Progress, Stack, bench_stack, raise_fd_limit
from bench.wsclient import ClientPool
from harness.processes import Server

TARGET_KB_PER_CONNECTION = 30.0


@dataclass
class MemoryResult:
    server: str
    connections: int
    opened: int
    # Sockets that still answered a ping after the second reading.
    held: int
    rss_before_kib: int
    rss_after_kib: int
    connect_seconds: float
    redis_clients_before: int
    redis_clients_after: int
    # "<pid>@<start time in clock ticks>" of the web process at each reading ("" when gone):
    # equal when both readings are of the same process, started once, in this run.
    baseline_process: str
    measured_process: str
    # The bare websocket server holding as many idle sockets, in the same run.
    bare_kib_per_connection: float = float("nan")
    bare_connections: int = 0
    # uvicorn's websocket protocol ("" for the platform's own).
    uvicorn_ws: str = ""

    @property
    def kib_per_connection(self) -> float:
        return (self.rss_after_kib - self.rss_before_kib) / self.opened if self.opened else float("nan")

    @property
    def redis_clients_per_connection(self) -> float:
        if not self.opened:
            return float("nan")
        return (self.redis_clients_after - self.redis_clients_before) / self.opened

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["kib_per_connection"] = self.kib_per_connection
        data["redis_clients_per_connection"] = self.redis_clients_per_connection
        return data

    def summary(self) -> str:
        protocol = f", {self.uvicorn_ws}" if self.uvicorn_ws else ""
        return (
            f"Memory [{self.server}{protocol}] {self.held}/{self.connections} idle sockets held: "
            f"{self.kib_per_connection:.1f} KiB per connection (RSS {self.rss_before_kib / 1024:.1f} -> "
            f"{self.rss_after_kib / 1024:.1f} MiB; opened in {self.connect_seconds:.1f}s; "
            f"{self.redis_clients_per_connection:.2f} Redis connections per socket); bare websocket server "
            f"{self.bare_kib_per_connection:.1f} KiB per connection"
        )


async def _open(url: str) -> ClientConnection:
    socket = await connect(url, open_timeout=60, ping_interval=None, max_size=2**20)
    # The first frame is the unread count: the consumer is fully set up once it arrives.
    await asyncio.wait_for(socket.recv(), 60)
    return socket


async def _open_all(
    stack: Stack, tokens: Sequence[str], concurrency: int, progress: Progress | None = None
) -> list[ClientConnection]:
    gate = asyncio.Semaphore(concurrency)
    sockets: list[ClientConnection] = []

    async def one(token: str) -> None:
        async with gate:
            sockets.append(await _open(f"{stack.ws_url}/ws/inbox/?token={token}"))
            if progress is not None:
                progress.update(len(sockets))

    await asyncio.gather(*(one(token) for token in tokens))
    return sockets


def _redis_clients(stack: Stack) -> int:
    import redis

    client = redis.Redis.from_url(stack.redis.url)
    try:
        info: dict[str, Any] = client.info("clients")
        return int(info["connected_clients"])
    finally:
        client.close()


def _process_identity(pid: int) -> str:
    """``<pid>@<start time>`` from /proc/<pid>/stat, or "" when there is no such process: a
    pid can be reused, a pid and its start time cannot."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # Fields after the command name, from field 3 (state); starttime is field 22.
    return f"{pid}@{stat[stat.rfind(')') + 2 :].split()[19]}"


async def _held(sockets: Sequence[ClientConnection], timeout: float = 30.0) -> int:
    """How many of ``sockets`` answer a ping within ``timeout``: held open by the server."""

    async def answers(socket: ClientConnection) -> bool:
        try:
            pong = await socket.ping()
            await asyncio.wait_for(pong, timeout)
        except (ConnectionClosed, TimeoutError):
            return False
        return True

    return sum(await asyncio.gather(*(answers(socket) for socket in sockets)))


async def measure(
    stack: Stack, *, connections: int, concurrency: int = 50, progress: bool = True
) -> MemoryResult:
    warmup = min(20, connections)
    seed_recipients(stack, "mem-", connections + warmup)
    minted = mint_tokens(stack, "mem-")
    tokens = [minted[f"mem-{n}"] for n in range(1, connections + warmup + 1)]
    pid = stack.web_pid()

    # Warm-up: a few sockets, so that lazy imports, thread pools and Redis pools that every
    # socket shares are in the baseline, not charged to the measured sockets. They stay
    # open until the end: closed, they left their memory free in the server's allocator
    # for the measured sockets to reuse unseen, and with as many sockets measured as
    # warmed up the figure came out near 0 (daphne, 20 sockets: 0.6 KiB per connection).
    warm = await _open_all(stack, tokens[connections:], concurrency)
    await asyncio.sleep(1.0)
    gc.collect()
    baseline_process = _process_identity(pid)
    before = settled_rss_kib(pid, 3.0)
    redis_before = _redis_clients(stack)

    bar = Progress(f"Memory {stack.platform.server}: sockets open", connections, enabled=progress)
    started = time.monotonic()
    sockets = await _open_all(stack, tokens[:connections], concurrency, bar)
    connect_seconds = time.monotonic() - started
    bar.finish(len(sockets))
    await asyncio.sleep(1.0)
    after = settled_rss_kib(pid, 3.0)
    measured_process = _process_identity(pid)
    redis_after = _redis_clients(stack)
    held = await _held(sockets)
    await asyncio.gather(*(socket.close() for socket in [*sockets, *warm]), return_exceptions=True)
    return MemoryResult(
        server=stack.platform.server,
        connections=connections,
        opened=len(sockets),
        held=held,
        rss_before_kib=before,
        rss_after_kib=after,
        connect_seconds=connect_seconds,
        redis_clients_before=redis_before,
        redis_clients_after=redis_after,
        baseline_process=baseline_process,
        measured_process=measured_process,
    )


def bare_kib_per_connection(stack: Stack, connections: int) -> float:
    """KiB per idle socket of the bare websocket server (bench/p2_baseline.py on uvloop),
    read as the platform's are: 20 warm-up sockets, then ``connections`` more."""
    with p2_baseline.bare_server(stack, uvloop=True) as server, ClientPool(2) as pool:
        url = f"ws://127.0.0.1:{server.port}"
        pool.open(url, ["/warm"] * 20, wait_first=False)
        time.sleep(1.0)
        before = settled_rss_kib(server.process.pid, 3.0)
        opened, errors, _ = pool.open(url, ["/idle"] * connections, concurrency=100, wait_first=False)
        time.sleep(1.0)
        after = settled_rss_kib(server.process.pid, 3.0)
        if opened < connections:
            raise RuntimeError(f"bare websocket server: {opened}/{connections} sockets opened: {errors}")
        return (after - before) / opened


def run(
    *,
    template: str | None,
    server: Server = "uvicorn",
    connections: int = 10_000,
    progress: bool = True,
    uvicorn_ws: str | None = None,
    baseline: bool = True,
) -> MemoryResult:
    """Measure on a fresh stack with only the web process running; then, with ``baseline``,
    the bare websocket server on the same machine."""
    # Each socket costs the client one fd and the server one or two (socket, Redis).
    raise_fd_limit(3 * connections + 1024)
    with bench_stack(
        template=template, server=server, workers=(), beat=False, label="mem", uvicorn_ws=uvicorn_ws
    ) as stack:
        try:
            result = asyncio.run(measure(stack, connections=connections, progress=progress))
        except (httpx.HTTPError, OSError, TimeoutError) as exc:
            raise RuntimeError(f"memory benchmark failed: {exc}\n{stack.platform.log_tails(30)}") from exc
        result.uvicorn_ws = uvicorn_ws or ""
        stack.platform.stop_all()
        if baseline:
            result.bare_connections = connections
            result.bare_kib_per_connection = bare_kib_per_connection(stack, connections)
        return result
