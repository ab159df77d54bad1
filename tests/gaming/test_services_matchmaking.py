"""Tickets and matchmaking (gaming/services/tickets.py, gaming/services/matchmaking.py)
against PostgreSQL and Redis: what a ticket refuses, one open ticket per player, matches
formed by rating with a window that widens, parties kept whole, the fill wait, regions,
nobody in two matches when two runs race, and the frame each player gets."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from gaming.models import Match, MatchPlayer, Rating, Ticket, TicketMember, TicketStatus
from gaming.services.matchmaking import matchmaking_run, region_choose
from gaming.services.tickets import TicketRefused, ticket_cancel, ticket_create
from notifications.models import Recipient
from notifications.services.validation import ValidationFailed
from realtime.hub import _channel
from realtime.redis_client import redis_sync

pytestmark = pytest.mark.django_db


def players(count: int, prefix: str = "p") -> list[Recipient]:
    tag = uuid.uuid4().hex[:6]
    return [Recipient.objects.create(external_id=f"{prefix}{n}-{tag}") for n in range(count)]


def rated(recipient: Recipient, ordinal: float) -> Recipient:
    """Give the player a rating whose ordinal is ``ordinal`` (sigma 2)."""
    Rating.objects.create(recipient=recipient, mode="arena", mu=ordinal + 6, sigma=2.0, ordinal=ordinal)
    return recipient


def later(seconds: float) -> Any:
    return timezone.now() + timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("kwargs", "field", "message"),
    [
        ({"mode": "chess"}, "mode", "must be one of: arena"),
        ({"mode": 3}, "mode", "must be one of"),
        ({"party": "friend"}, "party", "must be a list"),
        ({"party": ["ghost"]}, "party", "no such player: ghost"),
        ({"latencies": {"mars": 20}}, "latencies.mars", "is not a region"),
        ({"latencies": {"local": -1}}, "latencies.local", "between 0 and 10000"),
        ({"latencies": {"local": "fast"}}, "latencies.local", "must be a number"),
        ({"latencies": [20]}, "latencies", "must be an object"),
    ],
)
def test_a_ticket_names_what_is_wrong_and_nothing_is_stored(
    kwargs: dict[str, Any], field: str, message: str
) -> None:
    (owner,) = players(1)
    with pytest.raises(ValidationFailed) as refused:
        ticket_create(owner=owner, **{"mode": "arena", **kwargs})
    assert message in " ".join(refused.value.errors[field])
    assert not Ticket.objects.exists() and not TicketMember.objects.exists()


def test_a_party_too_big_for_the_mode_or_naming_someone_twice_is_refused() -> None:
    owner, *friends = players(11)
    with pytest.raises(ValidationFailed, match="larger than a arena match"):
        ticket_create(owner=owner, mode="arena", party=[f.external_id for f in friends])
    with pytest.raises(ValidationFailed, match="names a player twice"):
        ticket_create(owner=owner, mode="arena", party=[owner.external_id])


def test_a_player_searches_on_one_ticket_at_a_time_and_may_again_after_cancelling() -> None:
    owner, friend = players(2)
    first = ticket_create(owner=owner, mode="arena", latencies={"local": 12})
    assert first.status == TicketStatus.SEARCHING and first.latencies == {"local": 12.0}
    with pytest.raises(ValidationFailed) as refused:
        ticket_create(owner=owner, mode="arena")
    assert "is searching already" in refused.value.errors["mode"][0]
    with pytest.raises(ValidationFailed) as refused:
        ticket_create(owner=friend, mode="arena", party=[owner.external_id])
    assert owner.external_id in refused.value.errors["party"][0]
    assert ticket_cancel(ticket=first).status == TicketStatus.CANCELLED
    with pytest.raises(TicketRefused, match="only a searching one"):
        ticket_cancel(ticket=first)
    ticket_create(owner=friend, mode="arena", party=[owner.external_id])


def test_ten_players_of_like_rating_make_one_match_at_once() -> None:
    group = [rated(p, 20 + n * 0.2) for n, p in enumerate(players(10))]
    for p in group:
        ticket_create(owner=p, mode="arena")
    (match,) = matchmaking_run(mode="arena")
    assert set(MatchPlayer.objects.filter(match=match).values_list("recipient_id", flat=True)) == {
        p.id for p in group
    }
    assert not Ticket.objects.filter(status=TicketStatus.SEARCHING).exists()
    assert not TicketMember.objects.filter(searching=True).exists()
    assert match.region == "local" and match.status == "assigned"


def test_two_players_wait_for_more_until_the_fill_time_then_play() -> None:
    a, b = (rated(p, 10) for p in players(2))
    ticket_create(owner=a, mode="arena")
    ticket_create(owner=b, mode="arena")
    assert matchmaking_run(mode="arena") == []
    (match,) = matchmaking_run(mode="arena", now=later(6))
    assert match.players.count() == 2


def test_players_far_apart_in_rating_meet_only_once_their_window_has_widened() -> None:
    strong, weak = rated(players(1, "strong")[0], 40), rated(players(1, "weak")[0], 5)
    ticket_create(owner=strong, mode="arena")
    ticket_create(owner=weak, mode="arena")
    assert matchmaking_run(mode="arena", now=later(10)) == []  # window 3 + 10 < 35
    (match,) = matchmaking_run(mode="arena", now=later(40))  # window 43
    assert match.players.count() == 2


def test_the_nearest_ratings_are_grouped_first() -> None:
    low = [rated(p, 10 + n * 0.1) for n, p in enumerate(players(10, "low"))]
    high = [rated(p, 30 + n * 0.1) for n, p in enumerate(players(10, "high"))]
    for p in [*high[:5], *low, *high[5:]]:
        ticket_create(owner=p, mode="arena")
    matches = matchmaking_run(mode="arena")
    assert len(matches) == 2
    groups = [set(m.players.values_list("recipient_id", flat=True)) for m in matches]
    assert {p.id for p in low} in groups and {p.id for p in high} in groups


def test_a_party_stays_together_and_the_match_never_exceeds_the_mode() -> None:
    leader, *friends = players(3, "party")
    singles = players(8, "single")
    ticket_create(owner=leader, mode="arena", party=[f.external_id for f in friends])
    for p in singles:
        ticket_create(owner=p, mode="arena")
    (match,) = matchmaking_run(mode="arena")
    members = set(match.players.values_list("recipient_id", flat=True))
    assert {leader.id, *(f.id for f in friends)} <= members and len(members) == 10
    assert Ticket.objects.filter(status=TicketStatus.SEARCHING).count() == 1


def test_a_match_is_placed_where_its_worst_off_player_is_best_off(settings: Any) -> None:
    settings.GAMING_REGIONS = ["eu", "us", "ap"]
    a, b = players(2)
    tickets = [
        ticket_create(owner=a, mode="arena", latencies={"eu": 20, "us": 90, "ap": 250}),
        ticket_create(owner=b, mode="arena", latencies={"eu": 120, "us": 60, "ap": 200}),
    ]
    assert region_choose(tickets) == "us"  # worst 90, against 120 in eu
    (match,) = matchmaking_run(mode="arena", now=later(6))
    assert match.region == "us"
    assert region_choose([Ticket(latencies={})]) == "eu"


@pytest.mark.django_db(transaction=True)
def test_two_runs_at_once_never_put_a_player_in_two_matches() -> None:
    group = players(40)
    for p in group:
        ticket_create(owner=p, mode="arena")
    formed: list[Match] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            formed.extend(matchmaking_run(mode="arena"))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    # A run that found its candidates locked by another skips them: the next pass takes them.
    formed.extend(matchmaking_run(mode="arena"))
    placed = list(MatchPlayer.objects.values_list("recipient_id", flat=True))
    assert len(placed) == len(set(placed)) == 40
    assert len(formed) == 4


@pytest.mark.django_db(transaction=True)
def test_each_player_gets_a_match_found_frame_on_the_inbox_socket() -> None:
    group = players(10)
    for p in group:
        ticket_create(owner=p, mode="arena")
    pubsub = redis_sync().pubsub()
    pubsub.subscribe(_channel())
    assert pubsub.get_message(timeout=1)  # the subscription's confirmation
    (match,) = matchmaking_run(mode="arena")
    message = pubsub.get_message(timeout=5)
    pubsub.close()
    assert message is not None
    ((recipients, payload),) = json.loads(message["data"])
    assert sorted(recipients) == sorted(p.id for p in group)
    assert payload["type"] == "app.frame"
    frame = payload["frame"]
    assert frame["type"] == "match.found" and frame["match"] == str(match.id)
    assert frame["socket"] == f"/ws/matches/{match.id}/"
    assert sorted(frame["players"]) == sorted(p.external_id for p in group)
