"""Alerts of IoT rules: opening, following the value while open, resolving, and the one
event each of those sends through the notification pipeline.

Callers (iot/services/rules.py) hold the lock on the rule+device's RuleState row while
they call these functions, so no two processes open, update or resolve the same
rule+device at once; the partial unique constraint on open alerts
(``iot_alert_open_once``) is the backstop. Events are stored with ``event_ingest`` in
the caller's transaction: the alert and its event commit together or not at all, and
the pipeline takes the event over after commit.

Each event's ``data`` carries ``ALERT_VARIABLES`` (state "opened" | "resolved", device,
device_name, rule, rule_name, metric, value, threshold, severity, reason "threshold" |
"no_data", url) plus ``alert`` (its id) and ``peak``. A notification type a rule names
may declare any subset of those variables; rule_save refuses a type that requires
others (services/rules.py).

Flapping. With W = ``settings.IOT_ALERT_FLAP_SECONDS`` (default 300 s), per rule, device
and reason:

1. An alert opening while the newest alert row of that rule, device and reason was
   resolved less than W seconds ago (``now - resolved_at < W``) reopens that row: status
   open, resolved_at cleared, ``flaps`` + 1, and sends no "opened" event.
2. Otherwise a new row opens and sends its one "opened" event
   (idempotency key ``iot-alert-{id}-opened``).
3. A row sends its "resolved" event on its first resolve only, that is while ``flaps``
   is 0 (idempotency key ``iot-alert-{id}-resolved``); a reopened row resolves silently.

So one row sends at most one "opened" and one "resolved" event, whatever the sensor
does; a sensor flapping with gaps shorter than W stays on one row. Once a row has stayed
resolved for W seconds, the next breach is a new row with a new "opened" event. The
price: a row reopened within W that then stays open is not announced again (the model
has no ``reopened_at`` to tell a lasting reopen from a flap).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction

from iot.models import Alert, AlertStatus, Device, Op, Rule
from notifications.models import Category, NotificationType
from notifications.services.catalog import notification_type_ensure
from notifications.services.ingest import IdempotencyConflict, IngestError, event_ingest
from notifications.services.lookups import notification_type_by_key

log = logging.getLogger(__name__)

# Alerts opened, reopened or resolved on this thread since the caller last took them: the
# ingest tells the live page which changed once its batch committed (iot/services/ingest.py).
_changed = threading.local()


def _note_changed(alert_id: int) -> None:
    if not hasattr(_changed, "ids"):
        _changed.ids = []
    _changed.ids.append(alert_id)


def alerts_changed_take() -> list[int]:
    """The ids of the alerts this thread opened or resolved since the last call."""
    ids: list[int] = getattr(_changed, "ids", [])
    _changed.ids = []
    return ids


ALERT_TYPE = "iot.alert"
ALERT_TYPE_CRITICAL = "iot.alert.critical"
DEFAULT_TYPES = {ALERT_TYPE: False, ALERT_TYPE_CRITICAL: True}
REASON_THRESHOLD = "threshold"
REASON_NO_DATA = "no_data"

ALERT_VARIABLES: dict[str, dict[str, Any]] = {
    "state": {"type": "string", "required": True, "example": "opened", "description": "opened or resolved"},
    "device": {"type": "string", "required": True, "example": "boiler-1", "description": "The device's key"},
    "device_name": {"type": "string", "required": True, "example": "Boiler 1"},
    "rule": {"type": "string", "required": True, "example": "boiler.hot", "description": "The rule's key"},
    "rule_name": {"type": "string", "required": True, "example": "Boiler too hot"},
    "metric": {"type": "string", "required": False, "example": "temperature"},
    "value": {
        "type": "number",
        "required": False,
        "example": 91.5,
        "description": "The latest value; absent when no data arrived",
    },
    "threshold": {"type": "number", "required": False, "example": 90},
    "severity": {
        "type": "string",
        "required": True,
        "example": "warning",
        "description": "warning or critical",
    },
    "reason": {
        "type": "string",
        "required": True,
        "example": "threshold",
        "description": "threshold or no_data",
    },
    "url": {"type": "url", "required": True, "example": "https://example.com/iot/?device=boiler-1"},
}

_TITLE = "{{ data.rule_name }} on {{ data.device_name }}: {{ data.state }}"
_BODY = (
    "{% if data.reason == 'no_data' %}No data from {{ data.device_name }}"
    "{% else %}{{ data.metric }} is {{ data.value }} (threshold {{ data.threshold }})"
    "{% endif %}, {{ data.severity }}."
)
ALERT_TEMPLATES: dict[str, dict[str, str]] = {
    "inapp": {"title": _TITLE, "body": _BODY, "url": "{{ data.url }}"},
    "email": {"subject": _TITLE, "text": _BODY + "\n\n{{ data.url }}"},
}


def alert_type_ensure(key: str = ALERT_TYPE, *, critical: bool = False) -> NotificationType:
    """The notification type ``key``, created the first time it is needed with in-app and
    email templates and ``ALERT_VARIABLES``; ``critical`` makes it of the critical
    category, which the pipeline sends through opt-outs and quiet hours
    (notifications/services/planning.py). An existing type is returned as it is."""
    existing = notification_type_by_key(key)
    if existing is not None:
        return existing
    return notification_type_ensure(
        key=key,
        fields={
            "name": "IoT alert (critical)" if critical else "IoT alert",
            "category": Category.CRITICAL if critical else Category.TRANSACTIONAL,
            "channels": ["inapp", "email"],
        },
        templates=ALERT_TEMPLATES,
        variables=ALERT_VARIABLES,
        note="created for IoT alerts",
    )


def worse(rule: Rule, a: float | None, b: float) -> float:
    """The worse of two values for ``rule``: the higher for ``>``/``>=``, else the lower."""
    if a is None:
        return b
    return max(a, b) if rule.op in (Op.GT, Op.GE) else min(a, b)


def alert_event_data(*, alert: Alert, rule: Rule, device: Device, state: str) -> dict[str, Any]:
    """The ``data`` of an alert's event (see the module docstring)."""
    data: dict[str, Any] = {
        "state": state,
        "alert": alert.id,
        "device": device.key,
        "device_name": device.name or device.key,
        "rule": rule.key,
        "rule_name": rule.name or rule.key,
        "metric": rule.metric,
        "value": alert.value,
        "peak": alert.peak,
        "threshold": rule.threshold,
        "severity": rule.severity,
        "reason": alert.reason,
        "url": f"{settings.PUBLIC_URL}/iot/?device={device.key}",
    }
    return data


def _notify(*, alert: Alert, rule: Rule, state: str) -> None:
    """Store the alert's ``state`` event. A rule whose recipients, topic or type went away
    since it was saved must not fail the caller's transaction (the ingest of a batch of
    readings): the refusal is logged and the alert stands."""
    notify = rule.notify or {}
    type_key = str(notify.get("type") or ALERT_TYPE)
    if type_key in DEFAULT_TYPES:
        alert_type_ensure(type_key, critical=DEFAULT_TYPES[type_key])
    device = Device.objects.get(id=alert.device_id)
    audience: dict[str, Any] = (
        {"topic_key": notify["topic"]}
        if "topic" in notify
        else {"recipients": list(notify.get("recipients", []))}
    )
    try:
        result = event_ingest(
            api_key=None,
            type_key=type_key,
            data=alert_event_data(alert=alert, rule=rule, device=device, state=state),
            idempotency_key=f"iot-alert-{alert.id}-{state}",
            **audience,
        )
    except (IngestError, IdempotencyConflict) as exc:
        log.warning(
            "IoT alert event refused",
            extra={"alert": alert.id, "rule": rule.key, "state": state, "error": str(exc)},
        )
        return
    # Which event told people, for the admin and the API (its deliveries show who got it).
    field = "opened_event_id" if state == "opened" else "resolved_event_id"
    Alert.objects.filter(id=alert.id).update(**{field: result.event.id})
    setattr(alert, field, result.event.id)


def _flap_window() -> timedelta:
    return timedelta(seconds=float(getattr(settings, "IOT_ALERT_FLAP_SECONDS", 300.0)))


def alert_open(*, rule: Rule, device_id: int, reason: str, value: float | None, now: datetime) -> Alert:
    """Open an alert of ``rule`` for the device (the caller holds their RuleState lock and
    knows no alert of theirs is open), or reopen the one resolved within the flap window
    (module docstring). Returns the open alert; a new one has sent its "opened" event."""
    latest = (
        Alert.objects.filter(rule_id=rule.id, device_id=device_id, reason=reason, status=AlertStatus.RESOLVED)
        .order_by("-resolved_at")
        .first()
    )
    if latest is not None and latest.resolved_at is not None and now - latest.resolved_at < _flap_window():
        reopened = Alert.objects.filter(id=latest.id, status=AlertStatus.RESOLVED).update(
            status=AlertStatus.OPEN,
            resolved_at=None,
            flaps=latest.flaps + 1,
            value=value,
            peak=value,
            updated_at=now,
        )
        if reopened:
            _note_changed(latest.id)
            latest.status, latest.resolved_at, latest.flaps = AlertStatus.OPEN, None, latest.flaps + 1
            latest.value, latest.peak, latest.updated_at = value, value, now
            return latest
    try:
        with transaction.atomic():
            alert = Alert.objects.create(
                rule_id=rule.id,
                device_id=device_id,
                reason=reason,
                status=AlertStatus.OPEN,
                opened_at=now,
                updated_at=now,
                value=value,
                peak=value,
            )
    except IntegrityError:
        # One is open already (a caller that did not hold the state lock): that one stands.
        return Alert.objects.get(rule_id=rule.id, device_id=device_id, status=AlertStatus.OPEN)
    _note_changed(alert.id)
    _notify(alert=alert, rule=rule, state="opened")
    return alert


def alert_observe(alert: Alert, *, rule: Rule, value: float, now: datetime) -> None:
    """Record a value of an open alert in memory (value, peak, updated_at); the caller
    saves a batch of them with ``alerts_save_observed``. No event."""
    alert.value = value
    alert.peak = worse(rule, alert.peak, value)
    alert.updated_at = now


def alerts_save_observed(alerts: Iterable[Alert]) -> None:
    """Store what ``alert_observe`` recorded, one statement for the batch."""
    batch = list(alerts)
    if batch:
        Alert.objects.bulk_update(batch, ["value", "peak", "updated_at"])


def alert_resolve(alert: Alert, *, rule: Rule, value: float | None, now: datetime) -> bool:
    """Resolve an open alert (compare-and-set on its status); its first resolve sends the
    "resolved" event, a reopened alert's does not (module docstring). Returns whether it
    was open."""
    if value is not None and alert.reason == REASON_THRESHOLD:
        alert_observe(alert, rule=rule, value=value, now=now)
    elif value is not None:
        alert.value = value
    # The peak too: values observed earlier in the caller's batch are not saved yet.
    fields: dict[str, Any] = {
        "status": AlertStatus.RESOLVED,
        "resolved_at": now,
        "updated_at": now,
        "value": alert.value,
        "peak": alert.peak,
    }
    if not Alert.objects.filter(id=alert.id, status=AlertStatus.OPEN).update(**fields):
        return False
    alert.status, alert.resolved_at = AlertStatus.RESOLVED, now
    _note_changed(alert.id)
    if alert.flaps == 0:
        _notify(alert=alert, rule=rule, state="resolved")
    return True
