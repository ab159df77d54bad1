"""The gaming API (gaming/api.py): a player asks for a match with their own token and
follows the ticket to its match; only the players on a ticket see it; cancelling; the
leaderboard with "around me"; ratings and match history; what each refuses."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from gaming.models import Match, MatchPlayer, Rating
from gaming.services.matchmaking import matchmaking_run
from gaming.services.ratings import DEFAULT_MU, DEFAULT_SIGMA, match_result_record
from notifications.models import Recipient

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("empty_board")]
Clients = Callable[[int], APIClient]


def people(count: int) -> list[Recipient]:
    tag = uuid.uuid4().hex[:6]
    return [Recipient.objects.create(external_id=f"player{n}-{tag}") for n in range(count)]


def test_a_player_asks_for_a_match_and_finds_it_on_the_ticket(user_client: Clients) -> None:
    alice, bob = people(2)
    created = user_client(alice.id).post(
        "/api/v1/matchmaking/tickets/", {"mode": "arena", "latencies": {"local": 18}}, format="json"
    )
    assert created.status_code == 201, created.json()
    ticket = created.json()
    assert (
        ticket["status"] == "searching"
        and ticket["players"] == [alice.external_id]
        and ticket["match"] is None
    )
    assert (
        user_client(bob.id).post("/api/v1/matchmaking/tickets/", {"mode": "arena"}, format="json").status_code
        == 201
    )
    (match,) = matchmaking_run(mode="arena", now=timezone.now() + timedelta(seconds=10))
    seen = user_client(alice.id).get(f"/api/v1/matchmaking/tickets/{ticket['id']}/").json()
    assert seen["status"] == "matched"
    assert seen["match"]["id"] == str(match.id) and seen["match"]["socket"] == f"/ws/matches/{match.id}/"
    assert sorted(seen["match"]["players"]) == sorted([alice.external_id, bob.external_id])
    # matched: no longer cancellable
    gone = user_client(alice.id).delete(f"/api/v1/matchmaking/tickets/{ticket['id']}/")
    assert gone.status_code == 409 and "only a searching one" in gone.json()["errors"]["status"][0]


def test_a_party_ticket_is_seen_by_its_members_and_by_services_only(
    user_client: Clients, service_client: APIClient
) -> None:
    leader, friend, stranger = people(3)
    created = user_client(leader.id).post(
        "/api/v1/matchmaking/tickets/", {"mode": "arena", "party": [friend.external_id]}, format="json"
    )
    assert created.status_code == 201, created.json()
    url = f"/api/v1/matchmaking/tickets/{created.json()['id']}/"
    assert user_client(friend.id).get(url).json()["players"] == [leader.external_id, friend.external_id]
    assert service_client.get(url).status_code == 200
    assert user_client(stranger.id).get(url).status_code == 404
    assert user_client(stranger.id).delete(url).status_code == 404
    cancelled = user_client(friend.id).delete(url)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert (
        user_client(leader.id)
        .get("/api/v1/matchmaking/tickets/00000000-0000-0000-0000-000000000000/")
        .status_code
        == 404
    )


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({}, "mode", "required"),
        ({"mode": "chess"}, "mode", "not a valid choice"),
        ({"mode": "arena", "party": "bob"}, "party", "list"),
        ({"mode": "arena", "party": ["nobody-here"]}, "party", "no such player: nobody-here"),
        ({"mode": "arena", "latencies": {"mars": 10}}, "latencies.mars", "is not a region"),
        ({"mode": "arena", "latencies": {"local": 99999}}, "latencies", "10000"),
        ({"mode": "arena", "colour": "red"}, "colour", "unknown field"),
    ],
)
def test_a_bad_ticket_is_a_400_naming_the_field(
    user_client: Clients, body: dict[str, Any], field: str, message: str
) -> None:
    (player,) = people(1)
    answer = user_client(player.id).post("/api/v1/matchmaking/tickets/", body, format="json")
    assert answer.status_code == 400
    assert message in str(answer.json()["errors"][field])


def test_a_ticket_is_asked_for_with_the_players_own_token(service_client: APIClient) -> None:
    answer = service_client.post("/api/v1/matchmaking/tickets/", {"mode": "arena"}, format="json")
    assert answer.status_code == 403


def test_searching_twice_is_a_400_and_without_credentials_a_401(user_client: Clients) -> None:
    (player,) = people(1)
    client = user_client(player.id)
    assert client.post("/api/v1/matchmaking/tickets/", {"mode": "arena"}, format="json").status_code == 201
    again = client.post("/api/v1/matchmaking/tickets/", {"mode": "arena"}, format="json")
    assert again.status_code == 400 and "searching already" in again.json()["errors"]["mode"][0]
    assert APIClient().get("/api/v1/leaderboards/arena/").status_code == 401


def test_the_leaderboard_ratings_and_history_follow_a_finished_match(
    user_client: Clients, service_client: APIClient, django_capture_on_commit_callbacks: Any
) -> None:
    players = people(6)
    match = Match.objects.create(mode="arena", region="local", seed=3, status="running")
    for p in players:
        MatchPlayer.objects.create(match=match, recipient=p, mu_before=DEFAULT_MU, sigma_before=DEFAULT_SIGMA)
    standings = [{"player": p.external_id, "rank": n + 1, "score": 6 - n} for n, p in enumerate(players)]
    with django_capture_on_commit_callbacks(execute=True):
        match_result_record(match_id=match.id, result={"standings": standings})

    board = service_client.get("/api/v1/leaderboards/arena/?limit=2").json()
    assert board["total"] == 6 and [p["player"] for p in board["results"]] == [
        p.external_id for p in players[:2]
    ]
    around = (
        user_client(players[0].id)
        .get(f"/api/v1/leaderboards/arena/?around={players[3].external_id}&limit=2")
        .json()
    )
    assert [p["rank"] for p in around["results"]] == [3, 4, 5]
    assert service_client.get("/api/v1/leaderboards/arena/?around=unknown-player").status_code == 404
    assert service_client.get("/api/v1/leaderboards/chess/").status_code == 404
    bad = service_client.get("/api/v1/leaderboards/arena/?limit=1000")
    assert bad.status_code == 400 and "limit" in bad.json()["errors"]

    rating = service_client.get(f"/api/v1/players/{players[0].external_id}/rating/").json()
    (arena,) = rating["results"]
    stored = Rating.objects.get(recipient=players[0])
    assert arena["mode"] == "arena" and arena["matches"] == 1 and arena["wins"] == 1
    assert arena["rating"] == pytest.approx(stored.ordinal, abs=1e-3)
    assert service_client.get("/api/v1/players/nobody-at-all/rating/").status_code == 404

    history = user_client(players[5].id).get(f"/api/v1/players/{players[5].external_id}/matches/").json()
    (entry,) = history["results"]
    assert entry["match"] == str(match.id) and entry["rank"] == 6 and entry["rating_change"] < 0
    # another player's history is not theirs to read
    assert (
        user_client(players[5].id).get(f"/api/v1/players/{players[0].external_id}/matches/").status_code
        == 404
    )
    assert service_client.get(f"/api/v1/players/{players[0].external_id}/matches/").status_code == 200


def test_a_player_finds_their_searching_ticket_again(user_client: Clients, service_client: APIClient) -> None:
    alice, bob = people(2)
    assert user_client(alice.id).get("/api/v1/matchmaking/tickets/").json() == {"results": []}
    made = user_client(alice.id).post(
        "/api/v1/matchmaking/tickets/", {"mode": "arena", "party": [bob.external_id]}, format="json"
    )
    ticket_id = made.json()["id"]
    for client in (user_client(alice.id), user_client(bob.id)):
        (found,) = client.get("/api/v1/matchmaking/tickets/").json()["results"]
        assert found["id"] == ticket_id and found["status"] == "searching"
    assert ticket_id in [
        t["id"] for t in service_client.get("/api/v1/matchmaking/tickets/").json()["results"]
    ]
    user_client(alice.id).delete(f"/api/v1/matchmaking/tickets/{ticket_id}/")
    assert user_client(bob.id).get("/api/v1/matchmaking/tickets/").json() == {"results": []}
