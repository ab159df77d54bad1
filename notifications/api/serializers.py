"""Request and response shapes of the v1 API. Shape checks live here; checks that need
the database (unknown type, recipients, topic) live in the services."""

from __future__ import annotations

import json
import re
from datetime import time
from typing import Any
from zoneinfo import available_timezones

import phonenumbers
from django.conf import settings
from rest_framework import serializers

from notifications.models import (
    KEY_VALIDATOR,
    TEMPLATE_FIELDS,
    Category,
    Channel,
    DevicePlatform,
    NotificationType,
    QuietHoursPolicy,
    Recipient,
)
from notifications.services.templating import template_check

_TIMEZONES = frozenset(available_timezones())
_LOCALE = re.compile(r"^[a-z]{2,3}([_-][A-Za-z0-9]{2,8})*$")
CHANNELS = [c.value for c in Channel]
CATEGORIES = [c.value for c in Category]


class StrictSerializer(serializers.Serializer):
    """Rejects fields it does not know, so typos are errors instead of silent no-ops."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name: ["unknown field"] for name in unknown})
        return super().to_internal_value(data)


class RecipientSerializer(StrictSerializer):
    external_id = serializers.CharField(read_only=True)
    name = serializers.CharField(max_length=200, required=False, allow_blank=True)
    email = serializers.EmailField(required=False, allow_blank=True)
    phone = serializers.CharField(
        max_length=32, required=False, allow_blank=True, help_text="E.164, e.g. +14155550100"
    )
    locale = serializers.CharField(max_length=20, required=False)
    timezone = serializers.CharField(max_length=64, required=False, help_text="IANA name, e.g. Europe/Lisbon")
    created_at = serializers.DateTimeField(read_only=True)
    updated_at = serializers.DateTimeField(read_only=True)

    def validate_phone(self, value: str) -> str:
        if not value:
            return value
        try:
            number = phonenumbers.parse(value, None)
        except phonenumbers.NumberParseException as exc:
            raise serializers.ValidationError(
                f"{value!r} is not a phone number in E.164 form (+<country><number>)"
            ) from exc
        if not phonenumbers.is_valid_number(number):
            raise serializers.ValidationError(f"{value!r} is not a valid phone number")
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)

    def validate_locale(self, value: str) -> str:
        if not _LOCALE.match(value):
            raise serializers.ValidationError(f"{value!r} is not a locale such as 'en' or 'pt-BR'")
        return value

    def validate_timezone(self, value: str) -> str:
        if value not in _TIMEZONES:
            raise serializers.ValidationError(f"{value!r} is not an IANA time zone such as 'Europe/Lisbon'")
        return value


class DeviceSerializer(StrictSerializer):
    id = serializers.IntegerField(read_only=True)
    platform = serializers.ChoiceField(choices=DevicePlatform.choices)
    token = serializers.CharField(max_length=512, min_length=1)
    active = serializers.BooleanField(read_only=True)
    created_at = serializers.DateTimeField(read_only=True)


class TokenSerializer(serializers.Serializer):
    token = serializers.CharField()
    expires_at = serializers.DateTimeField()


def _channel_map(value: Any, label: str) -> dict[str, bool]:
    if not isinstance(value, dict):
        raise serializers.ValidationError(f"{label} must be an object of channel: true|false")
    errors = {}
    for channel, enabled in value.items():
        if channel not in CHANNELS:
            errors[channel] = [f"unknown channel; expected one of {', '.join(CHANNELS)}"]
        elif not isinstance(enabled, bool):
            errors[channel] = ["must be true or false"]
    if errors:
        raise serializers.ValidationError(errors)
    return dict(value)


def _clock(value: Any, field: str) -> time:
    if not isinstance(value, str) or not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
        raise serializers.ValidationError({field: ["must be a time of day as HH:MM"]})
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


class PreferencesSerializer(StrictSerializer):
    channels = serializers.DictField(child=serializers.BooleanField(), required=False, default=dict)
    categories = serializers.DictField(child=serializers.DictField(), required=False, default=dict)
    types = serializers.DictField(child=serializers.DictField(), required=False, default=dict)
    quiet_hours = serializers.DictField(
        child=serializers.CharField(), required=False, allow_null=True, default=None
    )

    def validate_channels(self, value: Any) -> dict[str, bool]:
        return _channel_map(value, "channels")

    def validate_categories(self, value: Any) -> dict[str, dict[str, bool]]:
        errors: dict[str, Any] = {}
        result = {}
        for category, channels in value.items():
            if category not in CATEGORIES:
                errors[category] = [f"unknown category; expected one of {', '.join(CATEGORIES)}"]
                continue
            try:
                result[category] = _channel_map(channels, category)
            except serializers.ValidationError as exc:
                errors[category] = exc.detail
        if errors:
            raise serializers.ValidationError(errors)
        return result

    def validate_types(self, value: Any) -> dict[NotificationType, dict[str, bool]]:
        known = {t.key: t for t in NotificationType.objects.filter(key__in=list(value))}
        errors: dict[str, Any] = {}
        result = {}
        for key, channels in value.items():
            if key not in known:
                errors[key] = [f"unknown notification type {key!r}"]
                continue
            try:
                result[known[key]] = _channel_map(channels, key)
            except serializers.ValidationError as exc:
                errors[key] = exc.detail
        if errors:
            raise serializers.ValidationError(errors)
        return result

    def validate_quiet_hours(self, value: Any) -> tuple[time, time] | None:
        if value is None:
            return None
        unknown = sorted(set(value) - {"start", "end"})
        if unknown:
            raise serializers.ValidationError({name: ["unknown field"] for name in unknown})
        if "start" not in value or "end" not in value:
            raise serializers.ValidationError({"start": ["start and end are both required"]})
        start, end = _clock(value["start"], "start"), _clock(value["end"], "end")
        if start == end:
            raise serializers.ValidationError({"end": ["must differ from start"]})
        return start, end


class AggregationSerializer(StrictSerializer):
    window_seconds = serializers.IntegerField(min_value=1, max_value=86_400)


class NotificationTypeSerializer(StrictSerializer):
    key = serializers.CharField(max_length=100, validators=[KEY_VALIDATOR])
    name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    category = serializers.ChoiceField(choices=Category.choices)
    channels = serializers.ListField(child=serializers.ChoiceField(choices=Channel.choices), min_length=1)
    templates = serializers.DictField(
        child=serializers.DictField(child=serializers.CharField(allow_blank=True))
    )
    aggregation = AggregationSerializer(required=False, allow_null=True, default=None)
    quiet_hours_policy = serializers.ChoiceField(
        choices=QuietHoursPolicy.choices, required=False, default=QuietHoursPolicy.DEFER
    )
    default_locale = serializers.CharField(max_length=20, required=False, default="en")
    created_at = serializers.DateTimeField(read_only=True)

    def validate_key(self, value: str) -> str:
        instance = self.instance
        taken = NotificationType.objects.filter(key=value)
        if isinstance(instance, NotificationType):
            taken = taken.exclude(id=instance.id)
        if taken.exists():
            raise serializers.ValidationError(f"a notification type with key {value!r} already exists")
        return value

    def validate_channels(self, value: list[str]) -> list[str]:
        duplicates = sorted({c for c in value if value.count(c) > 1})
        if duplicates:
            raise serializers.ValidationError(f"channels listed twice: {', '.join(duplicates)}")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        templates: dict[str, dict[str, str]] = attrs.get("templates", {})
        errors: dict[str, Any] = {}
        for channel in attrs.get("channels", []):
            if channel not in templates:
                errors[channel] = [f"a template is required for channel {channel!r}"]
        for channel, content in templates.items():
            if channel not in attrs.get("channels", []):
                errors[channel] = [f"channel {channel!r} is not in channels"]
                continue
            allowed = TEMPLATE_FIELDS[channel]
            field_errors: dict[str, list[str]] = {}
            for field, source in content.items():
                if field not in allowed:
                    field_errors[field] = [f"unknown field; {channel} templates have {', '.join(allowed)}"]
                elif (problem := template_check(source=source)) is not None:
                    field_errors[field] = [problem]
            required = {"inapp": ["title"], "email": ["subject"], "sms": ["text"], "push": ["body"]}.get(
                channel, []
            )
            for field in required:
                if not content.get(field):
                    field_errors.setdefault(field, []).append("this field is required")
            if channel == "email" and not (content.get("html") or content.get("text")):
                field_errors.setdefault("text", []).append("an email needs html or text")
            if field_errors:
                errors[channel] = field_errors
        if errors:
            raise serializers.ValidationError({"templates": errors})
        return attrs


class SubscribersSerializer(StrictSerializer):
    recipients = serializers.ListField(
        child=serializers.CharField(max_length=200), min_length=1, max_length=10_000
    )


class EventCreateSerializer(StrictSerializer):
    type = serializers.CharField(max_length=100)
    recipients = serializers.ListField(
        child=serializers.CharField(max_length=200), required=False, min_length=1
    )
    topic = serializers.CharField(max_length=100, required=False)
    data = serializers.DictField(required=False, default=dict)  # type: ignore[assignment]
    idempotency_key = serializers.CharField(max_length=255, required=False, allow_blank=False)
    send_at = serializers.DateTimeField(required=False, help_text="ISO 8601; later than now defers the send")

    def validate_recipients(self, value: list[str]) -> list[str]:
        limit = settings.MAX_EXPLICIT_RECIPIENTS
        if len(value) > limit:
            raise serializers.ValidationError(f"at most {limit} recipients per event; use a topic for more")
        return value

    def validate_data(self, value: dict[str, Any]) -> dict[str, Any]:
        size = len(json.dumps(value, separators=(",", ":")).encode())
        if size > settings.MAX_EVENT_DATA_BYTES:
            raise serializers.ValidationError(
                f"data is {size} bytes; the limit is {settings.MAX_EVENT_DATA_BYTES}"
            )
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        has_recipients, has_topic = "recipients" in attrs, "topic" in attrs
        if has_recipients == has_topic:
            message = (
                "give either recipients or topic, not both"
                if has_topic
                else "recipients or topic is required"
            )
            raise serializers.ValidationError({"recipients": [message]})
        return attrs


class EventAcceptedSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.CharField()


class EventSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    type = serializers.CharField(source="notification_type.key")
    status = serializers.CharField()
    created_at = serializers.DateTimeField()
    send_at = serializers.DateTimeField(allow_null=True)
    recipients_planned = serializers.IntegerField(source="planned_count")
    deliveries = serializers.DictField(child=serializers.DictField(child=serializers.IntegerField()))


class DeliverySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    recipient = serializers.CharField(source="recipient.external_id")
    channel = serializers.CharField()
    status = serializers.CharField()
    reason = serializers.CharField()
    attempts = serializers.IntegerField()
    aggregate_count = serializers.IntegerField(help_text="How many events this delivery stands for")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class InboxItemSerializer(serializers.Serializer):
    """Documentation of ``inbox_item_payload`` (the one shape of an item everywhere)."""

    id = serializers.IntegerField()
    seq = serializers.IntegerField()
    type = serializers.CharField()
    category = serializers.CharField()
    title = serializers.CharField()
    body = serializers.CharField()
    url = serializers.CharField()
    data = serializers.DictField()  # type: ignore[assignment]
    read = serializers.BooleanField()
    read_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    event_id = serializers.UUIDField()


class InboxPageSerializer(serializers.Serializer):
    results = InboxItemSerializer(many=True)
    unread_count = serializers.IntegerField()
    last_seq = serializers.IntegerField()


def recipient_fields(validated: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in validated.items() if k in {"name", "email", "phone", "locale", "timezone"}}


def recipient_payload(recipient: Recipient) -> dict[str, Any]:
    return dict(RecipientSerializer(recipient).data)
