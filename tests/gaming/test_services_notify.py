"""What gaming tells players through the pipeline (gaming/services/notify.py): a match
found to the players not on its socket, once per match; a place in a leaderboard's top ten
won by a result, to those who rose into it and to nobody else."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from gaming.models import Match, MatchPlayer
from gaming.services.leaderboard import _key, leaderboard_rebuild
from gaming.services.notify import MATCH_FOUND_TYPE, RANK_TYPE, match_found_notify, rank_changes_notify
from gaming.services.ratings import DEFAULT_MU, DEFAULT_SIGMA, match_result_record
from notifications.models import Event, Recipient
from realtime.redis_client import redis_sync

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("empty_board")]


def people(count: int) -> list[Recipient]:
    tag = uuid.uuid4().hex[:6]
    return [Recipient.objects.create(external_id=f"n{n}-{tag}") for n in range(count)]


def events(key: str) -> list[Event]:
    return list(Event.objects.filter(notification_type__key=key).order_by("created_at"))


def test_the_absent_players_hear_of_their_match_once() -> None:
    ana, ben = people(2)
    match_found_notify(match_id="m-1", mode_title="Arena", players=2, absent=[ben.external_id])
    match_found_notify(match_id="m-1", mode_title="Arena", players=2, absent=[ben.external_id])
    (event,) = events(MATCH_FOUND_TYPE)
    assert event.recipient_ids == [ben.id]
    assert event.data["url"].endswith("/play/") and event.data["players"] == 2
    match_found_notify(match_id="m-2", mode_title="Arena", players=2, absent=[])
    assert len(events(MATCH_FOUND_TYPE)) == 1


def test_only_those_who_rise_into_the_top_ten_hear_of_it() -> None:
    a, b, c, d = people(4)
    rank_changes_notify(
        mode="arena",
        mode_title="Arena",
        changes={
            a.external_id: (None, 3, 20.0),  # new in the top ten
            b.external_id: (5, 2, 21.0),  # up
            c.external_id: (2, 4, 19.0),  # down
            d.external_id: (12, 11, 5.0),  # up, but not into the top ten
        },
    )
    told = {tuple(e.recipient_ids or []): e.data for e in events(RANK_TYPE)}
    assert set(told) == {(a.id,), (b.id,)}
    assert told[(a.id,)]["before"] == "unranked" and told[(b.id,)]["before"] == "#5"


def test_a_result_tells_the_winner_who_rose_on_an_existing_board(
    django_capture_on_commit_callbacks: Any,
) -> None:
    players = people(3)
    match = Match.objects.create(mode="arena", region="local", seed=1, status="running")
    for p in players:
        MatchPlayer.objects.create(match=match, recipient=p, mu_before=DEFAULT_MU, sigma_before=DEFAULT_SIGMA)
    leaderboard_rebuild("arena")  # empty: nobody ranked
    redis_sync().zadd(_key("arena"), {"someone-else": -100.0})  # a board that exists
    standings = [{"player": p.external_id, "rank": n + 1} for n, p in enumerate(players)]
    with django_capture_on_commit_callbacks(execute=True):
        match_result_record(match_id=match.id, result={"standings": standings})
    told = sorted(tuple(e.recipient_ids or []) for e in events(RANK_TYPE))
    # all three were unranked and are now in the top ten
    assert told == sorted((p.id,) for p in players)
