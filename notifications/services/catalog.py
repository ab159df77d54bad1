"""Notification types and their templates."""

from __future__ import annotations

import time
from typing import Any

from django.db import transaction

from notifications.models import NotificationTemplate, NotificationType


def notification_type_save(
    *,
    key: str,
    fields: dict[str, Any],
    templates: dict[str, dict[str, str]],
    instance: NotificationType | None = None,
) -> NotificationType:
    """Create (or, given ``instance``, replace) a type with its default-locale templates."""
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
