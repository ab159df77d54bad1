"""The match server (gaming/services/server.py) on a thread of its own, with players on
real match sockets (gaming/consumers.py) through the process hub and Redis: matched
players get the whole state and then deltas, see each other move, have their inputs
acknowledged; bad frames are answered and change nothing for the others; a non-player is
refused; the round ends with the result recorded and the ratings updated once; a match
whose server stops beating ends as aborted."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import uuid
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.db import connection
from django.utils import timezone

from gaming.models import Match, Rating
from gaming.modes.base import apply_delta
from gaming.services.matchmaking import matchmaking_run
from gaming.services.placement import TICK_MESSAGE, matches_orphaned_abort, servers_live
from gaming.services.server import MatchServer
from gaming.services.tickets import ticket_create
from notifications.models import Recipient
from project.asgi import application
from project.processes.waiting import wait_until
from realtime.redis_client import redis_sync
from realtime.tokens import end_user_token_issue

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("empty_board")]
TIMEOUT = 10


class ServerThread:
    def __init__(self, name: str) -> None:
        self.server = MatchServer(name=name, region="local", grace_seconds=20.0)
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            started = asyncio.Event()
            waiter = asyncio.create_task(started.wait())
            runner = asyncio.create_task(self.server.run(ready=started))
            await waiter
            self.ready.set()
            await runner

        try:
            asyncio.run(main())
        finally:
            connection.close()

    def __enter__(self) -> MatchServer:
        self.thread.start()
        assert self.ready.wait(10)
        return self.server

    def stop(self) -> None:
        if self.loop is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.server.stopping.set)
        self.thread.join(10)

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def matched(count: int) -> tuple[Match, list[Recipient]]:
    tag = uuid.uuid4().hex[:6]
    players = [Recipient.objects.create(external_id=f"gamer{n}-{tag}") for n in range(count)]
    for p in players:
        ticket_create(owner=p, mode="arena")
    (match,) = matchmaking_run(mode="arena", now=timezone.now() + timedelta(seconds=10))
    return match, players


def match_socket(match: Match, recipient: Recipient) -> WebsocketCommunicator:
    token, _ = end_user_token_issue(recipient_id=recipient.id)
    return WebsocketCommunicator(application, f"/ws/matches/{match.id}/?token={token}")


async def frame_of(socket: WebsocketCommunicator, kind: str) -> dict[str, Any]:
    """The next frame of ``kind`` (state frames before it are skipped)."""
    while True:
        frame = await socket.receive_json_from(timeout=TIMEOUT)
        if frame["type"] == kind:
            return frame


class Follower:
    """A client's copy of the match state, rebuilt from the frames."""

    def __init__(self, socket: WebsocketCommunicator) -> None:
        self.socket = socket
        self.state: dict[str, Any] | None = None
        self.ack = 0

    async def next(self) -> dict[str, Any]:
        frame = await self.socket.receive_json_from(timeout=TIMEOUT)
        if frame["type"] == "state":
            if "state" in frame:
                self.state = frame["state"]
            else:
                assert self.state is not None, "a delta before any state"
                self.state = apply_delta(self.state, frame["delta"])
            self.ack = frame["ack"]
        return frame

    async def until(self, predicate: Any) -> dict[str, Any]:
        for _ in range(400):
            frame = await self.next()
            if predicate(frame):
                return frame
        raise AssertionError("the condition never held")


def test_two_players_see_each_other_move_and_their_inputs_acknowledged(settings: Any) -> None:
    match, (ana, ben) = matched(2)
    stranger = Recipient.objects.create(external_id=f"stranger-{uuid.uuid4().hex[:6]}")
    with ServerThread("match-test-1") as server:
        wait_until(lambda: str(match.id) in server.matches, 10, message="the server never claimed the match")
        assert "match-test-1" in servers_live("local")

        async def scenario() -> None:
            refused = match_socket(match, stranger)
            connected, code = await refused.connect(timeout=TIMEOUT)
            assert (connected, code) == (False, 4403)

            a, b = Follower(match_socket(match, ana)), Follower(match_socket(match, ben))
            for side in (a, b):
                connected, _ = await side.socket.connect(timeout=TIMEOUT)
                assert connected
            first = await a.until(lambda f: f["type"] == "state" and "state" in f)
            await b.until(lambda f: f["type"] == "state" and "state" in f)
            assert set(first["state"]["players"]) == {ana.external_id, ben.external_id}
            assert b.state is not None
            start_x = b.state["players"][ana.external_id]["x"]
            start_y = b.state["players"][ana.external_id]["y"]

            # ana moves; ben's copy shows it; ana's input is acknowledged
            direction = 1 if start_x < 600 else -1
            await a.socket.send_json_to({"type": "input", "seq": 1, "move": [direction, 0]})
            await a.until(lambda f: f["type"] == "state" and f["ack"] == 1)
            await b.until(
                lambda f: b.state is not None and b.state["players"][ana.external_id]["x"] != start_x
            )
            assert b.state is not None and b.state["players"][ana.external_id]["y"] == start_y

            # malformed and impossible frames: answered or dropped, the match goes on
            await b.socket.send_to(text_data="not json")
            error = await frame_of(b.socket, "error")
            assert error["field"] == "frame"
            await b.socket.send_json_to({"type": "teleport"})
            assert (await frame_of(b.socket, "error"))["field"] == "type"
            await b.socket.send_json_to({"type": "input", "seq": 1, "move": [50, 0]})
            await b.socket.send_json_to({"type": "input", "seq": 2, "move": [0, 1]})
            await b.until(lambda f: f["type"] == "state" and f["ack"] == 2)
            for side in (a, b):
                await side.socket.disconnect()

        async_to_sync(scenario)()
        dropped = server.matches[str(match.id)].runtime.dropped()
        assert dropped == {"move.x": 1}
        # the heartbeat tells how the clocks kept time since the beat before
        beat = wait_until(
            lambda: servers_live("local")["match-test-1"].get("ticks", {}).get("count") or None,
            10,
            message="no heartbeat told of ticks",
        )
        assert beat <= 2 * 20 + 5, "at most two beats' worth of 20 Hz ticks in one beat"
        ticks = servers_live("local")["match-test-1"]["ticks"]
        assert 0 <= ticks["late_p50_ms"] <= ticks["late_p99_ms"] <= ticks["late_max_ms"]


def test_a_round_ends_with_the_result_recorded_once_and_the_players_told(settings: Any) -> None:
    settings.GAMING_ARENA_ROUND_SECONDS = 1.0
    match, players = matched(2)
    with ServerThread("match-test-2"):

        async def scenario() -> None:
            sockets = [match_socket(match, p) for p in players]
            for socket in sockets:
                connected, _ = await socket.connect(timeout=TIMEOUT)
                assert connected
            for socket in sockets:
                end = await frame_of(socket, "end")
                assert end["aborted"] is False
                ranks = {s["player"]: s["rank"] for s in end["result"]["standings"]}
                assert set(ranks) == {p.external_id for p in players}
                await socket.disconnect()

        async_to_sync(scenario)()
    match.refresh_from_db()
    assert match.status == "finished" and match.ratings_applied_at is not None
    assert Rating.objects.filter(recipient__in=players, matches=1).count() == 2


def sweep() -> int:
    """The beat task's sweep, on a thread that closes its database connection after."""
    try:
        return matches_orphaned_abort()
    finally:
        connection.close()


def test_a_match_whose_server_stops_beating_ends_as_aborted(settings: Any) -> None:
    match, (ana, ben) = matched(2)
    Match.objects.filter(pk=match.pk).update(status="running", server="match-gone")
    redis_sync().delete("match-gone")

    async def scenario() -> None:
        socket = match_socket(match, ana)
        connected, _ = await socket.connect(timeout=TIMEOUT)
        assert connected
        assert await asyncio.to_thread(sweep) == 1
        end = await frame_of(socket, "end")
        assert end["aborted"] is True and "match-gone stopped" in end["reason"]
        await socket.disconnect()

    async_to_sync(scenario)()
    match.refresh_from_db()
    assert match.status == "aborted"
    assert not Rating.objects.filter(recipient__in=[ana, ben]).exists()


def test_a_server_lets_go_of_a_match_aborted_while_it_was_stalled(monkeypatch: pytest.MonkeyPatch) -> None:
    from gaming.services import server as server_module
    from gaming.services.ratings import match_abort

    monkeypatch.setattr(server_module, "RELEASE_EVERY_SECONDS", 0.2)
    kept, _ = matched(2)
    aborted, _ = matched(2)
    with ServerThread("match-test-stalled") as server:
        wait_until(
            lambda: {str(kept.id), str(aborted.id)} <= set(server.matches), 10, message="matches not claimed"
        )
        # what the sweep does to the matches of a server whose heartbeat lapsed
        assert match_abort(match_id=aborted.id, reason="its match server match-test-stalled stopped")
        wait_until(
            lambda: str(aborted.id) not in server.matches, 10, message="the aborted match is still held"
        )
        assert str(kept.id) in server.matches
    aborted.refresh_from_db()
    assert aborted.status == "aborted"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--region", "mars"], "--region: 'mars' is not one of GAMING_REGIONS"),
        (["--capacity", "0"], "--capacity"),
        (["--nice", "30"], "--nice: 30 is not between -20 and 19"),
        (["--realtime", "100"], r"--realtime: 100 is not between 0 \(off\) and 99"),
    ],
)
def test_the_command_refuses_a_bad_region_or_capacity(argv: list[str], message: str) -> None:
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match=message):
        call_command("match_server", *argv)


def _scheduled_child(nice: int, realtime: int, answer: Any) -> None:
    from gaming.management.commands.match_server import schedule

    schedule(nice=nice, realtime=realtime)
    answer.send(
        (os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0), os.sched_getparam(0).sched_priority)
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="a real-time policy needs root (CAP_SYS_NICE)")
def test_a_server_asked_for_real_time_runs_on_sched_fifo_at_that_priority() -> None:
    context = multiprocessing.get_context("fork")
    ours, theirs = context.Pipe()
    child = context.Process(target=_scheduled_child, args=(-5, 7, theirs))
    child.start()
    assert ours.poll(TIMEOUT), "the child did not answer"
    assert ours.recv() == (-5, os.SCHED_FIFO, 7)
    child.join(TIMEOUT)
    assert child.exitcode == 0


def test_a_player_not_on_the_page_hears_of_the_match_through_the_pipeline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gaming.services import server as server_module
    from notifications.models import Event

    monkeypatch.setattr(server_module, "NOTIFY_ABSENT_SECONDS", 0.5)

    def told() -> Event:
        try:
            return wait_until(
                lambda: Event.objects.filter(notification_type__key="game.match_found").first(),
                10,
                message="nobody was told",
            )
        finally:
            connection.close()

    match, (ana, ben) = matched(2)
    with ServerThread("match-test-3") as server:
        wait_until(lambda: str(match.id) in server.matches, 10, message="the server never claimed the match")

        async def scenario() -> None:
            socket = match_socket(match, ana)
            connected, _ = await socket.connect(timeout=TIMEOUT)
            assert connected
            await frame_of(socket, "state")
            found = await asyncio.to_thread(told)
            assert found.recipient_ids == [ben.id], "only the one who is not on the page"
            await socket.disconnect()

        async_to_sync(scenario)()


def test_a_game_that_fails_on_its_tick_is_aborted_and_the_server_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gaming.modes.arena import Arena

    def broken(self: Arena, state: Any, dt: float) -> None:
        raise ZeroDivisionError("a bug in the mode")

    monkeypatch.setattr(Arena, "step", broken)
    match, _players = matched(2)
    with ServerThread("match-test-4") as server:
        wait_until(
            lambda: Match.objects.get(pk=match.pk).status == "aborted",
            10,
            message="the failing match was not aborted",
        )
        assert Match.objects.get(pk=match.pk).reason == "the game failed"
        assert server.matches == {} and "match-test-4" in servers_live("local")
    assert not Rating.objects.exists()


def test_a_socket_that_misses_a_tick_starts_again_from_a_whole_state() -> None:
    from realtime.hub import hub_publish

    match, (ana, ben) = matched(2)
    with ServerThread("match-test-gap") as server:
        wait_until(lambda: str(match.id) in server.matches, 10, message="the server never claimed the match")

        async def scenario() -> None:
            a = Follower(match_socket(match, ana))
            assert (await a.socket.connect(timeout=TIMEOUT))[0]
            await a.until(lambda f: f["type"] == "state" and "state" in f)
            await a.until(lambda f: f["type"] == "state" and "delta" in f)
            # a tick out of sequence, as when one was lost on the way: no delta is built on it
            hub_publish(
                [
                    (
                        [ana.id],
                        {
                            "type": TICK_MESSAGE,
                            "match": str(match.id),
                            "tick": 10**6,
                            "acks": {},
                            "delta": {},
                            "full_for": [],
                        },
                    )
                ]
            )
            frame = await a.until(lambda f: f["type"] == "state" and ("state" in f or f["tick"] >= 10**6))
            assert "state" in frame and frame["tick"] < 10**6, "a whole state, never the stray delta"
            await a.socket.disconnect()

        async_to_sync(scenario)()
