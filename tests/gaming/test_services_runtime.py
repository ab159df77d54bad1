"""A running match (gaming/services/runtime.py) without sockets: inputs applied on the
tick and acknowledged, the whole snapshot for whoever joins and deltas after, bad inputs
dropped and counted without disturbing the others, the grace period and forfeits, the
result; and the fixed-rate clock, which does not drift when ticks take time."""

from __future__ import annotations

import asyncio
import time

import pytest

from gaming.modes.arena import Arena
from gaming.modes.base import InputRefused, apply_delta
from gaming.services.runtime import MatchRuntime, TickClock


def runtime(players: tuple[str, ...] = ("ana", "ben"), *, grace: float = 20.0) -> MatchRuntime:
    return MatchRuntime(
        match_id="m", mode=Arena(), players=list(players), seed=5, now=0.0, grace_seconds=grace
    )


def test_a_joining_player_gets_the_whole_state_then_deltas_that_rebuild_it() -> None:
    match = runtime()
    match.join("ana", 0.0)
    first = match.step(0.05)
    frame = first.frame_for("ana")
    assert frame["type"] == "state" and frame["tick"] == 1 and "state" in frame and frame["ack"] == 0
    seen = frame["state"]
    match.receive("ana", {"type": "input", "seq": 1, "move": [1, 0]}, 0.06)
    second = match.step(0.1)
    frame = second.frame_for("ana")
    assert frame["ack"] == 1 and "delta" in frame and "state" not in frame
    assert apply_delta(seen, frame["delta"]) == second.snapshot
    assert second.snapshot["players"]["ana"]["x"] > seen["players"]["ana"]["x"]


def test_bad_inputs_are_dropped_and_counted_and_the_other_players_go_on() -> None:
    match = runtime()
    match.join("ana", 0.0)
    match.join("ben", 0.0)
    match.receive("ben", {"type": "input", "seq": 1, "move": [0, 1]}, 0.0)
    with pytest.raises(InputRefused, match="move.x"):
        match.receive("ana", {"type": "input", "seq": 1, "move": [9, 0]}, 0.0)
    with pytest.raises(InputRefused, match="seq"):
        match.receive("ana", {"type": "input", "seq": 1, "move": [1, 0]}, 0.0)
    refused = 0
    for seq in range(2, 60):  # far faster than 60 a second
        try:
            match.receive("ana", {"type": "input", "seq": seq}, 0.01)
        except InputRefused:
            refused += 1
    output = match.step(0.05)
    assert output.acks["ben"] == 1 and output.acks["ana"] > 1
    assert refused > 0
    assert match.dropped() == {"move.x": 1, "seq": 1, "rate": refused}
    assert output.snapshot["players"]["ben"]["y"] != runtime().step(0.05).snapshot["players"]["ben"]["y"]


def test_a_player_back_within_the_grace_period_resumes_from_a_fresh_snapshot() -> None:
    match = runtime(grace=20.0)
    match.join("ana", 0.0)
    match.join("ben", 0.0)
    match.step(0.05)
    match.leave("ben", 1.0)
    assert match.step(15.0).forfeited == []
    match.join("ben", 16.0)
    output = match.step(16.05)
    assert "state" in output.frame_for("ben") and "delta" in output.frame_for("ana")
    assert match.step(40.0).forfeited == [] and match.result is None


def test_a_player_who_does_not_come_back_forfeits_and_the_match_ends() -> None:
    match = runtime(grace=20.0)
    match.join("ana", 0.0)
    match.join("ben", 0.0)
    match.leave("ben", 1.0)
    assert match.step(20.9).forfeited == []
    output = match.step(21.0)
    assert output.forfeited == ["ben"] and output.result is not None
    assert [(s.player, s.rank, s.forfeited) for s in output.result.standings] == [
        ("ana", 1, False),
        ("ben", 2, True),
    ]
    with pytest.raises(InputRefused, match="no longer in the match"):
        match.receive("ben", {"type": "input", "seq": 5}, 21.1)


def test_players_who_never_connect_forfeit_when_the_grace_period_from_the_start_ends() -> None:
    match = runtime(("ana", "ben", "cy"), grace=5.0)
    match.join("ana", 0.0)
    match.join("ben", 0.0)
    assert match.step(4.0).forfeited == []
    assert match.step(5.0).forfeited == ["cy"]
    assert match.result is None  # two still play


def test_the_clock_keeps_its_rate_when_each_tick_takes_time() -> None:
    """20 Hz with 30 ms of work in every 50 ms tick: 20 ticks take one second, not 1.6."""
    ticks: list[float] = []

    async def work(now: float) -> bool:
        ticks.append(now)
        busy_until = time.perf_counter() + 0.03
        while time.perf_counter() < busy_until:  # the tick's work: 30 ms of the CPU
            pass
        return len(ticks) < 20

    clock = TickClock(20, work)
    began = time.monotonic()
    asyncio.run(clock.run())
    elapsed = time.monotonic() - began
    # Every deadline that passed was ticked or, on a machine too busy to keep up, skipped:
    # the time taken is the deadlines', not the work's (20 x 80 ms would be 1.6 s).
    assert clock.ticks == 20
    assert (clock.ticks + clock.lateness.skipped) * 0.05 == pytest.approx(elapsed, abs=0.13)
    assert clock.lateness.percentile(0.5) < 0.05
