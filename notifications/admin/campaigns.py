"""Campaigns and segments in the admin. A campaign is created as the API creates it (the
same rules, each message beside its field), then run from its page: start, pause, resume,
cancel, with a live progress bar and counts by status for the campaign and each variant.
A segment's page counts its recipients live as its filters are edited. Every step is a
call of notifications/services/campaigns.py or segments.py.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from notifications.admin.base import PipelineOwnedAdmin, status_badge_html
from notifications.admin.charts import chart_html, line_chart
from notifications.models import (
    Campaign,
    CampaignStatus,
    CampaignVariant,
    Channel,
    NotificationType,
    Segment,
    Topic,
)
from notifications.services.campaigns import (
    CampaignRefused,
    campaign_cancel,
    campaign_create,
    campaign_errors,
    campaign_pause,
    campaign_payload,
    campaign_resume,
    campaign_start,
    campaign_timeline,
)
from notifications.services.segments import segment_count, segment_filters_clean, segment_save
from notifications.services.validation import ValidationFailed

STATUS_COLOURS = {
    CampaignStatus.DRAFT: "#6b7280",
    CampaignStatus.SCHEDULED: "#2563eb",
    CampaignStatus.RUNNING: "#047857",
    CampaignStatus.PAUSED: "#b45309",
    CampaignStatus.COMPLETED: "#374151",
    CampaignStatus.CANCELLED: "#b91c1c",
}
JSON_WIDGET = {
    "rows": 6,
    "class": "vLargeTextField",
    "spellcheck": "false",
    "style": "font-family: monospace",
}


class CampaignAddForm(forms.ModelForm):
    """The API's fields; the service judges them all (campaign_errors) and each message
    goes beside its field."""

    notification_type = forms.ModelChoiceField(
        NotificationType.objects.exclude(category="critical").order_by("key"), label="Type"
    )
    audience_topic = forms.ModelChoiceField(
        Topic.objects.exclude(key__startswith="campaign.").order_by("key"), required=False, label="Topic"
    )
    audience_segment = forms.ModelChoiceField(
        Segment.objects.order_by("name"), required=False, label="Segment"
    )
    data = forms.JSONField(required=False, initial=dict, widget=forms.Textarea(attrs=JSON_WIDGET))  # type: ignore[assignment]
    channels = forms.MultipleChoiceField(
        choices=Channel.choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: all of the type's channels.",
    )
    variants = forms.JSONField(
        required=False,
        initial=list,
        widget=forms.Textarea(attrs=JSON_WIDGET),
        help_text='A/B: [{"name": "A", "weight": 50, "data": {...}}, {"name": "B", "weight": 50, '
        '"template_version": 3}]; empty: one variant',
    )

    class Meta:
        model = Campaign
        fields = [
            "name",
            "notification_type",
            "audience_topic",
            "audience_segment",
            "data",
            "channels",
            "throttle_per_second",
            "send_at",
        ]

    def _values(self) -> dict[str, Any]:
        cleaned = self.cleaned_data
        topic, segment = cleaned.get("audience_topic"), cleaned.get("audience_segment")
        audience: Any = None
        if (topic is None) != (segment is None):
            audience = {"topic": topic.key} if topic is not None else {"segment": segment.id}  # type: ignore[union-attr]
        notification_type = cleaned.get("notification_type")
        return {
            "name": cleaned.get("name", ""),
            "type_key": notification_type.key if notification_type else "",
            "audience": audience,
            "data": cleaned.get("data") or {},
            "channels": list(cleaned.get("channels") or []),
            "throttle_per_second": cleaned.get("throttle_per_second"),
            "variants": cleaned.get("variants") or None,
        }

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if self.errors:
            return cleaned
        places = {
            "type": "notification_type",
            "audience": "audience_segment",
            "audience.topic": "audience_topic",
            "audience.segment": "audience_segment",
        }
        for where, problems in campaign_errors(**self._values()).items():
            field = places.get(where, where.split(".")[0].split("[")[0])
            for problem in problems:
                message = problem if field == where else f"{where}: {problem}"
                self.add_error(field if field in self.fields else None, message)
        return cleaned


ACTIONS = {
    "_start": campaign_start,
    "_pause": campaign_pause,
    "_resume": campaign_resume,
    "_cancel": campaign_cancel,
}
DONE = {
    "_start": "Started: sending at {throttle} per second.",
    "_pause": "Paused: nothing more goes out until it resumes.",
    "_resume": "Resumed from where it stopped.",
    "_cancel": "Cancelled: nothing more goes out.",
}


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    change_form_template = "admin/notifications/campaign/change_form.html"
    list_display = ["name", "notification_type", "status_badge", "audience", "progress_bar", "started_at"]
    list_filter = ["status"]
    list_select_related = ["notification_type", "audience_topic", "audience_segment"]
    search_fields = ["name"]
    # Once created, the campaign's own fields are read-only: only its workflow changes it.
    readonly = [
        *CampaignAddForm.Meta.fields,
        "status",
        "audience_count",
        "created_at",
        "started_at",
        "paused_at",
        "finished_at",
        "variants_shown",
    ]

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: Campaign) -> str:
        return status_badge_html(
            STATUS_COLOURS.get(CampaignStatus(obj.status), "#6b7280"), obj.get_status_display()
        )

    @admin.display(description="audience")
    def audience(self, obj: Campaign) -> str:
        return f"topic {obj.audience_topic}" if obj.audience_topic_id else f"segment {obj.audience_segment}"

    @admin.display(description="progress")
    def progress_bar(self, obj: Campaign) -> str:
        # Counted over the campaign's deliveries: only for those still moving, not for every
        # row of the list on every load.
        if obj.status in (CampaignStatus.DRAFT, CampaignStatus.CANCELLED):
            return "–"
        percent = (
            100 if obj.status == CampaignStatus.COMPLETED else campaign_payload(obj)["progress"]["percent"]
        )
        return format_html('<progress value="{}" max="100">{}%</progress> {}%', percent, percent, percent)

    def get_form(
        self, request: HttpRequest, obj: Campaign | None = None, change: bool = False, **kwargs: Any
    ) -> Any:
        if obj is None:
            kwargs["form"] = CampaignAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: Campaign | None = None) -> Any:
        if obj is None:
            return [*CampaignAddForm.Meta.fields, "variants"]
        return self.readonly

    def get_readonly_fields(self, request: HttpRequest, obj: Campaign | None = None) -> Any:
        return [] if obj is None else self.readonly

    @admin.display(description="variants")
    def variants_shown(self, obj: Campaign) -> str:
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            (
                (v.name, v.weight, json.dumps(v.data), v.template_version or "published", v.audience_count)
                for v in obj.variants.order_by("id")
            ),
        )
        return format_html(
            "<table><thead><tr><th>name</th><th>weight</th><th>data</th><th>template version</th>"
            "<th>recipients</th></tr></thead><tbody>{}</tbody></table>",
            rows,
        )

    def has_delete_permission(self, request: HttpRequest, obj: Campaign | None = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: Campaign, form: forms.ModelForm, change: bool) -> None:
        if change:
            return  # only its workflow changes it, in response_change
        assert isinstance(form, CampaignAddForm)
        values = form._values()
        created = campaign_create(**values, send_at=form.cleaned_data.get("send_at"))
        obj.pk, obj._state.adding = created.pk, False

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        return  # the variants are the service's

    def response_change(self, request: HttpRequest, obj: Campaign) -> HttpResponse:
        action = next((name for name in ACTIONS if name in request.POST), None)
        if action is None:
            return super().response_change(request, obj)
        try:
            done = ACTIONS[action](campaign=obj)
            self.message_user(
                request, DONE[action].format(throttle=done.throttle_per_second), messages.SUCCESS
            )
        except ValidationFailed as exc:
            for where, problems in exc.errors.items():
                for problem in problems:
                    self.message_user(request, f"{where}: {problem}", messages.ERROR)
        except CampaignRefused as exc:
            self.message_user(request, str(exc), messages.ERROR)
        return HttpResponseRedirect(reverse("admin:notifications_campaign_change", args=[obj.pk]))

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        campaign = self.get_object(request, object_id)
        context = dict(extra_context or {})
        if campaign is not None:
            context.update(
                campaign=campaign,
                payload=campaign_payload(campaign),
                chart=chart_html(campaign_chart(campaign), width=960, height=220),
                progress_url=reverse("admin:notifications_campaign_progress", args=[campaign.pk]),
            )
        return super().change_view(request, object_id, form_url, extra_context=context)

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [
            path(
                "<int:campaign_id>/progress/",
                wrap(partial(campaign_progress_json, model_admin=self)),
                name="notifications_campaign_progress",
            ),
            *super().get_urls(),
        ]


TIMELINE_COLORS = {
    "sent": "#2f7ed8",
    "delivered": "#10b981",
    "opened": "#8e44ad",
    "clicked": "#f59e0b",
    "failed": "#ef4444",
}


def campaign_chart(campaign: Campaign) -> dict[str, Any]:
    """The campaign's timeline as a chart spec (admin/charts.py)."""
    starts, series = campaign_timeline(campaign=campaign)
    labels = [timezone.localtime(start).strftime("%H:%M:%S") for start in starts]
    return line_chart(
        {name: [float(n) for n in values] for name, values in series.items()},
        labels=labels,
        colors=TIMELINE_COLORS,
        title="Sent, delivered, opened, clicked and failed over time",
    )


def campaign_progress_json(
    request: HttpRequest, campaign_id: int, model_admin: CampaignAdmin
) -> HttpResponse:
    """The campaign as the API shows it, with its timeline chart, polled by the page."""
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    campaign = get_object_or_404(Campaign.objects.select_related("notification_type"), pk=campaign_id)
    return JsonResponse({**campaign_payload(campaign), "chart": campaign_chart(campaign)})


class SegmentForm(forms.ModelForm):
    filters = forms.JSONField(
        initial=dict,
        widget=forms.Textarea(attrs={**JSON_WIDGET, "rows": 10}),
        help_text='e.g. {"locales": ["fr"], "has": ["email"], "topics": ["launches"], "active_within_days": 30}; '
        "filters: locales, timezones, email_domain, has, topics, active_within_days, created_within_days",
    )

    class Meta:
        model = Segment
        fields = ["name", "filters"]

    def clean_filters(self) -> Any:
        try:
            return segment_filters_clean(self.cleaned_data.get("filters") or {})
        except ValidationFailed as exc:
            raise forms.ValidationError(
                [f"{where}: {problem}" for where, problems in exc.errors.items() for problem in problems]
            ) from None


@admin.register(Segment)
class SegmentAdmin(admin.ModelAdmin):
    form = SegmentForm
    change_form_template = "admin/notifications/segment/change_form.html"
    list_display = ["name", "live_count", "updated_at"]
    search_fields = ["name"]

    @admin.display(description="recipients now")
    def live_count(self, obj: Segment) -> int:
        return segment_count(obj.filters)

    def save_model(self, request: HttpRequest, obj: Segment, form: forms.ModelForm, change: bool) -> None:
        saved = segment_save(
            name=form.cleaned_data["name"],
            filters=form.cleaned_data["filters"],
            segment=obj if change else None,
        )
        obj.pk, obj._state.adding = saved.pk, False

    def render_change_form(
        self, request: HttpRequest, context: dict[str, Any], *args: Any, **kwargs: Any
    ) -> Any:
        context["count_url"] = reverse("admin:notifications_segment_count")
        return super().render_change_form(request, context, *args, **kwargs)

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [
            path(
                "count/",
                wrap(partial(segment_count_json, model_admin=self)),
                name="notifications_segment_count",
            ),
            *super().get_urls(),
        ]


def segment_count_json(request: HttpRequest, model_admin: SegmentAdmin) -> HttpResponse:
    """POST ``{"filters": ...}`` (text or an object) → ``{"count"}`` or ``{"errors"}``."""
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    if request.method != "POST":
        return JsonResponse({"errors": {"": ["POST the filters to count"]}}, status=405)
    try:
        body = json.loads(request.body or b"{}")
        filters = body.get("filters", {}) if isinstance(body, dict) else None
        if isinstance(filters, str):
            filters = json.loads(filters) if filters.strip() else {}
    except ValueError as exc:
        return JsonResponse({"errors": {"filters": [f"not JSON: {exc}"]}}, status=400)
    try:
        return JsonResponse({"count": segment_count(filters)})
    except ValidationFailed as exc:
        return JsonResponse({"errors": exc.errors}, status=400)


@admin.register(CampaignVariant)
class CampaignVariantAdmin(PipelineOwnedAdmin):
    """The arms of every campaign, with their audiences (written when the campaign starts)."""

    list_display = ["campaign", "name", "weight", "template_version", "audience_count", "event_id"]
    list_select_related = ["campaign"]
    search_fields = ["campaign__name"]
