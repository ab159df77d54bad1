"""The gaming API: matchmaking tickets (``/api/v1/matchmaking/tickets/``), leaderboards
(``/api/v1/leaderboards/{mode}/``) and players' ratings and match history
(``/api/v1/players/{external_id}/...``).

A ticket is asked for by the player (an end user's token); the player and their party
see it, and a service (API key) sees any. Leaderboards and ratings are public to any
caller of the API; a player's match history to the player and to services.
"""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from gaming import selectors
from gaming.models import Match, Ticket, TicketStatus
from gaming.modes import MODES
from gaming.services.leaderboard import Place, leaderboard_around, leaderboard_page
from gaming.services.tickets import LATENCY_MAX_MS, TicketRefused, ticket_cancel, ticket_create
from notifications.api.auth import (
    ApiKeyAuthentication,
    EndUserTokenAuthentication,
    IsServiceOrEndUser,
    end_user_recipient,
)
from notifications.api.common import StrictSerializer, errors_response, operation, query, text_field
from notifications.models import Recipient
from notifications.services.validation import EXTERNAL_ID_MAX

LEADERBOARD_LIMIT_MAX = 100
OFFSET_MAX = 10_000_000
HISTORY_LIMIT = 50
TICKETS_LIMIT = 200


class GamingApiView(APIView):
    authentication_classes = [ApiKeyAuthentication, EndUserTokenAuthentication]
    permission_classes = [IsServiceOrEndUser]


# --- Tickets -----------------------------------------------------------------------------------


class TicketCreateSerializer(StrictSerializer):
    mode = serializers.ChoiceField(choices=sorted(MODES))
    party = serializers.ListField(
        child=text_field(max_length=EXTERNAL_ID_MAX),
        required=False,
        max_length=max(m.max_players for m in MODES.values()),
    )
    latencies = serializers.DictField(
        child=serializers.FloatField(min_value=0, max_value=LATENCY_MAX_MS),
        required=False,
        help_text="Measured round trip to each region, in milliseconds (GAMING_REGIONS)",
    )


class TicketMatchSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    region = serializers.CharField()
    status = serializers.CharField()
    socket = serializers.CharField(help_text="The match's socket path: /ws/matches/{id}/?token=")
    players = serializers.ListField(child=serializers.CharField())


class TicketSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    mode = serializers.CharField()
    status = serializers.ChoiceField(choices=TicketStatus.values)
    players = serializers.ListField(child=serializers.CharField())
    rating = serializers.FloatField()
    latencies = serializers.DictField(child=serializers.FloatField())
    created_at = serializers.DateTimeField()
    matched_at = serializers.DateTimeField(allow_null=True)
    match = TicketMatchSerializer(allow_null=True)


def _match_payload(match: Match) -> dict[str, Any]:
    return {
        "id": str(match.id),
        "region": match.region,
        "status": match.status,
        "socket": f"/ws/matches/{match.id}/",
        "players": selectors.match_players(match),
    }


def _ticket_payload(ticket: Ticket) -> dict[str, Any]:
    return {
        "id": str(ticket.id),
        "mode": ticket.mode,
        "status": ticket.status,
        "players": selectors.ticket_members(ticket),
        "rating": round(ticket.rating, 4),
        "latencies": ticket.latencies,
        "created_at": ticket.created_at,
        "matched_at": ticket.matched_at,
        "match": _match_payload(ticket.match) if ticket.match else None,
    }


class TicketListSerializer(serializers.Serializer):
    results = TicketSerializer(many=True)


class TicketListView(GamingApiView):
    @operation(
        summary="Searching tickets",
        description=(
            f"The caller's searching tickets (a player is on one at most; for a service, all of them, newest "
            f"first, at most {TICKETS_LIMIT}): a page that lost its ticket's id finds it again."
        ),
        responses={200: TicketListSerializer},
    )
    def get(self, request: Request) -> Response:
        caller = end_user_recipient(request)
        tickets = selectors.tickets_searching(recipient_id=caller.id if caller else None, limit=TICKETS_LIMIT)
        return Response({"results": [_ticket_payload(t) for t in tickets]})

    @operation(
        summary="Ask for a match",
        description=(
            "A player (an end user's token) asks for a match of ``mode``, alone or with a ``party`` of "
            "friends who play in the same match. A player is on one searching ticket at a time. The match, "
            "once formed, is on the ticket and also arrives as a ``match.found`` frame on the inbox socket."
        ),
        request=TicketCreateSerializer,
        responses={201: TicketSerializer},
        errors=[400, 403],
    )
    def post(self, request: Request) -> Response:
        caller = end_user_recipient(request)
        if caller is None:
            raise exceptions.PermissionDenied("a ticket is asked for with the player's own token")
        serializer = TicketCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        ticket = ticket_create(
            owner=caller, mode=data["mode"], party=data.get("party"), latencies=data.get("latencies")
        )
        return Response(_ticket_payload(ticket), status=status.HTTP_201_CREATED)


class TicketView(GamingApiView):
    def _ticket(self, request: Request, ticket_id: Any) -> Ticket:
        caller = end_user_recipient(request)
        ticket = selectors.ticket_for(ticket_id=ticket_id, recipient_id=caller.id if caller else None)
        if ticket is None:
            raise exceptions.NotFound(f"no ticket {ticket_id}")
        return ticket

    @operation(
        summary="A ticket",
        description="Its status and, once matched, its match.",
        responses={200: TicketSerializer},
    )
    def get(self, request: Request, ticket_id: Any) -> Response:
        return Response(_ticket_payload(self._ticket(request, ticket_id)))

    @operation(
        summary="Stop searching",
        description="Cancels a searching ticket; one that was matched already is a 409.",
        responses={200: TicketSerializer},
        errors=[409],
    )
    def delete(self, request: Request, ticket_id: Any) -> Response:
        ticket = self._ticket(request, ticket_id)
        try:
            ticket = ticket_cancel(ticket=ticket)
        except TicketRefused as refused:
            return errors_response({"status": [str(refused)]}, status.HTTP_409_CONFLICT)
        return Response(_ticket_payload(ticket))


# --- Leaderboards and ratings ------------------------------------------------------------------


class PlaceSerializer(serializers.Serializer):
    rank = serializers.IntegerField()
    player = serializers.CharField()
    rating = serializers.FloatField(help_text="The OpenSkill ordinal (mu - 3 sigma)")


class LeaderboardSerializer(serializers.Serializer):
    mode = serializers.CharField()
    total = serializers.IntegerField()
    results = PlaceSerializer(many=True)


def _whole_number(request: Request, name: str, low: int, high: int, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isascii() or not raw.isdigit() or not low <= int(raw) <= high:
        raise exceptions.ValidationError({name: [f"must be a whole number from {low} to {high}"]})
    return int(raw)


def _places(places: list[Place]) -> list[dict[str, Any]]:
    return [{"rank": p.rank, "player": p.player, "rating": round(p.ordinal, 4)} for p in places]


def _mode(mode: str) -> str:
    if mode not in MODES:
        raise exceptions.NotFound(f"no game mode {mode!r}")
    return mode


class LeaderboardView(GamingApiView):
    @operation(
        summary="A mode's leaderboard",
        description=(
            "Players by rating, best first: ``limit`` places from ``offset``, or, with ``around``, the "
            "places around that player (a player with no rating in the mode is a 404)."
        ),
        parameters=[
            query(
                "around",
                {"type": "string", "minLength": 1, "maxLength": EXTERNAL_ID_MAX, "pattern": "^[^\\x00]+$"},
                "A player's external id",
            ),
            query("offset", {"type": "integer", "minimum": 0, "maximum": OFFSET_MAX}, "Places to skip"),
            query(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": LEADERBOARD_LIMIT_MAX},
                "Places to answer",
            ),
        ],
        responses={200: LeaderboardSerializer},
        errors=[400],
    )
    def get(self, request: Request, mode: str) -> Response:
        offset = _whole_number(request, "offset", 0, OFFSET_MAX, 0)
        limit = _whole_number(request, "limit", 1, LEADERBOARD_LIMIT_MAX, 20)
        around = request.query_params.get("around", "")
        if "\x00" in around or len(around) > EXTERNAL_ID_MAX:
            raise exceptions.ValidationError({"around": ["must be a player's external id"]})
        _mode(mode)
        if around:
            found = leaderboard_around(mode, around, span=max(1, limit // 2))
            if found is None:
                raise exceptions.NotFound(f"{around!r} has no rating in {mode}")
            total, places = found
        else:
            total, places = leaderboard_page(mode, offset=offset, limit=limit)
        return Response({"mode": mode, "total": total, "results": _places(places)})


class RatingSerializer(serializers.Serializer):
    mode = serializers.CharField()
    mu = serializers.FloatField()
    sigma = serializers.FloatField()
    rating = serializers.FloatField(help_text="The OpenSkill ordinal (mu - 3 sigma)")
    matches = serializers.IntegerField()
    wins = serializers.IntegerField()


class RatingsSerializer(serializers.Serializer):
    player = serializers.CharField()
    results = RatingSerializer(many=True)


def _player(external_id: str) -> Recipient:
    recipient = Recipient.objects.filter(external_id=external_id).first()
    if recipient is None:
        raise exceptions.NotFound(f"no player {external_id!r}")
    return recipient


class PlayerRatingView(GamingApiView):
    @operation(
        summary="A player's ratings",
        description="Per mode the player has played (none yet: an empty list).",
        responses={200: RatingsSerializer},
    )
    def get(self, request: Request, external_id: str) -> Response:
        player = _player(external_id)
        rows = selectors.ratings_of(recipient_id=player.id)
        return Response(
            {
                "player": external_id,
                "results": [
                    {
                        "mode": r.mode,
                        "mu": round(r.mu, 4),
                        "sigma": round(r.sigma, 4),
                        "rating": round(r.ordinal, 4),
                        "matches": r.matches,
                        "wins": r.wins,
                    }
                    for r in rows
                ],
            }
        )


class HistoryEntrySerializer(serializers.Serializer):
    match = serializers.UUIDField()
    mode = serializers.CharField()
    status = serializers.CharField()
    created_at = serializers.DateTimeField()
    ended_at = serializers.DateTimeField(allow_null=True)
    rank = serializers.IntegerField(allow_null=True)
    score = serializers.IntegerField(allow_null=True)
    rating_change = serializers.FloatField(allow_null=True, help_text="Ordinal after minus before")


class HistorySerializer(serializers.Serializer):
    player = serializers.CharField()
    results = HistoryEntrySerializer(many=True)


class PlayerMatchesView(GamingApiView):
    @operation(
        summary="A player's matches",
        description=f"Newest first, at most {HISTORY_LIMIT}; the player's own token or a service.",
        responses={200: HistorySerializer},
    )
    def get(self, request: Request, external_id: str) -> Response:
        player = _player(external_id)
        caller = end_user_recipient(request)
        if caller is not None and caller.id != player.id:
            raise exceptions.NotFound(f"no player {external_id!r}")
        entries = []
        for match, row in selectors.matches_of(recipient_id=player.id, limit=HISTORY_LIMIT):
            change = None
            if row.mu_after is not None and row.sigma_after is not None:
                change = round(
                    (row.mu_after - 3 * row.sigma_after) - (row.mu_before - 3 * row.sigma_before), 4
                )
            entries.append(
                {
                    "match": str(match.id),
                    "mode": match.mode,
                    "status": match.status,
                    "created_at": match.created_at,
                    "ended_at": match.ended_at,
                    "rank": row.rank,
                    "score": row.score,
                    "rating_change": change,
                }
            )
        return Response({"player": external_id, "results": entries})
