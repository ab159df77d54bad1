"""P2's baseline: a bare Redis PUBLISH to a bare websocket client, on the same machine.

What a live frame cannot beat whatever the platform does: a message published to Redis at
the P2 rate, taken off a pub/sub subscription by a minimal websocket server (the
``websockets`` library on asyncio, in a process of its own) and written to the client's
socket, one channel per client as the platform routes a frame to its user. No HTTP, no
database, no Django. The load generator (publisher and clients) runs in the bench's own
process, as P2's does; latency is from just before the PUBLISH to the frame's arrival.

The same server is P3's baseline (``bare_server``): it holds idle sockets (memory per
connection), writes one publish to every socket (broadcast) and echoes what a client sends
(heartbeats); P3 runs it on uvloop, as uvicorn runs.

``python -m bench.p2_baseline --port P --redis URL [--uvloop]`` runs the server alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from bench.stack import Stack, percentile
from harness.processes import REPO_ROOT, free_port
from project.processes import wait_until

CHANNEL_PREFIX = "p2base."


@dataclass
class BaselineResult:
    clients: int
    rate: float
    sent: int
    received: int
    lost: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"P2 baseline (bare Redis publish -> bare websocket), {self.clients} clients, {self.rate:.0f}/s: "
            f"p50 {self.p50_ms:.2f} ms, p95 {self.p95_ms:.2f} ms, p99 {self.p99_ms:.2f} ms, "
            f"max {self.max_ms:.2f} ms; {self.received}/{self.sent} frames, lost {self.lost}"
        )


# --- The server -----------------------------------------------------------------------------


async def _serve(port: int, redis_url: str, ready_file: Path | None) -> None:
    sockets: dict[str, set[ServerConnection]] = {}

    async def handler(socket: ServerConnection) -> None:
        client = (socket.request.path if socket.request else "/").strip("/")
        sockets.setdefault(client, set()).add(socket)
        try:
            # Whatever a client sends comes back (P3's heartbeat baseline: a bare echo).
            async for message in socket:
                await socket.send(message)
        finally:
            sockets[client].discard(socket)

    client = aioredis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    await pubsub.psubscribe(f"{CHANNEL_PREFIX}*")
    async with serve(handler, "127.0.0.1", port, compression=None):
        if ready_file is not None:
            ready_file.write_text("ready\n")
        async for message in pubsub.listen():
            if message["type"] != "pmessage":
                continue
            target = message["channel"].decode().removeprefix(CHANNEL_PREFIX)
            for socket in list(sockets.get(target, ())):
                await socket.send(message["data"].decode())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.p2_baseline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--ready-file", type=Path, default=None)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop (as uvicorn does)")
    args = parser.parse_args(argv)
    if args.uvloop:
        import uvloop

        uvloop.run(_serve(args.port, args.redis, args.ready_file))
    else:
        asyncio.run(_serve(args.port, args.redis, args.ready_file))


@dataclass
class BareServer:
    process: subprocess.Popen[bytes]
    port: int


@contextlib.contextmanager
def bare_server(stack: Stack, *, uvloop: bool = False) -> Iterator[BareServer]:
    """The bare websocket server in a process of its own, on the stack's Redis, listening
    on a free port; stopped on exit. It also echoes what a client sends."""
    port = free_port()
    ready = stack.redis.directory / f"bare-ws-{port}.ready"
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.p2_baseline", "--port", str(port), "--redis", stack.redis.url]
        + ["--ready-file", str(ready)]
        + (["--uvloop"] if uvloop else []),
        cwd=REPO_ROOT,
    )
    try:
        wait_until(
            lambda: ready.exists() or server.poll() is not None,
            30,
            message="the bare websocket server did not start",
        )
        if server.poll() is not None:
            raise RuntimeError(f"the bare websocket server exited with {server.returncode}")
        yield BareServer(process=server, port=port)
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


# --- The load generator ---------------------------------------------------------------------


async def _measure(port: int, redis_url: str, *, clients: int, rate: float, seconds: float) -> BaselineResult:
    arrivals: dict[str, float] = {}

    async def listen(socket: Any) -> None:
        async for raw in socket:
            arrivals.setdefault(json.loads(raw)["id"], time.perf_counter())

    sockets = [await connect(f"ws://127.0.0.1:{port}/{index}", compression=None) for index in range(clients)]
    readers = [asyncio.create_task(listen(socket)) for socket in sockets]
    publisher = aioredis.Redis.from_url(redis_url)
    sent_at: dict[str, float] = {}
    try:
        # Every client is subscribed once its first frame arrives.
        for index in range(clients):
            await publisher.publish(f"{CHANNEL_PREFIX}{index}", json.dumps({"id": f"warm-{index}"}))
        deadline = time.monotonic() + 30
        while sum(1 for key in arrivals if key.startswith("warm-")) < clients:
            if time.monotonic() > deadline:
                raise TimeoutError("P2 baseline: the clients did not get their first frame")
            await asyncio.sleep(0.01)

        count = max(1, int(round(rate * seconds)))
        started = time.perf_counter()
        for index in range(count):
            delay = started + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            key = f"m-{index}"
            sent_at[key] = time.perf_counter()
            await publisher.publish(f"{CHANNEL_PREFIX}{index % clients}", json.dumps({"id": key, "i": index}))
        deadline = time.monotonic() + 10
        while any(key not in arrivals for key in sent_at) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    finally:
        await publisher.aclose()
        for socket in sockets:
            await socket.close()
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)

    latencies = [(arrivals[key] - before) * 1000 for key, before in sent_at.items() if key in arrivals]
    return BaselineResult(
        clients=clients,
        rate=rate,
        sent=len(sent_at),
        received=len(latencies),
        lost=len(sent_at) - len(latencies),
        p50_ms=percentile(latencies, 0.50),
        p95_ms=percentile(latencies, 0.95),
        p99_ms=percentile(latencies, 0.99),
        max_ms=max(latencies) if latencies else math.nan,
    )


def measure(stack: Stack, *, clients: int, rate: float, seconds: float) -> BaselineResult:
    """The baseline at P2's rate, beside the stack's platform (idle by then), on its
    private Redis."""
    with bare_server(stack) as server:
        return asyncio.run(
            _measure(server.port, stack.redis.url, clients=clients, rate=rate, seconds=seconds)
        )


if __name__ == "__main__":
    main()
