"""Rules on device readings: saving them, evaluating readings as they are stored, and the
no-data sweep. Alerts and their notifications are iot/services/alerts.py's.

A rule is a threshold condition (``metric`` ``op`` ``threshold`` held for
``for_seconds``, cleared past ``clear_threshold``), a no-data condition
(``no_data_seconds``), or both, on its ``devices`` or on every device of its ``kind``.

Evaluation (``rules_evaluate``) runs inside the ingest's transaction, about 10,000
readings a second, so:

- Which rules apply comes from a per-process map of the enabled rules by metric, built
  from the database at most every ``IOT_RULES_CACHE_SECONDS`` (2 s), and at the next
  batch after a rule is saved in any process (a version in Redis, ``RULES_VERSION_KEY``);
  a batch with no metric any rule watches costs no database query.
  Device kinds are cached alongside (one query for the ids not seen yet).
- Where a rule stands for a device is a RuleState row, shared by every ingest process.
  A batch takes its rules FOR KEY SHARE (a rule being deleted waits, or is skipped once
  gone: no alert ever points at a deleted rule), then the RuleStates FOR UPDATE in
  (rule, device) order, so two processes never deadlock; the rows are written back with
  one UPDATE. Steady state: three statements per batch that a rule applies to.

Semantics, per rule and device, over readings newer than the last one evaluated:

- breaching is ``value op threshold``; the first breaching reading of a run sets
  ``breach_since`` (its ts); an alert opens at the first reading of the run whose ts is
  at least ``for_seconds`` after it (reading timestamps, not arrival). A non-breaching
  reading ends the run.
- an open threshold alert clears at a value that does not pass ``clear_threshold`` with
  the same op (``> 80`` clear 75: at 75 or below), or without one, at a value that no
  longer breaches; until then each reading updates its value and peak (no event).
- every reading of a device a no-data rule covers (of its metric, or of any metric when
  the rule names none) moves the deadline to arrival (``now``) + ``no_data_seconds``, and
  resolves an open no-data alert. Arrival, not the reading's ts: a device with a slow
  clock, or one uploading a backlog, is not silent.
- ``rules_no_data_sweep`` opens a no-data alert for each state whose deadline passed and
  clears that deadline (the next reading sets it again). One alert per rule and device is
  open at a time: when a threshold alert is open as the device falls silent, it stays
  the open one and no no-data alert opens.

Saving a rule starts the no-data deadline of every device it covers then; a device
provisioned later gets its states from ``rule_states_for_new_device``.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import redis
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from iot.models import METRIC_PATTERN, Alert, AlertStatus, Device, DeviceStatus, Op, Rule, RuleState, Severity
from iot.selectors_alerts import rule_data
from iot.services.alerts import (
    ALERT_TYPE,
    ALERT_TYPE_CRITICAL,
    ALERT_VARIABLES,
    DEFAULT_TYPES,
    REASON_NO_DATA,
    REASON_THRESHOLD,
    alert_observe,
    alert_open,
    alert_resolve,
    alert_type_ensure,
    alerts_save_observed,
)
from notifications.models import Recipient, Topic
from notifications.services.lookups import notification_type_by_key
from notifications.services.template_variables import data_variables_errors, variables_example_data
from notifications.services.validation import RuleViolation, ValidationFailed, key_check
from realtime.redis_client import redis_key, redis_sync

log = logging.getLogger(__name__)

RULE_FIELDS = (
    "key",
    "name",
    "devices",
    "kind",
    "metric",
    "op",
    "threshold",
    "for_seconds",
    "clear_threshold",
    "no_data_seconds",
    "severity",
    "notify",
    "enabled",
)
NAME_MAX = 200
KIND_MAX = 64
DEVICES_MAX = 1000
RECIPIENTS_MAX = 1000
SECONDS_MAX = 30 * 86_400
SWEEP_BATCH = 500

# --- Saving -------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _text(value: Any, maximum: int, *, pattern: str | None = None, required: bool = False) -> list[str]:
    if not isinstance(value, str):
        return [f"must be a string, got {type(value).__name__}"]
    if required and not value:
        return ["this field is required"]
    if len(value) > maximum:
        return [f"at most {maximum} characters, got {len(value)}"]
    if "\x00" in value:
        return ["must not contain NUL characters"]
    if pattern and value and not re.fullmatch(pattern, value):
        return [f"{value!r} must match {pattern}"]
    return []


def _seconds(value: Any, *, positive: bool) -> list[str]:
    if not _is_number(value) or value < 0 or (positive and value == 0) or value > SECONDS_MAX:
        low = "more than 0" if positive else "0 or more"
        return [f"must be a number of seconds, {low} and at most {SECONDS_MAX}, got {value!r}"]
    return []


def _current(rule: Rule) -> dict[str, Any]:
    return {name: value for name, value in rule_data(rule).items() if name in RULE_FIELDS}


def _merged(data: dict[str, Any], rule: Rule | None) -> dict[str, Any]:
    """The rule as it would be: ``data`` over the stored values (PATCH). Naming the devices
    drops the kind and the other way round; naming a threshold field keeps the others."""
    defaults: dict[str, Any] = {
        "key": "",
        "name": "",
        "devices": [],
        "kind": "",
        "metric": "",
        "op": "",
        "threshold": None,
        "for_seconds": 0,
        "clear_threshold": None,
        "no_data_seconds": None,
        "severity": Severity.WARNING,
        "notify": None,
        "enabled": True,
    }
    base = _current(rule) if rule is not None else defaults
    merged = {**base, **data}
    if rule is not None:
        if "devices" in data and "kind" not in data:
            merged["kind"] = ""
        if "kind" in data and "devices" not in data:
            merged["devices"] = []
    return merged


def _notify_errors(
    notify: Any, severity: str, *, threshold: bool, no_data: bool
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """``notify`` in stored form and its errors keyed ``notify.<field>``. The type must
    take the data of every alert the rule can open (``threshold``, ``no_data``): a type
    requiring more would be refused at each alert, in the ingest's transaction."""
    shape = 'must be {"type": key, "recipients": [external ids]} or {"type": key, "topic": key}'
    if not isinstance(notify, dict):
        return {}, {"notify": [f"this field is required: it {shape}" if notify is None else shape]}
    errors: dict[str, list[str]] = {}
    for name in sorted(set(notify) - {"type", "recipients", "topic"}):
        errors[f"notify.{name}"] = ["unknown field; notify has type and recipients or topic"]
    type_key = notify.get("type")
    if type_key is None:
        type_key = ALERT_TYPE_CRITICAL if severity == Severity.CRITICAL else ALERT_TYPE
    stored: dict[str, Any] = {"type": type_key}
    if not isinstance(type_key, str):
        errors["notify.type"] = [f"must be a notification type's key, got {type(type_key).__name__}"]
    else:
        try:
            key_check(type_key)
        except RuleViolation as exc:
            errors["notify.type"] = [str(exc)]
        else:
            notification_type = (
                alert_type_ensure(type_key, critical=DEFAULT_TYPES[type_key])
                if type_key in DEFAULT_TYPES
                else notification_type_by_key(type_key)
            )
            if notification_type is None:
                errors["notify.type"] = [f"unknown notification type {type_key!r}; create it first"]
            else:
                example = variables_example_data(ALERT_VARIABLES)
                variants = [example] if threshold else []
                if no_data:
                    variants.append({**example, "value": None, "reason": "no_data"})
                    if not threshold:
                        variants[-1].update(threshold=None, metric="")
                missing: dict[str, list[str]] = {}
                for variant in variants:
                    missing.update(data_variables_errors(notification_type.variables or {}, variant))
                if missing:
                    names = ", ".join(sorted(name.removeprefix("data.") for name in missing))
                    errors["notify.type"] = [
                        f"type {type_key!r} declares variables an alert cannot fill as declared ({names}); "
                        f"an alert sends {', '.join(ALERT_VARIABLES)}"
                    ]
    recipients, topic = notify.get("recipients"), notify.get("topic")
    if (recipients is None) == (topic is None):
        errors["notify"] = ["give either recipients or topic"]
    elif recipients is not None:
        if (
            not isinstance(recipients, list)
            or not recipients
            or not all(isinstance(r, str) and r for r in recipients)
        ):
            errors["notify.recipients"] = ["must be a non-empty list of recipients' external ids"]
        elif len(recipients) > RECIPIENTS_MAX:
            errors["notify.recipients"] = [f"at most {RECIPIENTS_MAX} recipients, got {len(recipients)}"]
        else:
            wanted = list(dict.fromkeys(recipients))
            found = set(
                Recipient.objects.filter(external_id__in=wanted).values_list("external_id", flat=True)
            )
            missing_ids = [r for r in wanted if r not in found]
            if missing_ids:
                errors["notify.recipients"] = [
                    f"unknown recipients: {', '.join(map(repr, missing_ids[:20]))}; "
                    "create them with PUT /api/v1/recipients/{id}/"
                ]
            stored["recipients"] = wanted
    else:
        if not isinstance(topic, str) or not Topic.objects.filter(key=topic).exists():
            errors["notify.topic"] = [f"unknown topic {topic!r}"]
        stored["topic"] = topic
    return stored, errors


def _rule_errors(
    merged: dict[str, Any], rule: Rule | None
) -> tuple[dict[str, Any], list[Device], dict[str, list[str]]]:
    """The rule's fields in stored form, its devices and the errors by field."""
    errors: dict[str, list[str]] = {}
    key = merged["key"]
    if rule is None:
        if not isinstance(key, str) or not key:
            errors["key"] = ["this field is required"]
        else:
            try:
                key_check(key)
            except RuleViolation as exc:
                errors["key"] = [str(exc)]
            else:
                if Rule.objects.filter(key=key).exists():
                    errors["key"] = [f"a rule with key {key!r} already exists"]
    elif key != rule.key:
        errors["key"] = ["a rule's key cannot change"]
    if problems := _text(merged["name"], NAME_MAX):
        errors["name"] = problems
    devices: list[Device] = []
    names, kind = merged["devices"], merged["kind"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        errors["devices"] = ["must be a list of device keys"]
    elif len(names) > DEVICES_MAX:
        errors["devices"] = [f"at most {DEVICES_MAX} devices, got {len(names)}; use kind"]
    elif names:
        devices = list(Device.objects.filter(key__in=names))
        missing = sorted(set(names) - {d.key for d in devices})
        if missing:
            errors["devices"] = [f"unknown devices: {', '.join(map(repr, missing[:20]))}"]
    if problems := _text(kind, KIND_MAX):
        errors["kind"] = problems
    elif "devices" not in errors:
        if names and kind:
            errors["kind"] = ["give devices or kind, not both"]
        elif not names and not kind:
            errors["devices"] = ["give devices (a list of device keys) or kind"]
    if problems := _text(merged["metric"], 64, pattern=METRIC_PATTERN):
        errors["metric"] = problems
    op, threshold, clear = merged["op"], merged["threshold"], merged["clear_threshold"]
    if op not in ("", *Op.values):
        errors["op"] = [f"{op!r} is not an operator; expected one of {', '.join(Op.values)}"]
    if threshold is not None and not _is_number(threshold):
        errors["threshold"] = [f"must be a number, got {threshold!r}"]
    if clear is not None and not _is_number(clear):
        errors["clear_threshold"] = [f"must be a number or null, got {clear!r}"]
    if problems := _seconds(merged["for_seconds"], positive=False):
        errors["for_seconds"] = problems
    no_data = merged["no_data_seconds"]
    if no_data is not None and (problems := _seconds(no_data, positive=True)):
        errors["no_data_seconds"] = problems
    if merged["severity"] not in Severity.values:
        errors["severity"] = [
            f"{merged['severity']!r} is not a severity; expected one of {', '.join(Severity.values)}"
        ]
    if not isinstance(merged["enabled"], bool):
        errors["enabled"] = ["must be true or false"]
    has_threshold = bool(op) or threshold is not None
    if has_threshold:
        for name, value in (("metric", merged["metric"]), ("op", op), ("threshold", threshold)):
            if value in ("", None) and name not in errors:
                errors[name] = ["required with a threshold: give metric, op and threshold together"]
        if (
            clear is not None
            and "clear_threshold" not in errors
            and _is_number(threshold)
            and op in Op.values
        ):
            if op in (Op.GT, Op.GE) and clear > threshold:
                errors["clear_threshold"] = [f"must be at most the threshold ({threshold}) for op {op!r}"]
            if op in (Op.LT, Op.LE) and clear < threshold:
                errors["clear_threshold"] = [f"must be at least the threshold ({threshold}) for op {op!r}"]
    else:
        if clear is not None and "clear_threshold" not in errors:
            errors["clear_threshold"] = ["only with a threshold (metric, op, threshold)"]
        if no_data is None and "no_data_seconds" not in errors:
            errors["threshold"] = [
                "a rule needs a threshold (metric, op, threshold), no_data_seconds, or both"
            ]
    notify, notify_errors = _notify_errors(
        merged["notify"], merged["severity"], threshold=has_threshold, no_data=no_data is not None
    )
    errors.update(notify_errors)
    fields = {
        "name": merged["name"],
        "kind": kind if not names else "",
        "metric": merged["metric"],
        "op": op,
        "threshold": float(threshold) if has_threshold and _is_number(threshold) else None,
        "for_seconds": float(merged["for_seconds"]) if _is_number(merged["for_seconds"]) else 0.0,
        "clear_threshold": float(clear) if _is_number(clear) else None,
        "no_data_seconds": float(no_data) if _is_number(no_data) else None,
        "severity": merged["severity"],
        "notify": notify,
        "enabled": merged["enabled"],
    }
    return fields, devices, errors


def rule_save(data: dict[str, Any], *, rule: Rule | None = None) -> Rule:
    """Create a rule from API-style ``data`` or, given ``rule``, change the fields ``data``
    names. ValidationFailed names each bad field; nothing is stored then. In the same
    transaction the no-data deadlines of the devices it covers start now, and alerts that
    no longer apply (a device it no longer covers, a condition removed, the rule
    disabled) are resolved. This process's rule map is rebuilt after commit; the other
    processes' within IOT_RULES_CACHE_SECONDS."""
    if not isinstance(data, dict):
        raise ValidationFailed({"body": ["must be an object"]})
    unknown = sorted(set(data) - set(RULE_FIELDS))
    if unknown:
        raise ValidationFailed(
            {name: [f"unknown field; a rule has {', '.join(RULE_FIELDS)}"] for name in unknown}
        )
    merged = _merged(data, rule)
    fields, devices, errors = _rule_errors(merged, rule)
    if errors:
        raise ValidationFailed(errors)
    now = timezone.now()
    with transaction.atomic():
        if rule is None:
            rule = Rule.objects.create(key=merged["key"], created_at=now, **fields)
        else:
            # NO KEY UPDATE: evaluators' FOR KEY SHARE on the rule goes on; a delete waits.
            rule = Rule.objects.select_for_update(no_key=True).get(pk=rule.pk)
            for name, value in fields.items():
                setattr(rule, name, value)
            rule.save(update_fields=list(fields))
        rule.devices.set(devices)
        _states_sync(rule, now)
        transaction.on_commit(rules_cache_clear)
    return rule


def _covered_device_ids(rule: Rule) -> set[int]:
    explicit = set(rule.devices.values_list("id", flat=True))
    if explicit:
        return explicit
    return set(
        Device.objects.filter(kind=rule.kind)
        .exclude(status=DeviceStatus.REVOKED)
        .values_list("id", flat=True)
    )


def _states_sync(rule: Rule, now: datetime) -> None:
    """Inside rule_save's transaction, the rule row locked."""
    covered = _covered_device_ids(rule) if rule.enabled else set()
    states = list(RuleState.objects.select_for_update().filter(rule=rule).order_by("device_id"))
    open_alerts = Alert.objects.filter(rule=rule, status=AlertStatus.OPEN)
    for alert in open_alerts:
        gone = alert.device_id not in covered
        stale = (alert.reason == REASON_THRESHOLD and not rule.op) or (
            alert.reason == REASON_NO_DATA and rule.no_data_seconds is None
        )
        if gone or stale:
            alert_resolve(alert, rule=rule, value=None, now=now)
    RuleState.objects.filter(id__in=[s.id for s in states if s.device_id not in covered]).delete()
    if rule.no_data_seconds is None:
        RuleState.objects.filter(rule=rule).update(no_data_deadline=None)
        return
    deadline = now + timedelta(seconds=rule.no_data_seconds)
    ids = sorted(covered)
    with connection.cursor() as db:
        db.execute(
            f"""INSERT INTO {RuleState._meta.db_table} (rule_id, device_id, no_data_deadline)
                SELECT %s, d, %s FROM unnest(%s::bigint[]) AS t(d) ORDER BY d
                ON CONFLICT (rule_id, device_id) DO UPDATE SET no_data_deadline = EXCLUDED.no_data_deadline""",
            [rule.id, deadline, ids],
        )


def rule_delete(rule: Rule) -> None:
    """Delete a rule with its states and alerts (open ones too, without a "resolved"
    event). It waits for the ingest batches evaluating it to commit."""
    with transaction.atomic():
        locked = Rule.objects.select_for_update().filter(pk=rule.pk).first()
        if locked is not None:
            locked.delete()
        transaction.on_commit(rules_cache_clear)


def rule_states_for_new_device(device: Device) -> int:
    """Start the no-data deadline of a newly provisioned device for each enabled no-data
    rule of its kind (rules naming devices cannot name it yet). Returns how many."""
    rules = list(
        Rule.objects.filter(
            enabled=True, kind=device.kind, no_data_seconds__isnull=False, devices__isnull=True
        )
    )
    now = timezone.now()
    created = RuleState.objects.bulk_create(
        [
            RuleState(
                rule=rule,
                device=device,
                no_data_deadline=now + timedelta(seconds=rule.no_data_seconds or 0),
            )
            for rule in rules
        ],
        ignore_conflicts=True,
    )
    return len(created)


# --- The map of rules ------------------------------------------------------------------------


@dataclass
class _RuleMap:
    loaded_at: float
    # RULES_VERSION_KEY when it was loaded (None: Redis did not answer)
    version: int | None = None
    rules: dict[int, Rule] = field(default_factory=dict)
    # metric -> rules watching it (a threshold, or a no-data rule on that metric)
    by_metric: dict[str, list[Rule]] = field(default_factory=dict)
    # no-data rules without a metric: any reading of a covered device counts
    any_metric: list[Rule] = field(default_factory=list)
    # rule id -> the devices it names; absent: every device of its kind
    devices: dict[int, frozenset[int]] = field(default_factory=dict)
    kinds: dict[int, str] = field(default_factory=dict)
    # (rule, device) pairs whose RuleState was seen: no INSERT needed for them
    known_states: set[tuple[int, int]] = field(default_factory=set)


_map_lock = threading.Lock()
_map: _RuleMap | None = None


# Bumped after every committed change of the rules, so that every ingest process rebuilds
# its map at its next batch, not up to IOT_RULES_CACHE_SECONDS later (a rule saved through
# the API then applies to the very next readings). One GET per batch; without Redis the
# map still expires after IOT_RULES_CACHE_SECONDS.
RULES_VERSION_KEY = "iot:rules:version"


def _rules_version() -> int | None:
    try:
        raw = redis_sync().get(redis_key(RULES_VERSION_KEY))
    except redis.RedisError:
        return None
    return int(raw or 0)


def rules_cache_clear() -> None:
    """Rebuild the rule map on next use, here and (through the version in Redis) in every
    other process (after a rule is saved or deleted)."""
    global _map
    with _map_lock:
        _map = None
    try:
        redis_sync().incr(redis_key(RULES_VERSION_KEY))
    except redis.RedisError as error:
        log.warning("other processes will see the rule change within their cache time: %s", error)


def _cache_seconds() -> float:
    return float(getattr(settings, "IOT_RULES_CACHE_SECONDS", 2.0))


def _rule_map() -> _RuleMap:
    global _map
    version = _rules_version()
    with _map_lock:
        current = _map
        if (
            current is not None
            and time.monotonic() - current.loaded_at < _cache_seconds()
            and (version is None or version == current.version)
        ):
            return current
    loaded = _RuleMap(loaded_at=time.monotonic(), version=version)
    for rule in Rule.objects.filter(enabled=True).order_by("id"):
        loaded.rules[rule.id] = rule
        if rule.metric:
            loaded.by_metric.setdefault(rule.metric, []).append(rule)
        elif rule.no_data_seconds is not None:
            loaded.any_metric.append(rule)
    explicit: dict[int, set[int]] = defaultdict(set)
    for rule_id, device_id in Rule.devices.through.objects.filter(rule_id__in=list(loaded.rules)).values_list(
        "rule_id", "device_id"
    ):
        explicit[rule_id].add(device_id)
    loaded.devices = {rule_id: frozenset(ids) for rule_id, ids in explicit.items()}
    with _map_lock:
        _map = loaded
    return loaded


def _kinds_of(rule_map: _RuleMap, device_ids: set[int]) -> dict[int, str]:
    missing = [d for d in device_ids if d not in rule_map.kinds]
    if missing:
        rule_map.kinds.update(Device.objects.filter(id__in=missing).values_list("id", "kind"))
    return rule_map.kinds


def _applies(rule_map: _RuleMap, rule: Rule, device_id: int) -> bool:
    named = rule_map.devices.get(rule.id)
    if named is not None:
        return device_id in named
    return rule_map.kinds.get(device_id) == rule.kind


# --- Evaluation --------------------------------------------------------------------------------


@dataclass
class _State:
    id: int
    rule_id: int
    device_id: int
    breach_since: datetime | None
    last_value: float | None
    last_reading_at: datetime | None
    no_data_deadline: datetime | None


_STATE_COLUMNS = (
    "s.id, s.rule_id, s.device_id, s.breach_since, s.last_value, s.last_reading_at, s.no_data_deadline"
)


def _breaching(op: str, value: float, threshold: float) -> bool:
    if op == Op.GT:
        return value > threshold
    if op == Op.GE:
        return value >= threshold
    if op == Op.LT:
        return value < threshold
    return value <= threshold


def _cleared(rule: Rule, value: float) -> bool:
    assert rule.threshold is not None
    limit = rule.clear_threshold if rule.clear_threshold is not None else rule.threshold
    return not _breaching(rule.op, value, limit)


def _lock_states(pairs: list[tuple[int, int]], rule_map: _RuleMap) -> list[_State]:
    """The RuleStates of ``pairs`` (sorted), created when missing, locked in that order.
    A pair whose state vanished between the two statements (a rule save dropping the
    device) is left out of this batch."""
    states = _select_states(pairs, insert=any(p not in rule_map.known_states for p in pairs))
    if len(states) < len(pairs):
        # A state this process saw was deleted since (its rule's devices changed): create
        # it again. Rare, and the only place locks are taken out of (rule, device) order.
        seen = {(s.rule_id, s.device_id) for s in states}
        missing = [p for p in pairs if p not in seen]
        rule_map.known_states.difference_update(missing)
        states = sorted(states + _select_states(missing, insert=True), key=lambda s: (s.rule_id, s.device_id))
    rule_map.known_states.update((s.rule_id, s.device_id) for s in states)
    return states


def _select_states(pairs: list[tuple[int, int]], *, insert: bool) -> list[_State]:
    rule_ids, device_ids = [p[0] for p in pairs], [p[1] for p in pairs]
    table = RuleState._meta.db_table
    with connection.cursor() as db:
        if insert:
            db.execute(
                f"""INSERT INTO {table} (rule_id, device_id)
                    SELECT r, d FROM unnest(%s::bigint[], %s::bigint[]) AS t(r, d) ORDER BY r, d
                    ON CONFLICT (rule_id, device_id) DO NOTHING""",
                [rule_ids, device_ids],
            )
        db.execute(
            f"""SELECT {_STATE_COLUMNS} FROM {table} s
                JOIN unnest(%s::bigint[], %s::bigint[]) AS t(r, d) ON s.rule_id = t.r AND s.device_id = t.d
                ORDER BY s.rule_id, s.device_id FOR UPDATE OF s""",
            [rule_ids, device_ids],
        )
        return [_State(*row) for row in db.fetchall()]


def _states_write(states: list[_State]) -> None:
    with connection.cursor() as db:
        db.execute(
            f"""UPDATE {RuleState._meta.db_table} AS s
                SET breach_since = t.b, last_value = t.v, last_reading_at = t.r, no_data_deadline = t.n
                FROM unnest(%s::bigint[], %s::timestamptz[], %s::float8[], %s::timestamptz[],
                            %s::timestamptz[]) AS t(id, b, v, r, n)
                WHERE s.id = t.id""",
            [
                [s.id for s in states],
                [s.breach_since for s in states],
                [s.last_value for s in states],
                [s.last_reading_at for s in states],
                [s.no_data_deadline for s in states],
            ],
        )


def rules_evaluate(readings: Sequence[tuple[int, str, datetime, float]], *, now: datetime) -> None:
    """Evaluate the rules that apply to ``readings`` (device_id, metric, ts, value), just
    stored and sorted by ts within each device and metric, inside the caller's
    transaction: opens, updates and resolves alerts and stores their events (module
    docstring). Costs no query when no enabled rule watches their metrics."""
    rule_map = _rule_map()
    if not rule_map.rules or not readings:
        return
    series: dict[tuple[int, str], list[tuple[datetime, float]]] = defaultdict(list)
    for device_id, metric, ts, value in readings:
        if metric in rule_map.by_metric or rule_map.any_metric:
            series[(device_id, metric)].append((ts, value))
    if not series:
        return
    if any(rule.id not in rule_map.devices for rule in rule_map.rules.values()):
        _kinds_of(rule_map, {device_id for device_id, _ in series})
    # (rule, device) -> that rule's metric's readings (empty for a metric-less no-data rule)
    work: dict[tuple[int, int], list[tuple[datetime, float]]] = {}
    for (device_id, metric), points in series.items():
        for rule in rule_map.by_metric.get(metric, ()):
            if _applies(rule_map, rule, device_id):
                work[(rule.id, device_id)] = points
        for rule in rule_map.any_metric:
            if _applies(rule_map, rule, device_id):
                work.setdefault((rule.id, device_id), [])
    if not work:
        return
    latest: dict[int, datetime] = {}
    for (device_id, _), points in series.items():
        if device_id not in latest or points[-1][0] > latest[device_id]:
            latest[device_id] = points[-1][0]
    # Inside the ingest's transaction no savepoint of its own (two round trips a batch):
    # a failure here fails the batch, as it must (the alerts and the readings go together).
    with transaction.atomic(savepoint=False):
        _evaluate(work, latest, rule_map, now)


def _evaluate(
    work: dict[tuple[int, int], list[tuple[datetime, float]]],
    latest: dict[int, datetime],
    rule_map: _RuleMap,
    now: datetime,
) -> None:
    rule_ids = sorted({rule_id for rule_id, _ in work})
    with connection.cursor() as db:
        # Before the states: a rule being deleted holds FOR UPDATE on its row and then
        # deletes its states, so taking the rule first keeps one lock order.
        db.execute(
            f"SELECT id FROM {Rule._meta.db_table} WHERE id = ANY(%s) AND enabled ORDER BY id FOR KEY SHARE",
            [rule_ids],
        )
        live = {row[0] for row in db.fetchall()}
    pairs = sorted(pair for pair in work if pair[0] in live)
    if not pairs:
        return
    states = _lock_states(pairs, rule_map)
    open_alerts = {
        (a.rule_id, a.device_id): a
        for a in Alert.objects.filter(
            status=AlertStatus.OPEN,
            rule_id__in=sorted({p[0] for p in pairs}),
            device_id__in=sorted({p[1] for p in pairs}),
        )
    }
    observed: dict[int, Alert] = {}
    for state in states:
        rule = rule_map.rules[state.rule_id]
        pair = (state.rule_id, state.device_id)
        alert = open_alerts.get(pair)
        points = work[pair]
        if rule.no_data_seconds is not None:
            state.no_data_deadline = now + timedelta(seconds=rule.no_data_seconds)
            if alert is not None and alert.reason == REASON_NO_DATA:
                alert_resolve(alert, rule=rule, value=points[-1][1] if points else None, now=now)
                alert = None
        if not rule.metric:
            newest = latest[state.device_id]
            if state.last_reading_at is None or newest > state.last_reading_at:
                state.last_reading_at = newest
        for ts, value in points:
            if state.last_reading_at is not None and ts <= state.last_reading_at:
                continue  # late or out of order: it does not describe the present
            state.last_value, state.last_reading_at = value, ts
            if not rule.op or rule.threshold is None:
                continue
            if alert is not None:
                if alert.reason != REASON_THRESHOLD:
                    continue
                if _cleared(rule, value):
                    observed.pop(alert.id, None)
                    alert_resolve(alert, rule=rule, value=value, now=now)
                    alert, state.breach_since = None, None
                else:
                    alert_observe(alert, rule=rule, value=value, now=now)
                    observed[alert.id] = alert
                continue
            if not _breaching(rule.op, value, rule.threshold):
                state.breach_since = None
                continue
            if state.breach_since is None:
                state.breach_since = ts
            if (ts - state.breach_since).total_seconds() >= rule.for_seconds:
                alert = alert_open(
                    rule=rule, device_id=state.device_id, reason=REASON_THRESHOLD, value=value, now=now
                )
    alerts_save_observed(observed.values())
    _states_write(states)


# --- No data -------------------------------------------------------------------------------------


def rules_no_data_sweep(*, now: datetime) -> int:
    """Open a no-data alert for each RuleState whose deadline passed by ``now`` (the
    ``no_data_deadline`` index), in batches of SWEEP_BATCH, each its own transaction;
    rows another sweeper or a batch of readings holds are skipped (theirs). The
    deadline is cleared either way: the device's next reading starts a new one. Returns
    how many alerts it opened (reopened ones included)."""
    opened = 0
    while True:
        with transaction.atomic():
            states = list(
                RuleState.objects.select_for_update(skip_locked=True, no_key=True, of=("self", "rule"))
                .select_related("rule", "device")
                .filter(no_data_deadline__lte=now)
                .order_by("no_data_deadline")[:SWEEP_BATCH]
            )
            if not states:
                return opened
            open_pairs = set(
                Alert.objects.filter(
                    status=AlertStatus.OPEN,
                    rule_id__in={s.rule_id for s in states},
                    device_id__in={s.device_id for s in states},
                ).values_list("rule_id", "device_id")
            )
            for state in states:
                rule, device = state.rule, state.device
                if (
                    not rule.enabled
                    or rule.no_data_seconds is None
                    or device.status == DeviceStatus.REVOKED
                    or (rule.id, device.id) in open_pairs
                ):
                    continue
                alert_open(rule=rule, device_id=device.id, reason=REASON_NO_DATA, value=None, now=now)
                opened += 1
            RuleState.objects.filter(id__in=[s.id for s in states]).update(no_data_deadline=None)
        if len(states) < SWEEP_BATCH:
            return opened
