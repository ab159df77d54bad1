"""Reading rules and alerts. Rules and alerts are the services' (API keys') business: no
end user reads them through these, so there is no acting user to scope by."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from iot.models import Alert, AlertStatus, Rule

ALERTS_LIMIT_MAX = 500


def rules_all() -> QuerySet[Rule]:
    """Every rule by key, with its devices prefetched."""
    return Rule.objects.order_by("key").prefetch_related("devices")


def rule_by_key(key: str) -> Rule | None:
    return Rule.objects.filter(key=key).prefetch_related("devices").first()


def rule_device_keys(rule: Rule) -> list[str]:
    """The keys of the devices a rule names (empty for a rule by kind), sorted."""
    return sorted(device.key for device in rule.devices.all())


def _alerts() -> QuerySet[Alert]:
    return Alert.objects.select_related("device", "rule")


def alerts_open(limit: int = 100) -> list[Alert]:
    """The open alerts, newest first, at most ``limit`` (up to ALERTS_LIMIT_MAX), each
    with its device and rule."""
    limit = max(1, min(limit, ALERTS_LIMIT_MAX))
    return list(_alerts().filter(status=AlertStatus.OPEN).order_by("-opened_at", "-id")[:limit])


def alerts_list(*, status: str | None = None, device_key: str | None = None, limit: int = 100) -> list[Alert]:
    """Alerts newest first, filtered by status and device key, each with device and rule."""
    limit = max(1, min(limit, ALERTS_LIMIT_MAX))
    alerts = _alerts()
    if status:
        alerts = alerts.filter(status=status)
    if device_key:
        alerts = alerts.filter(device__key=device_key)
    return list(alerts.order_by("-opened_at", "-id")[:limit])


def alert_by_id(alert_id: int) -> Alert | None:
    return _alerts().filter(id=alert_id).first()


def rule_data(rule: Rule) -> dict[str, Any]:
    """A rule as the API shows it and ``rule_save`` takes it (plus ``created_at``)."""
    return {
        "key": rule.key,
        "name": rule.name,
        "devices": rule_device_keys(rule),
        "kind": rule.kind,
        "metric": rule.metric,
        "op": rule.op,
        "threshold": rule.threshold,
        "for_seconds": rule.for_seconds,
        "clear_threshold": rule.clear_threshold,
        "no_data_seconds": rule.no_data_seconds,
        "severity": rule.severity,
        "notify": rule.notify,
        "enabled": rule.enabled,
        "created_at": rule.created_at,
    }
