"""P3 heartbeats: ``{"type": "ping"}`` frames one web process answers per second.

C inbox sockets on ONE web process (no workers: nothing else runs) each send a ping and
send the next as soon as its ``{"type": "pong"}`` arrives, for S seconds (closed loop:
each socket has one ping in flight, so the rate is what the server sustains). A ping
renews the connection's registration in Redis (realtime/consumers.py), as it does in
production. The figure is pongs per second, with the web process's CPU per pong.

Baseline, in the same run with the same clients: a bare websocket echo server
(bench/p2_baseline.py on uvloop, the ``websockets`` library) sending each ping back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from bench import p2_baseline
from bench.p3_sockets import inbox_paths, mint_tokens, seed_recipients
from bench.stack import Progress, bench_stack, cpu_sample, cpu_seconds, raise_fd_limit
from bench.wsclient import ClientPool

PING = '{"type": "ping"}'


@dataclass
class HeartbeatResult:
    sockets: int
    seconds: float
    pongs: int
    pongs_per_second: float
    round_trip_p50_ms: float
    round_trip_p99_ms: float
    web_cpu_ms_per_pong: float
    redis_cpu_ms_per_pong: float
    baseline_sockets: int
    baseline_echoes: int
    baseline_per_second: float
    baseline_round_trip_p50_ms: float
    client_processes: int
    cpu_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def ratio_to_baseline(self) -> float:
        return self.pongs_per_second / self.baseline_per_second if self.baseline_per_second else float("nan")

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratio_to_baseline"] = self.ratio_to_baseline
        return data

    def summary(self) -> str:
        return (
            f"P3 heartbeats: {self.sockets:,} sockets on one web process, {self.pongs_per_second:,.0f} pongs/s "
            f"(round trip p50 {self.round_trip_p50_ms:.1f} ms, p99 {self.round_trip_p99_ms:.1f} ms; web "
            f"{self.web_cpu_ms_per_pong:.3f} ms CPU per pong, Redis {self.redis_cpu_ms_per_pong:.3f}); bare echo "
            f"server {self.baseline_per_second:,.0f}/s ({self.ratio_to_baseline:.2f} of it)"
        )


def run(
    *,
    template: str | None,
    sockets: int = 1_000,
    seconds: float = 10.0,
    client_processes: int = 2,
    progress: bool = True,
) -> HeartbeatResult:
    raise_fd_limit(2 * sockets + 4096)
    with bench_stack(template=template, workers=(), beat=False, label="p3-heartbeat") as stack:
        seed_recipients(stack, "hb-", sockets)
        tokens = mint_tokens(stack, "hb-")
        paths = inbox_paths(tokens, [f"hb-{n}" for n in range(1, sockets + 1)])
        with ClientPool(client_processes) as pool:
            bar = Progress(f"P3 heartbeats: opening {sockets:,} sockets", sockets, enabled=progress)
            opened, errors, _ = pool.open(stack.ws_url, paths, concurrency=50)
            bar.finish(opened)
            if opened < sockets:
                raise RuntimeError(f"P3 heartbeats: {opened:,}/{sockets:,} sockets opened: {errors}")
            pool.beat(PING, '"pong"', 1.0)  # warm-up
            before = cpu_sample()
            beat = pool.beat(PING, '"pong"', seconds)
            cpu = cpu_seconds(stack, before, cpu_sample())
            stack.check_alive()
        with p2_baseline.bare_server(stack, uvloop=True) as server, ClientPool(client_processes) as pool:
            base_open, _, _ = pool.open(
                f"ws://127.0.0.1:{server.port}", ["/echo"] * sockets, concurrency=100, wait_first=False
            )
            pool.beat(PING, '"ping"', 1.0)
            bare = pool.beat(PING, '"ping"', seconds)
    pongs = int(beat["answers"])
    return HeartbeatResult(
        sockets=opened,
        seconds=float(beat["seconds"]),
        pongs=pongs,
        pongs_per_second=pongs / float(beat["seconds"]),
        round_trip_p50_ms=float(beat["round_trip_p50"]) * 1000,
        round_trip_p99_ms=float(beat["round_trip_p99"]) * 1000,
        web_cpu_ms_per_pong=cpu.get("web", 0.0) * 1000 / pongs if pongs else float("nan"),
        redis_cpu_ms_per_pong=cpu.get("redis", 0.0) * 1000 / pongs if pongs else float("nan"),
        baseline_sockets=base_open,
        baseline_echoes=int(bare["answers"]),
        baseline_per_second=int(bare["answers"]) / float(bare["seconds"]),
        baseline_round_trip_p50_ms=float(bare["round_trip_p50"]) * 1000,
        client_processes=client_processes,
        cpu_seconds={name: round(value, 3) for name, value in cpu.items()},
    )
