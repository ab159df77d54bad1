"""Recipients, their devices and preferences, topics and subscriptions."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from notifications.admin.base import BigTableAdmin
from notifications.models import Device, Preference, Recipient, Subscription, Topic


class DeviceInline(admin.TabularInline):
    model = Device
    fields = ["platform", "token", "active", "last_seen_at", "deactivated_at"]
    readonly_fields = ["last_seen_at", "deactivated_at"]
    extra = 0


class PreferenceInline(admin.TabularInline):
    model = Preference
    fields = ["notification_type", "category", "channel", "enabled"]
    autocomplete_fields = ["notification_type"]
    extra = 0


@admin.register(Recipient)
class RecipientAdmin(BigTableAdmin):
    list_display = ["external_id", "name", "email", "phone", "locale", "timezone", "user", "created_at"]
    list_select_related = ["user"]
    search_fields = ["external_id", "email", "phone", "name"]
    raw_id_fields = ["user"]
    readonly_fields = ["created_at", "updated_at"]
    inlines = [DeviceInline, PreferenceInline]


@admin.register(Device)
class DeviceAdmin(BigTableAdmin):
    list_display = ["id", "recipient", "platform", "short_token", "active", "created_at", "last_seen_at"]
    list_filter = ["platform", "active"]
    list_select_related = ["recipient"]
    search_fields = ["recipient__external_id__exact", "token__exact"]
    search_help_text = "Exact recipient external id or device token."
    raw_id_fields = ["recipient"]
    readonly_fields = ["created_at", "last_seen_at", "deactivated_at"]

    @admin.display(description="token")
    def short_token(self, obj: Device) -> str:
        return f"{obj.token[:16]}…" if len(obj.token) > 16 else obj.token


@admin.register(Topic)
class TopicAdmin(admin.ModelAdmin):
    list_display = ["key", "name", "subscriber_count", "created_at"]
    search_fields = ["key", "name"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Topic]:
        return super().get_queryset(request).annotate(subscriber_count=Count("subscriptions"))

    @admin.display(description="subscribers", ordering="subscriber_count")
    def subscriber_count(self, obj: Topic) -> int:
        return obj.subscriber_count  # type: ignore[attr-defined]


@admin.register(Subscription)
class SubscriptionAdmin(BigTableAdmin):
    list_display = ["id", "topic", "recipient", "created_at"]
    list_filter = ["topic"]
    list_select_related = ["topic", "recipient"]
    search_fields = ["recipient__external_id__exact"]
    search_help_text = "Exact recipient external id."
    raw_id_fields = ["topic", "recipient"]


@admin.register(Preference)
class PreferenceAdmin(BigTableAdmin):
    list_display = ["id", "recipient", "notification_type", "category", "channel", "enabled"]
    list_filter = ["channel", "category", "enabled"]
    list_select_related = ["recipient", "notification_type"]
    search_fields = ["recipient__external_id__exact"]
    search_help_text = "Exact recipient external id."
    raw_id_fields = ["recipient"]
    autocomplete_fields = ["notification_type"]
