"""Dead letters: read-only rows, replayed (selected, by filter, all, or one) through
``deadletters_replay``; the replay pages are in admin/deadletter_replay.py."""

from __future__ import annotations

from functools import partial
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, path

from notifications.admin.base import PipelineOwnedAdmin, TimestampSetFilter, delivery_admin_link, parse_id
from notifications.admin.deadletter_replay import (
    can_replay_dead_letters,
    deadletter_replay_matching,
    deadletter_replay_one,
    deadletter_replay_open,
    deadletter_search,
    replayed_message,
)
from notifications.models import DeadLetter, DeliveryAttempt, DeliveryEvent, NotificationType
from notifications.services.deadletters import deadletters_replay


class ReplayedFilter(TimestampSetFilter):
    title = "replayed"
    parameter_name = "replayed"
    # "no" is served by the partial deadletter_open_idx.
    field, unset, set = "replayed_at", ("no", "Open (not replayed)"), ("yes", "Replayed")


class DeadLetterTypeFilter(admin.SimpleListFilter):
    """Type keys from the small types table, not a ``SELECT DISTINCT`` over dead letters."""

    title = "type"
    parameter_name = "notification_type"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(key, key) for key in NotificationType.objects.values_list("key", flat=True)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> QuerySet[DeadLetter]:
        return queryset.filter(notification_type=self.value()) if self.value() else queryset


@admin.register(DeadLetter)
class DeadLetterAdmin(PipelineOwnedAdmin):
    """Deliveries whose retries ran out. Read-only; replaying (selected rows, everything
    the current filter matches, or every open letter) goes through ``deadletters_replay``,
    which skips letters replayed already."""

    list_display = [
        "delivery_link",
        "channel",
        "notification_type",
        "reason",
        "attempts",
        "created_at",
        "replayed_at",
        "replay_count",
    ]
    # The parameters of these filters and of the search box are exactly what
    # deadletter_replay.deadletter_selection turns into a replay: change both together.
    list_filter = ["channel", DeadLetterTypeFilter, ReplayedFilter, "created_at"]
    search_help_text = "Text in the reason, an exact type key, or a delivery id."
    search_fields = ["reason"]  # shows the box; get_search_results does the matching
    ordering = ["-created_at"]
    actions = ["replay_selected"]
    fields = readonly_fields = (
        "delivery_link",
        "delivery_status",
        "channel",
        "notification_type",
        "reason",
        "attempts",
        "created_at",
        "replayed_at",
        "replay_count",
    )

    @admin.display(description="delivery", ordering="delivery_id")
    def delivery_link(self, obj: DeadLetter) -> str:
        return delivery_admin_link(obj.delivery_id)

    @admin.display(description="delivery status now")
    def delivery_status(self, obj: DeadLetter) -> str:
        return obj.delivery.get_status_display()

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[DeadLetter], search_term: str
    ) -> tuple[QuerySet[DeadLetter], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(deadletter_search(term)), False

    def has_replay_permission(self, request: HttpRequest) -> bool:
        return can_replay_dead_letters(request)

    @admin.action(description="Replay selected dead letters", permissions=["replay"])
    def replay_selected(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        delivery_ids = list(queryset.values_list("delivery_id", flat=True))
        replayed = deadletters_replay(delivery_ids=delivery_ids)
        self.message_user(request, replayed_message(replayed, asked=len(delivery_ids)), messages.SUCCESS)

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [
            path(
                "replay-matching/",
                wrap(partial(deadletter_replay_matching, model_admin=self)),
                name="notifications_deadletter_replay_matching",
            ),
            path(
                "replay-open/",
                wrap(partial(deadletter_replay_open, model_admin=self)),
                name="notifications_deadletter_replay_open",
            ),
            path(
                "<int:delivery_id>/replay/",
                wrap(partial(deadletter_replay_one, model_admin=self)),
                name="notifications_deadletter_replay_one",
            ),
            *super().get_urls(),
        ]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        extra_context = {
            **(extra_context or {}),
            "can_replay": self.has_replay_permission(request),
            "changelist_query": request.GET.urlencode(),
        }
        return super().changelist_view(request, extra_context)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        delivery_id = parse_id(object_id)
        if delivery_id is not None:
            extra_context = {
                **(extra_context or {}),
                "attempt_history": DeliveryAttempt.objects.filter(delivery_id=delivery_id).order_by(
                    "number", "created_at", "id"
                ),
                "tracking_events": DeliveryEvent.objects.filter(delivery_id=delivery_id).order_by(
                    "occurred_at", "id"
                ),
                "can_replay": self.has_replay_permission(request),
            }
        return super().change_view(request, object_id, form_url, extra_context)
