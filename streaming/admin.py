"""Staff's view of streaming: streams (chat settings editable; the secret key rotated or a
live stream cut off by action), their live sessions, the chat with its moderation log."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from notifications.admin.base import ReadOnlyAdmin
from streaming.models import ChatMessage, LiveSession, ModerationAction, Moderator, Sanction, Stream
from streaming.services.streams import hls_url, stream_cut_off, stream_key_rotate


class LiveSessionInline(admin.TabularInline):
    model = LiveSession
    fields = readonly_fields = (
        "started_at", "ended_at", "publishes", "notified_at", "end_reason", "recording",
    )  # fmt: skip
    extra = 0
    can_delete = False
    ordering = ["-started_at"]
    max_num = 0

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ModeratorInline(admin.TabularInline):
    model = Moderator
    fields = ("recipient", "created_at")
    readonly_fields = ("created_at",)
    raw_id_fields = ("recipient",)
    extra = 0


@admin.register(Stream)
class StreamAdmin(admin.ModelAdmin):
    list_display = ["key", "title", "owner", "status", "record", "slow_mode_seconds", "created_at"]
    list_filter = ["status", "record"]
    list_select_related = ["owner"]
    search_fields = ["key", "title", "owner__external_id"]
    readonly_fields = ["id", "key", "owner", "status", "hls", "created_at", "key_rotated_at"]
    fields = [
        "id", "key", "title", "owner", "status", "hls", "record",
        "links_allowed", "slow_mode_seconds", "blocked_words", "created_at", "key_rotated_at",
    ]  # fmt: skip
    inlines = [ModeratorInline, LiveSessionInline]
    actions = ["rotate_key", "cut_off"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # streams are made through the API (POST /api/v1/streams/)

    @admin.display(description="HLS master playlist")
    def hls(self, obj: Stream) -> str:
        return hls_url(obj)

    @admin.action(description="Rotate the stream key (the old key publishes no more)")
    def rotate_key(self, request: HttpRequest, queryset: QuerySet[Stream]) -> None:
        for stream in queryset:
            stream_key_rotate(stream)
        self.message_user(
            request,
            f"New keys for {queryset.count()} stream(s); their owners get them from the API (POST …/key/).",
            messages.SUCCESS,
        )

    @admin.action(description="Cut off: drop the publisher now and rotate the key")
    def cut_off(self, request: HttpRequest, queryset: QuerySet[Stream]) -> None:
        for stream in queryset:
            stream_cut_off(stream)
        self.message_user(
            request, f"{queryset.count()} stream(s) cut off; their keys were rotated.", messages.WARNING
        )


@admin.register(ChatMessage)
class ChatMessageAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "stream", "author", "text", "deleted_at", "deleted_by"]
    list_filter = ["stream"]
    list_select_related = ["stream", "author", "deleted_by"]
    search_fields = ["text", "author__external_id", "stream__key"]
    date_hierarchy = "created_at"


@admin.register(Sanction)
class SanctionAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "stream", "recipient", "kind", "until", "lifted_at"]
    list_filter = ["kind", "stream"]
    list_select_related = ["stream", "recipient"]
    search_fields = ["recipient__external_id", "stream__key"]


@admin.register(ModerationAction)
class ModerationActionAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "stream", "moderator", "action", "target", "details"]
    list_filter = ["action", "stream"]
    list_select_related = ["stream", "moderator", "target"]
    search_fields = ["moderator__external_id", "target__external_id", "stream__key"]
    date_hierarchy = "created_at"
