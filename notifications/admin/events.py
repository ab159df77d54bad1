"""Events and the outbox: view-only, with the event page reporting its pipeline."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from django.contrib import admin
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.http import urlencode

from notifications.admin.base import PipelineOwnedAdmin, TimestampSetFilter, parse_uuid
from notifications.models import Channel, Delivery, DeliveryStatus, Event, OutboxMessage, Subscription


@admin.register(Event)
class EventAdmin(PipelineOwnedAdmin):
    list_display = [
        "id",
        "notification_type",
        "status",
        "planned_count",
        "created_at",
        "send_at",
        "api_key",
        "idempotency_key",
    ]
    list_filter = ["status", "notification_type"]
    date_hierarchy = "created_at"
    list_select_related = ["notification_type", "api_key"]
    search_fields = ["=id", "idempotency_key__exact"]
    search_help_text = "An event id, or an exact idempotency key."
    raw_id_fields = ["notification_type", "api_key", "topic"]
    fields = readonly_fields = (
        "id",
        "notification_type",
        "status",
        "api_key",
        "idempotency_key",
        "request_fingerprint",
        "topic",
        "recipient_count",
        "send_at",
        "planned_count",
        "created_at",
        "completed_at",
        "pretty_data",
    )

    @admin.display(description="explicit recipients")
    def recipient_count(self, obj: Event) -> str:
        return "—" if obj.recipient_ids is None else str(len(obj.recipient_ids))

    @admin.display(description="data")
    def pretty_data(self, obj: Event) -> str:
        return format_html(
            "<pre>{}</pre>", json.dumps(obj.data, indent=2, sort_keys=True, ensure_ascii=False)
        )

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Event], search_term: str
    ) -> tuple[QuerySet[Event], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        condition = Q(idempotency_key=term)
        event_id = parse_uuid(term)
        if event_id is not None:
            condition |= Q(id=event_id)
        return queryset.filter(condition), False

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        event = self.get_object(request, object_id)
        if event is not None:
            extra_context = {**(extra_context or {}), **event_pipeline_context(event)}
        return super().change_view(request, object_id, form_url, extra_context)


@dataclass(frozen=True)
class DeliveryCountCell:
    status: str
    count: int
    url: str


@dataclass(frozen=True)
class DeliveryCountRow:
    channel: str
    cells: list[DeliveryCountCell]
    total_url: str

    @property
    def total(self) -> int:
        return sum(cell.count for cell in self.cells)


def event_pipeline_context(event: Event) -> dict[str, Any]:
    """What the event page shows below its fields: the delivery counts table, fan-out
    progress and the outbox row. One GROUP BY for the counts, served by the
    (event, channel, status) index."""
    counts: dict[tuple[str, str], int] = {
        (row["channel"], row["status"]): row["n"]
        for row in Delivery.objects.filter(event=event).values("channel", "status").annotate(n=Count("id"))
    }
    present = {channel for channel, _ in counts}
    configured = set(event.notification_type.channels)
    changelist = reverse("admin:notifications_delivery_changelist")
    rows: list[DeliveryCountRow] = []
    for channel in Channel:
        if channel.value not in present and channel.value not in configured:
            continue
        cells = []
        for status in DeliveryStatus:
            n = counts.get((channel.value, status.value), 0)
            query = urlencode(
                {
                    "event__exact": str(event.id),
                    "channel__exact": channel.value,
                    "status__exact": status.value,
                }
            )
            cells.append(DeliveryCountCell(status=status.value, count=n, url=f"{changelist}?{query}"))
        query = urlencode({"event__exact": str(event.id), "channel__exact": channel.value})
        rows.append(DeliveryCountRow(channel=channel.label, cells=cells, total_url=f"{changelist}?{query}"))

    if event.recipient_ids is not None:
        audience = len(event.recipient_ids)
    elif event.topic_id is not None:
        audience = Subscription.objects.filter(topic_id=event.topic_id).count()
    else:
        audience = 0
    percent = 100 if audience == 0 else min(100, round(100 * event.planned_count / audience))
    bar_max = max(audience, 1)

    outbox = OutboxMessage.objects.filter(event=event).first()
    if outbox is None:
        outbox_state = "missing"
    elif outbox.processed_at is not None:
        outbox_state = "processed"
    elif outbox.leased_until is not None and outbox.leased_until > timezone.now():
        outbox_state = "leased"
    else:
        outbox_state = "pending"

    return {
        "delivery_statuses": [status.label for status in DeliveryStatus],
        "delivery_rows": rows,
        "delivery_changelist_url": f"{changelist}?{urlencode({'event__exact': str(event.id)})}",
        "fanout": {
            "planned": event.planned_count,
            "audience": audience,
            "percent": percent,
            "bar_max": bar_max,
            "bar_value": bar_max if audience == 0 else min(event.planned_count, bar_max),
        },
        "outbox": outbox,
        "outbox_state": outbox_state,
    }


class ProcessedFilter(TimestampSetFilter):
    title = "processed"
    parameter_name = "processed"
    # "pending" is served by the partial outbox_unprocessed_idx.
    field, unset, set = "processed_at", ("pending", "Pending"), ("processed", "Processed")


@admin.register(OutboxMessage)
class OutboxMessageAdmin(PipelineOwnedAdmin):
    list_display = ["id", "event", "available_at", "leased_until", "cursor", "attempts", "processed_at"]
    list_filter = [ProcessedFilter]
    list_select_related = ["event"]
    raw_id_fields = ["event"]
