"""Gaming's admin (gaming/admin.py): every list and row page renders with rows in it,
staff abort a match (no rating changes) and rebuild a mode's leaderboard."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.contrib import admin
from django.test import Client
from django.urls import reverse

from gaming.models import Match, MatchPlayer, Rating, Ticket, TicketMember
from gaming.services.leaderboard import _key
from gaming.services.ratings import DEFAULT_MU, DEFAULT_SIGMA
from gaming.services.tickets import ticket_create
from gaming.tasks import matchmaking_task
from notifications.models import Recipient
from realtime.redis_client import redis_sync

pytestmark = pytest.mark.django_db
MODELS = [Rating, Ticket, TicketMember, Match, MatchPlayer]


@pytest.fixture
def rows() -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    a, b = (Recipient.objects.create(external_id=f"{name}-{tag}") for name in ("ana", "ben"))
    ticket = ticket_create(owner=a, mode="arena", party=[b.external_id])
    match = Match.objects.create(mode="arena", region="local", seed=1, status="running", server="match-1")
    for p in (a, b):
        MatchPlayer.objects.create(match=match, recipient=p, mu_before=DEFAULT_MU, sigma_before=DEFAULT_SIGMA)
    Rating.objects.create(recipient=a, mode="arena", mu=30.0, sigma=3.0, ordinal=21.0)
    return {"match": match, "ticket": ticket, "players": (a, b)}


def test_every_gaming_model_is_registered() -> None:
    assert [m for m in MODELS if m not in admin.site._registry] == []


@pytest.mark.parametrize("query", ["", "?q=ana", "?q=0f8fad5b-d9cb-469f-a165-70867728950e"])
def test_every_list_and_row_page_renders(admin_client: Client, rows: dict[str, Any], query: str) -> None:
    for model in MODELS:
        name = model._meta.model_name
        listing = admin_client.get(reverse(f"admin:gaming_{name}_changelist") + query)
        assert listing.status_code == 200, name
        row = model._default_manager.first()
        assert row is not None
        assert admin_client.get(reverse(f"admin:gaming_{name}_change", args=[row.pk])).status_code == 200, (
            name
        )


def test_staff_abort_a_running_match(admin_client: Client, rows: dict[str, Any]) -> None:
    match = rows["match"]
    answer = admin_client.post(
        reverse("admin:gaming_match_changelist"),
        {"action": "abort", "_selected_action": [str(match.pk)]},
        follow=True,
    )
    assert [m.message for m in answer.context["messages"]] == ["1 match aborted."]
    match.refresh_from_db()
    assert match.status == "aborted" and match.reason == "aborted by staff"


def test_staff_rebuild_a_leaderboard_from_the_ratings(admin_client: Client, rows: dict[str, Any]) -> None:
    redis_sync().delete(_key("arena"))
    rating = Rating.objects.get()
    answer = admin_client.post(
        reverse("admin:gaming_rating_changelist"),
        {"action": "rebuild_leaderboards", "_selected_action": [str(rating.pk)]},
        follow=True,
    )
    assert [m.message for m in answer.context["messages"]] == ["arena: 1 player ranked."]
    assert redis_sync().zscore(_key("arena"), rows["players"][0].external_id) == pytest.approx(21.0)
    redis_sync().delete(_key("arena"))


def test_the_beat_task_runs_a_matchmaking_pass_per_mode(rows: dict[str, Any], settings: Any) -> None:
    settings.GAMING_FILL_SECONDS = 0
    assert matchmaking_task() == {"arena": 1}
    assert Ticket.objects.get(pk=rows["ticket"].pk).status == "matched"
