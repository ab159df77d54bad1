"""Matchmaking tickets: a player (and, with ``party``, the friends who play with them)
asks for a match of a mode. A player is on one open ticket at most (a unique index on the
members that search, so two requests at once cannot both succeed)."""

from __future__ import annotations

import math
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction

from gaming.models import Ticket, TicketMember, TicketStatus
from gaming.modes import MODES
from gaming.services.ratings import skills_of
from notifications.models import Recipient
from notifications.services.validation import ValidationFailed

LATENCY_MAX_MS = 10_000


class TicketRefused(Exception):
    """A ticket that cannot change now (cancelling one that was matched)."""


def _clean_latencies(value: Any, errors: dict[str, list[str]]) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors["latencies"] = ["must be an object of region: milliseconds"]
        return {}
    cleaned: dict[str, float] = {}
    for region, ms in value.items():
        where = f"latencies.{region}"
        if region not in settings.GAMING_REGIONS:
            errors[where] = [f"is not a region (regions: {', '.join(settings.GAMING_REGIONS)})"]
        elif isinstance(ms, bool) or not isinstance(ms, int | float) or not math.isfinite(ms):
            errors[where] = ["must be a number of milliseconds"]
        elif not 0 <= ms <= LATENCY_MAX_MS:
            errors[where] = [f"must be between 0 and {LATENCY_MAX_MS}"]
        else:
            cleaned[region] = float(ms)
    return cleaned


def ticket_create(*, owner: Recipient, mode: Any, party: Any = None, latencies: Any = None) -> Ticket:
    """A searching ticket for ``owner`` and the external ids in ``party``. ValidationFailed
    names each bad field: an unknown mode, a party too big for the mode or naming someone
    unknown, twice, or already searching."""
    errors: dict[str, list[str]] = {}
    game = MODES.get(mode) if isinstance(mode, str) else None
    if game is None:
        errors["mode"] = [f"must be one of: {', '.join(sorted(MODES))}"]
    friends: list[Recipient] = []
    if party is not None:
        if not isinstance(party, list) or not all(isinstance(p, str) for p in party):
            errors["party"] = ["must be a list of players' external ids"]
        elif len(set(party)) != len(party) or owner.external_id in party:
            errors["party"] = ["names a player twice"]
        elif game is not None and len(party) + 1 > game.max_players:
            errors["party"] = [f"is larger than a {mode} match ({game.max_players} players)"]
        else:
            found = {r.external_id: r for r in Recipient.objects.filter(external_id__in=party)}
            unknown = [p for p in party if p not in found]
            if unknown:
                errors["party"] = [f"no such player: {', '.join(unknown)}"]
            friends = [found[p] for p in party if p in found]
    cleaned = _clean_latencies(latencies, errors)
    if errors:
        raise ValidationFailed(errors)
    assert isinstance(mode, str)
    members = [owner, *friends]
    skills = skills_of([m.id for m in members], mode)
    rating = sum(s.ordinal for s in skills.values()) / len(members)
    try:
        with transaction.atomic():
            ticket = Ticket.objects.create(
                mode=mode, owner=owner, size=len(members), rating=rating, latencies=cleaned
            )
            TicketMember.objects.bulk_create([TicketMember(ticket=ticket, recipient=m) for m in members])
    except IntegrityError:
        busy = set(
            TicketMember.objects.filter(recipient__in=members, searching=True).values_list(
                "recipient__external_id", flat=True
            )
        )
        field = "party" if busy - {owner.external_id} else "mode"
        who = ", ".join(sorted(busy)) or "a player"
        raise ValidationFailed({field: [f"{who} is searching already (cancel that ticket first)"]}) from None
    return ticket


def ticket_cancel(*, ticket: Ticket) -> Ticket:
    """Stop searching. TicketRefused when it was matched (or cancelled) already."""
    with transaction.atomic():
        changed = Ticket.objects.filter(pk=ticket.pk, status=TicketStatus.SEARCHING).update(
            status=TicketStatus.CANCELLED
        )
        if not changed:
            ticket.refresh_from_db()
            raise TicketRefused(f"the ticket is {ticket.status}; only a searching one can be cancelled")
        TicketMember.objects.filter(ticket=ticket).update(searching=False)
    ticket.refresh_from_db()
    return ticket
