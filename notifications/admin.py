"""Staff views of the notification pipeline.

Rows the pipeline owns (events, outbox, deliveries, attempts, inbox) are view-only here:
their state changes go through services with compare-and-set rules that a form save would
bypass. Configuration (types, templates, topics, recipients, preferences, webhook
endpoints) is editable; dead letters are replayed and suppressions added or removed only
through their services. Pages that are not a model's list (provider health, delivery
charts, replay by filter) live in ``admin_views`` and are wired in by ``get_urls`` below.
Tables that grow with traffic never run an unbounded ``COUNT(*)`` or a text scan to
render a page: see ``CappedCountPaginator`` and the exact-match searches below. The
substring searches left (dead-letter reasons, webhook URLs) are over tables that hold
failures and configuration, not traffic.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.paginator import Paginator
from django.core.validators import validate_email
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.http import urlencode

from notifications import admin_views
from notifications.models import (
    TEMPLATE_FIELDS,
    AggregationBatch,
    ApiKey,
    Channel,
    DeadLetter,
    Delivery,
    DeliveryAttempt,
    DeliveryEvent,
    DeliverySchedule,
    DeliveryStatus,
    Device,
    DispatchBatch,
    Event,
    FallbackCheck,
    InboxItem,
    InboxSequence,
    NotificationTemplate,
    NotificationType,
    OutboxMessage,
    Preference,
    Recipient,
    Subscription,
    Suppression,
    SuppressionKind,
    SuppressionReason,
    Topic,
    WebhookEndpoint,
    WebhookKind,
)
from notifications.services.api_keys import api_key_create, api_key_revoke
from notifications.services.deadletters import deadletters_replay
from notifications.services.feedback import TRACKING_KINDS, suppression_add, suppression_remove
from notifications.services.templating import template_check


class CappedCountPaginator(Paginator):
    """Counts at most ``count_cap`` rows, so a changelist over millions of rows costs a
    bounded ``SELECT COUNT(*) FROM (... LIMIT cap + 1)`` instead of a full scan.

    ``count`` never exceeds the cap; ``is_capped`` tells the pagination template to show
    "10000+" rather than a false total. Pages past the cap are not reachable: staff narrow
    such lists with filters or search instead of paging to row five million."""

    count_cap = 10_000

    @cached_property
    def _bounded_count(self) -> int:
        # Admin changelists always paginate a QuerySet.
        return cast("QuerySet[Any]", self.object_list)[: self.count_cap + 1].count()

    @cached_property
    def count(self) -> int:
        return min(self._bounded_count, self.count_cap)

    @property
    def is_capped(self) -> bool:
        return self._bounded_count > self.count_cap


def _parse_uuid(term: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(term.strip())
    except ValueError:
        return None


def _delivery_link(delivery_id: int) -> str:
    url = reverse("admin:notifications_delivery_change", args=[delivery_id])
    return format_html('<a href="{}">{}</a>', url, delivery_id)


class ReadOnlyInline(admin.TabularInline):
    """History rows shown under their parent, never edited there."""

    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ProviderFilter(admin.SimpleListFilter):
    """The configured providers. Django's default filter on a plain text column runs a
    ``SELECT DISTINCT`` over the whole table on every page; the settings know the names."""

    title = "provider"
    parameter_name = "provider"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(name, name) for name in settings.PROVIDERS]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(provider=self.value()) if self.value() else queryset


class BigTableAdmin(admin.ModelAdmin):
    """Defaults for tables that grow with traffic: no full counts, no facet counts."""

    paginator = CappedCountPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    list_per_page = 100


class PipelineOwnedAdmin(BigTableAdmin):
    """View-only: rows are written by the pipeline's services, never by a form."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# --- API keys ---------------------------------------------------------------------------


class RevokedFilter(admin.SimpleListFilter):
    title = "revoked"
    parameter_name = "revoked"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("yes", "Revoked"), ("no", "Active")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> QuerySet[ApiKey]:
        if self.value() == "yes":
            return queryset.filter(revoked_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(revoked_at__isnull=True)
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "prefix", "created_at", "last_used_at", "revoked"]
    list_filter = [RevokedFilter]
    search_fields = ["name", "prefix"]
    readonly_fields = ["prefix", "key_hash", "created_at", "last_used_at", "revoked_at"]
    actions = ["revoke_selected"]

    @admin.display(boolean=True, description="revoked", ordering="revoked_at")
    def revoked(self, obj: ApiKey) -> bool:
        return obj.revoked_at is not None

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> tuple[str, ...]:
        # The secret is generated by api_key_create; staff choose only the name.
        if obj is None:
            return ("name",)
        return ("name", *self.readonly_fields)

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> tuple[str, ...]:
        return () if obj is None else tuple(self.readonly_fields)

    def save_model(self, request: HttpRequest, obj: ApiKey, form: forms.ModelForm, change: bool) -> None:
        if change:
            obj.save(update_fields=["name"])
            return
        key, raw = api_key_create(name=form.cleaned_data["name"])
        # The admin goes on to log and redirect with ``obj``: make it the created row.
        for field in ApiKey._meta.concrete_fields:
            setattr(obj, field.attname, getattr(key, field.attname))
        obj._state.adding = False
        obj._state.db = key._state.db
        messages.success(
            request,
            f"The new API key is {raw} — copy it now: only its hash is stored and it will not be shown again.",
        )

    def has_delete_permission(self, request: HttpRequest, obj: ApiKey | None = None) -> bool:
        # Revoke instead: a deleted key would orphan the events it produced (SET_NULL).
        return False

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        key_ids = list(queryset.values_list("id", flat=True))
        revoked = sum(api_key_revoke(api_key_id=key_id) for key_id in key_ids)
        skipped = len(key_ids) - revoked
        message = f"Revoked {revoked} key{'s' if revoked != 1 else ''}."
        if skipped:
            message += f" {skipped} {'was' if skipped == 1 else 'were'} already revoked."
        self.message_user(request, message, messages.SUCCESS)


# --- Types and templates ----------------------------------------------------------------


class NotificationTypeForm(forms.ModelForm):
    channels = forms.MultipleChoiceField(choices=Channel.choices, widget=forms.CheckboxSelectMultiple)

    class Meta:
        model = NotificationType
        fields = [
            "key",
            "name",
            "category",
            "channels",
            "default_locale",
            "aggregation_window_seconds",
            "quiet_hours_policy",
            "fallbacks",
        ]
        help_texts = {
            "fallbacks": (
                'A JSON list of rules, e.g. [{"from": "push", "to": "sms", "after_seconds": 60}]: '
                "when the push has not reached the user within 60 seconds (or failed for good), "
                "the event is sent by SMS as well."
            )
        }

    def clean_fallbacks(self) -> list[dict[str, Any]]:
        rules = self.cleaned_data.get("fallbacks")
        if rules in (None, ""):
            return []
        if not isinstance(rules, list):
            raise forms.ValidationError("Fallbacks must be a JSON list of rules (or [] for none).")
        errors: list[str] = []
        seen: set[str] = set()
        for index, rule in enumerate(rules, start=1):
            if not isinstance(rule, dict):
                errors.append(f"Rule {index} must be an object with from, to and after_seconds.")
                continue
            unknown = sorted(set(rule) - {"from", "to", "after_seconds"})
            if unknown:
                errors.append(f"Rule {index}: unknown key(s) {', '.join(unknown)}.")
            source, target = rule.get("from"), rule.get("to")
            for key, value in (("from", source), ("to", target)):
                if value not in Channel.values:
                    errors.append(
                        f"Rule {index}: {key}={value!r} is not a channel; expected one of {', '.join(Channel.values)}."
                    )
            if source is not None and source == target:
                errors.append(f"Rule {index}: from and to are both {source}.")
            if source in seen:
                errors.append(
                    f"Rule {index}: a second rule from {source}; a channel falls back to one other."
                )
            seen.add(str(source))
            after = rule.get("after_seconds", 0)
            if not isinstance(after, int) or isinstance(after, bool) or after < 0:
                errors.append(
                    f"Rule {index}: after_seconds={after!r} must be a whole number of seconds, 0 or more."
                )
        if errors:
            raise forms.ValidationError(errors)
        return rules

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        channels = set(cleaned.get("channels") or [])
        for index, rule in enumerate(cleaned.get("fallbacks") or [], start=1):
            if channels and rule["from"] not in channels:
                self.add_error(
                    "fallbacks",
                    f"Rule {index}: from={rule['from']} is not one of this type's channels, so it would never apply.",
                )
        return cleaned


class NotificationTemplateForm(forms.ModelForm):
    class Meta:
        model = NotificationTemplate
        fields = ["channel", "locale", "content"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        channel, content = cleaned.get("channel"), cleaned.get("content")
        if channel is None or content is None:
            return cleaned
        if not isinstance(content, dict):
            self.add_error("content", "Content must be a JSON object of field name to template text.")
            return cleaned
        allowed = TEMPLATE_FIELDS[channel]
        unknown = sorted(set(content) - set(allowed))
        if unknown:
            self.add_error(
                "content",
                f"Unknown field(s) {', '.join(unknown)} for channel {channel}; expected some of {', '.join(allowed)}.",
            )
        not_text = sorted(name for name, value in content.items() if not isinstance(value, str))
        if not_text:
            self.add_error("content", f"Field(s) {', '.join(not_text)} must be text.")
            return cleaned
        for name, source in sorted(content.items()):
            error = template_check(source=source)
            if error is not None:
                self.add_error("content", f"Field {name}: {error}")
        return cleaned


class NotificationTemplateInline(admin.StackedInline):
    model = NotificationTemplate
    form = NotificationTemplateForm
    fields = ["channel", "locale", "content"]
    extra = 0


@admin.register(NotificationType)
class NotificationTypeAdmin(admin.ModelAdmin):
    form = NotificationTypeForm
    inlines = [NotificationTemplateInline]
    list_display = [
        "key",
        "name",
        "category",
        "channel_list",
        "fallback_list",
        "aggregation_window_seconds",
        "quiet_hours_policy",
        "updated_at",
    ]
    list_filter = ["category"]
    search_fields = ["key", "name"]
    readonly_fields = ["created_at", "updated_at"]

    @admin.display(description="channels")
    def channel_list(self, obj: NotificationType) -> str:
        return ", ".join(obj.channels)

    @admin.display(description="fallbacks")
    def fallback_list(self, obj: NotificationType) -> str:
        return ", ".join(
            f"{rule.get('from')} → {rule.get('to')} after {rule.get('after_seconds', 0)}s"
            for rule in obj.fallbacks or []
            if isinstance(rule, dict)
        )


class NotificationTemplateAdminForm(NotificationTemplateForm):
    class Meta(NotificationTemplateForm.Meta):
        fields = ["notification_type", "channel", "locale", "content"]


@admin.register(NotificationTemplate)
class NotificationTemplateAdmin(admin.ModelAdmin):
    """Every template in one list, to find a locale's gaps across types; usually edited
    inline on its type."""

    form = NotificationTemplateAdminForm
    list_display = ["notification_type", "channel", "locale", "updated_at"]
    list_filter = ["channel", "locale"]
    list_select_related = ["notification_type"]
    search_fields = ["notification_type__key"]
    autocomplete_fields = ["notification_type"]
    readonly_fields = ["updated_at"]


# --- Recipients, devices, topics, preferences -------------------------------------------


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


# --- Events and the outbox --------------------------------------------------------------


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
        event_id = _parse_uuid(term)
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


class ProcessedFilter(admin.SimpleListFilter):
    title = "processed"
    parameter_name = "processed"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("pending", "Pending"), ("processed", "Processed")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[OutboxMessage]) -> QuerySet[OutboxMessage]:
        # "pending" is served by the partial outbox_unprocessed_idx.
        if self.value() == "pending":
            return queryset.filter(processed_at__isnull=True)
        if self.value() == "processed":
            return queryset.filter(processed_at__isnull=False)
        return queryset


@admin.register(OutboxMessage)
class OutboxMessageAdmin(PipelineOwnedAdmin):
    list_display = ["id", "event", "available_at", "leased_until", "cursor", "attempts", "processed_at"]
    list_filter = [ProcessedFilter]
    list_select_related = ["event"]
    raw_id_fields = ["event"]


# --- Deliveries and the inbox -----------------------------------------------------------


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
                wrap(partial(admin_views.provider_health_page, model_admin=self)),
                name="notifications_provider_health",
            ),
            path(
                "provider-health/<str:provider>/reset/",
                wrap(partial(admin_views.provider_breaker_reset, model_admin=self)),
                name="notifications_provider_breaker_reset",
            ),
            path(
                "charts/",
                wrap(partial(admin_views.delivery_charts_page, model_admin=self)),
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
        event_id = _parse_uuid(term)
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
        return len(obj.delivery_ids)


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


class ReadFilter(admin.SimpleListFilter):
    title = "read"
    parameter_name = "read"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("no", "Unread"), ("yes", "Read")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[InboxItem]) -> QuerySet[InboxItem]:
        if self.value() == "no":
            return queryset.filter(read_at__isnull=True)
        if self.value() == "yes":
            return queryset.filter(read_at__isnull=False)
        return queryset


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


# --- Dead letters -----------------------------------------------------------------------


class ReplayedFilter(admin.SimpleListFilter):
    title = "replayed"
    parameter_name = "replayed"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("no", "Open (not replayed)"), ("yes", "Replayed")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> QuerySet[DeadLetter]:
        # "no" is served by the partial deadletter_open_idx.
        if self.value() == "no":
            return queryset.filter(replayed_at__isnull=True)
        if self.value() == "yes":
            return queryset.filter(replayed_at__isnull=False)
        return queryset


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
    # admin_views.deadletter_selection turns into a replay: change both together.
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
        return _delivery_link(obj.delivery_id)

    @admin.display(description="delivery status now")
    def delivery_status(self, obj: DeadLetter) -> str:
        return obj.delivery.get_status_display()

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[DeadLetter], search_term: str
    ) -> tuple[QuerySet[DeadLetter], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(admin_views.deadletter_search(term)), False

    def has_replay_permission(self, request: HttpRequest) -> bool:
        return admin_views.can_replay_dead_letters(request)

    @admin.action(description="Replay selected dead letters", permissions=["replay"])
    def replay_selected(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        delivery_ids = list(queryset.values_list("delivery_id", flat=True))
        replayed = deadletters_replay(delivery_ids=delivery_ids)
        self.message_user(
            request, admin_views.replayed_message(replayed, asked=len(delivery_ids)), messages.SUCCESS
        )

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [
            path(
                "replay-matching/",
                wrap(partial(admin_views.deadletter_replay_matching, model_admin=self)),
                name="notifications_deadletter_replay_matching",
            ),
            path(
                "replay-open/",
                wrap(partial(admin_views.deadletter_replay_open, model_admin=self)),
                name="notifications_deadletter_replay_open",
            ),
            path(
                "<int:delivery_id>/replay/",
                wrap(partial(admin_views.deadletter_replay_one, model_admin=self)),
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
        delivery_id = admin_views.parse_id(object_id)
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


# --- Suppressions -----------------------------------------------------------------------

E164 = re.compile(r"^\+[1-9]\d{6,14}$")


class SuppressionForm(forms.ModelForm):
    class Meta:
        model = Suppression
        fields = ["kind", "address", "reason", "detail"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "reason" in self.fields:  # absent on the read-only page of a stored row
            self.fields["reason"].initial = SuppressionReason.MANUAL

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        kind, address = cleaned.get("kind"), cleaned.get("address")
        if not kind or not address:
            return cleaned
        # Stored normalised, as suppression_add stores it, so the uniqueness check and
        # later lookups by a recipient's address see the same text.
        if kind == SuppressionKind.EMAIL:
            address = address.strip().lower()
            try:
                validate_email(address)
            except forms.ValidationError:
                self.add_error("address", f"{address!r} is not an email address.")
                return cleaned
        else:
            address = re.sub(r"[\s().-]", "", address)
            if not E164.match(address):
                self.add_error(
                    "address", f"{address!r} is not a phone number in E.164 form, e.g. +14155550100."
                )
                return cleaned
        cleaned["address"] = address
        return cleaned


@admin.register(Suppression)
class SuppressionAdmin(BigTableAdmin):
    """Addresses nothing is sent to. Staff add (a manual suppression) and delete (to send
    again) through the feedback services; a row is a fact, not edited in place."""

    form = SuppressionForm
    list_display = ["address", "kind", "reason", "detail", "created_at"]
    list_filter = ["kind", "reason", "created_at"]
    search_fields = ["address"]  # shows the box; get_search_results does the matching
    search_help_text = "An exact email address (any case) or phone number."
    ordering = ["-created_at"]

    def get_fields(self, request: HttpRequest, obj: Suppression | None = None) -> tuple[str, ...]:
        return (
            ("kind", "address", "reason", "detail")
            if obj is None
            else ("kind", "address", "reason", "detail", "created_at")
        )

    def get_readonly_fields(self, request: HttpRequest, obj: Suppression | None = None) -> tuple[str, ...]:
        return () if obj is None else ("kind", "address", "reason", "detail", "created_at")

    def has_change_permission(self, request: HttpRequest, obj: Suppression | None = None) -> bool:
        return False

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Suppression], search_term: str
    ) -> tuple[QuerySet[Suppression], bool]:
        # Both kinds named, so each side is a lookup on the unique (kind, address) index.
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(
            Q(kind=SuppressionKind.EMAIL, address=term.lower())
            | Q(kind=SuppressionKind.PHONE, address=re.sub(r"[\s().-]", "", term))
        ), False

    def save_model(self, request: HttpRequest, obj: Suppression, form: forms.ModelForm, change: bool) -> None:
        data = form.cleaned_data
        created = suppression_add(
            kind=data["kind"], address=data["address"], reason=data["reason"], detail=data.get("detail", "")
        )
        stored = Suppression.objects.get(kind=data["kind"], address=data["address"])
        # The admin goes on to log and redirect with ``obj``: make it the stored row.
        for field in Suppression._meta.concrete_fields:
            setattr(obj, field.attname, getattr(stored, field.attname))
        obj._state.adding = False
        obj._state.db = stored._state.db
        if not created:
            messages.warning(
                request, f"{stored.address} was suppressed already ({stored.get_reason_display()})."
            )

    def delete_model(self, request: HttpRequest, obj: Suppression) -> None:
        suppression_remove(kind=obj.kind, address=obj.address)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Suppression]) -> None:
        for kind, address in queryset.values_list("kind", "address"):
            suppression_remove(kind=kind, address=address)


# --- Webhook endpoints ------------------------------------------------------------------


class WebhookEndpointForm(forms.ModelForm):
    """The signing secret is write-only: it is never rendered back, not even masked."""

    url = forms.URLField(max_length=2000, assume_scheme="https")
    new_secret = forms.CharField(
        label="Signing secret",
        required=False,
        strip=True,
        max_length=100,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only. Leave blank to keep the current secret.",
    )
    clear_secret = forms.BooleanField(label="Remove the signing secret", required=False)

    class Meta:
        model = WebhookEndpoint
        fields = ["recipient", "kind", "url", "active"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        new, clear = cleaned.get("new_secret", ""), cleaned.get("clear_secret", False)
        if new and clear:
            self.add_error("clear_secret", "Either enter a new secret or remove it, not both.")
        will_have_secret = bool(new) or (bool(self.instance.secret) and not clear)
        if cleaned.get("kind") == WebhookKind.GENERIC and not will_have_secret:
            self.add_error("new_secret", "A generic webhook is signed: enter its signing secret.")
        return cleaned

    def save(self, commit: bool = True) -> WebhookEndpoint:
        endpoint = super().save(commit=False)
        if self.cleaned_data.get("new_secret"):
            endpoint.secret = self.cleaned_data["new_secret"]
        elif self.cleaned_data.get("clear_secret"):
            endpoint.secret = ""
        if commit:
            endpoint.save()
        return endpoint


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(BigTableAdmin):
    form = WebhookEndpointForm
    list_display = ["url", "kind", "recipient", "active", "has_secret", "created_at"]
    list_filter = ["kind", "active"]
    list_select_related = ["recipient"]
    search_fields = ["=recipient__external_id", "url"]
    search_help_text = "An exact recipient external id, or part of the URL."
    raw_id_fields = ["recipient"]
    readonly_fields = ["has_secret", "created_at"]

    def get_fields(self, request: HttpRequest, obj: WebhookEndpoint | None = None) -> tuple[str, ...]:
        fields = ("recipient", "kind", "url", "active", "new_secret")
        if obj is None:
            return fields
        return (*fields, "clear_secret", "has_secret", "created_at")

    @admin.display(boolean=True, description="secret set")
    def has_secret(self, obj: WebhookEndpoint) -> bool:
        return bool(obj.secret)


# --- Fallback checks and tracking events ------------------------------------------------


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
    delivery_id = admin_views.parse_id(term)
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
        return _delivery_link(obj.delivery_id)

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
        return _delivery_link(obj.delivery_id)

    @admin.display(description="detail")
    def pretty_detail(self, obj: DeliveryEvent) -> str:
        return format_html(
            "<pre>{}</pre>", json.dumps(obj.detail, indent=2, sort_keys=True, ensure_ascii=False)
        )

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[DeliveryEvent], search_term: str
    ) -> tuple[QuerySet[DeliveryEvent], bool]:
        return _by_delivery_id(queryset, search_term)
