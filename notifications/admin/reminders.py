"""Recurring reminders: created through the API (its checks), shown and cancelled here."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from notifications.admin.base import PipelineOwnedAdmin
from notifications.models import Reminder, ReminderStatus
from notifications.services.reminders import reminder_cancel


@admin.register(Reminder)
class ReminderAdmin(PipelineOwnedAdmin):
    list_display = ["id", "notification_type", "rule", "timezone", "next_at", "sent", "status", "created_at"]
    list_filter = ["status", "notification_type"]
    list_select_related = ["notification_type"]
    search_fields = ["=id"]
    search_help_text = "A reminder id."
    fields = readonly_fields = (
        "id",
        "notification_type",
        "rule",
        "starts_at",
        "timezone",
        "next_at",
        "due_at",
        "sent",
        "status",
        "recipients",
        "topic",
        "data",
        "api_key",
        "created_at",
    )
    actions = ["cancel"]

    @admin.action(description="Cancel the selected reminders (no further occurrence)")
    def cancel(self, request: HttpRequest, queryset: QuerySet[Reminder]) -> None:
        cancelled = 0
        for reminder_id in queryset.filter(status=ReminderStatus.ACTIVE).values_list("id", flat=True):
            if reminder_cancel(reminder_id=reminder_id) is not None:
                cancelled += 1
        self.message_user(request, f"{cancelled} reminder(s) cancelled.", messages.SUCCESS)
