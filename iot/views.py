"""The ``/iot/`` page for staff: the devices, one live chart per metric of the selected
device, the open alerts and a form that sends a device a command; and the small JSON
endpoints the page's script (iot/static/iot/devices.js) reads. Staff only, as the admin
is: the page shows every device and commands them, so a logged-in user who is not staff
gets a 403 page and a visitor the login form.

The live part arrives over the page's socket (iot/consumers.py); these endpoints give the
history a chart starts from (``series``), the open alerts when the socket says they
changed, and a sent command's status until the device answers."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import wraps
from typing import Any, cast

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils.timezone import now
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET, require_POST

from iot.models import METRIC_PATTERN, Alert, Command, CommandStatus, Device
from iot.selectors import (
    BUCKETS,
    SERIES_MAX_POINTS,
    Bucket,
    bucket_for_span,
    device_by_key,
    device_metrics,
    devices_list,
    readings_series,
)
from iot.selectors_alerts import alerts_open
from iot.selectors_commands import command_of, command_payload
from iot.services.commands import command_send
from notifications.services.validation import ValidationFailed

DEVICES_SHOWN = 500
ALERTS_SHOWN = 100
# The range a chart opens with, and the ranges its buttons offer (label, seconds).
DEFAULT_RANGE = timedelta(hours=1)
RANGES = (("15 min", 900), ("1 h", 3600), ("6 h", 21600), ("24 h", 86400), ("7 d", 604800), ("30 d", 2592000))
# The longest range one series request may ask for (hourly rollups beyond a week).
SERIES_SPAN_MAX = timedelta(days=400)
# A command's states that no longer change (the page stops polling at these).
COMMAND_FINAL = (CommandStatus.ACKED, CommandStatus.FAILED, CommandStatus.TIMED_OUT)

View = Callable[..., HttpResponse]


def staff_page(view: View) -> View:
    """Log in first; then staff only: a logged-in user who is not staff gets the 403 page,
    never a login loop."""

    @wraps(view)
    def checked(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_staff:
            return render(request, "iot/forbidden.html", status=403)
        return view(request, *args, **kwargs)

    return login_required(checked)


def staff_json(view: View) -> View:
    """Staff sessions only, answered in JSON: 401 without a session, 403 for non-staff."""

    @wraps(view)
    def checked(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return _errors({"user": ["Log in as staff first."]}, status=401)
        if not request.user.is_staff:
            return _errors({"user": ["Only staff may read or command devices."]}, status=403)
        return view(request, *args, **kwargs)

    return checked


def _errors(errors: dict[str, list[str]], *, status: int = 400) -> JsonResponse:
    return JsonResponse({"errors": errors}, status=status)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


# --- the page -----------------------------------------------------------------------------


def value_text(value: Any) -> str:
    """A reading as the page's script writes it (devices.js, formatValue): at most two
    decimals (one from 100 up), no trailing zeros, exponent notation when tiny or huge."""
    if not isinstance(value, int | float) or isinstance(value, bool) or value != value:
        return "—"
    size = abs(value)
    if size and (size >= 1e6 or size < 1e-3):
        return f"{value:.2e}"
    text = f"{value:.{1 if size >= 100 else 2}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _device_row(device: Device) -> dict[str, Any]:
    return {
        "device": device,
        "latest": [
            {"metric": metric, "value": value_text(entry.get("value")), "ts": entry.get("ts")}
            for metric, entry in sorted(device.latest.items())
            if isinstance(entry, dict)
        ],
    }


@require_GET
@staff_page
@ensure_csrf_cookie
def devices_page(request: HttpRequest) -> HttpResponse:
    """``/iot/?kind=&device=``: the devices (of one kind), and the device ``device``'s
    charts, command form and details when one is selected."""
    kind = request.GET.get("kind", "").strip()
    devices = list(devices_list(kind=kind or None)[:DEVICES_SHOWN])
    kinds = sorted(set(devices_list().values_list("kind", flat=True).distinct()))
    selected_key = request.GET.get("device", "").strip()
    selected = device_by_key(selected_key) if selected_key else None
    if selected is None and devices and not selected_key:
        selected = devices[0]
    context = {
        "rows": [_device_row(d) for d in devices],
        "kinds": kinds,
        "kind": kind,
        "selected": selected,
        "selected_missing": selected_key if selected_key and selected is None else "",
        "metrics": device_metrics(selected) if selected is not None else [],
        "alerts": [{"alert": a, "value": value_text(a.value)} for a in alerts_open(limit=ALERTS_SHOWN)],
        "ranges": RANGES,
        "default_range": int(DEFAULT_RANGE.total_seconds()),
        # The socket forwards readings of at most 50 devices: the selected one and the first listed.
        "watch": list(
            dict.fromkeys(([selected.key] if selected is not None else []) + [d.key for d in devices])
        )[:50],
    }
    return render(request, "iot/devices.html", context)


# --- history ------------------------------------------------------------------------------


def _moment(raw: str, field: str) -> datetime:
    """An ISO 8601 time with an offset, or epoch milliseconds."""
    text = raw.strip()
    if re.fullmatch(r"-?\d{1,15}(\.\d+)?", text):
        return datetime.fromtimestamp(float(text) / 1000, tz=UTC)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationFailed(
            {field: [f"Expected an ISO 8601 time or epoch milliseconds, got {raw!r}."]}
        ) from None
    if moment.tzinfo is None:
        raise ValidationFailed({field: [f"Give {raw!r} a UTC offset (e.g. Z or +02:00)."]})
    return moment


def series_params(query: Any, *, at: datetime) -> tuple[str, datetime, datetime, Bucket, str]:
    """(metric, start, end, bucket, asked bucket) of a series request, or ValidationFailed
    naming each bad parameter."""
    errors: dict[str, list[str]] = {}
    metric = query.get("metric", "")
    if not metric:
        errors["metric"] = ["Name the metric, e.g. ?metric=temperature."]
    elif not re.fullmatch(METRIC_PATTERN, metric):
        errors["metric"] = [f"{metric!r} is not a metric name (letters, digits, _ . : -, at most 64)."]
    end, start = at, at - DEFAULT_RANGE
    for field in ("to", "from"):
        if query.get(field):
            try:
                moment = _moment(query[field], field)
            except ValidationFailed as refused:
                errors.update(refused.errors)
                continue
            if field == "to":
                end = moment
                if not query.get("from"):
                    start = end - DEFAULT_RANGE
            else:
                start = moment
    if "from" not in errors and "to" not in errors:
        if start >= end:
            errors["from"] = ["'from' must be before 'to'."]
        elif end - start > SERIES_SPAN_MAX:
            errors["from"] = [f"A range may span at most {SERIES_SPAN_MAX.days} days."]
    asked = query.get("bucket", "auto") or "auto"
    if asked != "auto" and asked not in BUCKETS:
        errors["bucket"] = [f"Expected one of auto, {', '.join(BUCKETS)}; got {asked!r}."]
    if errors:
        raise ValidationFailed(errors)
    bucket: Bucket = bucket_for_span(start, end) if asked == "auto" else cast(Bucket, asked)
    return metric, start, end, bucket, asked


@require_GET
@staff_json
def series(request: HttpRequest, key: str) -> JsonResponse:
    """``GET /iot/devices/{key}/series/?metric=&from=&to=&bucket=auto|raw|1m|1h``: the
    points of one metric in ``[from, to)`` (default: the last hour), oldest first, as
    ``[ts_ms, value, min, max, count]`` (rollups: value is the bucket's average). ``auto``
    picks the resolution by span (raw up to 6 h, minutes up to 7 days, hours beyond);
    ``truncated`` says the range held more than the newest points sent."""
    device = device_by_key(key)
    if device is None:
        return _errors({"device": [f"No device with the key {key!r}."]}, status=404)
    try:
        metric, start, end, bucket, asked = series_params(request.GET, at=now())
    except ValidationFailed as refused:
        return _errors(refused.errors)
    points = readings_series(device.id, metric, start, end, bucket)
    return JsonResponse(
        {
            "device": device.key,
            "metric": metric,
            "bucket": bucket,
            "asked": asked,
            "from": _ms(start),
            "to": _ms(end),
            "truncated": len(points) >= SERIES_MAX_POINTS,
            "points": [[_ms(p.ts), p.value, p.min, p.max, p.count] for p in points],
        }
    )


# --- alerts -------------------------------------------------------------------------------


def alert_json(alert: Alert) -> dict[str, Any]:
    return {
        "id": alert.id,
        "rule": alert.rule.key,
        "severity": alert.rule.severity,
        "device": alert.device.key,
        "reason": alert.reason,
        "value": alert.value,
        "peak": alert.peak,
        "since": alert.opened_at.isoformat(),
    }


@require_GET
@staff_json
def alerts(request: HttpRequest) -> JsonResponse:
    """``GET /iot/alerts/``: the open alerts, newest first."""
    return JsonResponse({"alerts": [alert_json(a) for a in alerts_open(limit=ALERTS_SHOWN)]})


# --- commands -----------------------------------------------------------------------------


def command_json(command: Command) -> dict[str, Any]:
    return {
        **command_payload(command),
        "device": command.device.key,
        "final": command.status in COMMAND_FINAL,
    }


def _command_fields(request: HttpRequest) -> tuple[Any, Any]:
    """(name, params) from a JSON body, or from a form whose ``params`` is JSON text; the
    service judges the values (iot/services/commands.py)."""
    if request.content_type == "application/json":
        try:
            body = json.loads(request.body or b"{}")
        except ValueError:
            raise ValidationFailed({"body": ["Expected a JSON object with name and params."]}) from None
        if not isinstance(body, dict):
            raise ValidationFailed({"body": [f"Expected a JSON object, got {type(body).__name__}."]})
        return body.get("name"), body.get("params")
    text = request.POST.get("params", "").strip()
    try:
        params = json.loads(text) if text else None
    except json.JSONDecodeError as error:
        raise ValidationFailed({"params": [f"Not valid JSON: {error.msg} (line {error.lineno})."]}) from None
    return request.POST.get("name", "").strip(), params


@require_POST
@staff_json
def command_create(request: HttpRequest, key: str) -> JsonResponse:
    """``POST /iot/devices/{key}/commands/`` (``name``, ``params``: a JSON object): send the
    device a command (iot/services/commands.py); 201 with the command, or 400 with
    ``{"errors": {field: [message]}}``."""
    device = device_by_key(key)
    if device is None:
        return _errors({"device": [f"No device with the key {key!r}."]}, status=404)
    try:
        name, params = _command_fields(request)
        command = command_send(device, name=name, params=params)
    except ValidationFailed as refused:
        return _errors({field: [str(m) for m in messages] for field, messages in refused.errors.items()})
    return JsonResponse(command_json(command), status=201)


@require_GET
@staff_json
def command_detail(request: HttpRequest, key: str, command_id: int) -> JsonResponse:
    """``GET /iot/devices/{key}/commands/{id}/``: where the command stands."""
    device = device_by_key(key)
    command = command_of(device, command_id) if device is not None else None
    if command is None:
        return _errors({"command": [f"No command {command_id} of device {key!r}."]}, status=404)
    return JsonResponse(command_json(command))
