"""A match server killed with SIGKILL in the middle of a match (real processes): its
heartbeat lapses, beat's sweep ends the match as aborted with no rating change, and the
players on the match's socket are told."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from websockets.sync.client import connect

from tests.e2e.conftest import Stack, platform_stack
from tests.e2e.test_gaming_e2e import Player, matched

pytestmark = [pytest.mark.e2e, pytest.mark.fault, pytest.mark.xdist_group("e2e-gaming-faults")]


@pytest.fixture
def stack() -> Iterator[Stack]:
    env = {"GAMING_ARENA_ROUND_SECONDS": "120", "GAMING_FILL_SECONDS": "0.5"}
    with platform_stack(env, with_games=True) as running:
        yield running


def test_a_killed_match_server_ends_its_match_as_aborted_and_the_players_hear_it(stack: Stack) -> None:
    players = [Player(stack, f"kill{n}-{uuid.uuid4().hex[:4]}") for n in range(2)]
    socket = matched(players)
    match_id = socket.strip("/").split("/")[-1]
    with connect(f"{stack.ws_url}{socket}?token={players[0].token}", open_timeout=10) as ws:
        frame = json.loads(ws.recv(timeout=10))
        while frame["type"] != "state":
            frame = json.loads(ws.recv(timeout=10))
        stack.processes.processes["match-1"].kill()
        # the heartbeat lapses within 5 s and the sweep runs every 2 s
        while frame["type"] != "end":
            frame = json.loads(ws.recv(timeout=20))
    assert frame["aborted"] is True and "match-1 stopped" in frame["reason"]
    with stack.db() as db:
        row = db.execute(
            "SELECT status, ratings_applied_at FROM gaming_match WHERE id = %s", [match_id]
        ).fetchone()
        rated = db.execute("SELECT count(*) FROM gaming_rating").fetchone()
    assert row == ("aborted", None)
    assert rated == (0,)
