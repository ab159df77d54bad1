"""Notification types and their templates."""

from __future__ import annotations

import time
from typing import Any

from django.db import transaction

from notifications.models import Category, Channel, NotificationTemplate, NotificationType, QuietHoursPolicy
from notifications.services.validation import (
    RuleViolation,
    ValidationFailed,
    fallback_rules_clean,
    key_check,
    locale_check,
    type_templates_errors,
)


def notification_type_errors(
    *, key: str, fields: dict[str, Any], templates: dict[str, Any], instance: NotificationType | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The type's fields with its fallback rules in stored form, and the errors by field:
    the one judgement of a type, whether it comes from the API or the admin."""
    errors: dict[str, Any] = {}
    if instance is None:
        try:
            key_check(key)
        except RuleViolation as exc:
            errors["key"] = [str(exc)]
        else:
            if NotificationType.objects.filter(key=key).exists():
                errors["key"] = [f"a notification type with key {key!r} already exists"]
    category = fields.get("category", Category.TRANSACTIONAL)
    if category not in Category.values:
        errors["category"] = [f"{category!r} is not a category; expected one of {', '.join(Category.values)}"]
    channels = list(fields.get("channels") or [])
    unknown = [c for c in channels if c not in Channel.values]
    if not channels:
        errors["channels"] = ["at least one channel is required"]
    elif unknown:
        errors["channels"] = [
            f"unknown channel(s) {', '.join(map(repr, unknown))}; expected some of {', '.join(Channel.values)}"
        ]
    elif len(set(channels)) < len(channels):
        twice = sorted({c for c in channels if channels.count(c) > 1})
        errors["channels"] = [f"channels listed twice: {', '.join(twice)}"]
    policy = fields.get("quiet_hours_policy", QuietHoursPolicy.DEFER)
    if policy not in QuietHoursPolicy.values:
        errors["quiet_hours_policy"] = [
            f"{policy!r} is not a policy; expected one of {', '.join(QuietHoursPolicy.values)}"
        ]
    if "default_locale" in fields:
        try:
            locale_check(fields["default_locale"])
        except RuleViolation as exc:
            errors["default_locale"] = [str(exc)]
    window = fields.get("aggregation_window_seconds")
    if window is not None and (
        not isinstance(window, int) or isinstance(window, bool) or not 1 <= window <= 86_400
    ):
        errors["aggregation_window_seconds"] = [f"must be 1 to 86400 seconds, got {window!r}"]
    fallbacks, fallback_errors = fallback_rules_clean(
        fields.get("fallbacks", []), channels=channels, template_channels=set(templates)
    )
    errors.update(fallback_errors)
    template_errors = type_templates_errors(
        channels=channels, templates=templates, fallback_targets={rule["to"] for rule in fallbacks}
    )
    if template_errors:
        errors["templates"] = template_errors
    return {**fields, "fallbacks": fallbacks}, errors


def notification_type_save(
    *,
    key: str,
    fields: dict[str, Any],
    templates: dict[str, dict[str, str]],
    instance: NotificationType | None = None,
) -> NotificationType:
    """Create (or, given ``instance``, replace) a type with its default-locale templates.
    ValidationFailed names every field that breaks the rules; nothing is stored then."""
    fields, errors = notification_type_errors(key=key, fields=fields, templates=templates, instance=instance)
    if errors:
        raise ValidationFailed(errors)
    with transaction.atomic():
        if instance is None:
            instance = NotificationType.objects.create(key=key, **fields)
        else:
            for name, value in fields.items():
                setattr(instance, name, value)
            instance.save()
        locale = instance.default_locale
        NotificationTemplate.objects.filter(notification_type=instance, locale=locale).exclude(
            channel__in=list(templates)
        ).delete()
        for channel, content in templates.items():
            NotificationTemplate.objects.update_or_create(
                notification_type=instance, channel=channel, locale=locale, defaults={"content": content}
            )
    return instance


def notification_type_templates(*, notification_type: NotificationType) -> dict[str, dict[str, str]]:
    return {
        t.channel: t.content
        for t in NotificationTemplate.objects.filter(
            notification_type=notification_type, locale=notification_type.default_locale
        )
    }


# Templates change rarely and are read for every batch: keep them a few seconds per process.
TEMPLATE_CACHE_SECONDS = 5.0
_template_cache: dict[tuple[int, str], tuple[float, dict[str, dict[str, str]]]] = {}


def channel_templates(*, type_id: int, channel: str) -> dict[str, dict[str, str]]:
    """{locale: content} of one channel of a type, cached for a few seconds per process:
    edits apply within TEMPLATE_CACHE_SECONDS."""
    cached = _template_cache.get((type_id, channel))
    if cached is not None and time.monotonic() - cached[0] < TEMPLATE_CACHE_SECONDS:
        return cached[1]
    templates = {
        t.locale: t.content
        for t in NotificationTemplate.objects.filter(notification_type_id=type_id, channel=channel)
    }
    _template_cache[(type_id, channel)] = (time.monotonic(), templates)
    return templates
