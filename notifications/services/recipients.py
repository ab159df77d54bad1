"""Recipients, their devices, webhook endpoints, preferences and topic subscriptions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import time
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from notifications.models import (
    Device,
    NotificationType,
    Preference,
    Recipient,
    Subscription,
    Topic,
    WebhookEndpoint,
    WebhookKind,
)
from notifications.services.validation import (
    RuleViolation,
    ValidationFailed,
    external_id_check,
    recipient_fields_clean,
    webhook_kind_check,
    webhook_secret_check,
    webhook_url_check,
)


@dataclass(frozen=True)
class PreferenceSet:
    """A recipient's stored overrides in the API's shape."""

    channels: dict[str, bool]
    categories: dict[str, dict[str, bool]]
    types: dict[str, dict[str, bool]]
    quiet_hours: dict[str, str] | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "channels": self.channels,
            "categories": self.categories,
            "types": self.types,
            "quiet_hours": self.quiet_hours,
        }


def recipient_upsert(*, external_id: str, fields: dict[str, Any]) -> tuple[Recipient, bool]:
    """Create or update the recipient; only the given fields change. Returns (row, created).

    The fields are checked and normalised (E.164 phone, IANA time zone, ...) by the rules of
    services/validation.py; ValidationFailed names every bad field and nothing is stored."""
    errors: dict[str, list[str]] = {}
    try:
        external_id_check(external_id)
    except RuleViolation as exc:
        errors["external_id"] = [str(exc)]
    fields, field_errors = recipient_fields_clean(fields)
    errors.update(field_errors)
    if errors:
        raise ValidationFailed(errors)
    with transaction.atomic():
        recipient, created = Recipient.objects.select_for_update().get_or_create(
            external_id=external_id, defaults=fields
        )
        if not created and fields:
            for name, value in fields.items():
                setattr(recipient, name, value)
            recipient.save(update_fields=[*fields, "updated_at"])
    return recipient, created


def device_register(*, recipient: Recipient, platform: str, token: str) -> tuple[Device, bool]:
    """Register a push token for the recipient. A token seen before (the app was reinstalled
    or another user signed in on the device) moves to this recipient and is reactivated."""
    now = timezone.now()
    with transaction.atomic():
        device = Device.objects.select_for_update().filter(platform=platform, token=token).first()
        if device is None:
            try:
                with transaction.atomic():
                    return Device.objects.create(recipient=recipient, platform=platform, token=token), True
            except IntegrityError:
                device = Device.objects.select_for_update().get(platform=platform, token=token)
        device.recipient = recipient
        device.active = True
        device.deactivated_at = None
        device.last_seen_at = now
        device.save(update_fields=["recipient", "active", "deactivated_at", "last_seen_at"])
    return device, False


def webhook_endpoint_add(
    *, recipient: Recipient, kind: str, url: str, secret: str = ""
) -> tuple[WebhookEndpoint, bool]:
    """Add a webhook endpoint to the recipient. The same URL again replaces its kind and
    secret and reactivates it (one endpoint per URL). Returns (endpoint, created).
    ValidationFailed when the URL or secret breaks the rules of services/validation.py."""
    errors: dict[str, list[str]] = {}
    try:
        url = webhook_url_check(url)
    except RuleViolation as exc:
        errors["url"] = [str(exc)]
    try:
        secret = webhook_secret_check(kind=webhook_kind_check(kind), secret=secret)
    except RuleViolation as exc:
        errors["secret" if kind in WebhookKind.values else "kind"] = [str(exc)]
    if errors:
        raise ValidationFailed(errors)
    with transaction.atomic():
        endpoint = WebhookEndpoint.objects.select_for_update().filter(recipient=recipient, url=url).first()
        if endpoint is None:
            try:
                with transaction.atomic():
                    created = WebhookEndpoint.objects.create(
                        recipient=recipient, kind=kind, url=url, secret=secret
                    )
                    return created, True
            except IntegrityError:
                # A concurrent request added the same URL first; update that one.
                endpoint = WebhookEndpoint.objects.select_for_update().get(recipient=recipient, url=url)
        endpoint.kind, endpoint.secret, endpoint.active = kind, secret, True
        endpoint.save(update_fields=["kind", "secret", "active"])
    return endpoint, False


def webhook_endpoint_remove(*, recipient: Recipient, endpoint_id: int) -> bool:
    """Delete one of the recipient's endpoints; False when it has no such endpoint."""
    deleted, _ = WebhookEndpoint.objects.filter(recipient=recipient, id=endpoint_id).delete()
    return deleted > 0


def preferences_get(*, recipient: Recipient) -> PreferenceSet:
    channels: dict[str, bool] = {}
    categories: dict[str, dict[str, bool]] = {}
    types: dict[str, dict[str, bool]] = {}
    for pref in Preference.objects.filter(recipient=recipient).select_related("notification_type"):
        if pref.notification_type is not None:
            types.setdefault(pref.notification_type.key, {})[pref.channel] = pref.enabled
        elif pref.category:
            categories.setdefault(pref.category, {})[pref.channel] = pref.enabled
        else:
            channels[pref.channel] = pref.enabled
    quiet = None
    if recipient.quiet_hours_start is not None and recipient.quiet_hours_end is not None:
        quiet = {
            "start": recipient.quiet_hours_start.strftime("%H:%M"),
            "end": recipient.quiet_hours_end.strftime("%H:%M"),
        }
    return PreferenceSet(channels=channels, categories=categories, types=types, quiet_hours=quiet)


def preferences_replace(
    *,
    recipient: Recipient,
    channels: dict[str, bool],
    categories: dict[str, dict[str, bool]],
    types: dict[NotificationType, dict[str, bool]],
    quiet_hours: tuple[time, time] | None,
) -> PreferenceSet:
    """Replace every stored override of the recipient in one transaction."""
    rows = [Preference(recipient=recipient, channel=c, enabled=e) for c, e in channels.items()]
    rows += [
        Preference(recipient=recipient, category=cat, channel=c, enabled=e)
        for cat, values in categories.items()
        for c, e in values.items()
    ]
    rows += [
        Preference(recipient=recipient, notification_type=nt, channel=c, enabled=e)
        for nt, values in types.items()
        for c, e in values.items()
    ]
    with transaction.atomic():
        Preference.objects.filter(recipient=recipient).delete()
        Preference.objects.bulk_create(rows)
        recipient.quiet_hours_start, recipient.quiet_hours_end = quiet_hours or (None, None)
        recipient.save(update_fields=["quiet_hours_start", "quiet_hours_end", "updated_at"])
    return preferences_get(recipient=recipient)


def topic_subscribe(*, topic_key: str, recipients: list[Recipient]) -> tuple[Topic, int]:
    """Subscribe recipients to the topic, creating the topic on first use. Returns the topic
    and how many subscriptions are new."""
    topic, _ = Topic.objects.get_or_create(key=topic_key)
    before = Subscription.objects.filter(topic=topic, recipient__in=recipients).count()
    Subscription.objects.bulk_create(
        [Subscription(topic=topic, recipient=r) for r in recipients], ignore_conflicts=True, batch_size=1000
    )
    return topic, len(recipients) - before


def topic_unsubscribe(*, topic: Topic, recipients: list[Recipient]) -> int:
    deleted, _ = Subscription.objects.filter(topic=topic, recipient__in=recipients).delete()
    return deleted
