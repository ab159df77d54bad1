"""Presence in admin: when each end user was last seen (read-only: the flush writes it)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from presence.models import LastSeen


@admin.register(LastSeen)
class LastSeenAdmin(admin.ModelAdmin):
    list_display = ("recipient_id", "at")
    search_fields = ("=recipient_id",)
    ordering = ("-at",)
    date_hierarchy = "at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
