"""``python -m bench [all|p1|p2|memory|p3-broadcast|p3-heartbeats|p3-presence|p4|p6|p8|p9|...] [options]``: run benchmarks,
print their figures, and (unless ``--no-write``) record them in ``docs/benchmarks.md``.

    python -m bench                                  # everything below
    python -m bench p1 --recipients 100000
    python -m bench p2 --server uvicorn --rate 200 --seconds 20
    python -m bench memory --connections 10000     # P3: idle sockets on one web process
    python -m bench p3-broadcast --broadcast-recipients 10000   # P3: one event to every socket
    python -m bench p3-heartbeats --heartbeat-sockets 1000      # P3: pings answered per second
    python -m bench p3-presence --presence-users 5000 --presence-watching 500   # P3: deltas
    python -m bench p4 --rate 1000 --seconds 20      # event -> push accepted by the sandbox
    python -m bench sends --per-channel 5000         # provider sends/s per channel
    python -m bench p5 --campaign-recipients 50000   # an email campaign, and transactional p99 meanwhile
    python -m bench kill-sends --sends 10000         # kill -9 of the send worker mid-send
    python -m bench p1-against --against c0fea50     # P1 here and at another revision, in turns
    python -m bench bulk --events 50000              # POST /api/v1/events/bulk/, accepted and delivered
    python -m bench p2-curve --rates 25,100,200,400  # P2 at each rate, and the highest that holds p99
    python -m bench p6 --p6-devices 1000 --p6-rate 10000   # MQTT readings ingested, alerts, a day queried
    python -m bench p7 --p7-operations 259778        # collaborative documents: trace, editing load, OT
    python -m bench p8 --p8-matches 100 --p8-players 10 --p8-seconds 30   # authoritative matches, matchmaking
    python -m bench p9 --p9-viewers 500 --p9-seconds 20   # live streams: ladder CPU, glass-to-glass, chat
    python -m bench rtc-loss --loss-rates 0,5,10     # match state over the socket and WebRTC under loss
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bench import (
    bulk_events,
    editing_trace,
    kill_sends,
    memory,
    p1_against,
    p1_fanout,
    p2_latency,
    p3_broadcast,
    p3_heartbeat,
    p3_presence,
    p4_push,
    p5_campaign,
    p6_iot,
    p7_collab,
    p8_games,
    p9_streams,
    provider_sends,
    report,
    rtc_loss,
)
from bench.stack import template_database
from harness.processes import Server

SERVERS: tuple[Server, ...] = ("uvicorn", "daphne", "granian")
# Alternative P1 layouts are only worth their time when the default run is not dominated by
# something the layout cannot change (a stall): past this, they are skipped with a note.
ALTERNATIVES_MAX_SECONDS = 120.0
P2_DEFAULT_RATE = 200.0
P4_DEFAULT_RATE = p4_push.TARGET_RATE
BENCHMARKS = (
    "all",
    "p1",
    "p2",
    "memory",
    "p3-broadcast",
    "p3-heartbeats",
    "p3-presence",
    "p4",
    "sends",
    "p5",
    "kill-sends",
    "p1-against",
    "bulk",
    "p2-curve",
    "p6",
    "p7",
    "p8",
    "p9",
    "rtc-loss",
)
# uvicorn's own websocket protocol, measured beside the platform's (realtime/uvicorn_websocket.py).
STOCK_UVICORN_WS = "websockets-sansio"


def _servers(choice: str) -> tuple[Server, ...]:
    return SERVERS if choice in ("all", "both") else tuple(s for s in SERVERS if s == choice)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("benchmark", nargs="?", default="all", choices=BENCHMARKS)
    parser.add_argument("--recipients", type=int, default=100_000, help="P1 audience size (default 100,000)")
    parser.add_argument(
        "--layouts",
        choices=("default", "all"),
        default="all",
        help="P1 worker layouts: the default only, or the alternatives too (default: all)",
    )
    parser.add_argument(
        "--server",
        choices=(*SERVERS, "all", "both"),
        default="all",
        help="P2/memory server (default: all of them; 'both' is an old name for all)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help=f"P2 events per second (default {P2_DEFAULT_RATE:.0f}); P4 pushes per second "
        f"(default {P4_DEFAULT_RATE:,.0f})",
    )
    parser.add_argument(
        "--low-rate", type=float, default=25.0, help="P2 again at this rate (default 25; 0: skip)"
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="P2 and P4 duration (default 20)")
    parser.add_argument("--clients", type=int, default=50, help="P2 connected clients (default 50)")
    parser.add_argument(
        "--grace", type=float, default=90.0, help="P2 seconds to wait for late frames (default 90)"
    )
    parser.add_argument(
        "--connections", type=int, default=10_000, help="idle sockets for memory (default 10,000)"
    )
    parser.add_argument(
        "--broadcast-recipients",
        type=int,
        default=10_000,
        help="p3-broadcast: connected recipients (default 10,000)",
    )
    parser.add_argument(
        "--broadcast-rounds", type=int, default=3, help="p3-broadcast: events, each to all (default 3)"
    )
    parser.add_argument(
        "--heartbeat-sockets", type=int, default=1_000, help="p3-heartbeats: sockets pinging (default 1,000)"
    )
    parser.add_argument(
        "--heartbeat-seconds", type=float, default=10.0, help="p3-heartbeats: seconds (default 10)"
    )
    parser.add_argument(
        "--presence-users", type=int, default=5_000, help="p3-presence: subscriber sockets (default 5,000)"
    )
    parser.add_argument(
        "--presence-watching", type=int, default=500, help="p3-presence: users each watches (default 500)"
    )
    parser.add_argument(
        "--presence-rates",
        default="5,20",
        help="p3-presence: status changes per second, one run at each (default 5,20)",
    )
    parser.add_argument(
        "--presence-seconds", type=float, default=15.0, help="p3-presence: seconds of changes (default 15)"
    )
    parser.add_argument(
        "--client-processes", type=int, default=2, help="P3: processes of the light client (default 2)"
    )
    parser.add_argument(
        "--p4-mode",
        choices=("both", *p4_push.MODES),
        default="both",
        help="P4 events: one per push ('per-recipient'), to topics of --per-event recipients ('topic'), "
        "or both (default)",
    )
    parser.add_argument(
        "--per-event", type=int, default=50, help="P4 topic mode: recipients per event (default 50)"
    )
    parser.add_argument(
        "--p4-layouts",
        choices=("default", "all"),
        default="all",
        help="P4 send-worker layouts: the default only, or the alternatives too when it misses (default: all)",
    )
    parser.add_argument(
        "--per-channel", type=int, default=5_000, help="sends: recipients per provider (default 5,000)"
    )
    parser.add_argument("--sends", type=int, default=10_000, help="kill-sends: pushes (default 10,000)")
    parser.add_argument(
        "--campaign-recipients", type=int, default=50_000, help="p5: campaign emails (default 50,000)"
    )
    parser.add_argument(
        "--kill-runs", type=int, default=3, help="kill-sends: runs, each killing at another point (default 3)"
    )
    parser.add_argument(
        "--kill-after",
        type=int,
        default=2_500,
        help="kill-sends: kill the send worker after this many accepted pushes (default 2,500)",
    )
    parser.add_argument(
        "--against", default=None, help="p1-against: the git revision to measure P1 beside (e.g. a commit)"
    )
    parser.add_argument("--rounds", type=int, default=4, help="p1-against: interleaved rounds (default 4)")
    parser.add_argument(
        "--rates", default="25,100,200,400", help="p2-curve: events/s to measure (default 25,100,200,400)"
    )
    parser.add_argument(
        "--search-steps",
        type=int,
        default=3,
        help="p2-curve: bisection steps for the highest rate (default 3)",
    )
    parser.add_argument("--events", type=int, default=50_000, help="bulk: events in all (default 50,000)")
    parser.add_argument(
        "--p7-operations",
        type=int,
        default=editing_trace.B4_OPERATIONS,
        help="p7: operations of the editing trace (default 259,778: B4's size)",
    )
    parser.add_argument(
        "--p7-documents", type=int, default=20, help="p7: documents of the editing load (default 20)"
    )
    parser.add_argument("--p7-editors", type=int, default=5, help="p7: editors per document (default 5)")
    parser.add_argument(
        "--p7-rate", type=float, default=5.0, help="p7: edits per second per editor (default 5)"
    )
    parser.add_argument(
        "--p7-seconds", type=float, default=30.0, help="p7: seconds of editing load (default 30)"
    )
    parser.add_argument(
        "--p7-one-at-a-time",
        type=int,
        default=2_000,
        help="p7: operations sent one at a time in each mode (default 2,000; 0: skip)",
    )
    parser.add_argument("--p6-devices", type=int, default=1_000, help="p6: simulated devices (default 1,000)")
    parser.add_argument(
        "--p6-rate",
        type=float,
        default=p6_iot.TARGET_RATE,
        help="p6: readings per second in all (default 10,000)",
    )
    parser.add_argument("--p6-seconds", type=float, default=20.0, help="p6: seconds of load (default 20)")
    parser.add_argument(
        "--p6-ingests",
        default="1,2",
        help="p6: ingest processes, one run with each count (default 1,2; the first run with 1 is the headline)",
    )
    parser.add_argument(
        "--p6-alerts", type=int, default=10, help="p6: alerting devices per run, one breach each (default 10)"
    )
    parser.add_argument(
        "--p6-generator-processes", type=int, default=2, help="p6: processes holding the devices (default 2)"
    )
    parser.add_argument(
        "--p6-no-baseline", action="store_true", help="p6: skip the bare broker → subscriber baseline"
    )
    parser.add_argument(
        "--p6-day-readings",
        type=int,
        default=86_400,
        help="p6: one-per-second readings seeded for the query of a day (default 86,400; 0: skip)",
    )
    parser.add_argument(
        "--p6-query-calls", type=int, default=20, help="p6: calls per query, median (default 20)"
    )
    parser.add_argument(
        "--p6-batch-max",
        type=int,
        default=0,
        help="p6: IOT_BATCH_MAX for the ingest (default: the setting's)",
    )
    parser.add_argument(
        "--p6-batch-seconds",
        type=float,
        default=None,
        help="p6: IOT_BATCH_SECONDS for the ingest (default: the setting's)",
    )
    parser.add_argument(
        "--p8-matches", type=int, default=p8_games.MATCHES_TARGET, help="p8: matches (default 100)"
    )
    parser.add_argument(
        "--p8-players", type=int, default=p8_games.MODE_MAX_PLAYERS, help="p8: players per match (default 10)"
    )
    parser.add_argument(
        "--p8-seconds", type=float, default=30.0, help="p8: seconds of the measured window (default 30)"
    )
    parser.add_argument(
        "--p8-input-rate",
        type=float,
        default=float(p8_games.TICK_RATE),
        help="p8: inputs per second per player (default 20)",
    )
    parser.add_argument(
        "--p8-other-rates",
        default="0,5",
        help="p8: inputs/s per player of the other windows, measured before the headline (default 0,5; '': none)",
    )
    parser.add_argument(
        "--p8-other-seconds", type=float, default=15.0, help="p8: seconds of each other window (default 15)"
    )
    parser.add_argument(
        "--p8-profile",
        action="store_true",
        help="p8: py-spy (PATH or PY_SPY) samples the match server and a web process in the headline window",
    )
    parser.add_argument(
        "--p8-passes",
        default="1000,10000",
        help="p8: waiting tickets for the directly timed matchmaking pass, one run each (default 1000,10000)",
    )
    parser.add_argument(
        "--p8-server-nice",
        type=int,
        default=0,
        help="p8: the match server's scheduling priority (GAMING_SERVER_NICE; default 0, below 0 needs root)",
    )
    parser.add_argument(
        "--p8-server-realtime",
        type=int,
        default=p8_games.DEFAULT_SERVER_REALTIME,
        help="p8: the match server on SCHED_FIFO at this priority (GAMING_SERVER_REALTIME; default 10 as root, "
        "else 0: off)",
    )
    parser.add_argument(
        "--p8-client-processes", type=int, default=2, help="p8: processes holding the players (default 2)"
    )
    parser.add_argument(
        "--p8-baseline-seconds",
        type=float,
        default=10.0,
        help="p8: seconds of the bare asyncio timer baseline on the quiet machine (default 10)",
    )
    parser.add_argument(
        "--p9-seconds",
        type=float,
        default=20.0,
        help="p9: seconds of each ladder CPU window, the platform's and ffmpeg alone (default 20)",
    )
    parser.add_argument(
        "--p9-warmup",
        type=float,
        default=5.0,
        help="p9: seconds after a stream is live (or ffmpeg alone started) before measuring (default 5)",
    )
    parser.add_argument(
        "--p9-source-seconds",
        type=float,
        default=20.0,
        help="p9: length of the 720p30 source file, published in a loop (default 20)",
    )
    parser.add_argument(
        "--p9-latency-seconds",
        type=float,
        default=30.0,
        help="p9: seconds of glass-to-glass reading per rendition (default 30)",
    )
    parser.add_argument(
        "--p9-viewers", type=int, default=p9_streams.VIEWERS_TARGET, help="p9: chat viewers (default 500)"
    )
    parser.add_argument(
        "--p9-chat-rate", type=float, default=2.0, help="p9: chat messages per second (default 2)"
    )
    parser.add_argument(
        "--p9-chat-seconds", type=float, default=20.0, help="p9: seconds of chat messages (default 20)"
    )
    parser.add_argument(
        "--p9-client-processes",
        type=int,
        default=2,
        help="p9: processes holding the chat sockets (default 2)",
    )
    parser.add_argument(
        "--loss-rates", default="0,5,10", help="rtc-loss: packet loss rates in %% (default 0,5,10)"
    )
    parser.add_argument(
        "--loss-seconds", type=float, default=20.0, help="rtc-loss: seconds per rate and path (default 20)"
    )
    parser.add_argument("--no-write", action="store_true", help="print figures only; leave docs/ alone")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def run_p1(args: argparse.Namespace, template: str) -> dict[str, Any]:
    progress = not args.no_progress
    default = p1_fanout.run(template=template, recipients=args.recipients, progress=progress)
    print(default.summary(), flush=True)
    results = [default]
    note = ""
    if args.layouts == "all":
        if default.observed_complete_s <= ALTERNATIVES_MAX_SECONDS:
            for layout in p1_fanout.LAYOUTS:
                if layout.name == p1_fanout.DEFAULT_LAYOUT.name:
                    continue
                result = p1_fanout.run(
                    template=template, recipients=args.recipients, layout=layout, progress=progress
                )
                print(result.summary(), flush=True)
                results.append(result)
        else:
            note = (
                f"Alternative layouts were not run: the default run took {default.observed_complete_s:.0f} s, "
                "dominated by waits that no worker layout changes (see Observations)."
            )
            print(f"P1: {note}", flush=True)
    best = p1_fanout.best(results)
    print(f"P1 best: {best.per_second:,.0f} recipients/s with {best.layout} ({best.settings})", flush=True)
    return {
        "p1": best.as_dict(),
        "p1_layouts": {r.layout: r.as_dict() for r in results},
        "p1_note": note,
    }


def run_p2(args: argparse.Namespace, template: str) -> dict[str, Any]:
    results = {"p2": _p2_at(args, template, args.rate or P2_DEFAULT_RATE)}
    if args.benchmark in ("all", "p2") and args.low_rate:
        # The same measurement below saturation, to show where latency stands when the
        # machine is not the bottleneck.
        results["p2_low"] = _p2_at(args, template, args.low_rate)
    return results


def _p2_run(
    args: argparse.Namespace, template: str, server: Server, rate: float, baseline: bool = True
) -> p2_latency.P2Result:
    result = p2_latency.run(
        baseline=baseline,
        template=template,
        server=server,
        clients=args.clients,
        rate=rate,
        seconds=args.seconds,
        grace=args.grace,
        progress=not args.no_progress,
    )
    print(result.summary(), flush=True)
    return result


def _p2_at(args: argparse.Namespace, template: str, rate: float) -> dict[str, Any]:
    return {server: _p2_run(args, template, server, rate).as_dict() for server in _servers(args.server)}


def run_memory(args: argparse.Namespace, template: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    variants: list[tuple[str, Server, str | None]] = [
        (server, server, None) for server in _servers(args.server)
    ]
    if "uvicorn" in _servers(args.server):
        # Before/after in the same run: uvicorn with the protocol it ships.
        variants.append(("uvicorn-stock", "uvicorn", STOCK_UVICORN_WS))
    for key, server, uvicorn_ws in variants:
        result = memory.run(
            template=template,
            server=server,
            connections=args.connections,
            progress=not args.no_progress,
            uvicorn_ws=uvicorn_ws,
        )
        print(result.summary(), flush=True)
        out[key] = result.as_dict()
    return {"memory": out}


def run_p3_broadcast(args: argparse.Namespace, template: str) -> dict[str, Any]:
    result = p3_broadcast.run(
        template=template,
        recipients=args.broadcast_recipients,
        rounds=args.broadcast_rounds,
        client_processes=args.client_processes,
        progress=not args.no_progress,
    )
    print(result.summary(), flush=True)
    return {"p3_broadcast": result.as_dict()}


def run_p3_heartbeats(args: argparse.Namespace, template: str) -> dict[str, Any]:
    result = p3_heartbeat.run(
        template=template,
        sockets=args.heartbeat_sockets,
        seconds=args.heartbeat_seconds,
        client_processes=args.client_processes,
        progress=not args.no_progress,
    )
    print(result.summary(), flush=True)
    return {"p3_heartbeats": result.as_dict()}


def run_p3_presence(args: argparse.Namespace, template: str) -> dict[str, Any]:
    result = p3_presence.run(
        template=template,
        users=args.presence_users,
        watching=args.presence_watching,
        rates=[float(part) for part in args.presence_rates.split(",") if part.strip()],
        seconds=args.presence_seconds,
        client_processes=args.client_processes,
        progress=not args.no_progress,
    )
    print(result.summary(), flush=True)
    return {"p3_presence": result.as_dict()}


def run_p4(args: argparse.Namespace, template: str) -> dict[str, Any]:
    """One event per push first; topic events (``--per-event`` recipients each) too, because
    the API may not accept one event per push at the target rate; when the default layout
    misses the target in the headline mode, the send-worker alternatives, and the best
    layout again below saturation (to show the path's latency rather than a backlog)."""
    rate = args.rate or P4_DEFAULT_RATE
    modes = p4_push.MODES if args.p4_mode == "both" else (args.p4_mode,)
    progress = not args.no_progress
    results: list[p4_push.P4Result] = []

    def one(mode: str, layout: p1_fanout.Layout, at: float = rate) -> p4_push.P4Result:
        result = p4_push.run(
            template=template,
            mode=mode,
            layout=layout,
            rate=at,
            seconds=args.seconds,
            per_event=args.per_event,
            progress=progress,
        )
        print(result.summary(), flush=True)
        results.append(result)
        return result

    for mode in sorted(modes, key=lambda m: m != "per-recipient"):
        one(mode, p4_push.DEFAULT_LAYOUT)
    headline_mode = "topic" if "topic" in modes else modes[0]
    default = next(r for r in results if r.mode == headline_mode)
    if args.p4_layouts == "all" and not default.meets_target:
        for layout in p4_push.LAYOUTS:
            if layout.name != p4_push.DEFAULT_LAYOUT.name:
                one(headline_mode, layout)
    best = p4_push.best([r for r in results if r.mode == headline_mode and r.target_rate == rate])
    print(f"P4 headline: {best.summary()}", flush=True)
    if args.p4_layouts == "all" and not best.meets_target:
        layout = next(layout for layout in p4_push.LAYOUTS if layout.name == best.layout)
        one(headline_mode, layout, p4_push.below_saturation_rate(best))
    return {
        "p4": best.as_dict(),
        "p4_runs": {f"{r.mode}, {r.layout}, {r.target_rate:.0f}/s": r.as_dict() for r in results},
    }


def run_sends(args: argparse.Namespace, template: str) -> dict[str, Any]:
    results = provider_sends.run(
        template=template, per_channel=args.per_channel, progress=not args.no_progress
    )
    return {"sends": {r.provider: r.as_dict() for r in results}}


def run_p5(args: argparse.Namespace, template: str) -> dict[str, Any]:
    result = p5_campaign.run(
        template=template, recipients=args.campaign_recipients, progress=not args.no_progress
    )
    print(result.summary(), flush=True)
    return {"p5": result.as_dict()}


def run_kill_sends(args: argparse.Namespace, template: str) -> dict[str, Any]:
    # Where the kill lands inside a chunk decides the duplicates, so one run is one sample:
    # kill at several points and report each, the worst as the headline.
    results = []
    for run in range(args.kill_runs):
        kill_after = min(args.sends - 1, args.kill_after + run * args.sends // (args.kill_runs + 1))
        result = kill_sends.run(
            template=template, sends=args.sends, kill_after=kill_after, progress=not args.no_progress
        )
        print(result.summary(), flush=True)
        results.append(result.as_dict())
    worst = max(results, key=lambda r: (r["lost"], r["duplicates"]))
    return {"kill_sends": worst, "kill_sends_runs": results}


def run_p1_against(args: argparse.Namespace, template: str) -> dict[str, Any]:
    if not args.against:
        raise SystemExit("p1-against needs --against <git revision>")
    result = p1_against.run(
        against=args.against, rounds=args.rounds, recipients=args.recipients, progress=not args.no_progress
    )
    print(result.summary(), flush=True)
    return {"p1_against": result.as_dict()}


def run_p2_curve(args: argparse.Namespace, template: str) -> dict[str, Any]:
    """P2 at each of ``--rates`` on the default server, then a bisection between the highest
    rate that held p99 <= 250 ms with nothing lost and the lowest that did not."""
    server = p2_latency.DEFAULT_SERVER
    points: dict[float, p2_latency.P2Result] = {}

    def at(rate: float) -> p2_latency.P2Result:
        # The bare baseline is measured beside P2's own rows, not at every point.
        points[rate] = _p2_run(args, template, server, rate, baseline=False)
        return points[rate]

    for rate in sorted(float(part) for part in args.rates.split(",") if part.strip()):
        at(rate)
    held = [rate for rate, result in points.items() if result.holds_p99]
    failed = [rate for rate, result in points.items() if not result.holds_p99]
    low = max(held, default=0.0)
    high = min((rate for rate in failed if rate > low), default=None)
    for _ in range(args.search_steps if high is not None else 0):
        assert high is not None
        middle = round((low + high) / 2)
        if middle in (low, high):
            break
        if at(middle).holds_p99:
            low = middle
        else:
            high = middle
    print(
        f"P2 curve [{server}]: highest rate holding p99 <= 250 ms with nothing lost: {low:.0f}/s", flush=True
    )
    return {
        "p2_curve": {
            "server": server,
            "points": [points[rate].as_dict() for rate in sorted(points)],
            "highest_rate_holding": low,
            "lowest_rate_failing": high,
        }
    }


def run_p6(args: argparse.Namespace, template: str) -> dict[str, Any]:
    result = p6_iot.run(
        template=template,
        devices=args.p6_devices,
        rate=args.p6_rate,
        seconds=args.p6_seconds,
        ingests=tuple(int(part) for part in args.p6_ingests.split(",") if part.strip()),
        alerts=args.p6_alerts,
        generator_processes=args.p6_generator_processes,
        baseline=not args.p6_no_baseline,
        day_readings=args.p6_day_readings,
        query_calls=args.p6_query_calls,
        batch_max=args.p6_batch_max or None,
        batch_seconds=args.p6_batch_seconds,
        progress=not args.no_progress,
    )
    print(result.summary(), flush=True)
    return {"p6": result.as_dict()}


def run_p7(args: argparse.Namespace, template: str) -> dict[str, Any]:
    result = p7_collab.run(
        template=template,
        operations=args.p7_operations,
        documents=args.p7_documents,
        editors=args.p7_editors,
        rate=args.p7_rate,
        seconds=args.p7_seconds,
        sequential=args.p7_one_at_a_time,
        progress=not args.no_progress,
    )
    print(result.summary(), flush=True)
    return {"p7": result.as_dict()}


def run_p8(args: argparse.Namespace, template: str) -> dict[str, Any]:
    result = p8_games.run(
        template=template,
        matches=args.p8_matches,
        players=args.p8_players,
        seconds=args.p8_seconds,
        rate=args.p8_input_rate,
        other_rates=[float(part) for part in args.p8_other_rates.split(",") if part.strip()],
        other_seconds=args.p8_other_seconds,
        profile=args.p8_profile,
        passes=[int(part) for part in args.p8_passes.split(",") if part.strip()],
        client_processes=args.p8_client_processes,
        baseline_seconds=args.p8_baseline_seconds,
        progress=not args.no_progress,
        server_nice=args.p8_server_nice,
        server_realtime=args.p8_server_realtime,
    )
    print(result.summary(), flush=True)
    return {"p8": result.as_dict()}


def run_p9(args: argparse.Namespace, template: str) -> dict[str, Any]:
    result = p9_streams.run(
        template=template,
        seconds=args.p9_seconds,
        warmup=args.p9_warmup,
        source_seconds=args.p9_source_seconds,
        latency_seconds=args.p9_latency_seconds,
        viewers=args.p9_viewers,
        chat_rate=args.p9_chat_rate,
        chat_seconds=args.p9_chat_seconds,
        client_processes=args.p9_client_processes,
        progress=not args.no_progress,
    )
    print(result.summary(), flush=True)
    return {"p9": result.as_dict()}


def run_rtc_loss(args: argparse.Namespace, template: str) -> dict[str, Any]:
    losses = [float(part) for part in args.loss_rates.split(",") if part.strip()]
    return {"rtc_loss": rtc_loss.run(template=template, losses=losses, seconds=args.loss_seconds)}


def run_bulk(args: argparse.Namespace, template: str) -> dict[str, Any]:
    result = bulk_events.run(template=template, events=args.events, progress=not args.no_progress)
    print(result.summary(), flush=True)
    return {"bulk": result.as_dict()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs = [
        (name, function)
        for name, function in (
            ("p1", run_p1),
            ("p2", run_p2),
            ("bulk", run_bulk),
            ("p2-curve", run_p2_curve),
            ("memory", run_memory),
            ("p3-broadcast", run_p3_broadcast),
            ("p3-heartbeats", run_p3_heartbeats),
            ("p3-presence", run_p3_presence),
            ("p4", run_p4),
            ("sends", run_sends),
            ("p5", run_p5),
            ("kill-sends", run_kill_sends),
            ("p6", run_p6),
            ("p7", run_p7),
            ("p8", run_p8),
            ("p9", run_p9),
            ("rtc-loss", run_rtc_loss),
            ("p1-against", run_p1_against),
        )
        if args.benchmark == name or (args.benchmark == "all" and name != "p1-against")
    ]
    if not args.no_write and args.benchmark == "all":
        # A full run replaces everything, so nothing stale survives from older runs.
        report.RESULTS_PATH.unlink(missing_ok=True)
    results: dict[str, Any] = {}
    with template_database() as template:
        for _, function in runs:
            updates = function(args, template)
            if not args.no_write:
                # Saved after each benchmark, so a later failure keeps the figures measured so far.
                results = report.save_results(updates)
                report.write(results)
    if args.no_write:
        return 0
    chosen, reason = report.choose_server(results)
    if chosen:
        print(f"Better ASGI server: {chosen} ({reason})", flush=True)
    print(f"Wrote {report.write(results)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
