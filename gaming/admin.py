"""Staff's view of gaming: ratings (and the leaderboard rebuilt from them), tickets, and
matches with their players; a running match can be aborted (no rating changes). Rows
change only through the services, so the pages are read-only."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from gaming.models import Match, MatchPlayer, Rating, Ticket, TicketMember
from gaming.services.leaderboard import leaderboard_rebuild
from gaming.services.ratings import match_abort
from notifications.admin.base import ReadOnlyAdmin


@admin.register(Rating)
class RatingAdmin(ReadOnlyAdmin):
    list_display = ["recipient", "mode", "ordinal_shown", "mu", "sigma", "matches", "wins", "updated_at"]
    list_filter = ["mode"]
    list_select_related = ["recipient"]
    search_fields = ["recipient__external_id", "recipient__name"]
    ordering = ["mode", "-ordinal"]
    actions = ["rebuild_leaderboards"]

    @admin.display(description="rating (ordinal)", ordering="ordinal")
    def ordinal_shown(self, obj: Rating) -> str:
        return f"{obj.ordinal:.2f}"

    @admin.action(description="Rebuild the leaderboards of the selected ratings' modes from the database")
    def rebuild_leaderboards(self, request: HttpRequest, queryset: QuerySet[Rating]) -> None:
        for mode in sorted(set(queryset.values_list("mode", flat=True))):
            size = leaderboard_rebuild(mode)
            self.message_user(
                request, f"{mode}: {size} player{'' if size == 1 else 's'} ranked.", messages.SUCCESS
            )


class TicketMemberInline(admin.TabularInline):
    model = TicketMember
    fields = readonly_fields = ("recipient", "searching")
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Ticket)
class TicketAdmin(ReadOnlyAdmin):
    list_display = ["id", "mode", "owner", "size", "rating", "status", "created_at", "matched_at"]
    list_filter = ["status", "mode"]
    list_select_related = ["owner"]
    search_fields = ["owner__external_id", "members__recipient__external_id"]
    date_hierarchy = "created_at"
    inlines = [TicketMemberInline]


class MatchPlayerInline(admin.TabularInline):
    model = MatchPlayer
    fields = readonly_fields = (
        "recipient",
        "rank",
        "score",
        "forfeited",
        "mu_before",
        "sigma_before",
        "mu_after",
        "sigma_after",
    )
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Match)
class MatchAdmin(ReadOnlyAdmin):
    list_display = ["id", "mode", "region", "server", "status", "players_count", "created_at", "ended_at"]
    list_filter = ["status", "mode", "region"]
    search_fields = ["server", "players__recipient__external_id"]
    date_hierarchy = "created_at"
    inlines = [MatchPlayerInline]
    actions = ["abort"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Match]:
        return super().get_queryset(request).annotate(player_count=Count("players"))

    @admin.display(description="players", ordering="player_count")
    def players_count(self, obj: Match) -> int:
        return int(getattr(obj, "player_count", 0))

    @admin.action(description="Abort the selected matches (no rating changes)")
    def abort(self, request: HttpRequest, queryset: QuerySet[Match]) -> None:
        aborted = sum(match_abort(match_id=m.pk, reason="aborted by staff") for m in queryset)
        self.message_user(
            request, f"{aborted} match{'' if aborted == 1 else 'es'} aborted.", messages.SUCCESS
        )


@admin.register(MatchPlayer)
class MatchPlayerAdmin(ReadOnlyAdmin):
    list_display = ["match", "recipient", "rank", "score", "forfeited"]
    list_select_related = ["match", "recipient"]
    search_fields = ["recipient__external_id"]


@admin.register(TicketMember)
class TicketMemberAdmin(ReadOnlyAdmin):
    list_display = ["ticket", "recipient", "searching"]
    list_select_related = ["ticket", "recipient"]
    search_fields = ["recipient__external_id"]
