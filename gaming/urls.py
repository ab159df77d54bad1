"""The gaming API under ``/api/v1/`` (project/urls.py puts it before the v1 catch-all):
matchmaking tickets, leaderboards, players' ratings and history (gaming/api.py). Path
parameters use converters whose patterns the schema states (PATH_PARAMETERS of
notifications/api/schema.py)."""

from django.urls import URLPattern, path, register_converter

from gaming import api
from notifications.api.schema import SegmentConverter


class ModeConverter(SegmentConverter):
    regex = "[a-z][a-z0-9_-]{0,39}"


register_converter(ModeConverter, "game_mode")
register_converter(SegmentConverter, "player")

urlpatterns: list[URLPattern] = [
    path("matchmaking/tickets/", api.TicketListView.as_view(), name="matchmaking-tickets"),
    path("matchmaking/tickets/<uuid:ticket_id>/", api.TicketView.as_view(), name="matchmaking-ticket"),
    path("leaderboards/<game_mode:mode>/", api.LeaderboardView.as_view(), name="leaderboard"),
    path("players/<player:external_id>/rating/", api.PlayerRatingView.as_view(), name="player-rating"),
    path("players/<player:external_id>/matches/", api.PlayerMatchesView.as_view(), name="player-matches"),
]
