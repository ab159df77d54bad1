"""Forming matches from searching tickets (``matchmaking_run``, called by the beat task
and by the match servers' loop).

Tickets are taken oldest first. Each one looks for the tickets nearest its rating within
its window, which widens the longer it waits (GAMING_WINDOW_*), until a match of the
mode's most players is full; after GAMING_FILL_SECONDS it takes what is there if that is
at least the mode's fewest. A party's ticket stays whole. The tickets are locked with
SKIP LOCKED, so two runs at once never put a player in two matches (and the members'
unique index would refuse it anyway). A match is placed in the region where its
worst-off player's round trip is lowest (the default region when nobody measured).
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from gaming.models import Match, MatchPlayer, Ticket, TicketMember, TicketStatus
from gaming.modes import mode_get
from gaming.services.placement import server_choose
from gaming.services.ratings import skills_of
from notifications.services.realtime import app_frames_publish

MATCH_FOUND = "match.found"


@dataclass
class _Pool:
    """The searching tickets sorted by rating, with the ones taken marked."""

    tickets: list[Ticket]

    def __post_init__(self) -> None:
        self.by_rating = sorted(self.tickets, key=lambda t: t.rating)
        self.ratings = [t.rating for t in self.by_rating]
        self.taken: set[Any] = set()

    def nearest(self, anchor: Ticket, window: float) -> Iterator[Ticket]:
        """Untaken tickets within ``window`` of the anchor's rating, nearest first, found as
        they are asked for (a match takes a few and stops)."""
        at = bisect.bisect_left(self.ratings, anchor.rating)
        left, right = at - 1, at
        while left >= 0 or right < len(self.by_rating):
            left_gap = anchor.rating - self.ratings[left] if left >= 0 else None
            right_gap = self.ratings[right] - anchor.rating if right < len(self.by_rating) else None
            if right_gap is not None and (left_gap is None or right_gap <= left_gap):
                if right_gap > window:
                    right = len(self.by_rating)
                    continue
                candidate = self.by_rating[right]
                right += 1
            else:
                assert left_gap is not None
                if left_gap > window:
                    left = -1
                    continue
                candidate = self.by_rating[left]
                left -= 1
            if candidate.id != anchor.id and candidate.id not in self.taken:
                yield candidate


def _window(ticket: Ticket, now: datetime) -> float:
    waited = max(0.0, (now - ticket.created_at).total_seconds())
    return min(
        settings.GAMING_WINDOW_MAX, settings.GAMING_WINDOW_BASE + settings.GAMING_WINDOW_PER_SECOND * waited
    )


def region_choose(tickets: list[Ticket]) -> str:
    """The region where the worst round trip among the tickets that measured it is lowest
    (a ticket that did not measure a region it could have counts as the worst)."""
    regions = list(settings.GAMING_REGIONS)
    measured = [t.latencies for t in tickets if t.latencies]
    if not measured:
        return regions[0]

    def cost(region: str) -> tuple[float, float]:
        trips = [float(m.get(region, 1e9)) for m in measured]
        return max(trips), sum(trips) / len(trips)

    return min(regions, key=cost)


def matchmaking_run(*, mode: str, now: datetime | None = None, limit: int = 10_000) -> list[Match]:
    """Form what matches the searching tickets of ``mode`` allow now; returns them."""
    game = mode_get(mode)
    now = now or timezone.now()
    formed: list[tuple[Match, list[Ticket]]] = []
    with transaction.atomic():
        tickets = list(
            Ticket.objects.select_for_update(skip_locked=True)
            .filter(mode=mode, status=TicketStatus.SEARCHING)
            .order_by("created_at")[:limit]
        )
        pool = _Pool(tickets)
        for anchor in tickets:
            if anchor.id in pool.taken:
                continue
            group, size = [anchor], anchor.size
            for candidate in pool.nearest(anchor, _window(anchor, now)):
                if size == game.max_players:
                    break
                if size + candidate.size <= game.max_players:
                    group.append(candidate)
                    size += candidate.size
            waited = (now - anchor.created_at).total_seconds()
            if size == game.max_players or (
                size >= game.min_players and waited >= settings.GAMING_FILL_SECONDS
            ):
                pool.taken.update(t.id for t in group)
                formed.append((_form(mode, group, now), group))
        matches = [m for m, _ in formed]
        if formed:
            transaction.on_commit(lambda: _announce(formed))
    return matches


def _form(mode: str, group: list[Ticket], now: datetime) -> Match:
    region = region_choose(group)
    match = Match(mode=mode, region=region, seed=random.randrange(2**62), created_at=now)
    match.server = server_choose(region, match.id)
    match.save(force_insert=True)
    members = list(TicketMember.objects.filter(ticket__in=group).select_related("recipient").order_by("id"))
    skills = skills_of([m.recipient_id for m in members], mode)
    MatchPlayer.objects.bulk_create(
        [
            MatchPlayer(
                match=match,
                recipient_id=m.recipient_id,
                ticket_id=m.ticket_id,
                mu_before=skills[m.recipient_id].mu,
                sigma_before=skills[m.recipient_id].sigma,
            )
            for m in members
        ]
    )
    Ticket.objects.filter(id__in=[t.id for t in group]).update(
        status=TicketStatus.MATCHED, match=match, matched_at=now
    )
    TicketMember.objects.filter(ticket__in=group).update(searching=False)
    return match


def match_found_frame(match: Match, players: list[str]) -> dict[str, Any]:
    return {
        "type": MATCH_FOUND,
        "match": str(match.id),
        "mode": match.mode,
        "region": match.region,
        "players": players,
        "socket": f"/ws/matches/{match.id}/",
    }


def _announce(formed: list[tuple[Match, list[Ticket]]]) -> None:
    """Tell each player on the inbox socket (after commit; the ticket API says it too)."""
    frames = []
    for match, _tickets in formed:
        rows = list(match.players.select_related("recipient").order_by("recipient_id"))
        frame = match_found_frame(match, [p.recipient.external_id for p in rows])
        frames.append(([p.recipient_id for p in rows], frame))
    app_frames_publish(frames)
