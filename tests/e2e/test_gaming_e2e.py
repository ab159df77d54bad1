"""Gaming end to end with real processes: the web server, Celery beat and workers (the
matchmaking pass every second), and a match server (``manage.py match_server``).
Simulated players are websocket clients: they ask for a match through the API, are
matched by rating, find their match on the ticket, play a round
over /ws/matches/{id}/, and the result, ratings and leaderboard are updated once."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from harness.processes import wait_until
from tests.e2e.conftest import Stack, platform_stack

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e-gaming")]
ROUND_SECONDS = 6


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    env = {"GAMING_ARENA_ROUND_SECONDS": str(ROUND_SECONDS), "GAMING_FILL_SECONDS": "1"}
    with platform_stack(env, with_games=True) as running:
        yield running


class Player:
    """A simulated player: a recipient with a token, their ticket, their match socket."""

    def __init__(self, stack: Stack, name: str) -> None:
        self.stack = stack
        self.id, self.token = stack.create_recipient(name)
        self.api = stack.end_user(self.token)
        self.frames: list[dict[str, Any]] = []
        self.inbox: ClientConnection | None = None

    def ask(self) -> str:
        answer = self.api.post(
            "/api/v1/matchmaking/tickets/", json={"mode": "arena", "latencies": {"local": 5}}
        )
        assert answer.status_code == 201, answer.text
        return str(answer.json()["id"])

    def play(self, match_socket: str, *, moves: int = 20) -> None:
        """Play the round: read every frame until the end, sending a move now and then."""
        url = f"{self.stack.ws_url}{match_socket}?token={self.token}"
        with connect(url, open_timeout=10) as socket:
            seq = 0
            deadline = time.monotonic() + ROUND_SECONDS + 30
            while time.monotonic() < deadline:
                frame = json.loads(socket.recv(timeout=10))
                self.frames.append(frame)
                if frame["type"] == "end":
                    return
                if frame["type"] == "state" and seq < moves and frame["tick"] % 3 == 0:
                    seq += 1
                    socket.send(
                        json.dumps({"type": "input", "seq": seq, "move": [1, 0], "aim": 0.5, "shoot": True})
                    )
        raise AssertionError(f"{self.id}: the round never ended")


def matched(players: list[Player]) -> str:
    tickets = [p.ask() for p in players]

    def found() -> str | None:
        seen = [players[0].api.get(f"/api/v1/matchmaking/tickets/{tickets[0]}/").json()]
        return seen[0]["match"]["socket"] if seen[0]["match"] else None

    socket = wait_until(found, 30, message="no match was formed")
    for player, ticket in zip(players, tickets, strict=True):
        answer = player.api.get(f"/api/v1/matchmaking/tickets/{ticket}/").json()
        assert answer["status"] == "matched" and answer["match"]["socket"] == socket
    return socket


def play_all(players: list[Player], socket: str) -> None:
    errors: list[BaseException] = []

    def run(player: Player) -> None:
        try:
            player.play(socket)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(p,)) for p in players]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(ROUND_SECONDS + 60)
    assert not errors, errors


@pytest.mark.parametrize("count", [2, 10])
def test_players_are_matched_play_a_round_and_their_ratings_change_once(stack: Stack, count: int) -> None:
    players = [Player(stack, f"gamer{n}-{uuid.uuid4().hex[:4]}") for n in range(count)]
    socket = matched(players)
    play_all(players, socket)
    match_id = socket.strip("/").split("/")[-1]
    for player in players:
        states = [f for f in player.frames if f["type"] == "state"]
        assert "state" in states[0], "the first state frame is the whole snapshot"
        # then deltas (a client that fell behind would get a whole snapshot again)
        assert sum("delta" in f for f in states) > len(states) / 2
        assert max(f["ack"] for f in states) > 0, "inputs were acknowledged"
        end = player.frames[-1]
        assert end["type"] == "end" and not end["aborted"]
        assert {s["player"] for s in end["result"]["standings"]} == {p.id for p in players}
    with stack.db() as db:
        row = db.execute(
            "SELECT status, ratings_applied_at IS NOT NULL FROM gaming_match WHERE id = %s", [match_id]
        ).fetchone()
        assert row is not None
        status, applied = row
        ratings = db.execute(
            "SELECT count(*), sum(matches) FROM gaming_rating r JOIN notifications_recipient p ON p.id = r.recipient_id"
            " WHERE p.external_id = ANY(%s)",
            [[p.id for p in players]],
        ).fetchone()
    assert (status, applied) == ("finished", True)
    assert ratings == (count, count), "each player's rating changed once"
    board = stack.api.get(f"/api/v1/leaderboards/arena/?around={players[0].id}&limit={count * 2}").json()
    assert {p.id for p in players} <= {place["player"] for place in board["results"]}
    history = players[0].api.get(f"/api/v1/players/{players[0].id}/matches/").json()["results"]
    assert [entry["match"] for entry in history] == [match_id]


def test_a_non_player_is_refused_at_the_match_socket(stack: Stack) -> None:
    players = [Player(stack, f"duel{n}-{uuid.uuid4().hex[:4]}") for n in range(2)]
    socket = matched(players)
    outsider = Player(stack, "outsider")
    with pytest.raises(Exception) as refused:  # noqa: PT011 - websockets' InvalidStatus or a close
        with connect(f"{stack.ws_url}{socket}?token={outsider.token}", open_timeout=10) as ws:
            ws.recv(timeout=10)
    assert "403" in str(refused.value) or "4403" in str(refused.value)
    play_all(players, socket)


def test_a_player_who_drops_comes_back_to_the_same_match_while_bad_frames_disturb_nobody(
    stack: Stack,
) -> None:
    ana, ben = (Player(stack, f"back{n}-{uuid.uuid4().hex[:4]}") for n in range(2))
    socket = matched([ana, ben])
    url = f"{stack.ws_url}{socket}?token="
    with connect(url + ben.token, open_timeout=10) as ben_socket:
        with connect(url + ana.token, open_timeout=10) as first:
            frame = json.loads(first.recv(timeout=10))
            while frame["type"] != "state":
                frame = json.loads(first.recv(timeout=10))
            assert "state" in frame
            first.send(json.dumps({"type": "input", "seq": 1, "move": [1, 0]}))
        # ana is gone for a moment; ben floods the server with what it must drop
        ben_socket.send("not json")
        for seq in range(1, 200):
            ben_socket.send(json.dumps({"type": "input", "seq": seq, "move": [9, 9]}))
        with connect(url + ana.token, open_timeout=10) as again:
            frames = []
            while True:
                frame = json.loads(again.recv(timeout=15))
                frames.append(frame)
                if frame["type"] == "state" and len(frames) == 1:
                    assert "state" in frame, "back in the match from a whole snapshot"
                    again.send(json.dumps({"type": "input", "seq": 2, "move": [0, 1]}))
                if frame["type"] == "end":
                    break
        states = [f for f in frames if f["type"] == "state"]
        assert max(f["ack"] for f in states) == 2, "inputs after the return are applied"
        standings = {s["player"]: s for s in frame["result"]["standings"]}
        assert not standings[ana.id]["forfeited"] and not standings[ben.id]["forfeited"]
        # ben's socket kept getting the match all along, and heard the end too
        seen = []
        while True:
            message = json.loads(ben_socket.recv(timeout=15))
            seen.append(message["type"])
            if message["type"] == "end":
                break
        assert "error" in seen and seen.count("state") > 10
