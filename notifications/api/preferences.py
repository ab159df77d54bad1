"""A recipient's preferences: channel, category and type overrides, quiet hours, and digest
frequencies per category."""

from __future__ import annotations

from datetime import time
from typing import Any

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from notifications.api.common import StrictSerializer, operation
from notifications.models import KEY_PATTERN, DigestFrequency, NotificationType, Recipient
from notifications.services.recipients import (
    CLOCK_PATTERN,
    DIGEST_CATEGORIES,
    clock_parse,
    digest_frequency_check,
    preferences_get,
    preferences_replace,
)
from notifications.services.validation import CATEGORIES, CHANNELS, RuleViolation

CHANNEL_MAP_SCHEMA = {
    "type": "object",
    "properties": {channel: {"type": "boolean"} for channel in CHANNELS},
    "additionalProperties": False,
    "description": "channel: true (send) | false (do not)",
}
CATEGORIES_SCHEMA = {
    "type": "object",
    "properties": {category: CHANNEL_MAP_SCHEMA for category in CATEGORIES},
    "additionalProperties": False,
}
TYPES_SCHEMA = {
    "type": "object",
    "additionalProperties": CHANNEL_MAP_SCHEMA,
    "description": f"Keyed by the key of an existing notification type ({KEY_PATTERN})",
}
QUIET_HOURS_SCHEMA = {
    "type": "object",
    "nullable": True,
    "properties": {
        "start": {"type": "string", "pattern": CLOCK_PATTERN},
        "end": {"type": "string", "pattern": CLOCK_PATTERN},
    },
    "required": ["start", "end"],
    "additionalProperties": False,
    "description": "HH:MM in the recipient's time zone; end differs from start (may wrap midnight)",
}
DIGEST_SCHEMA = {
    "type": "object",
    "properties": {
        category: {"type": "string", "enum": list(DigestFrequency.values)} for category in DIGEST_CATEGORIES
    },
    "additionalProperties": False,
    "description": "category: how often its notifications are gathered into one digest "
    "(off: each as it happens). Critical notifications are never gathered.",
}


@extend_schema_field(CHANNEL_MAP_SCHEMA)
class ChannelMapField(serializers.DictField):
    pass


@extend_schema_field(CATEGORIES_SCHEMA)
class CategoriesField(serializers.DictField):
    pass


@extend_schema_field(TYPES_SCHEMA)
class TypesField(serializers.DictField):
    pass


@extend_schema_field(QUIET_HOURS_SCHEMA)
class QuietHoursField(serializers.DictField):
    pass


@extend_schema_field(DIGEST_SCHEMA)
class DigestField(serializers.DictField):
    pass


def _channel_map(value: Any, label: str) -> dict[str, bool]:
    if not isinstance(value, dict):
        raise serializers.ValidationError(f"{label} must be an object of channel: true|false")
    errors = {}
    for channel, enabled in value.items():
        if channel not in CHANNELS:
            errors[channel] = [f"unknown channel; expected one of {', '.join(CHANNELS)}"]
        elif not isinstance(enabled, bool):
            errors[channel] = [f"must be true or false, got {enabled!r}"]
    if errors:
        raise serializers.ValidationError(errors)
    return dict(value)


def _clock(value: Any, field: str) -> time:
    try:
        return clock_parse(value)
    except RuleViolation as exc:
        raise serializers.ValidationError({field: [str(exc)]})


class PreferencesSerializer(StrictSerializer):
    """Values are taken raw and checked strictly: "yes" is not a boolean here."""

    channels = ChannelMapField(required=False, default=dict)
    categories = CategoriesField(required=False, default=dict)
    types = TypesField(required=False, default=dict)
    quiet_hours = QuietHoursField(required=False, allow_null=True, default=None)
    digest = DigestField(required=False, default=dict)

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

    def validate_digest(self, value: Any) -> dict[str, str]:
        errors: dict[str, list[str]] = {}
        result = {}
        for category, frequency in value.items():
            try:
                result[category] = digest_frequency_check(category=category, frequency=frequency)
            except RuleViolation as exc:
                errors[category] = [str(exc)]
        if errors:
            raise serializers.ValidationError(errors)
        return result


class PreferencesResponseSerializer(serializers.Serializer):
    channels = ChannelMapField()
    categories = CategoriesField()
    types = TypesField()
    quiet_hours = QuietHoursField(allow_null=True)
    digest = DigestField()


class PreferencesView(APIView):
    @operation(
        summary="A recipient's stored preferences",
        responses={200: PreferencesResponseSerializer},
        errors=[404],
    )
    def get(self, request: Request, external_id: str) -> Response:
        recipient = get_object_or_404(Recipient, external_id=external_id)
        return Response(preferences_get(recipient=recipient).as_dict())

    @operation(
        summary="Replace a recipient's preferences",
        description="Every stored override is replaced by the ones given, and so are the "
        "quiet hours and the digest frequencies (a key left out clears them). `types` names "
        "existing notification types; an unknown one is a 400. `digest` takes `off`, `daily` "
        "or `weekly` per category except `critical`.",
        request=PreferencesSerializer,
        responses={200: PreferencesResponseSerializer},
        errors=[400, 404],
    )
    def put(self, request: Request, external_id: str) -> Response:
        recipient = get_object_or_404(Recipient, external_id=external_id)
        serializer = PreferencesSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        result = preferences_replace(
            recipient=recipient,
            channels=data["channels"],
            categories=data["categories"],
            types=data["types"],
            quiet_hours=data["quiet_hours"],
            digest=data["digest"],
        )
        return Response(result.as_dict())
