"""The arena mode (gaming/modes/arena.py) on its own: placement, movement against walls,
shooting to an elimination and a respawn, pickups, what inputs it refuses, the result, and
snapshots whose deltas rebuild them (gaming/modes/base.py)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gaming.modes import MODES, mode_get
from gaming.modes.arena import (
    BULLET_DAMAGE,
    HEIGHT,
    MAX_HEALTH,
    PLAYER_RADIUS,
    RESPAWN_SECONDS,
    SPAWNS,
    SPEED,
    WIDTH,
    Arena,
    ArenaState,
    _blocked,
    move,
)
from gaming.modes.base import InputRefused, apply_delta, delta

DT = 1 / 20


def run(arena: Arena, state: ArenaState, seconds: float) -> None:
    for _ in range(round(seconds / DT)):
        arena.step(state, DT)


def face_off(distance: float = 300.0) -> tuple[Arena, ArenaState]:
    """Two players on an open line, ``a`` aiming at ``b``."""
    arena = Arena()
    state = arena.initial_state(["a", "b"], seed=1)
    a, b = state.players["a"], state.players["b"]
    a.x, a.y, b.x, b.y = 100.0, 100.0, 100.0 + distance, 100.0
    a.aim = 0.0
    return arena, state


def test_the_registry_names_the_arena() -> None:
    assert MODES["arena"] is Arena
    assert isinstance(mode_get("arena"), Arena)


def test_players_start_apart_on_spawn_points_and_the_count_is_checked() -> None:
    arena = Arena()
    state = arena.initial_state([f"p{n}" for n in range(10)], seed=7)
    spots = {(p.x, p.y) for p in state.players.values()}
    assert len(spots) == 10 and spots <= set(SPAWNS)
    assert (
        arena.initial_state(["a", "b"], seed=7).players["a"].x
        == arena.initial_state(["a", "b"], seed=7).players["a"].x
    )
    for count in (1, 11):
        with pytest.raises(ValueError, match="2-10 players"):
            arena.initial_state([f"p{n}" for n in range(count)], seed=1)


def test_a_second_of_full_stick_moves_a_player_its_speed_and_diagonals_are_no_faster() -> None:
    x, y = 100.0, 100.0
    for _ in range(20):
        x, y = move(x, y, 1.0, 0.0, DT)
    assert (x, y) == pytest.approx((100.0 + SPEED, 100.0))
    x, y = 100.0, 100.0
    for _ in range(10):
        x, y = move(x, y, 1.0, 1.0, DT)
    assert math.hypot(x - 100.0, y - 100.0) == pytest.approx(SPEED / 2)


def test_walls_and_edges_stop_a_player_who_slides_along_them() -> None:
    x, y = 100.0, 100.0
    for _ in range(100):
        x, y = move(x, y, -1.0, -0.2, DT)
    step = SPEED * DT
    assert PLAYER_RADIUS <= x <= PLAYER_RADIUS + step and PLAYER_RADIUS <= y <= PLAYER_RADIUS + step
    # the wall at x 280-320, y 180-380: straight at it, the player stops at its face
    x, y = 200.0, 250.0
    for _ in range(20):
        x, y = move(x, y, 1.0, 0.0, DT)
    assert 280.0 - PLAYER_RADIUS - step <= x <= 280.0 - PLAYER_RADIUS and y == 250.0
    # pushing into it and down, the player slides down its face and past its end
    trail = []
    for _ in range(30):
        x, y = move(x, y, 1.0, 1.0, DT)
        trail.append((x, y))
    beside = [(tx, ty) for tx, ty in trail if ty < 380.0]
    assert beside and all(tx <= 280.0 - PLAYER_RADIUS for tx, _ in beside)
    assert trail[-1][0] > 280.0 and trail[-1][1] > 380.0 + PLAYER_RADIUS


def test_four_hits_eliminate_a_player_who_respawns_whole_away_from_the_shooter() -> None:
    arena, state = face_off()
    a, b = state.players["a"], state.players["b"]
    arena.apply_input(
        state, "a", arena.validate_input(state, "a", {"type": "input", "seq": 1, "aim": 0.0, "shoot": True})
    )
    run(arena, state, 0.45)
    assert b.health == MAX_HEALTH - BULLET_DAMAGE
    run(arena, state, 0.75)
    assert b.health == 0 and not b.alive and b.deaths == 1 and a.kills == 1
    with pytest.raises(InputRefused, match="player: is waiting to respawn"):
        arena.validate_input(state, "b", {"seq": 2, "shoot": True})
    run(arena, state, RESPAWN_SECONDS + DT)
    assert b.alive and b.health == MAX_HEALTH
    assert math.hypot(b.x - a.x, b.y - a.y) > 300.0


def test_a_hurt_player_on_a_health_pack_is_healed_and_the_pack_comes_back_later() -> None:
    arena = Arena()
    state = arena.initial_state(["a", "b"], seed=1)
    a = state.players["a"]
    pack = state.pickups[0]
    a.x, a.y, a.health = pack.x, pack.y, 30
    arena.step(state, DT)
    assert a.health == 70 and pack.respawn_in > 0
    assert arena.snapshot(state)["pickups"][str(pack.id)]["up"] is False


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ({"seq": 1, "jump": True}, "jump: is not a field of an arena input"),
        ({"seq": 1, "move": [2, 0]}, "move.x: must be between -1 and 1"),
        ({"seq": 1, "move": [0, "up"]}, "move.y: must be a number"),
        ({"seq": 1, "move": [0]}, "move: must be \\[x, y\\]"),
        ({"seq": 1, "aim": float("nan")}, "aim: must be between"),
        ({"seq": 1, "aim": 7.0}, "aim: must be between"),
        ({"seq": 1, "shoot": "yes"}, "shoot: must be true or false"),
    ],
)
def test_impossible_inputs_are_refused_naming_the_field(frame: dict[str, Any], message: str) -> None:
    arena = Arena()
    state = arena.initial_state(["a", "b"], seed=1)
    with pytest.raises(InputRefused, match=message):
        arena.validate_input(state, "a", frame)


def test_the_most_eliminations_win_fewer_deaths_break_ties_and_a_forfeit_ranks_last() -> None:
    arena = Arena()
    state = arena.initial_state(["a", "b", "c", "d"], seed=1)
    p = state.players
    p["a"].kills, p["b"].kills, p["c"].kills, p["d"].kills = 3, 3, 1, 5
    p["a"].deaths, p["b"].deaths, p["c"].deaths = 1, 1, 0
    arena.forfeit(state, "d")
    with pytest.raises(InputRefused, match="has left"):
        arena.validate_input(state, "d", {"seq": 1})
    assert not arena.is_over(state)
    run(arena, state, arena.round_seconds)
    assert arena.is_over(state)
    standings = [(s.player, s.rank, s.forfeited) for s in arena.result(state).standings]
    assert standings == [("a", 1, False), ("b", 1, False), ("c", 3, False), ("d", 4, True)]


def test_a_match_with_one_player_left_is_over() -> None:
    arena = Arena()
    state = arena.initial_state(["a", "b"], seed=1)
    arena.forfeit(state, "b")
    assert arena.is_over(state)
    assert arena.result(state).standings[0].player == "a"


inputs = st.fixed_dictionaries(
    {
        "move": st.lists(st.floats(-1, 1), min_size=2, max_size=2),
        "aim": st.floats(-math.pi, math.pi),
        "shoot": st.booleans(),
    }
)


@settings(max_examples=60, deadline=None)
@given(
    players=st.integers(2, 10),
    seed=st.integers(0, 2**32),
    script=st.lists(st.tuples(st.integers(0, 9), inputs, st.integers(1, 6)), min_size=1, max_size=40),
)
def test_any_inputs_keep_players_in_the_arena_and_deltas_rebuild_every_snapshot(
    players: int, seed: int, script: list[tuple[int, dict[str, Any], int]]
) -> None:
    arena = Arena()
    ids = [f"p{n}" for n in range(players)]
    state = arena.initial_state(ids, seed=seed)
    seen = arena.snapshot(state)
    for seq, (who, frame, ticks) in enumerate(script, start=1):
        player = ids[who % players]
        try:
            command = arena.validate_input(state, player, {"type": "input", "seq": seq, **frame})
        except InputRefused:
            pass  # a player waiting to respawn
        else:
            arena.apply_input(state, player, command)
        for _ in range(ticks):
            arena.step(state, DT)
            current = arena.snapshot(state)
            assert apply_delta(seen, delta(seen, current)) == current
            seen = current
    for body in state.players.values():
        assert (
            PLAYER_RADIUS <= body.x <= WIDTH - PLAYER_RADIUS
            and PLAYER_RADIUS <= body.y <= HEIGHT - PLAYER_RADIUS
        )
        assert not _blocked(body.x, body.y, PLAYER_RADIUS)
        assert 0 <= body.health <= MAX_HEALTH
