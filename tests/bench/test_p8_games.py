"""A small run of P8 (bench/p8_games.py), so that ``python -m bench p8`` cannot rot: tickets
through the API become the matches asked for, a real match server claims and ticks them,
every player's socket gets state frames and acknowledgements of its inputs, the server's
tick lateness is read out for each window, the bare timer baseline and the timed
matchmaking pass give figures, and the report renders them. Never its speed."""

from __future__ import annotations

import math

import pytest

from bench import p8_games, report

pytestmark = [pytest.mark.bench_smoke, pytest.mark.xdist_group("bench")]


def test_the_bare_timers_record_every_deadline() -> None:
    baseline = p8_games.timer_baseline(tasks=10, rate=20, seconds=1.0)

    # 10 tasks x 20 deadlines in a second (the last one may fall just outside it)
    assert 180 <= baseline.lateness.samples <= 200, baseline
    assert 0 <= baseline.lateness.p50_ms <= baseline.lateness.p99_ms <= baseline.lateness.max_ms


def test_p8_matches_players_plays_and_reports(template: str) -> None:
    result = p8_games.run(
        template=template,
        matches=2,
        players=2,
        seconds=3,
        other_rates=(0,),
        other_seconds=2,
        warmup=1,
        passes=(40,),
        baseline_seconds=1,
        progress=False,
    )

    # the tickets became exactly the matches asked for
    made = result.matchmaking
    assert (made.tickets, made.matches, made.http_errors) == (4, 2, 0), result.as_dict()
    assert made.match_sizes == {"2": 2} and made.matched_seconds > 0, result.as_dict()
    # a stack for the windows without inputs, another for the headline: matchmaking on each
    assert [run.matches for run in result.matchmaking_runs] == [2, 2], result.matchmaking_runs
    assert not result.notes, result.notes
    # the matches ticking with nobody connected, then the lighter window, then the headline
    nobody, idle, headline = result.phases
    assert result.headline is headline and headline.input_rate == 20 and idle.input_rate == 0
    assert nobody.players == nobody.connected == nobody.state_frames == 0, nobody
    assert nobody.server is not None and nobody.server.seats_connected == 0 and nobody.server.ticks > 0
    # every player was connected and seated through the windows
    for phase in (idle, headline):
        assert phase.connected == 4 and phase.closed == 0, phase
        assert phase.match_status == {"running": 2} and not phase.log_events, phase
        server = phase.server
        assert server is not None, "the match server's readout covers the window"
        assert (server.matches, server.seats_connected, server.seats_forfeited) == (2, 4, 0), server
        # two clocks at 20 Hz over the window, each tick's lateness read out
        assert server.ticks >= 2 * 20 * (phase.seconds - 1.5), server
        assert server.lateness.samples == server.ticks and not math.isnan(server.lateness.p99_ms)
        assert 0 <= server.lateness.p50_ms <= server.lateness.p99_ms <= server.lateness.max_ms
        assert server.step_p50_ms > 0
        # each player got about one state frame per tick
        assert phase.state_frames >= 4 * 20 * (phase.seconds - 1.5), phase
        assert phase.bytes_per_player_per_second > 0
    # inputs went in, were read by the server and acknowledged in states
    assert headline.inputs_sent >= 4 * 20 * (headline.seconds - 1), headline
    assert headline.server is not None and headline.server.inputs_received >= headline.inputs_sent * 0.8
    assert 0 < headline.server.inbound_messages <= headline.server.inputs_received, headline.server
    assert 0 < headline.input_ack_p50_ms <= headline.input_ack_p99_ms, headline
    assert "aim" not in headline.server.inputs_dropped, "the clients send inputs the arena takes"
    assert headline.baseline_beside is not None and headline.baseline_beside.lateness.samples > 0
    # and in the second window, none
    assert idle.inputs_sent == 0 and idle.server is not None and idle.server.inputs_received == 0
    # the server's own heartbeat told of its ticks in each window
    assert all(phase.heartbeat.get("ticks", 0) > 0 for phase in result.phases), result.phases
    assert result.baseline.lateness.samples > 0 and result.baseline.when == "quiet machine"
    (timing,) = result.passes
    assert timing.waiting == 40 and timing.matches >= 1 and timing.seconds > 0, timing
    assert timing.tickets_matched + timing.left_searching == 40, timing

    rendered = report.render({"p8": result.as_dict(), "machine": report.machine(), "measured_on": {}})
    assert "## P8: authoritative matches" in rendered
    assert "| P8 2 matches × 2 players at 20 Hz, 20 inputs/s per player | tick lateness p50" in rendered
    assert "| P8 matchmaking, 4 tickets through the API |" in rendered
    assert "| 40 | " in rendered, "the timed pass has its row"
