"""Notification types: their channels, templates, aggregation and fallback rules."""

from __future__ import annotations

from typing import Any

from django.db.models import Prefetch
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from notifications.api.common import (
    KEY_SHAPE,
    StrictSerializer,
    WholeNumberField,
    checked,
    operation,
    shaped,
    text_field,
)
from notifications.api.schema import NO_NUL_PATTERN
from notifications.models import (
    KEY_PATTERN,
    TEMPLATE_FIELDS,
    Category,
    Channel,
    NotificationTemplate,
    NotificationType,
    QuietHoursPolicy,
)
from notifications.services.catalog import notification_type_save
from notifications.services.template_variables import (
    MAX_VARIABLES,
    VARIABLE_TYPES,
    variables_clean,
)
from notifications.services.validation import (
    FALLBACK_MAX_SECONDS,
    LOCALE_PATTERN,
    TEMPLATE_REQUIRED,
    WHEN_ACTIVE_PATTERN,
    fallback_rules_clean,
    key_check,
    locale_check,
    type_templates_errors,
)

AGGREGATION_MAX_SECONDS = 86_400


def _template_schema(channel: str) -> dict[str, Any]:
    required = TEMPLATE_REQUIRED[channel]
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            field: {
                "type": "string",
                "pattern": NO_NUL_PATTERN,
                **({"minLength": 1} if field in required else {}),
            }
            for field in TEMPLATE_FIELDS[channel]
        },
        "additionalProperties": False,
    }
    if required:
        schema["required"] = list(required)
    if channel == Channel.EMAIL:
        schema["anyOf"] = [
            {"required": ["html"], "properties": {"html": {"minLength": 1}}},
            {"required": ["text"], "properties": {"text": {"minLength": 1}}},
        ]
    return schema


TEMPLATES_SCHEMA = {
    "type": "object",
    "properties": {str(channel): _template_schema(channel) for channel in TEMPLATE_FIELDS},
    "additionalProperties": False,
    "minProperties": 1,
    "description": "The default locale's templates keyed by channel, in the sandboxed template language "
    "with the event's data as variables ({{ data.order_id }}). Every channel of the type needs one; "
    "a channel that is neither a channel of the type nor the `to` of a fallback may have none.",
}
STORED_TEMPLATES_SCHEMA = {
    "type": "object",
    "additionalProperties": {"type": "object", "additionalProperties": {"type": "string"}},
}
_CHANNEL = {"type": "string", "enum": list(Channel.values)}
FALLBACKS_SCHEMA = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "from": {**_CHANNEL, "description": "A channel of the type whose delivery is watched"},
            "to": {**_CHANNEL, "description": "The channel delivered on as well; needs a template"},
            "after_seconds": {"type": "integer", "minimum": 0, "maximum": FALLBACK_MAX_SECONDS},
        },
        "required": ["from", "to", "after_seconds"],
        "additionalProperties": False,
    },
    "description": "When the `from` delivery has not reached the user within `after_seconds` (or "
    "failed for good), the event is delivered on `to` as well; at most one rule per `from`.",
}


VARIABLES_SCHEMA = {
    "type": "object",
    "maxProperties": MAX_VARIABLES,
    "additionalProperties": {
        "type": "object",
        "properties": {
            "type": {"type": "string", "enum": list(VARIABLE_TYPES)},
            "required": {"type": "boolean", "default": True},
            "example": {"description": "A value of the type; previews and test sends render it"},
            "description": {"type": "string", "maxLength": 200},
        },
        "required": ["type", "example"],
        "additionalProperties": False,
    },
    "description": "The variables the templates use, `data.<name>` (a name is letters, digits and _, "
    "not starting with a digit): an event whose data lacks a "
    "required one, or holds one of another type, is refused with a 400 naming `data.<name>`; a "
    "template using a name not declared here is refused. Omitted: the stored declaration stays.",
}


@extend_schema_field(TEMPLATES_SCHEMA)
class TemplatesField(serializers.DictField):
    pass


@extend_schema_field(VARIABLES_SCHEMA)
class VariablesField(serializers.DictField):
    def to_internal_value(self, data: Any) -> Any:
        clean, errors = variables_clean(data)
        if errors:
            raise serializers.ValidationError(errors)
        return clean


@extend_schema_field(FALLBACKS_SCHEMA)
class FallbacksField(serializers.ListField):
    pass


@extend_schema_field({"type": "string", "pattern": KEY_PATTERN, "maxLength": 100})
class KeyField(serializers.CharField):
    pass


@extend_schema_field({"type": "string", "pattern": LOCALE_PATTERN, "maxLength": 20})
class LocaleField(serializers.CharField):
    pass


class AggregationSerializer(StrictSerializer):
    window_seconds = WholeNumberField(min_value=1, max_value=AGGREGATION_MAX_SECONDS)


class NotificationTypeSerializer(StrictSerializer):
    """A type as sent; the value rules are those of services/validation.py, which
    notification_type_save applies again (with the key's uniqueness)."""

    key = KeyField(max_length=100, trim_whitespace=False)
    name = text_field(max_length=200, required=False, allow_blank=True, default="")
    category = serializers.ChoiceField(choices=Category.choices)
    channels = serializers.ListField(child=serializers.ChoiceField(choices=Channel.choices), min_length=1)
    templates = TemplatesField()
    aggregation = AggregationSerializer(required=False, allow_null=True, default=None)
    quiet_hours_policy = serializers.ChoiceField(
        choices=QuietHoursPolicy.choices, required=False, default=QuietHoursPolicy.DEFER
    )
    when_active = serializers.RegexField(
        WHEN_ACTIVE_PATTERN,
        trim_whitespace=False,
        required=False,
        default="send",
        help_text="For a user online in the app, who sees the in-app copy: `send` email, SMS and push "
        "as usual, `skip` them, or `delay:<seconds>` them (1 to 86400)",
    )
    default_locale = LocaleField(max_length=20, required=False, default="en", trim_whitespace=False)
    fallbacks = FallbacksField(required=False, default=list)
    variables = VariablesField(required=False)

    def validate_key(self, value: str) -> str:
        return checked(key_check, shaped(value, KEY_PATTERN, KEY_SHAPE))

    def validate_default_locale(self, value: str) -> str:
        return checked(locale_check, shaped(value, LOCALE_PATTERN, "a locale such as 'en' or 'pt-BR'"))

    def validate_channels(self, value: list[str]) -> list[str]:
        duplicates = sorted({c for c in value if value.count(c) > 1})
        if duplicates:
            raise serializers.ValidationError(f"channels listed twice: {', '.join(duplicates)}")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        templates: dict[str, Any] = attrs.get("templates", {})
        channels: list[str] = attrs.get("channels", [])
        fallbacks, problems = fallback_rules_clean(
            attrs.get("fallbacks", []), channels=channels, template_channels=set(templates)
        )
        template_errors = type_templates_errors(
            channels=channels, templates=templates, fallback_targets={rule["to"] for rule in fallbacks}
        )
        errors: dict[str, Any] = {**({"templates": template_errors} if template_errors else {}), **problems}
        if errors:
            raise serializers.ValidationError(errors)
        return {**attrs, "fallbacks": fallbacks}


class NotificationTypeReplaceSerializer(NotificationTypeSerializer):
    """The body of PUT. The type's key is the path's: a ``key`` in the body (as GET
    returns it) is accepted and not used."""

    key = KeyField(
        max_length=100, trim_whitespace=False, required=False, help_text="Ignored: the path names the type"
    )


class AggregationOutSerializer(serializers.Serializer):
    window_seconds = serializers.IntegerField()


@extend_schema_field(STORED_TEMPLATES_SCHEMA)
class StoredTemplatesField(serializers.DictField):
    pass


class NotificationTypeOutSerializer(serializers.Serializer):
    key = serializers.CharField()
    name = serializers.CharField()
    category = serializers.ChoiceField(choices=Category.choices)
    channels = serializers.ListField(child=serializers.ChoiceField(choices=Channel.choices))
    templates = StoredTemplatesField()
    aggregation = AggregationOutSerializer(allow_null=True)
    quiet_hours_policy = serializers.ChoiceField(choices=QuietHoursPolicy.choices)
    when_active = serializers.CharField()
    default_locale = serializers.CharField()
    fallbacks = FallbacksField()
    variables = VariablesField()
    template_version = serializers.IntegerField(help_text="The published template version deliveries render")
    created_at = serializers.DateTimeField()


class NotificationTypeListSerializer(serializers.Serializer):
    results = NotificationTypeOutSerializer(many=True)


def _type_payload(notification_type: NotificationType) -> dict[str, Any]:
    """The answer for a type whose templates were prefetched (``with_templates``)."""
    window = notification_type.aggregation_window_seconds
    locale = notification_type.default_locale
    return {
        "key": notification_type.key,
        "name": notification_type.name,
        "category": notification_type.category,
        "channels": notification_type.channels,
        # Filtered here rather than per type in SQL: one query serves the whole list.
        "templates": {t.channel: t.content for t in notification_type.templates.all() if t.locale == locale},
        "aggregation": {"window_seconds": window} if window else None,
        "quiet_hours_policy": notification_type.quiet_hours_policy,
        "when_active": notification_type.when_active or "send",
        "default_locale": locale,
        "fallbacks": notification_type.fallbacks or [],
        "variables": notification_type.variables or {},
        "template_version": notification_type.template_version,
        "created_at": notification_type.created_at.isoformat(),
    }


def _with_templates() -> Any:
    return NotificationType.objects.prefetch_related(
        Prefetch("templates", queryset=NotificationTemplate.objects.order_by("channel"))
    )


def _type_fields(data: dict[str, Any]) -> dict[str, Any]:
    aggregation = data.get("aggregation") or {}
    return {
        "name": data.get("name", ""),
        "category": data["category"],
        "channels": data["channels"],
        "aggregation_window_seconds": aggregation.get("window_seconds"),
        "quiet_hours_policy": data["quiet_hours_policy"],
        "when_active": data.get("when_active", "send"),
        "default_locale": data["default_locale"],
        "fallbacks": data.get("fallbacks", []),
    }


_TYPE_RULES = (
    "The key must not be taken yet, every channel needs a template, fallback rules must fit "
    "the channels and templates may use only declared variables; each is a 400 naming the field. "
    "What is stored becomes the type's published template version. The templates and variables "
    "of a critical or marketing type change only through a template version a second staff "
    "member approves in the admin: such a change here is a 400 naming `templates`."
)


class NotificationTypeListView(APIView):
    @operation(
        summary="List notification types",
        responses={200: NotificationTypeListSerializer},
        operation_id="v1_notification_types_list",
    )
    def get(self, request: Request) -> Response:
        types = _with_templates().order_by("key")
        return Response({"results": [_type_payload(t) for t in types]})

    @operation(
        summary="Create a notification type",
        description=_TYPE_RULES,
        request=NotificationTypeSerializer,
        responses={201: NotificationTypeOutSerializer},
        errors=[400],
    )
    def post(self, request: Request) -> Response:
        serializer = NotificationTypeSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        created = notification_type_save(
            key=data["key"],
            fields=_type_fields(data),
            templates=data["templates"],
            variables=data.get("variables"),
        )
        return Response(_type_payload(_with_templates().get(id=created.id)), status=status.HTTP_201_CREATED)


class NotificationTypeDetailView(APIView):
    @operation(
        summary="Get a notification type", responses={200: NotificationTypeOutSerializer}, errors=[404]
    )
    def get(self, request: Request, key: str) -> Response:
        return Response(_type_payload(get_object_or_404(_with_templates(), key=key)))

    @operation(
        summary="Replace a notification type",
        description="A `key` in the body is ignored; the path names the type. " + _TYPE_RULES,
        request=NotificationTypeReplaceSerializer,
        responses={200: NotificationTypeOutSerializer},
        errors=[400, 404],
    )
    def put(self, request: Request, key: str) -> Response:
        instance = get_object_or_404(NotificationType, key=key)
        serializer = NotificationTypeReplaceSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        saved = notification_type_save(
            key=key,
            fields=_type_fields(data),
            templates=data["templates"],
            instance=instance,
            variables=data.get("variables"),
        )
        return Response(_type_payload(_with_templates().get(id=saved.id)))
