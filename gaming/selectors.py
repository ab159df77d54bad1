"""Reads of gaming: tickets as their members see them, ratings, match history."""

from __future__ import annotations

from typing import Any

from django.db.models import Q

from gaming.models import Match, MatchPlayer, MatchStatus, Rating, Ticket, TicketMember, TicketStatus


def ticket_for(*, ticket_id: Any, recipient_id: int | None) -> Ticket | None:
    """The ticket, if ``recipient_id`` is on it (None: a service, which sees any)."""
    ticket = Ticket.objects.select_related("match").filter(pk=ticket_id).first()
    if ticket is None or recipient_id is None:
        return ticket
    on_it = TicketMember.objects.filter(ticket=ticket, recipient_id=recipient_id).exists()
    return ticket if on_it else None


def tickets_searching(*, recipient_id: int | None, limit: int) -> list[Ticket]:
    """The searching tickets ``recipient_id`` is on (None: a service, which sees all),
    newest first."""
    rows = Ticket.objects.select_related("match").filter(status=TicketStatus.SEARCHING)
    if recipient_id is not None:
        rows = rows.filter(members__recipient_id=recipient_id)
    return list(rows.order_by("-created_at")[:limit])


def ticket_members(ticket: Ticket) -> list[str]:
    return list(
        TicketMember.objects.filter(ticket=ticket)
        .order_by("id")
        .values_list("recipient__external_id", flat=True)
    )


def ratings_of(*, recipient_id: int, mode: str | None = None) -> list[Rating]:
    rows = Rating.objects.filter(recipient_id=recipient_id).order_by("mode")
    return list(rows.filter(mode=mode) if mode else rows)


def matches_of(*, recipient_id: int, limit: int = 50) -> list[tuple[Match, MatchPlayer]]:
    """The player's matches, newest first, each with the player's own row."""
    rows = (
        MatchPlayer.objects.filter(recipient_id=recipient_id)
        .select_related("match")
        .order_by("-match__created_at")[:limit]
    )
    return [(row.match, row) for row in rows]


def matches_taken_from(*, server: str, match_ids: list[str]) -> list[str]:
    """Those of ``match_ids`` that ``server`` is no longer to run: ended as aborted (the
    sweep does that to the matches of a server stalled past its heartbeat's life) or
    running on another server. A match the server finished itself is its own business."""
    if not match_ids:
        return []
    taken = Match.objects.filter(pk__in=match_ids).filter(
        Q(status=MatchStatus.ABORTED) | (Q(status=MatchStatus.RUNNING) & ~Q(server=server))
    )
    return [str(pk) for pk in taken.values_list("pk", flat=True)]


def match_players(match: Match) -> list[str]:
    return list(match.players.order_by("recipient_id").values_list("recipient__external_id", flat=True))


def match_player(*, match_id: Any, recipient_id: int) -> tuple[str, str | None] | None:
    """(the match's status, the recipient's external id if they play in it), or None when
    there is no such match."""
    match = Match.objects.filter(pk=match_id).only("status").first()
    if match is None:
        return None
    row = (
        MatchPlayer.objects.filter(match_id=match_id, recipient_id=recipient_id)
        .select_related("recipient")
        .first()
    )
    return match.status, row.recipient.external_id if row is not None else None
