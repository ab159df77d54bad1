"""Fallback checks and provider tracking events: view-only, found by delivery id."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from notifications.admin.base import PipelineOwnedAdmin, ProviderFilter, delivery_admin_link, parse_id
from notifications.models import DeliveryEvent, FallbackCheck
from notifications.services.feedback import TRACKING_KINDS


class TrackingKindFilter(admin.SimpleListFilter):
    title = "kind"
    parameter_name = "kind"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(kind, kind) for kind in TRACKING_KINDS]

    def queryset(self, request: HttpRequest, queryset: QuerySet[DeliveryEvent]) -> QuerySet[DeliveryEvent]:
        return queryset.filter(kind=self.value()) if self.value() else queryset


def _by_delivery_id(queryset: QuerySet[Any], search_term: str) -> tuple[QuerySet[Any], bool]:
    term = search_term.strip()
    if not term:
        return queryset, False
    delivery_id = parse_id(term)
    return (queryset.filter(delivery_id=delivery_id) if delivery_id is not None else queryset.none()), False


@admin.register(FallbackCheck)
class FallbackCheckAdmin(PipelineOwnedAdmin):
    list_display = ["delivery_link", "to_channel", "due_at"]
    list_filter = ["to_channel"]
    search_fields = ["delivery__id"]  # shows the box; get_search_results does the matching
    search_help_text = "A delivery id."
    ordering = ["due_at"]
    fields = readonly_fields = ("delivery_link", "to_channel", "due_at")

    @admin.display(description="delivery", ordering="delivery_id")
    def delivery_link(self, obj: FallbackCheck) -> str:
        return delivery_admin_link(obj.delivery_id)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[FallbackCheck], search_term: str
    ) -> tuple[QuerySet[FallbackCheck], bool]:
        return _by_delivery_id(queryset, search_term)


@admin.register(DeliveryEvent)
class DeliveryEventAdmin(PipelineOwnedAdmin):
    list_display = ["id", "delivery_link", "kind", "provider", "occurred_at"]
    list_filter = [TrackingKindFilter, ProviderFilter]
    search_fields = ["delivery__id"]  # shows the box; get_search_results does the matching
    search_help_text = "A delivery id."
    ordering = ["-occurred_at"]
    fields = readonly_fields = ("delivery_link", "kind", "provider", "occurred_at", "pretty_detail")

    @admin.display(description="delivery", ordering="delivery_id")
    def delivery_link(self, obj: DeliveryEvent) -> str:
        return delivery_admin_link(obj.delivery_id)

    @admin.display(description="detail")
    def pretty_detail(self, obj: DeliveryEvent) -> str:
        return format_html(
            "<pre>{}</pre>", json.dumps(obj.detail, indent=2, sort_keys=True, ensure_ascii=False)
        )

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[DeliveryEvent], search_term: str
    ) -> tuple[QuerySet[DeliveryEvent], bool]:
        return _by_delivery_id(queryset, search_term)
