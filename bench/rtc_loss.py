"""Match state over the socket and over the WebRTC data channel under packet loss
(``python -m bench rtc-loss``; docs/gaming.md, "State over WebRTC").

A real stack (web, beat's matchmaking, a match server) runs a two-player arena match. The
opponent plays from this machine's own network; the measured player runs
``bench/rtc_loss_client.py`` inside a network namespace of the benchmark's own, joined to
this one by a veth pair, whose packets in both directions are dropped at random at each
rate: with ``tc qdisc ... netem loss`` where the kernel has netem, otherwise with an
nftables rule (``numgen random mod 1000 < N drop``) on the namespace's input and output.
The socket reaches the web server through a TCP relay on the veth address (the web server
listens on 127.0.0.1 only); the data channel's UDP crosses the veth itself.

For each rate and path it reports the share of ticks that arrived usable, how late they
arrived (against the earliest, which stands for the path's own latency), and how old the
newest state the player holds is, sampled every 5 ms: what a player sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from bench.stack import REPO_ROOT, bench_stack, percentile, wait_for

TICK_SECONDS = 0.05
SAMPLE_SECONDS = 0.005


@dataclass
class Namespace:
    name: str
    inside: str  # the namespace's own address
    outside: str  # this side's address, the client's way to the server
    loss_tool: str


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


def _netem_works(namespace: str, device: str) -> bool:
    done = _run(
        "ip",
        "netns",
        "exec",
        namespace,
        "tc",
        "qdisc",
        "add",
        "dev",
        device,
        "root",
        "netem",
        "loss",
        "0%",
        check=False,
    )
    if done.returncode == 0:
        _run("ip", "netns", "exec", namespace, "tc", "qdisc", "del", "dev", device, "root", check=False)
        return True
    return False


@contextlib.contextmanager
def loss_namespace() -> Iterator[Namespace]:
    """A network namespace joined to this one by a veth pair; removed on exit."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        raise RuntimeError("rtc-loss needs root and iproute2 (ip netns, veth)")
    tag = f"{os.getpid() % 100_000}"
    name, outer, inner = f"rtcloss{tag}", f"rlo{tag}", f"rli{tag}"
    octet = 1 + os.getpid() % 250
    outside, inside = f"10.231.{octet}.1", f"10.231.{octet}.2"
    _run("ip", "netns", "add", name)
    try:
        _run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
        _run("ip", "link", "set", inner, "netns", name)
        _run("ip", "addr", "add", f"{outside}/24", "dev", outer)
        _run("ip", "link", "set", outer, "up")
        _run("ip", "netns", "exec", name, "ip", "addr", "add", f"{inside}/24", "dev", inner)
        _run("ip", "netns", "exec", name, "ip", "link", "set", inner, "up")
        _run("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        _run("ip", "netns", "exec", name, "ip", "route", "add", "default", "via", outside)
        if _netem_works(name, inner):
            tool = "netem"
        elif shutil.which("nft") is not None:
            tool = "nftables"
        else:
            raise RuntimeError("neither tc netem (kernel) nor nft (Debian package nftables) is here")
        yield Namespace(name=name, inside=inside, outside=outside, loss_tool=tool)
    finally:
        _run("ip", "link", "del", outer, check=False)
        _run("ip", "netns", "del", name, check=False)


def set_loss(namespace: Namespace, percent: float) -> None:
    """Drop ``percent`` of the packets leaving and entering the namespace."""
    device = f"rli{namespace.name.removeprefix('rtcloss')}"
    if namespace.loss_tool == "netem":
        # netem on the namespace's side drops what leaves it; an ifb would be needed for
        # what enters, so the other side of the pair drops that.
        for ns, dev in ((namespace.name, device), (None, f"rlo{namespace.name.removeprefix('rtcloss')}")):
            prefix = ("ip", "netns", "exec", ns) if ns else ()
            _run(*prefix, "tc", "qdisc", "del", "dev", dev, "root", check=False)
            if percent > 0:
                _run(*prefix, "tc", "qdisc", "add", "dev", dev, "root", "netem", "loss", f"{percent}%")
        return
    per_mille = round(percent * 10)
    _run("ip", "netns", "exec", namespace.name, "nft", "delete", "table", "inet", "loss", check=False)
    if per_mille > 0:
        rules = (
            "table inet loss {\n"
            f"  chain in {{ type filter hook input priority 0; numgen random mod 1000 < {per_mille} drop; }}\n"
            f"  chain out {{ type filter hook output priority 0; numgen random mod 1000 < {per_mille} drop; }}\n"
            "}\n"
        )
        subprocess.run(
            ["ip", "netns", "exec", namespace.name, "nft", "-f", "-"], input=rules, text=True, check=True
        )


class Relay:
    """A TCP relay on ``host``: each connection is piped to 127.0.0.1:``target``."""

    def __init__(self, host: str, target: int) -> None:
        self.host, self.target = host, target
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.close()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

        async def serve() -> None:
            server = await asyncio.start_server(handle, self.host, 0)
            self.port = server.sockets[0].getsockname()[1]
            self.ready.set()
            async with server:
                await server.serve_forever()

        with contextlib.suppress(asyncio.CancelledError, RuntimeError):
            self.loop.run_until_complete(serve())

    def __enter__(self) -> Relay:
        self.thread.start()
        if not self.ready.wait(10):
            raise RuntimeError("the relay never listened")
        return self

    def __exit__(self, *exc: Any) -> None:
        for task in asyncio.all_tasks(self.loop):
            self.loop.call_soon_threadsafe(task.cancel)
        self.thread.join(5)


def summarize(arrivals: Sequence[tuple[int, float]], seconds: float) -> dict[str, Any]:
    """From (tick, seconds into the window it became usable): the share of ticks there,
    how late each came against the earliest, and the held state's age sampled every 5 ms."""
    if len(arrivals) < 2:
        return {"received": 0.0, "frames": len(arrivals)}
    offsets = [at - tick * TICK_SECONDS for tick, at in arrivals]
    base = min(offsets)
    late_ms = [(offset - base) * 1000 for offset in offsets]
    first, last = arrivals[0][0], arrivals[-1][0]
    expected = last - first + 1
    ages: list[float] = []
    index, held = 0, None
    ordered = sorted(arrivals, key=lambda pair: pair[1])
    t = ordered[0][1]
    while t <= min(seconds, ordered[-1][1]):
        while index < len(ordered) and ordered[index][1] <= t:
            tick = ordered[index][0]
            held = tick if held is None else max(held, tick)
            index += 1
        if held is not None:
            ages.append((t - (held * TICK_SECONDS + base)) * 1000)
        t += SAMPLE_SECONDS
    gaps = [(b - a) * 1000 for (_, a), (_, b) in zip(ordered, ordered[1:], strict=False)]
    return {
        "frames": len(arrivals),
        "received": len(arrivals) / expected,
        "late_p50_ms": percentile(late_ms, 0.5),
        "late_p99_ms": percentile(late_ms, 0.99),
        "age_p50_ms": percentile(ages, 0.5),
        "age_p99_ms": percentile(ages, 0.99),
        "age_max_ms": max(ages),
        "gap_max_ms": max(gaps),
    }


def _opponent(url: str, stop: threading.Event) -> None:
    """The other player: walks back and forth so that every tick changes something."""
    from websockets.sync.client import connect

    with connect(url, open_timeout=15) as socket:
        seq = 0
        while not stop.is_set():
            seq += 1
            direction = 1 if (seq // 40) % 2 == 0 else -1
            socket.send(json.dumps({"type": "input", "seq": seq, "move": [direction, 0]}))
            deadline = time.monotonic() + TICK_SECONDS
            while (left := deadline - time.monotonic()) > 0:
                with contextlib.suppress(TimeoutError):
                    socket.recv(timeout=left)


def run(
    *, template: str, losses: Sequence[float] = (0.0, 5.0, 10.0), seconds: float = 20.0, warmup: float = 1.0
) -> dict[str, Any]:
    env = {
        "GAMING_ARENA_ROUND_SECONDS": str(int(seconds * len(losses) * 2 * 2 + 120)),
        "GAMING_FILL_SECONDS": "0.5",
    }
    with loss_namespace() as namespace, bench_stack(template=template, env=env, label="rtcloss") as stack:
        stack.platform.start_match_server()
        with stack.client() as api:
            tokens, tickets = [], []
            for name in ("near", "far"):
                external_id = f"rtc-{name}-{os.getpid()}"
                assert api.put(f"/api/v1/recipients/{external_id}/", json={"name": name}).status_code in (
                    200,
                    201,
                )
                token = api.post(f"/api/v1/recipients/{external_id}/token/").json()["token"]
                answer = api.post(
                    "/api/v1/matchmaking/tickets/",
                    json={"mode": "arena"},
                    headers={"Authorization": f"Bearer {token}"},
                )
                if answer.status_code != 201:
                    raise RuntimeError(f"ticket refused: {answer.text}")
                tokens.append(token)
                tickets.append(answer.json()["id"])

            def found() -> str | None:
                got = api.get(
                    f"/api/v1/matchmaking/tickets/{tickets[0]}/",
                    headers={"Authorization": f"Bearer {tokens[0]}"},
                )
                match = got.json().get("match")
                return str(match["socket"]) if match else None

            socket_path = wait_for(found, 30, "no match was formed")
        stop = threading.Event()
        opponent = threading.Thread(
            target=_opponent, args=(f"{stack.ws_url}{socket_path}?token={tokens[0]}", stop), daemon=True
        )
        opponent.start()
        runs: list[dict[str, Any]] = []
        try:
            with Relay(namespace.outside, stack.platform.port) as relay:
                url = f"ws://{namespace.outside}:{relay.port}{socket_path}?token={tokens[1]}"
                for loss in losses:
                    set_loss(namespace, loss)
                    for path in ("socket", "rtc"):
                        done = subprocess.run(
                            [
                                "ip",
                                "netns",
                                "exec",
                                namespace.name,
                                sys.executable,
                                "-m",
                                "bench.rtc_loss_client",
                                "--url",
                                url,
                                "--path",
                                path,
                                "--seconds",
                                str(seconds),
                                "--warmup",
                                str(warmup),
                            ],
                            capture_output=True,
                            text=True,
                            cwd=REPO_ROOT,
                            timeout=seconds + warmup + 60,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                        )
                        if done.returncode != 0:
                            raise RuntimeError(
                                f"the client failed ({path}, {loss}% loss): {done.stderr[-2000:]}"
                            )
                        measured = json.loads(done.stdout.strip().splitlines()[-1])
                        figures = summarize(
                            [tuple(pair) for pair in measured["arrivals"]], measured["seconds"]
                        )
                        row = {"loss": loss, "path": path, "fell_back": measured["fell_back"], **figures}
                        runs.append(row)
                        print(_row_text(row), flush=True)
        finally:
            stop.set()
            opponent.join(5)
            set_loss(namespace, 0)
    return {"loss_tool": namespace.loss_tool, "seconds": seconds, "runs": runs}


def _row_text(row: dict[str, Any]) -> str:
    if not row.get("frames"):
        return f"  {row['loss']:>4}% {row['path']:<6}  no states arrived"
    return (
        f"  {row['loss']:>4}% {row['path']:<6}  received {row['received'] * 100:5.1f}%  "
        f"late p50 {row['late_p50_ms']:6.1f} p99 {row['late_p99_ms']:6.1f} ms  "
        f"age p50 {row['age_p50_ms']:6.1f} p99 {row['age_p99_ms']:6.1f} max {row['age_max_ms']:6.1f} ms  "
        f"longest gap {row['gap_max_ms']:6.1f} ms"
        + ("  (fell back to the socket)" if row["fell_back"] else "")
    )


def section(results: dict[str, Any]) -> list[str]:
    """The docs/benchmarks.md section, from the stored ``rtc_loss`` result."""
    data = results.get("rtc_loss")
    if not data:
        return []
    lines = [
        "## Match state under packet loss: the socket and the WebRTC data channel",
        "",
        "`python -m bench rtc-loss` (bench/rtc_loss.py). A two-player arena match at 20 Hz on a real",
        "stack; the measured player runs in a network namespace of the benchmark's own, behind a veth",
        f"pair that drops packets at random in both directions ({data['loss_tool']}; `tc netem` where",
        f"the kernel has it), {data['seconds']:.0f} s per row; the 0% rows are the baseline. *Late* is",
        "how long after the earliest-arriving tick's pace a tick became usable (a delta counts only",
        "once its base is held); *age* is how old the newest state the player holds is, sampled every",
        "5 ms: what the player sees. The socket loses nothing but waits for TCP's resends; the data",
        "channel drops what is lost and goes on with the next state.",
        "",
        "| loss | path | ticks usable | late p50 / p99 | age p50 / p99 / max | longest gap |",
        "|---|---|---|---|---|---|",
    ]
    for row in data["runs"]:
        if not row.get("frames"):
            lines.append(f"| {row['loss']:g}% | {row['path']} | none | | | |")
            continue
        lines.append(
            f"| {row['loss']:g}% | {'data channel' if row['path'] == 'rtc' else 'websocket'} | "
            f"{row['received'] * 100:.1f}% | {row['late_p50_ms']:.1f} / {row['late_p99_ms']:.1f} ms | "
            f"{row['age_p50_ms']:.0f} / {row['age_p99_ms']:.0f} / {row['age_max_ms']:.0f} ms | {row['gap_max_ms']:.0f} ms |"
        )
    lines.append("")
    return lines
