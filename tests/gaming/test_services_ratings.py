"""Results, ratings and leaderboards (gaming/services/ratings.py, leaderboard.py): a
result updates every player's OpenSkill rating once, an aborted match changes none, a
result that does not fit changes nothing, and the leaderboard in Redis follows the
ratings table and is rebuilt from it when Redis lost it."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from gaming.models import Match, MatchPlayer, Rating
from gaming.services.leaderboard import _key, leaderboard_around, leaderboard_page
from gaming.services.ratings import (
    DEFAULT_MU,
    DEFAULT_SIGMA,
    ResultRefused,
    match_abort,
    match_result_record,
)
from notifications.models import Recipient
from realtime.redis_client import redis_sync

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("empty_board")]


@pytest.fixture
def record(django_capture_on_commit_callbacks: Any) -> Any:
    """``match_result_record`` with what it does after commit done at once (the test's
    own transaction never commits)."""

    def call(match: Match, outcome: dict[str, Any]) -> bool:
        with django_capture_on_commit_callbacks(execute=True):
            return match_result_record(match_id=match.id, result=outcome)

    return call


def match_of(count: int) -> tuple[Match, list[Recipient]]:
    tag = uuid.uuid4().hex[:6]
    people = [Recipient.objects.create(external_id=f"r{n}-{tag}") for n in range(count)]
    match = Match.objects.create(mode="arena", region="local", seed=1, status="running")
    for p in people:
        MatchPlayer.objects.create(match=match, recipient=p, mu_before=DEFAULT_MU, sigma_before=DEFAULT_SIGMA)
    return match, people


def result(*ranked: tuple[Recipient, int]) -> dict[str, Any]:
    return {"standings": [{"player": p.external_id, "rank": rank, "score": 10 - rank} for p, rank in ranked]}


def test_a_result_moves_the_winner_up_and_the_loser_down_once() -> None:
    match, (winner, loser) = match_of(2)
    assert match_result_record(match_id=match.id, result=result((winner, 1), (loser, 2))) is True
    won, lost = Rating.objects.get(recipient=winner), Rating.objects.get(recipient=loser)
    assert won.mu > DEFAULT_MU > lost.mu and won.sigma < DEFAULT_SIGMA
    assert (won.matches, won.wins, lost.matches, lost.wins) == (1, 1, 1, 0)
    match.refresh_from_db()
    assert match.status == "finished" and match.ratings_applied_at is not None
    # the same result again (a retry, a second server) changes nothing
    assert match_result_record(match_id=match.id, result=result((loser, 1), (winner, 2))) is False
    assert Rating.objects.get(recipient=winner).mu == won.mu
    row = MatchPlayer.objects.get(match=match, recipient=winner)
    assert (row.rank, row.score, row.mu_after) == (1, 9, won.mu)


def test_an_aborted_match_changes_no_rating() -> None:
    match, (a, b) = match_of(2)
    assert match_abort(match_id=match.id, reason="its server stopped answering") is True
    assert match_abort(match_id=match.id, reason="again") is False
    with pytest.raises(ResultRefused, match="match: was aborted"):
        match_result_record(match_id=match.id, result=result((a, 1), (b, 2)))
    assert not Rating.objects.exists()


@pytest.mark.parametrize(
    ("standings", "message"),
    [
        ("nobody", "standings: must be a list"),
        ([{"player": "stranger", "rank": 1}], "standings\\[0\\].player: is not a player"),
        ([{"player": "A", "rank": 0}], "standings\\[0\\].rank: must be a whole number"),
        ([{"player": "A", "rank": 1}], "standings: has no place for"),
        (
            [{"player": "A", "rank": 1}, {"player": "A", "rank": 2}],
            "standings\\[1\\].player: is ranked twice",
        ),
    ],
)
def test_a_result_that_does_not_fit_the_match_changes_nothing(standings: Any, message: str) -> None:
    match, (a, _b) = match_of(2)
    if isinstance(standings, list):
        for standing in standings:
            if standing["player"] == "A":
                standing["player"] = a.external_id
    with pytest.raises(ResultRefused, match=message):
        match_result_record(match_id=match.id, result={"standings": standings})
    match.refresh_from_db()
    assert match.status == "running" and match.ratings_applied_at is None
    assert not Rating.objects.exists()


def test_the_leaderboard_follows_results_and_shows_the_places_around_a_player(record: Any) -> None:
    match, people = match_of(10)
    record(match, result(*((p, n + 1) for n, p in enumerate(people))))
    total, top = leaderboard_page("arena", limit=3)
    assert total == 10
    assert [place.player for place in top] == [p.external_id for p in people[:3]]
    assert [place.rank for place in top] == [1, 2, 3]
    around = leaderboard_around("arena", people[5].external_id, span=2)
    assert around is not None
    assert [(place.rank, place.player) for place in around[1]] == [
        (n + 1, people[n].external_id) for n in range(3, 8)
    ]
    assert leaderboard_around("arena", "nobody") is None
    # a rematch of the last two, the last one winning: the board (in Redis now) follows
    rematch = Match.objects.create(mode="arena", region="local", seed=2, status="running")
    for p in people[8:]:
        MatchPlayer.objects.create(
            match=rematch, recipient=p, mu_before=DEFAULT_MU, sigma_before=DEFAULT_SIGMA
        )
    record(rematch, result((people[9], 1), (people[8], 2)))
    ordinals = dict(Rating.objects.values_list("recipient__external_id", "ordinal"))
    rows: Any = redis_sync().zrange(_key("arena"), 0, -1, withscores=True)
    stored = dict(rows)
    assert stored[people[9].external_id.encode()] == pytest.approx(ordinals[people[9].external_id])
    assert stored[people[8].external_id.encode()] == pytest.approx(ordinals[people[8].external_id])


def test_a_lost_leaderboard_is_rebuilt_from_the_ratings(record: Any) -> None:
    match, people = match_of(4)
    record(match, result(*((p, n + 1) for n, p in enumerate(people))))
    assert redis_sync().exists(_key("arena"))
    redis_sync().delete(_key("arena"))
    total, places = leaderboard_page("arena")
    assert total == 4 and [p.player for p in places] == [p.external_id for p in people]
    ordinals = dict(Rating.objects.values_list("recipient__external_id", "ordinal"))
    assert all(place.ordinal == pytest.approx(ordinals[place.player]) for place in places)
