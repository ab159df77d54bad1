"""Small runs of every benchmark, so that ``make bench`` cannot rot. Not timed tests: they
check that each benchmark runs end to end and that its figures are sane, never its speed.
Nothing is written to docs/ (the functions are called directly, as ``--no-write`` does)."""

from __future__ import annotations

import math

import pytest

from bench import (
    bulk_events,
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
    provider_sends,
    report,
)
from bench.stack import Progress, bench_stack, progress_bar
from harness.processes import Server

pytestmark = [pytest.mark.bench_smoke, pytest.mark.xdist_group("bench")]


def test_progress_bar_draws_fraction_and_counts() -> None:
    line = progress_bar("P1", 50, 200, started=0.0, width=10)
    assert "[###.......]" in line or "[##........]" in line
    assert "25.0%" in line
    assert "50/200" in line
    Progress("quiet", 10, enabled=False).update(5)  # disabled bars print nothing and do not fail


def test_p1_fanout_persists_every_row(template: str) -> None:
    result = p1_fanout.run(template=template, recipients=2_000, timeout=120, progress=False)

    assert result.all_persisted, result.as_dict()
    assert result.deliveries == result.inbox_items == 2_000
    assert result.per_second > 0
    assert 0 < result.first_delivery_s <= result.last_delivery_s <= result.last_inbox_s
    assert result.last_inbox_s <= result.observed_complete_s
    # and the baseline of the same run copied the same rows
    assert result.copy_s > 0 and result.copy_per_second > 0 and result.ratio_to_copy > 0
    assert result.copy_logged_s > 0 and result.ratio_to_logged_copy > 0


@pytest.mark.parametrize("server", ["uvicorn", "daphne", "granian"])
def test_p2_latency_receives_every_frame(template: str, server: Server) -> None:
    result = p2_latency.run(
        template=template, server=server, clients=5, rate=20, seconds=2, grace=30, progress=False
    )

    assert result.http_errors == 0, result.as_dict()
    assert result.accepted == result.sent == 40
    assert result.lost == 0 and result.received == 40, result.as_dict()
    assert result.inbox_rows == 40
    assert result.seq_gaps == 0
    assert 0 < result.p50_ms <= result.p95_ms <= result.p99_ms <= result.max_ms
    # and where the time went, stage by stage, from the rows' timestamps
    assert list(result.stage_p50_ms) == [name for name, _ in p2_latency.STAGES], result.stage_p50_ms
    assert all(value >= 0 for value in result.stage_p50_ms.values()), result.stage_p50_ms
    assert not math.isnan(result.mean_ms)
    # and beside it, the same rate through a bare Redis publish to bare websocket clients
    assert result.baseline["lost"] == 0, result.baseline
    assert 0 < result.baseline["p50_ms"] <= result.baseline["p99_ms"], result.baseline


@pytest.mark.parametrize("server", ["uvicorn", "daphne", "granian"])
def test_memory_per_idle_connection_is_measured(template: str, server: Server) -> None:
    result = memory.run(template=template, server=server, connections=50, progress=False)

    # every socket asked for was opened and still held by the server at the second reading
    assert result.opened == result.held == result.connections == 50, result.as_dict()
    # both readings are of one web process, alive and started once, in this run
    assert result.baseline_process, result.as_dict()
    assert result.baseline_process == result.measured_process, result.as_dict()
    # a whole Django ASGI process, not a wrapper or a process that is gone
    assert result.rss_before_kib > 20 * 1024, result.as_dict()
    # an idle socket costs the server some KiB (a consumer, protocol buffers), far less
    # than a MiB: 10,000 sockets measured 25 KiB each on uvicorn (docs/benchmarks.md). A
    # baseline taken with the sockets already counted in it, or memory they reuse unseen,
    # reads near 0.
    assert 4.0 < result.kib_per_connection < 1024.0, result.as_dict()
    # and beside it, the bare websocket server holding as many sockets, read the same way
    assert result.bare_connections == 50 and 0 < result.bare_kib_per_connection < 1024.0, result.as_dict()


def test_p3_broadcast_reaches_every_socket_with_its_baseline(template: str) -> None:
    result = p3_broadcast.run(template=template, recipients=50, rounds=1, progress=False)

    assert result.sockets == result.recipients == 50
    (only,) = result.rounds
    assert only.received == 50, result.as_dict()
    assert 0 < only.p50_s <= only.p99_s <= only.max_s < 60, result.as_dict()
    assert only.accept_s > 0 and only.first_row_s <= only.last_row_s, result.as_dict()
    assert only.cpu_seconds["web"] > 0
    assert result.baseline_sockets == result.baseline_received == 50, result.as_dict()
    assert 0 < result.baseline_p50_s <= result.baseline_p99_s, result.as_dict()


def test_p3_heartbeats_are_counted_beside_a_bare_echo(template: str) -> None:
    result = p3_heartbeat.run(template=template, sockets=20, seconds=1.0, progress=False)

    assert result.sockets == result.baseline_sockets == 20, result.as_dict()
    assert result.pongs > 20 and result.pongs_per_second > 0, result.as_dict()
    assert 0 < result.round_trip_p50_ms <= result.round_trip_p99_ms, result.as_dict()
    assert result.baseline_echoes > 20 and result.baseline_per_second > 0, result.as_dict()
    assert result.web_cpu_ms_per_pong > 0


def test_p3_presence_delivers_every_delta_to_every_watcher(template: str) -> None:
    result = p3_presence.run(
        template=template, users=20, watching=5, rates=(10,), seconds=1.0, progress=False
    )

    assert result.subscribed == 20 and result.subscribe_errors == 0, result.as_dict()
    assert result.snapshot_entries == 20 * 5 and result.subscribe_seconds > 0, result.as_dict()
    (run,) = result.runs
    assert run.changes == 10 and run.expected == 50, result.as_dict()
    assert run.delivered == 50 and run.lost == 0, result.as_dict()
    assert 0 < run.p50_ms <= run.p99_ms <= run.max_ms, result.as_dict()
    # the subscriptions are the web process's: Redis holds one channel per watched user
    assert result.redis_after["pubsub_channels"] > result.redis_before["pubsub_channels"]
    rendered = report.render(
        {"p3_presence": result.as_dict(), "machine": report.machine(), "measured_on": {}}
    )
    assert "## P3: presence deltas, 20 subscribers watching 5 users each" in rendered
    assert "| P3 presence, 20 subscribers watching 5 users each |" in rendered


def test_report_renders_the_p3_rows_with_their_targets() -> None:
    memory_row = {
        "opened": 10_000,
        "held": 10_000,
        "rss_before_kib": 130_000,
        "rss_after_kib": 380_000,
        "kib_per_connection": 25.0,
        "bare_kib_per_connection": 9.0,
        "redis_clients_per_connection": 0.0,
        "connect_seconds": 40.0,
    }
    broadcast_round = {
        "round": 1,
        "received": 10_000,
        "p50_s": 0.5,
        "p99_s": 1.5,
        "max_s": 1.6,
        "p99_from_post_s": 1.55,
        "accept_s": 0.02,
        "first_row_s": 0.05,
        "last_row_s": 1.0,
        "first_frame_s": 0.1,
        "cpu_seconds": {"web": 1.0},
    }
    results = {
        "machine": report.machine(),
        "measured_on": {},
        "memory": {"uvicorn": memory_row, "uvicorn-stock": {**memory_row, "uvicorn_ws": "websockets-sansio"}},
        "p3_broadcast": {
            "recipients": 10_000,
            "connect_seconds": 40.0,
            "client_processes": 2,
            "rounds": [broadcast_round],
            "headline": broadcast_round,
            "meets_target": False,
            "baseline_sockets": 10_000,
            "baseline_received": 10_000,
            "baseline_p50_s": 0.1,
            "baseline_p99_s": 0.2,
            "baseline_max_s": 0.2,
        },
        "p3_heartbeats": {
            "sockets": 1_000,
            "seconds": 10.0,
            "pongs": 30_000,
            "pongs_per_second": 3_000.0,
            "round_trip_p50_ms": 300.0,
            "round_trip_p99_ms": 600.0,
            "web_cpu_ms_per_pong": 0.3,
            "redis_cpu_ms_per_pong": 0.01,
            "baseline_per_second": 30_000.0,
            "baseline_round_trip_p50_ms": 30.0,
            "ratio_to_baseline": 0.1,
            "cpu_seconds": {"web": 9.0},
        },
    }

    text = report.render(results)

    assert (
        "| P3 memory per idle websocket, uvicorn (the platform's protocol, as `make run`), 10,000 sockets"
        in text
    )
    assert "25.0 KiB (bare websocket server 9.0 KiB) | ≥ 10,000 at ≤ 30 KB | yes |" in text
    assert "uvicorn with uvicorn's own websockets-sansio protocol" in text
    assert "| p99 ≤ 1 s | **no** |" in text
    assert "## P3: heartbeats handled per second by one web process" in text
    assert "3,000 pongs/s (bare websocket echo server 30,000/s; 0.10 of it)" in text


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert p2_latency.percentile(values, 0.50) == 50.0
    assert p2_latency.percentile(values, 0.99) == 99.0
    assert p2_latency.percentile(values, 1.0) == 100.0
    assert math.isnan(p2_latency.percentile([], 0.5))


def test_p4_push_measures_every_push_in_both_modes(template: str) -> None:
    with bench_stack(
        template=template, env=provider_sends.UNPACED_ENV, label="p4-smoke", sandbox=True
    ) as stack:
        topic = p4_push.measure(
            stack,
            mode="topic",
            layout=p4_push.DEFAULT_LAYOUT,
            rate=200,
            seconds=1,
            per_event=50,
            grace=60,
            progress=False,
            tag="t",
        )
        single = p4_push.measure(
            stack,
            mode="per-recipient",
            layout=p4_push.DEFAULT_LAYOUT,
            rate=10,
            seconds=1,
            per_event=50,
            grace=60,
            progress=False,
            tag="r",
        )

    assert topic.events_scheduled == topic.events_posted == 4, topic.as_dict()
    assert topic.expected == topic.accepted == 200 and topic.lost == 0, topic.as_dict()
    assert topic.statuses == {"sent": 200}
    assert single.per_event == 1 and single.events_posted == single.expected == 10, single.as_dict()
    assert single.accepted == 10 and single.lost == 0, single.as_dict()
    for result in (topic, single):
        assert result.http_errors == 0 and result.duplicates == 0
        assert 0 < result.p50_s <= result.p95_s <= result.p99_s <= result.max_s, result.as_dict()
        assert result.accepted_per_second > 0


def test_provider_sends_are_accepted_on_every_channel(template: str) -> None:
    results = provider_sends.run(template=template, per_channel=100, timeout=120, progress=False)

    assert [r.provider for r in results] == [v.provider for v in provider_sends.VARIANTS]
    for result in results:
        assert result.complete, result.as_dict()
        assert result.accepted == 100 and result.duplicates == 0, result.as_dict()
        assert 0 < result.first_accept_s <= result.last_accept_s, result.as_dict()
        assert result.per_second > 0


def test_kill_sends_loses_nothing_and_counts_duplicates(template: str) -> None:
    result = kill_sends.run(template=template, sends=1_000, kill_after=300, timeout=180, progress=False)

    assert result.accepted_at_kill >= 300
    assert result.sent == result.deliveries == 1_000, result.as_dict()
    assert result.lost == 0 and result.unique_keys == 1_000, result.as_dict()
    assert result.duplicates <= result.duplicate_bound, result.as_dict()
    assert result.requests == result.unique_keys + result.duplicates
    assert result.ok


def test_bulk_events_are_all_accepted_and_delivered_in_app(template: str) -> None:
    result = bulk_events.run(template=template, events=1_500, batch=500, recipients=200, progress=False)

    assert result.accepted == 1_500 and result.refused == 0, result.as_dict()
    assert result.inbox_items == 1_500, result.as_dict()
    assert (
        0 < result.accepted_per_second
        and 0 < result.delivered_per_second <= result.accepted_per_second * 1.01
    )
    assert result.copy_rows_per_second > 0 and result.cpu_seconds["web"] > 0
    rendered = report.render({"bulk": result.as_dict(), "machine": report.machine(), "measured_on": {}})
    assert "## Bulk events: POST /api/v1/events/bulk/" in rendered and "| 1,500 | 500 |" in rendered


def test_p5_campaign_sends_every_email_once_and_probes_transactional_latency(template: str) -> None:
    result = p5_campaign.run(
        template=template, recipients=400, probe_seconds=2.0, timeout=180, progress=False
    )

    assert result.accepted == 400 and result.duplicates == 0 and result.failed == 0, result.as_dict()
    assert 0 < result.first_accept_s <= result.last_accept_s, result.as_dict()
    assert result.overall_per_second > 0, "(sends/s from first to last acceptance: one batch here)"
    assert result.statuses == {"delivered": 400}, "every receipt read back from the events API"
    assert result.first_accept_s < result.receipts_s, result.as_dict()
    for probe in (result.baseline, result.during):
        assert probe.sent > 0 and probe.written == probe.sent, result.as_dict()
        assert 0 < probe.p50_s <= probe.p99_s, result.as_dict()
        assert 0 <= probe.to_fanout_p50_s <= probe.p50_s and probe.to_fanout_p99_s <= probe.p99_s, (
            result.as_dict()
        )
    assert result.loop_alone_s > 0, "the CPU loop timed on the idle machine"
    rendered = report.render({"p5": result.as_dict(), "machine": report.machine(), "measured_on": {}})
    assert "## P5: an email campaign, and transactional traffic meanwhile" in rendered
    assert "the part before its fan-out started" in rendered
    assert "| P5 email campaign, 400 recipients" in rendered


def test_report_renders_the_provider_sections() -> None:
    p4_run = {
        "mode": "topic",
        "layout": "default (send -c2)",
        "settings": "send -c2",
        "target_rate": 1000.0,
        "seconds": 20.0,
        "per_event": 50,
        "events_scheduled": 400,
        "events_posted": 400,
        "post_rate": 20.0,
        "offered_rate": 1000.0,
        "accepted_per_second": 990.0,
        "p50_s": 1.0,
        "p95_s": 2.0,
        "p99_s": 3.0,
        "max_s": 4.0,
        "lost": 0,
        "duplicates": 0,
        "accept_p50_ms": 10.0,
        "accept_p99_ms": 50.0,
        "load_before": 0.3,
        "meets_target": True,
    }
    results = {
        "machine": report.machine(),
        "p4": p4_run,
        "p4_runs": {"topic, default (send -c2)": p4_run},
        "sends": {
            "fcm": {
                "variant": "push (FCM HTTP v1)",
                "recipients": 5000,
                "per_second": 800.0,
                "first_accept_s": 0.3,
                "last_accept_s": 6.5,
                "accepted": 5000,
                "duplicates": 0,
                "rejected": 0,
                "failed": 0,
                "settings": "",
            }
        },
        "kill_sends": {
            "sends": 10000,
            "accepted_at_kill": 2510,
            "claimed_at_kill": 100,
            "sent": 10000,
            "lost": 0,
            "unique_keys": 10000,
            "duplicates": 60,
            "duplicate_bound": 100,
            "requests": 10060,
            "restart_s": 3.0,
            "recover_s": 9.0,
            "total_s": 20.0,
            "settings": "send -c2",
            "ok": True,
        },
    }

    text = report.render(results)

    assert "## P4: event → push accepted by the provider (offline users)" in text
    assert "| push (FCM HTTP v1) | 5,000 | 800 |" in text
    assert "## kill -9 of the send worker during 10,000 pushes" in text
    assert "duplicates ≤ chunks in flight × chunk size" in text


def test_p1_against_an_earlier_revision_runs_both_in_turns() -> None:
    # The smallest real run: one round each, this tree and HEAD in a worktree of its own.
    result = p1_against.run(against="HEAD", rounds=1, recipients=300, progress=False)

    assert len(result.this) == len(result.other) == 1
    assert result.this[0] > 0 and result.other[0] > 0
    assert result.median_ratio == result.this[0] / result.other[0]
    rendered = report.render({"p1_against": result.as_dict(), "machine": report.machine(), "measured_on": {}})
    assert "## P1 beside an earlier revision" in rendered and "| 1 |" in rendered


def test_p2_curve_measures_each_rate_and_names_the_highest_that_holds(template: str) -> None:
    from bench.__main__ import parse_args, run_p2_curve

    args = parse_args(["p2-curve", "--rates", "10", "--seconds", "2", "--clients", "5", "--no-progress"])
    curve = run_p2_curve(args, template)["p2_curve"]

    assert [point["target_rate"] for point in curve["points"]] == [10.0]
    assert curve["points"][0]["lost"] == 0 and curve["points"][0]["cpu_ms_per_event"]["web"] > 0
    assert curve["highest_rate_holding"] == (10.0 if curve["points"][0]["holds_p99"] else 0.0)
    rendered = report.render({"p2_curve": curve, "machine": report.machine(), "measured_on": {}})
    assert "## P2 as a curve (uvicorn)" in rendered and "| 10/s |" in rendered
