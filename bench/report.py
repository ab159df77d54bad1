"""The machine's description and ``docs/benchmarks.md``.

Results are kept in ``bench/results.json`` (one entry per benchmark and variant) so that
running one benchmark (``python -m bench p2 --server daphne``) updates its rows and keeps
the others; the Markdown file is regenerated from it every time.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.stack import BENCH_DIR, BENCH_ENV
from harness.processes import DEFAULT_DATABASE_URL, REPO_ROOT

RESULTS_PATH = BENCH_DIR / "results.json"
DOC_PATH = REPO_ROOT / "docs" / "benchmarks.md"

P1_TARGET = 20_000.0
P2_P50_TARGET = 50.0
P2_P99_TARGET = 250.0
MEMORY_TARGET_KIB = 30.0
# A P2 latency this long means an event waited for its outbox lease to run out and the
# sweep to enqueue it again (OUTBOX_LEASE_SECONDS defaults to 60).


# --- The machine ---------------------------------------------------------------------------


def _first_match(path: str, pattern: str) -> str | None:
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    match = re.search(pattern, text, re.MULTILINE)
    return match.group(1).strip() if match else None


def _command_output(*argv: str) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        completed = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (completed.stdout or completed.stderr).strip() or None


def _postgres_version() -> str:
    try:
        import psycopg

        url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
        with psycopg.connect(url, connect_timeout=5) as connection:
            row = connection.execute("SHOW server_version").fetchone()
            return f"PostgreSQL {row[0]}" if row else "unknown"
    except Exception as exc:  # noqa: BLE001 - the description must not fail the run
        return f"unknown ({type(exc).__name__})"


def _redis_version() -> str:
    output = _command_output("redis-server", "--version")
    if output is None:
        return "unknown"
    match = re.search(r"v=(\S+)", output)
    return f"Redis {match.group(1)}" if match else output


def _git_revision() -> str:
    revision = _command_output("git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD") or "unknown"
    status = _command_output("git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no")
    return f"{revision}{' (with uncommitted changes)' if status else ''}"


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    mem_kib = _first_match("/proc/meminfo", r"^MemTotal:\s+(\d+)")
    return {
        "cpu": _first_match("/proc/cpuinfo", r"^model name\s*:\s*(.+)$") or platform.processor() or "unknown",
        "cores": str(os.cpu_count() or 0),
        "ram": f"{int(mem_kib) / 1024 / 1024:.1f} GiB" if mem_kib else "unknown",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": _postgres_version(),
        "redis": _redis_version(),
        "revision": _git_revision(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


# --- Stored results --------------------------------------------------------------------------


def load_results() -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(RESULTS_PATH.read_text())
    except (OSError, ValueError):
        return {}
    return data


def save_results(updates: dict[str, Any]) -> dict[str, Any]:
    """Merge ``updates`` (``{"p1": {...}, "p2": {server: ...}, "memory": {server: ...}}``)
    into the stored results and return the merged whole."""
    results = load_results()
    for section, value in updates.items():
        if section in ("p2", "p2_low", "memory", "p1_layouts") and isinstance(value, dict):
            results.setdefault(section, {}).update(value)
        else:
            results[section] = value
    results["machine"] = machine()
    RESULTS_PATH.write_text(json.dumps(results, indent=2, sort_keys=True, default=str) + "\n")
    return results


# --- The choice of server --------------------------------------------------------------------


def choose_server(results: dict[str, Any]) -> tuple[str | None, str]:
    """The better ASGI server by P2 p99 (when they differ by more than 10%), else by memory
    per idle connection; returns (server, reason). P2 below saturation decides when it was
    measured: at a rate the machine cannot sustain both servers only measure the backlog."""
    p2: dict[str, Any] = results.get("p2_low") or results.get("p2", {})
    memory: dict[str, Any] = results.get("memory", {})
    servers = [s for s in ("uvicorn", "daphne") if s in p2 or s in memory]
    if len(servers) < 2:
        return None, "only one server was measured"

    def p99(server: str) -> float:
        value = p2.get(server, {}).get("p99_ms")
        lost = p2.get(server, {}).get("lost", 0)
        return math.inf if value is None or lost else float(value)

    def kib(server: str) -> float:
        value = memory.get(server, {}).get("kib_per_connection")
        return math.inf if value is None else float(value)

    a, b = servers
    pa, pb = p99(a), p99(b)
    if math.isfinite(pa) and math.isfinite(pb) and abs(pa - pb) > 0.1 * min(pa, pb):
        winner = a if pa < pb else b
        return winner, f"lower P2 p99 ({min(pa, pb):.0f} ms against {max(pa, pb):.0f} ms)"
    ka, kb = kib(a), kib(b)
    winner = a if ka <= kb else b
    return winner, (
        f"P2 p99 within 10% (or not comparable), and less memory per idle connection "
        f"({min(ka, kb):.1f} KiB against {max(ka, kb):.1f} KiB)"
    )


# --- Markdown ----------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    if isinstance(value, int | float):
        text = f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"
        return f"{text}{unit}"
    return str(value)


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "**no**")


def _summary_rows(results: dict[str, Any]) -> list[str]:
    rows = []
    p1 = results.get("p1")
    if p1:
        rate = p1.get("per_second")
        ok = bool(rate and rate >= P1_TARGET and p1.get("all_persisted"))
        rows.append(
            f"| P1 fan-out, {p1['recipients']:,} recipients ({p1['layout']}) | {_fmt(rate, 0)} recipients/s "
            f"(all persisted: {'yes' if p1.get('all_persisted') else 'no'}) | ≥ 20,000 recipients/s | {_met(ok)} |"
        )
    p2_rows = [*sorted(results.get("p2", {}).items()), *sorted(results.get("p2_low", {}).items())]
    for server, p2 in p2_rows:
        ok = p2["lost"] == 0 and p2["p50_ms"] <= P2_P50_TARGET and p2["p99_ms"] <= P2_P99_TARGET
        rows.append(
            f"| P2 accept → frame, {server}, {p2['target_rate']:.0f} events/s | p50 {_fmt(p2['p50_ms'])} ms, "
            f"p99 {_fmt(p2['p99_ms'])} ms, lost {p2['lost']} | p50 ≤ 50 ms, p99 ≤ 250 ms | {_met(ok)} |"
        )
    for server, memory in sorted(results.get("memory", {}).items()):
        kib = memory.get("kib_per_connection")
        ok = kib is not None and kib <= MEMORY_TARGET_KIB
        rows.append(
            f"| Memory per idle websocket, {server}, {memory['opened']:,} sockets | {_fmt(kib)} KiB | "
            f"≤ 30 KB (P3) | {_met(ok)} |"
        )
    return rows


def _observations(results: dict[str, Any]) -> list[str]:
    """Notes derived from the figures themselves (so they disappear once they no longer hold)."""
    notes = []
    lost = sorted(server for server, p2 in results.get("p2", {}).items() if p2["lost"])
    if lost:
        notes.append(
            f"P2 on {', '.join(lost)}: frames did not arrive within the grace period. The socket is at-most-once "
            "by design (clients resume by seq), but lost frames in a benchmark mean a stall worth a look."
        )
    p2_values = list(results.get("p2", {}).values())
    if p2_values and all(p["p50_ms"] > P2_P50_TARGET * 10 for p in p2_values):
        notes.append(
            "P2 at the target rate saturates this 2-core machine: per one-recipient event the API request (about "
            "12 ms: auth, validation, event and outbox rows, a synchronous commit) and the fan-out task (about "
            "15 ms, writing the inbox row in the same transaction) cost some 25-30 ms of CPU across Python and "
            "PostgreSQL, with the load generator's 50 sockets on the same cores. Past roughly 50-70 events/s a "
            "backlog grows for the whole run, so the percentiles measure the queue, not the path; the row below "
            "saturation shows the path."
        )
    if p2_values and all(p["achieved_rate"] < 0.9 * p["target_rate"] for p in p2_values):
        notes.append(
            "P2: the API did not accept the target rate through the load generator's connections: the web "
            "process is CPU-bound at that rate on two cores (it shares them with the workers and PostgreSQL)."
        )
    memory = results.get("memory", {})
    if any(m.get("redis_clients_per_connection", 0) >= 0.9 for m in memory.values()):
        notes.append("Memory: about one Redis connection per socket; the registry client should be shared.")
    return notes


def render(results: dict[str, Any]) -> str:
    info = results.get("machine") or machine()
    chosen, reason = choose_server(results)
    lines = [
        "# Benchmarks",
        "",
        "Measured by `make bench` (`python -m bench`), which rewrites this file; targets from DESIGN.md section 5.",
        "Every benchmark starts its own stack: a private `redis-server` on a free port, a PostgreSQL database",
        "cloned from a freshly migrated template, and the platform's real processes (`harness.processes`:",
        "ASGI server, Celery workers, one beat), so the development database is never touched. `make test`",
        "runs a small version of each (`tests/bench/test_bench_smoke.py`) so that they keep working.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        f"| CPU | {info['cpu']} |",
        f"| cores | {info['cores']} |",
        f"| RAM | {info['ram']} |",
        f"| kernel | {info['kernel']} |",
        f"| Python | {info['python']} |",
        f"| database | {info['postgresql']} |",
        f"| Redis | {info['redis']} |",
        f"| revision | {info['revision']} |",
        f"| date | {info['date']} |",
        "",
        "Everything (PostgreSQL, Redis, the web server, the workers and the load generator) shares these cores.",
        "",
        "## Figures against targets",
        "",
        "| benchmark | measured | target | met |",
        "|---|---|---|---|",
        *_summary_rows(results),
        "",
    ]
    if chosen:
        lines += [
            f"**Default ASGI server: {chosen}** ({reason}). `make run` takes `ASGI_SERVER=uvicorn|daphne`; "
            "both are kept working and measured here.",
            "",
        ]

    layouts: dict[str, Any] = results.get("p1_layouts", {})
    if layouts:
        lines += [
            "## P1: in-app fan-out of one event",
            "",
            "| layout | recipients | recipients/s (POST → last inbox row) | all committed | fan-out only | "
            "in-app only | persisted | settings |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, p1 in sorted(layouts.items(), key=lambda item: -float(item[1].get("per_second") or 0)):
            lines.append(
                f"| {name} | {p1['recipients']:,} | {_fmt(p1['per_second'], 0)} | "
                f"{_fmt(p1['observed_complete_s'], 2)} s ({_fmt(p1['per_second_observed'], 0)}/s) | "
                f"{_fmt(p1['fanout_s'], 2)} s | {_fmt(p1['inapp_s'], 2)} s | "
                f"{'yes' if p1['all_persisted'] else 'NO'} | {p1['settings']} |"
            )
        if results.get("p1_note"):
            lines += ["", str(results["p1_note"])]
        lines.append("")

    p2_all = [*sorted(results.get("p2", {}).items()), *sorted(results.get("p2_low", {}).items())]
    if p2_all:
        lines += [
            "## P2: API accept → websocket frame",
            "",
            "| server | clients | rate (target / achieved) | events | p50 | p95 | p99 | max | > 1 s | lost | "
            "HTTP p50 / p99 | HTTP errors |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for server, p2 in p2_all:
            lines.append(
                f"| {server} | {p2['clients']} | {p2['target_rate']:.0f} / {p2['achieved_rate']:.0f} /s | "
                f"{p2['accepted']:,} | {_fmt(p2['p50_ms'])} ms | {_fmt(p2['p95_ms'])} ms | {_fmt(p2['p99_ms'])} ms | "
                f"{_fmt(p2['max_ms'])} ms | {p2['late_over_1s']} | {p2['lost']} | "
                f"{_fmt(p2.get('accept_p50_ms'))} / {_fmt(p2.get('accept_p99_ms'))} ms | {p2['http_errors']} |"
            )
        lines.append("")

    memory_all: dict[str, Any] = results.get("memory", {})
    if memory_all:
        lines += [
            "## Memory per idle inbox websocket (one ASGI process)",
            "",
            "| server | sockets | RSS before | RSS after | per connection | Redis clients per socket | opened in |",
            "|---|---|---|---|---|---|---|",
        ]
        for server, memory in sorted(memory_all.items()):
            lines.append(
                f"| {server} | {memory['opened']:,} | {memory['rss_before_kib'] / 1024:.1f} MiB | "
                f"{memory['rss_after_kib'] / 1024:.1f} MiB | {_fmt(memory['kib_per_connection'])} KiB | "
                f"{_fmt(memory['redis_clients_per_connection'], 2)} | {_fmt(memory['connect_seconds'])} s |"
            )
        lines.append("")

    sources = sorted(
        {
            str(entry["source"])
            for entry in [
                results.get("p1") or {},
                *results.get("p2", {}).values(),
                *results.get("memory", {}).values(),
            ]
            if entry.get("source")
        }
    )
    if sources:
        lines += ["Provenance of some figures: " + "; ".join(sources) + ".", ""]

    notes = _observations(results)
    if notes:
        lines += ["## Observations", ""] + [f"- {note}" for note in notes] + [""]

    env = ", ".join(f"`{key}={value}`" for key, value in BENCH_ENV.items())
    lines += [
        "## Method",
        "",
        f"- Settings for every stack: {env}. The per-user in-app rate cap is lifted so that P2's few "
        "recipients (each gets rate/clients events per second) are not suppressed; everything else is the "
        "default configuration. The `celery` logger stays at INFO as configured (one line per task).",
        "- Workers: the layout of `make run` unless a P1 layout says otherwise: `fanout -c2` on "
        "`fanout,periodic,default`, `inapp -c2` on `inapp` (prefork, `-O fair`), one beat.",
        "- **P1**: recipients, a topic and its subscriptions are inserted with `generate_series` straight into the "
        "stack's database; the notification type is created over HTTP with a key from `manage.py "
        "create_api_key bench`. The clock starts just before `POST /api/v1/events/` with the topic. The "
        "benchmark polls the database (every 0.1 s) until the event has an inbox item for every recipient "
        "and every delivery is `delivered`. *recipients/s* is N over the time from the POST to the last inbox "
        "row's `created_at` (taken when its batch started); *all committed* is when the poll saw every row. "
        "*Fan-out only* is first to last delivery `created_at`; *in-app only* first to last inbox `created_at`. "
        "Persisted means deliveries and inbox rows each number N with N distinct recipients.",
        "- **P2**: K recipients are created over HTTP, each gets a token and opens `/ws/inbox/?token=`; the run "
        "starts once every socket had its first `unread_count` frame and one warm-up event per client "
        "arrived. Events go to one recipient each (round-robin, explicit `recipients`), open loop at the "
        "target rate through at most 8 concurrent keep-alive HTTP connections (httpx, asyncio). Latency is "
        "from just before each POST to the arrival of the `notification` frame whose `item.event_id` is the "
        "id the API returned. Frames still missing after a 90 s grace period count as lost; the database's "
        "inbox rows for the events are counted too. The load generator runs on the same cores.",
        "- **Memory**: one web process alone (no workers) and C recipients; after opening and closing 20 "
        "sockets twice (warm-up), the resident memory of the web process tree (`VmRSS` from `/proc`) is read "
        "until it is steady, C sockets are opened (50 at a time, each waits for its first frame), and it is "
        "read again. KiB per connection = difference / C. Client pings are off so the sockets stay idle.",
        "- The server choice: lower P2 p99 when the two differ by more than 10%, otherwise less memory per "
        "idle connection.",
        "",
    ]
    return "\n".join(lines)


def write(results: dict[str, Any]) -> Path:
    DOC_PATH.parent.mkdir(parents=True, exist_ok=True)
    DOC_PATH.write_text(render(results))
    return DOC_PATH
