"""Staff pages of the provider channels that are not a model's changelist: provider health
and delivery charts.

Each view is wired in by a ModelAdmin's ``get_urls`` (admin/deliveries.py) through
``AdminSite.admin_view`` (active staff only, CSRF-protected, never cached) and checks a
model permission itself: seeing a page takes the model's view permission; resetting a
breaker takes the delivery change permission, although deliveries stay read-only in forms.
The work is done by the services; these views parse, confirm and report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from notifications.admin.base import page_context, require_view
from notifications.admin.charts import bar_chart, chart_html, line_chart
from notifications.models import Channel, DeliveryStatus
from notifications.services.metrics import delivery_series
from notifications.services.provider_health import ProviderHealth, breaker_reset, provider_health

HEALTH_MINUTES = 60
CHART_MINUTES_DEFAULT = 60
CHART_MINUTES_MIN = 15
CHART_MINUTES_MAX = 1440
# A day of minutes per status would make each chart a few hundred kilobytes of SVG: longer
# windows are summed into buckets of several minutes instead.
CHART_MAX_POINTS = 240

STATUS_COLORS: dict[str, str] = {
    DeliveryStatus.PENDING: "#9e9e9e",
    DeliveryStatus.SCHEDULED: "#607d8b",
    DeliveryStatus.RETRYING: "#ff9800",
    DeliveryStatus.SENT: "#2f7ed8",
    DeliveryStatus.DELIVERED: "#43a047",
    DeliveryStatus.READ: "#00897b",
    DeliveryStatus.OPENED: "#9ccc65",
    DeliveryStatus.CLICKED: "#3949ab",
    DeliveryStatus.BOUNCED: "#8e24aa",
    DeliveryStatus.SUPPRESSED: "#8d6e63",
    DeliveryStatus.FAILED: "#e53935",
    DeliveryStatus.DEAD: "#7f0000",
}
BREAKER_STATES = {"closed", "open", "half_open"}


def can_reset_breakers(request: HttpRequest) -> bool:
    return request.user.has_perm("notifications.change_delivery")


def _minute_label(unix_time: int) -> str:
    return timezone.localtime(datetime.fromtimestamp(unix_time, tz=UTC)).strftime("%H:%M")


# --- Provider health --------------------------------------------------------------------


@dataclass(frozen=True)
class ProviderPanel:
    health: ProviderHealth
    sandbox: bool
    calls_chart: str
    latency_chart: str

    @property
    def state_label(self) -> str:
        return self.health.state.replace("_", "-")

    @property
    def state_class(self) -> str:
        return self.health.state if self.health.state in BREAKER_STATES else "unknown"

    @property
    def error_percent(self) -> str:
        return f"{self.health.error_rate * 100:.1f}%"

    @property
    def latency(self) -> str:
        return "—" if self.health.latency_ms is None else f"{self.health.latency_ms:.0f} ms"


def _provider_panel(health: ProviderHealth) -> ProviderPanel:
    labels = [_minute_label(start) for start, _, _, _ in health.minutes]
    calls = bar_chart(
        {
            "succeeded": [calls - failures for _, calls, failures, _ in health.minutes],
            "failed": [failures for _, _, failures, _ in health.minutes],
        },
        labels=labels,
        colors={"succeeded": "#43a047", "failed": "#e53935"},
        title=f"{health.provider}: calls per minute",
    )
    latency = line_chart(
        {"mean latency": [mean for _, _, _, mean in health.minutes]},
        labels=labels,
        colors={"mean latency": "#2f7ed8"},
        title=f"{health.provider}: mean latency per minute",
        unit="ms",
    )
    config = settings.PROVIDERS.get(health.provider, {})
    # The charts escape every label themselves.
    return ProviderPanel(
        health=health,
        sandbox=bool(config.get("sandbox")),
        calls_chart=chart_html(calls, width=560, height=160),
        latency_chart=chart_html(latency, width=560, height=160),
    )


def sandbox_page_url() -> str:
    """The provider sandbox's staff page when any provider points at the sandbox, else ""."""
    if not any(config.get("sandbox") for config in settings.PROVIDERS.values()):
        return ""
    return f"http://{settings.PROVIDER_SANDBOX_HOST}:{settings.PROVIDER_SANDBOX_HTTP_PORT}/_sandbox/"


def provider_health_page(request: HttpRequest, *, model_admin: admin.ModelAdmin) -> HttpResponse:
    """Breaker state and the last hour of calls, failures and latency of every provider."""
    require_view(request, model_admin)
    try:
        health = provider_health(minutes=HEALTH_MINUTES)
    except redis.RedisError as exc:
        messages.error(request, f"Provider health is kept in Redis, which did not answer: {exc}")
        health = []
    return render(
        request,
        "admin/notifications/provider_health.html",
        {
            **page_context(request, model_admin, "Provider health"),
            "panels": [_provider_panel(row) for row in health],
            "minutes": HEALTH_MINUTES,
            "sandbox_url": sandbox_page_url(),
            "can_reset": can_reset_breakers(request),
        },
    )


@require_POST
def provider_breaker_reset(
    request: HttpRequest, provider: str, *, model_admin: admin.ModelAdmin
) -> HttpResponse:
    if not can_reset_breakers(request):
        raise PermissionDenied
    if provider not in settings.PROVIDERS:
        raise Http404(f"No provider named {provider!r}.")
    try:
        breaker_reset(provider=provider)
    except redis.RedisError as exc:
        messages.error(request, f"The breaker of {provider} was not reset: Redis did not answer ({exc}).")
    else:
        messages.success(
            request, f"The breaker of {provider} was reset: it is closed and its window cleared."
        )
    return HttpResponseRedirect(reverse("admin:notifications_provider_health"))


# --- Delivery charts --------------------------------------------------------------------


@dataclass(frozen=True)
class ChannelChart:
    channel: str
    label: str
    chart: str
    totals: list[tuple[str, int]]
    spec: dict[str, Any]


def _chart_minutes(request: HttpRequest) -> tuple[int, str]:
    """The ``minutes`` query parameter, and the reason it was not used as given ("" if it was)."""
    raw = request.GET.get("minutes", "")
    if raw == "":
        return CHART_MINUTES_DEFAULT, ""
    try:
        minutes = int(raw)
    except ValueError:
        return (
            CHART_MINUTES_DEFAULT,
            f"minutes={raw!r} is not a whole number; expected {CHART_MINUTES_MIN} to "
            f"{CHART_MINUTES_MAX}. Showing {CHART_MINUTES_DEFAULT}.",
        )
    clamped = min(max(minutes, CHART_MINUTES_MIN), CHART_MINUTES_MAX)
    if clamped != minutes:
        return (
            clamped,
            f"minutes={minutes} is out of range; expected {CHART_MINUTES_MIN} to {CHART_MINUTES_MAX}. "
            f"Showing {clamped}.",
        )
    return minutes, ""


def channel_charts(
    series: list[tuple[int, dict[str, int]]], *, bucket_minutes: int = 1
) -> list[ChannelChart]:
    """One chart per channel from ``delivery_series`` rows: a line per status that moved
    in the window, counts summed over buckets of ``bucket_minutes``."""
    buckets = [series[i : i + bucket_minutes] for i in range(0, len(series), bucket_minutes)]
    labels = [_minute_label(bucket[0][0]) for bucket in buckets]
    per = "minute" if bucket_minutes == 1 else f"{bucket_minutes} minutes"
    charts: list[ChannelChart] = []
    for channel in Channel:
        lines: dict[str, list[float | None]] = {}
        totals: list[tuple[str, int]] = []
        for status in DeliveryStatus:
            key = f"{channel.value}:{status.value}"
            counts = [sum(row.get(key, 0) for _, row in bucket) for bucket in buckets]
            if any(counts):
                lines[status.value] = [float(n) for n in counts]
                totals.append((status.value, sum(counts)))
        spec = line_chart(
            lines,
            labels=labels,
            colors=STATUS_COLORS,
            title=f"{channel.label}: deliveries per {per} by status",
        )
        charts.append(ChannelChart(channel.value, channel.label, chart_html(spec), totals, spec))
    return charts


def delivery_charts_page(request: HttpRequest, *, model_admin: admin.ModelAdmin) -> HttpResponse:
    """Deliveries per minute and status for each channel over the last ``?minutes=``."""
    require_view(request, model_admin)
    minutes, problem = _chart_minutes(request)
    if problem:
        messages.warning(request, problem)
    bucket = max(1, math.ceil(minutes / CHART_MAX_POINTS))
    try:
        series = delivery_series(minutes=minutes)
    except redis.RedisError as exc:
        messages.error(request, f"Delivery counts are kept in Redis, which did not answer: {exc}")
        series = []
    return render(
        request,
        "admin/notifications/delivery_charts.html",
        {
            **page_context(request, model_admin, "Delivery charts"),
            "charts": channel_charts(series, bucket_minutes=bucket),
            "minutes": minutes,
            "bucket_minutes": bucket,
            "minute_choices": [15, 60, 360, 1440],
            "refresh_seconds": 30,
        },
    )
