"""Deliveries, their attempts, dispatch batches, schedules, aggregation batches and the
inbox: view-only. The provider pages (admin/pages.py) hang off the delivery admin."""

from __future__ import annotations

from functools import partial

from django.contrib import admin
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from notifications.admin.base import (
    PipelineOwnedAdmin,
    ProviderFilter,
    ReadOnlyInline,
    TimestampSetFilter,
    parse_uuid,
)
from notifications.admin.pages import delivery_charts_page, provider_breaker_reset, provider_health_page
from notifications.models import (
    AggregationBatch,
    Delivery,
    DeliveryAttempt,
    DeliveryEvent,
    DeliverySchedule,
    DispatchBatch,
    InboxItem,
    InboxSequence,
    ProviderCursor,
    Recipient,
)


class DeliveryAttemptInline(ReadOnlyInline):
    model = DeliveryAttempt
    fields = readonly_fields = (
        "number",
        "outcome",
        "provider",
        "target",
        "provider_message_id",
        "latency_ms",
        "error",
        "detail",
        "created_at",
    )
    ordering = ["number", "created_at", "id"]
    verbose_name_plural = "attempts"


class DeliveryEventInline(ReadOnlyInline):
    model = DeliveryEvent
    fields = readonly_fields = ("kind", "provider", "occurred_at", "detail")
    ordering = ["occurred_at", "id"]
    verbose_name_plural = "tracking events (provider receipts)"


@admin.register(Delivery)
class DeliveryAdmin(PipelineOwnedAdmin):
    list_display = [
        "id",
        "event_link",
        "recipient",
        "channel",
        "status",
        "provider",
        "reason",
        "attempts",
        "created_at",
        "updated_at",
    ]
    list_filter = ["channel", "status", "created_at"]
    # The event column is built from event_id alone, so only the recipient is joined.
    list_select_related = ["recipient"]
    search_fields = ["=recipient__external_id", "=event__id"]
    search_help_text = "An exact recipient external id, or an event id."
    raw_id_fields = ["event", "recipient"]
    inlines = [DeliveryAttemptInline, DeliveryEventInline]

    def get_urls(self) -> list[URLPattern]:
        # The provider pages hang off the delivery admin: same staff, same permission.
        # Before the model's own URLs, whose "<path:object_id>/" would swallow them.
        wrap = self.admin_site.admin_view
        return [
            path(
                "provider-health/",
                wrap(partial(provider_health_page, model_admin=self)),
                name="notifications_provider_health",
            ),
            path(
                "provider-health/<str:provider>/reset/",
                wrap(partial(provider_breaker_reset, model_admin=self)),
                name="notifications_provider_breaker_reset",
            ),
            path(
                "charts/",
                wrap(partial(delivery_charts_page, model_admin=self)),
                name="notifications_delivery_charts",
            ),
            *super().get_urls(),
        ]

    @admin.display(description="event", ordering="event_id")
    def event_link(self, obj: Delivery) -> str:
        url = reverse("admin:notifications_event_change", args=[obj.event_id])
        return format_html('<a href="{}">{}</a>', url, obj.event_id)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Delivery], search_term: str
    ) -> tuple[QuerySet[Delivery], bool]:
        # Django would turn "=event__id" into UPPER(event_id::text) = UPPER(term) and
        # "recipient__external_id" into a joined ILIKE: both scan every delivery. Resolve
        # the recipient first and match ids exactly so each side uses its index; a term
        # that is not a UUID never reaches the UUID column.
        term = search_term.strip()
        if not term:
            return queryset, False
        recipient_id = Recipient.objects.filter(external_id=term).values_list("id", flat=True).first()
        condition = Q(recipient_id=recipient_id) if recipient_id is not None else Q(pk__in=[])
        event_id = parse_uuid(term)
        if event_id is not None:
            condition |= Q(event_id=event_id)
        return queryset.filter(condition), False


@admin.register(DeliveryAttempt)
class DeliveryAttemptAdmin(PipelineOwnedAdmin):
    list_display = [
        "id",
        "delivery",
        "number",
        "outcome",
        "provider",
        "target",
        "provider_message_id",
        "latency_ms",
        "created_at",
    ]
    list_filter = ["outcome", ProviderFilter]
    list_select_related = ["delivery"]
    search_fields = ["provider_message_id__exact"]
    search_help_text = "Exact provider message id."
    raw_id_fields = ["delivery"]


@admin.register(DispatchBatch)
class DispatchBatchAdmin(PipelineOwnedAdmin):
    list_display = ["id", "channel", "size", "created_at", "leased_until", "done_at"]
    list_filter = ["channel"]
    search_fields = ["=id"]

    @admin.display(description="deliveries")
    def size(self, obj: DispatchBatch) -> int:
        return obj.size


@admin.register(ProviderCursor)
class ProviderCursorAdmin(PipelineOwnedAdmin):
    """How far the receipts of each provider read from its event log have been read."""

    list_display = ["provider", "events", "polled_at"]
    readonly_fields = ["provider", "events", "polled_at", "next_url"]


@admin.register(DeliverySchedule)
class DeliveryScheduleAdmin(PipelineOwnedAdmin):
    list_display = ["delivery", "due_at"]
    raw_id_fields = ["delivery"]
    ordering = ["due_at"]


@admin.register(AggregationBatch)
class AggregationBatchAdmin(PipelineOwnedAdmin):
    list_display = ["id", "notification_type", "recipient", "channel", "count", "closes_at", "closed_at"]
    list_filter = ["notification_type", "channel"]
    list_select_related = ["notification_type", "recipient"]
    search_fields = ["recipient__external_id__exact"]
    search_help_text = "Exact recipient external id."
    raw_id_fields = ["recipient", "leader"]


class ReadFilter(TimestampSetFilter):
    title = "read"
    parameter_name = "read"
    field, unset, set = "read_at", ("no", "Unread"), ("yes", "Read")


@admin.register(InboxItem)
class InboxItemAdmin(PipelineOwnedAdmin):
    list_display = ["recipient", "seq", "notification_type", "title", "read_at", "created_at"]
    list_filter = ["category", ReadFilter]
    list_select_related = ["recipient"]
    search_fields = ["recipient__external_id", "title"]
    raw_id_fields = ["recipient", "delivery", "event"]


@admin.register(InboxSequence)
class InboxSequenceAdmin(PipelineOwnedAdmin):
    list_display = ["recipient", "last_seq"]
    list_select_related = ["recipient"]
    search_fields = ["recipient__external_id__exact"]
    search_help_text = "Exact recipient external id."
    raw_id_fields = ["recipient"]
