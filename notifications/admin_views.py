"""Staff pages of the provider channels that are not a model's changelist: provider health,
delivery charts, and replaying dead letters by filter.

Each view is wired in by a ModelAdmin's ``get_urls`` through ``AdminSite.admin_view``
(active staff only, CSRF-protected, never cached) and checks a model permission itself:
seeing a page takes the model's view permission; acting (resetting a breaker, replaying
dead letters) takes its change permission, although the rows stay read-only in forms.
The work is done by the services; these views parse, confirm and report.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, time
from typing import Any

import redis
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, QueryDict
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST

from notifications.charts import bar_chart_svg, line_chart_svg
from notifications.models import Channel, DeadLetter, DeliveryStatus
from notifications.selectors import deadletters_open
from notifications.services.deadletters import DeadLetterFilter, deadletters_replay
from notifications.services.metrics import delivery_series
from notifications.services.provider_health import ProviderHealth, breaker_reset, provider_health

HEALTH_MINUTES = 60
CHART_MINUTES_DEFAULT = 60
CHART_MINUTES_MIN = 15
CHART_MINUTES_MAX = 1440
# A day of minutes per status would make each chart a few hundred kilobytes of SVG: longer
# windows are summed into buckets of several minutes instead.
CHART_MAX_POINTS = 240
# The confirmation page counts what a replay would touch; past this it says "more than".
REPLAY_COUNT_CAP = 100_000

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


def can_replay_dead_letters(request: HttpRequest) -> bool:
    return request.user.has_perm("notifications.change_deadletter")


def can_reset_breakers(request: HttpRequest) -> bool:
    return request.user.has_perm("notifications.change_delivery")


def _page_context(request: HttpRequest, model_admin: admin.ModelAdmin, title: str) -> dict[str, Any]:
    return {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.model._meta,
        "title": title,
    }


def _require_view(request: HttpRequest, model_admin: admin.ModelAdmin) -> None:
    if not model_admin.has_view_permission(request):
        raise PermissionDenied


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
    calls = bar_chart_svg(
        {
            "succeeded": [calls - failures for _, calls, failures, _ in health.minutes],
            "failed": [failures for _, _, failures, _ in health.minutes],
        },
        labels=labels,
        colors={"succeeded": "#43a047", "failed": "#e53935"},
        title=f"{health.provider}: calls per minute",
        width=560,
        height=160,
    )
    latency = line_chart_svg(
        {"mean latency": [mean for _, _, _, mean in health.minutes]},
        labels=labels,
        colors={"mean latency": "#2f7ed8"},
        title=f"{health.provider}: mean latency per minute",
        unit="ms",
        width=560,
        height=160,
    )
    config = settings.PROVIDERS.get(health.provider, {})
    # The charts escape every label themselves.
    return ProviderPanel(
        health=health,
        sandbox=bool(config.get("sandbox")),
        calls_chart=mark_safe(calls),
        latency_chart=mark_safe(latency),
    )


def sandbox_page_url() -> str:
    """The provider sandbox's staff page when any provider points at the sandbox, else ""."""
    if not any(config.get("sandbox") for config in settings.PROVIDERS.values()):
        return ""
    return f"http://{settings.PROVIDER_SANDBOX_HOST}:{settings.PROVIDER_SANDBOX_HTTP_PORT}/_sandbox/"


def provider_health_page(request: HttpRequest, *, model_admin: admin.ModelAdmin) -> HttpResponse:
    """Breaker state and the last hour of calls, failures and latency of every provider."""
    _require_view(request, model_admin)
    try:
        health = provider_health(minutes=HEALTH_MINUTES)
    except redis.RedisError as exc:
        messages.error(request, f"Provider health is kept in Redis, which did not answer: {exc}")
        health = []
    return render(
        request,
        "admin/notifications/provider_health.html",
        {
            **_page_context(request, model_admin, "Provider health"),
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
        svg = line_chart_svg(
            lines,
            labels=labels,
            colors=STATUS_COLORS,
            title=f"{channel.label}: deliveries per {per} by status",
            width=720,
            height=200,
        )
        # The chart escapes every label itself.
        charts.append(ChannelChart(channel.value, channel.label, mark_safe(svg), totals))
    return charts


def delivery_charts_page(request: HttpRequest, *, model_admin: admin.ModelAdmin) -> HttpResponse:
    """Deliveries per minute and status for each channel over the last ``?minutes=``."""
    _require_view(request, model_admin)
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
            **_page_context(request, model_admin, "Delivery charts"),
            "charts": channel_charts(series, bucket_minutes=bucket),
            "minutes": minutes,
            "bucket_minutes": bucket,
            "minute_choices": [15, 60, 360, 1440],
            "refresh_seconds": 30,
        },
    )


# --- Dead letters -----------------------------------------------------------------------


class UnsupportedFilter(ValueError):
    """The changelist query has a parameter a replay cannot reproduce exactly."""


def parse_id(term: str) -> int | None:
    """A bigint primary key, or None: a text term must never reach an integer column."""
    term = term.strip()
    return int(term) if re.fullmatch(r"\d{1,18}", term) else None


def deadletter_search(term: str) -> Q:
    """What the dead-letter search box matches: text in the reason, an exact type key, or
    a delivery id. ``DeadLetterSelection`` replays exactly these rows."""
    term = term.strip()
    condition = Q(reason__icontains=term) | Q(notification_type=term)
    delivery_id = parse_id(term)
    if delivery_id is not None:
        condition |= Q(delivery_id=delivery_id)
    return condition


# Changelist parameters a replay understands; "o" (ordering), "p" (page) and "all" change
# nothing about which rows match.
_FILTER_PARAMS = {"channel__exact", "notification_type", "replayed", "created_at__gte", "created_at__lt", "q"}
_NEUTRAL_PARAMS = {"o", "p", "all"}


def _parse_moment(name: str, raw: str) -> datetime:
    moment = parse_datetime(raw)
    if moment is None:
        day = parse_date(raw)
        if day is None:
            raise UnsupportedFilter(f"{name}={raw!r} is not a date or a date and time.")
        moment = datetime.combine(day, time())
    return timezone.make_aware(moment) if timezone.is_naive(moment) else moment


@dataclass(frozen=True)
class DeadLetterSelection:
    """The open dead letters a changelist query shows. The service's ``DeadLetterFilter``
    ANDs its fields while the search box ORs reason, type and delivery id, so a search
    becomes a union: one filter per alternative, replayed one after the other (a letter
    replayed by the first is no longer open for the next)."""

    base: DeadLetterFilter
    search: str = ""
    nothing: bool = False

    def rows(self) -> QuerySet[DeadLetter]:
        """The open letters matched, built the way the changelist builds its rows."""
        if self.nothing:
            return DeadLetter.objects.none()
        rows = deadletters_open(self.base)
        return rows.filter(deadletter_search(self.search)) if self.search else rows

    def replay(self) -> int:
        if self.nothing:
            return 0
        if not self.search:
            return deadletters_replay(where=self.base)
        replayed = deadletters_replay(where=replace(self.base, reason_contains=self.search))
        if self.base.notification_type in ("", self.search):
            replayed += deadletters_replay(where=replace(self.base, notification_type=self.search))
        delivery_id = parse_id(self.search)
        if delivery_id is not None:
            ids = list(
                deadletters_open(self.base)
                .filter(delivery_id=delivery_id)
                .values_list("delivery_id", flat=True)
            )
            if ids:
                replayed += deadletters_replay(delivery_ids=ids)
        return replayed

    def description(self) -> list[str]:
        parts = []
        if self.base.channel:
            parts.append(f"channel is {self.base.channel}")
        if self.base.notification_type:
            parts.append(f"type is {self.base.notification_type}")
        if self.base.created_after:
            parts.append(f"created at or after {self.base.created_after:%Y-%m-%d %H:%M %Z}")
        if self.base.created_before:
            parts.append(f"created before {self.base.created_before:%Y-%m-%d %H:%M %Z}")
        if self.search:
            parts.append(f"reason contains, type is, or delivery id is “{self.search}”")
        return parts


def deadletter_selection(params: QueryDict) -> DeadLetterSelection:
    """The open dead letters the changelist with query ``params`` lists. Raises
    ``UnsupportedFilter`` for a parameter the replay could not honour, rather than
    replaying more than the staff member saw."""
    unknown = sorted(set(params) - _FILTER_PARAMS - _NEUTRAL_PARAMS)
    if unknown:
        raise UnsupportedFilter(
            f"Cannot replay by {', '.join(unknown)}: only channel, type, date and search."
        )
    channel = params.get("channel__exact", "")
    if channel and channel not in Channel.values:
        raise UnsupportedFilter(f"channel__exact={channel!r} is not a channel.")
    replayed = params.get("replayed", "")
    if replayed not in ("", "yes", "no"):
        raise UnsupportedFilter(f"replayed={replayed!r}: expected yes or no.")
    after = params.get("created_at__gte", "")
    before = params.get("created_at__lt", "")
    base = DeadLetterFilter(
        channel=channel,
        notification_type=params.get("notification_type", ""),
        created_after=_parse_moment("created_at__gte", after) if after else None,
        created_before=_parse_moment("created_at__lt", before) if before else None,
    )
    # Replayed letters are never replayed again: "replayed: yes" selects nothing open.
    return DeadLetterSelection(base=base, search=params.get("q", "").strip(), nothing=replayed == "yes")


def _deadletter_changelist(query: str = "") -> str:
    url = reverse("admin:notifications_deadletter_changelist")
    return f"{url}?{query}" if query else url


def replayed_message(replayed: int, *, asked: int | None = None) -> str:
    message = f"Replayed {replayed} dead letter{'' if replayed == 1 else 's'}."
    if asked is not None and asked > replayed:
        skipped = asked - replayed
        message += f" {skipped} {'was' if skipped == 1 else 'were'} replayed already or no longer dead, and left alone."
    return message


def _capped_count(rows: QuerySet[DeadLetter]) -> tuple[int, bool]:
    n = rows[: REPLAY_COUNT_CAP + 1].count()
    return min(n, REPLAY_COUNT_CAP), n > REPLAY_COUNT_CAP


def _confirm_or_replay(
    request: HttpRequest,
    model_admin: admin.ModelAdmin,
    *,
    selection: DeadLetterSelection,
    everything: bool,
    query: str,
    action_url: str,
    title: str,
) -> HttpResponse:
    if request.POST.get("confirm") != "yes":
        count, capped = _capped_count(selection.rows())
        return render(
            request,
            "admin/notifications/deadletter/replay_confirm.html",
            {
                **_page_context(request, model_admin, title),
                "count": count,
                "capped": capped,
                "conditions": [] if everything else selection.description(),
                "everything": everything,
                "action_url": action_url,
                "changelist_query": query,
                "changelist_url": _deadletter_changelist(query),
            },
        )
    replayed = deadletters_replay(everything=True) if everything else selection.replay()
    messages.success(request, replayed_message(replayed))
    return HttpResponseRedirect(_deadletter_changelist(query))


@require_POST
def deadletter_replay_matching(request: HttpRequest, *, model_admin: admin.ModelAdmin) -> HttpResponse:
    """Replay the open dead letters the changelist shows under its current filters and
    search (``changelist_query``): a confirmation page with the count first."""
    if not can_replay_dead_letters(request):
        raise PermissionDenied
    params = QueryDict(request.POST.get("changelist_query", ""))
    query = params.urlencode()
    try:
        selection = deadletter_selection(params)
    except UnsupportedFilter as exc:
        messages.error(request, str(exc))
        return HttpResponseRedirect(_deadletter_changelist(query))
    return _confirm_or_replay(
        request,
        model_admin,
        selection=selection,
        everything=False,
        query=query,
        action_url=reverse("admin:notifications_deadletter_replay_matching"),
        title="Replay the dead letters matching the filter",
    )


@require_POST
def deadletter_replay_open(request: HttpRequest, *, model_admin: admin.ModelAdmin) -> HttpResponse:
    """Replay every open dead letter, after a confirmation page with the count."""
    if not can_replay_dead_letters(request):
        raise PermissionDenied
    query = QueryDict(request.POST.get("changelist_query", "")).urlencode()
    return _confirm_or_replay(
        request,
        model_admin,
        selection=DeadLetterSelection(base=DeadLetterFilter()),
        everything=True,
        query=query,
        action_url=reverse("admin:notifications_deadletter_replay_open"),
        title="Replay every open dead letter",
    )


@require_POST
def deadletter_replay_one(
    request: HttpRequest, delivery_id: int, *, model_admin: admin.ModelAdmin
) -> HttpResponse:
    """Replay the dead letter shown on its change page, and return there."""
    if not can_replay_dead_letters(request):
        raise PermissionDenied
    if not DeadLetter.objects.filter(delivery_id=delivery_id).exists():
        raise Http404(f"No dead letter for delivery {delivery_id}.")
    replayed = deadletters_replay(delivery_ids=[delivery_id])
    messages.success(request, replayed_message(replayed, asked=1))
    return HttpResponseRedirect(reverse("admin:notifications_deadletter_change", args=[delivery_id]))
