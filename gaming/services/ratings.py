"""Ratings with OpenSkill (Plackett-Luce): a new player starts at mu 25, sigma 25/3; a
finished match updates every player's rating once (``match_result_record`` is idempotent:
a second call for the same match changes nothing); an aborted match changes none."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone
from openskill.models import PlackettLuce

from gaming.models import Match, MatchPlayer, MatchStatus, Rating
from gaming.modes import MODES
from gaming.modes.base import Refused
from gaming.services.leaderboard import leaderboard_update
from gaming.services.notify import rank_changes_notify

MODEL = PlackettLuce()
DEFAULT_MU = MODEL.mu
DEFAULT_SIGMA = MODEL.sigma


class ResultRefused(Refused):
    """A result that does not fit its match, or a match that takes no result."""


@dataclass(frozen=True)
class Skill:
    mu: float
    sigma: float

    @property
    def ordinal(self) -> float:
        return self.mu - 3 * self.sigma


def skills_of(recipient_ids: list[int], mode: str) -> dict[int, Skill]:
    """Each player's rating in ``mode`` (the default for one who has none)."""
    found = {
        r.recipient_id: Skill(r.mu, r.sigma)
        for r in Rating.objects.filter(mode=mode, recipient_id__in=recipient_ids)
    }
    return {rid: found.get(rid, Skill(DEFAULT_MU, DEFAULT_SIGMA)) for rid in recipient_ids}


def _standings(match: Match, players: list[MatchPlayer], result: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The result's standings by recipient id, checked against the match's players."""
    standings = result.get("standings")
    if not isinstance(standings, list):
        raise ResultRefused("standings", "must be a list")
    by_external = {p.recipient.external_id: p for p in players}
    found: dict[int, dict[str, Any]] = {}
    for index, standing in enumerate(standings):
        where = f"standings[{index}]"
        if not isinstance(standing, dict):
            raise ResultRefused(where, "must be an object")
        player = by_external.get(standing.get("player"))  # type: ignore[arg-type]
        if player is None:
            raise ResultRefused(f"{where}.player", "is not a player of this match")
        rank = standing.get("rank")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ResultRefused(f"{where}.rank", "must be a whole number from 1")
        if player.recipient_id in found:
            raise ResultRefused(f"{where}.player", "is ranked twice")
        found[player.recipient_id] = standing
    missing = sorted(set(by_external) - {p.recipient.external_id for p in players if p.recipient_id in found})
    if missing:
        raise ResultRefused("standings", f"has no place for {', '.join(missing)}")
    return found


def match_result_record(*, match_id: Any, result: dict[str, Any]) -> bool:
    """Record a finished match and update its players' ratings, once. Returns False when
    the match had its result already (nothing changes); ResultRefused for a result that
    does not fit the match, or a match that was aborted."""
    with transaction.atomic():
        match = Match.objects.select_for_update().get(pk=match_id)
        if match.ratings_applied_at is not None:
            return False
        if match.status == MatchStatus.ABORTED:
            raise ResultRefused("match", "was aborted; an aborted match changes no rating")
        players = list(match.players.select_related("recipient").order_by("recipient_id"))
        standings = _standings(match, players, result)
        ids = [p.recipient_id for p in players]
        # lock the rating rows in one order, so that two results never deadlock
        for rid in ids:
            Rating.objects.get_or_create(
                recipient_id=rid,
                mode=match.mode,
                defaults={
                    "mu": DEFAULT_MU,
                    "sigma": DEFAULT_SIGMA,
                    "ordinal": DEFAULT_MU - 3 * DEFAULT_SIGMA,
                },
            )
        rows = {
            r.recipient_id: r
            for r in Rating.objects.select_for_update()
            .filter(mode=match.mode, recipient_id__in=ids)
            .order_by("recipient_id")
        }
        teams = [[MODEL.rating(mu=rows[rid].mu, sigma=rows[rid].sigma)] for rid in ids]
        updated = MODEL.rate(teams, ranks=[float(standings[rid]["rank"]) for rid in ids])
        now = timezone.now()
        board: dict[str, float] = {}
        for player, (new,) in zip(players, updated, strict=True):
            standing = standings[player.recipient_id]
            row = rows[player.recipient_id]
            player.mu_before, player.sigma_before = row.mu, row.sigma
            row.mu, row.sigma = new.mu, new.sigma
            row.ordinal = new.mu - 3 * new.sigma
            row.matches += 1
            row.wins += 1 if standing["rank"] == 1 else 0
            row.updated_at = now
            row.save(update_fields=["mu", "sigma", "ordinal", "matches", "wins", "updated_at"])
            player.mu_after, player.sigma_after = new.mu, new.sigma
            player.rank = standing["rank"]
            score = standing.get("score")
            player.score = score if isinstance(score, int) and not isinstance(score, bool) else None
            player.forfeited = bool(standing.get("forfeited", False))
            player.save(
                update_fields=[
                    "mu_before",
                    "sigma_before",
                    "mu_after",
                    "sigma_after",
                    "rank",
                    "score",
                    "forfeited",
                ]
            )
            board[player.recipient.external_id] = row.ordinal
        match.status, match.result, match.ended_at, match.ratings_applied_at = (
            MatchStatus.FINISHED,
            result,
            match.ended_at or now,
            now,
        )
        match.save(update_fields=["status", "result", "ended_at", "ratings_applied_at"])
        mode = match.mode
        transaction.on_commit(lambda: _board_and_ranks(mode, board))
    return True


def _board_and_ranks(mode: str, board: dict[str, float]) -> None:
    """After a result committed: the leaderboard, and the players who rose into its top
    places told."""
    places = leaderboard_update(mode, board)
    changes = {player: (before, now, board[player]) for player, (before, now) in places.items()}
    rank_changes_notify(mode=mode, mode_title=MODES[mode].title, changes=changes)


def match_abort(*, match_id: Any, reason: str) -> bool:
    """End a match that cannot go on (its server died) as aborted: no rating changes.
    Returns False when it had ended already."""
    changed = Match.objects.filter(
        pk=match_id, status__in=[MatchStatus.ASSIGNED, MatchStatus.RUNNING]
    ).update(status=MatchStatus.ABORTED, reason=reason[:200], ended_at=timezone.now())
    return changed == 1
