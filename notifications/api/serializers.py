"""Request and response shapes of the v1 API. Shape checks live here; checks that need
the database (unknown type, recipients, topic) live in the services."""

from __future__ import annotations

import json
import re
from datetime import time
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import available_timezones

import phonenumbers
from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import EmailValidator
from drf_spectacular.utils import extend_schema_field
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
    SuppressionKind,
    SuppressionReason,
    WebhookKind,
)
from notifications.services.deadletters import DeadLetterFilter
from notifications.services.templating import template_check
from notifications.transports.base import TransportError
from notifications.transports.sms import InvalidPhoneNumber, sms_normalise

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


FALLBACK_MAX_SECONDS = 86_400


class FallbackRuleSerializer(StrictSerializer):
    """One channel fallback rule: when the ``from`` delivery has not reached the user within
    ``after_seconds`` (or failed for good), the event is delivered on ``to`` as well."""

    def get_fields(self) -> dict[str, serializers.Field]:
        # "from" is a Python keyword, so the fields cannot be class attributes.
        return {
            "from": serializers.ChoiceField(
                choices=Channel.choices, help_text="A channel of the type whose delivery is watched"
            ),
            "to": serializers.ChoiceField(
                choices=Channel.choices,
                help_text="The channel delivered on instead; needs a template in the type's templates",
            ),
            "after_seconds": serializers.IntegerField(
                min_value=0, max_value=FALLBACK_MAX_SECONDS, help_text="How long to wait, 0..86400"
            ),
        }


@extend_schema_field(FallbackRuleSerializer(many=True))
class FallbackRulesField(serializers.Field):
    """A list of fallback rules, taken as given here and checked by
    NotificationTypeSerializer.validate, which needs the type's channels and templates and
    names each error ``fallbacks[i].field``."""

    def to_internal_value(self, data: Any) -> Any:
        return data

    def to_representation(self, value: Any) -> Any:
        return value


def _fallback_errors(
    rules: Any, channels: list[str], templates: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """The rules in stored form and the errors, keyed ``fallbacks[i].field``."""
    if not isinstance(rules, list):
        return [], {"fallbacks": ['must be a list of {"from", "to", "after_seconds"} rules']}
    errors: dict[str, list[str]] = {}
    cleaned: list[dict[str, Any]] = []
    first_rule_of: dict[str, int] = {}
    for i, rule in enumerate(rules):
        where = f"fallbacks[{i}]"
        if not isinstance(rule, dict):
            errors[where] = ['must be an object {"from": channel, "to": channel, "after_seconds": n}']
            continue
        shape = FallbackRuleSerializer(data=rule)
        if not shape.is_valid():
            for field, messages in shape.errors.items():
                errors[f"{where}.{field}"] = [str(m) for m in messages]
            continue
        source, target = shape.validated_data["from"], shape.validated_data["to"]
        if source == target:
            errors[f"{where}.to"] = [f"must differ from 'from' ({source!r})"]
        if source not in channels:
            errors.setdefault(f"{where}.from", []).append(
                f"channel {source!r} is not among the type's channels ({', '.join(channels)})"
            )
        elif source in first_rule_of:
            errors.setdefault(f"{where}.from", []).append(
                f"fallbacks[{first_rule_of[source]}] already has a rule for {source!r}; "
                "at most one rule per channel"
            )
        else:
            first_rule_of[source] = i
        if target != source and target not in templates:
            errors.setdefault(f"{where}.to", []).append(
                f"channel {target!r} has no template; add templates.{target}"
            )
        cleaned.append({"from": source, "to": target, "after_seconds": shape.validated_data["after_seconds"]})
    return cleaned, errors


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
    fallbacks = FallbackRulesField(
        required=False,
        default=list,
        help_text="Channel fallback rules; a 'to' channel outside channels is used only as a fallback",
    )
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
        channels: list[str] = attrs.get("channels", [])
        fallbacks, rule_errors = _fallback_errors(attrs.get("fallbacks", []), channels, templates)
        problems: dict[str, Any] = dict(rule_errors)
        # A channel reached only as a fallback needs its words too, but is not planned itself.
        fallback_only = {rule["to"] for rule in fallbacks} - set(channels)
        errors: dict[str, Any] = {}
        for channel in channels:
            if channel not in templates:
                errors[channel] = [f"a template is required for channel {channel!r}"]
        for channel, content in templates.items():
            if channel not in channels and channel not in fallback_only:
                errors[channel] = [f"channel {channel!r} is not in channels nor the 'to' of a fallback"]
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
            problems = {"templates": errors, **problems}
        if problems:
            raise serializers.ValidationError(problems)
        return {**attrs, "fallbacks": fallbacks}


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
    origin_ip = serializers.IPAddressField(
        required=False,
        allow_null=True,
        help_text="IPv4 or IPv6 of the end user whose action caused the event (per-IP SMS limits)",
    )

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
    provider = serializers.CharField(help_text="The provider account that last handled it; blank if none")
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


# --- Dead letters -------------------------------------------------------------------------

_ISO_DATETIME = "must be an ISO 8601 date-time such as 2024-05-01T12:00:00Z"


class DeadLetterFilterSerializer(StrictSerializer):
    channel = serializers.ChoiceField(choices=Channel.choices, required=False)
    type = serializers.CharField(max_length=100, required=False, help_text="Notification type key")
    reason = serializers.CharField(
        max_length=200, required=False, help_text="Part of the reason, case-insensitive"
    )
    after = serializers.DateTimeField(
        required=False, error_messages={"invalid": _ISO_DATETIME}, help_text="Dead since (inclusive)"
    )
    before = serializers.DateTimeField(
        required=False, error_messages={"invalid": _ISO_DATETIME}, help_text="Dead before (exclusive)"
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        after, before = attrs.get("after"), attrs.get("before")
        if after is not None and before is not None and after >= before:
            raise serializers.ValidationError({"before": ["must be later than after"]})
        return attrs


def dead_letter_filter(validated: dict[str, Any]) -> DeadLetterFilter:
    return DeadLetterFilter(
        channel=validated.get("channel", ""),
        notification_type=validated.get("type", ""),
        reason_contains=validated.get("reason", ""),
        created_after=validated.get("after"),
        created_before=validated.get("before"),
    )


_UNENCODED_OFFSET = re.compile(r"^(.*\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}(?::?\d{2})?)$")


def query_params_for(serializer_class: type[serializers.Serializer], params: Any) -> dict[str, str]:
    """The query parameters a filter serializer knows, blanks dropped (``?channel=`` means
    no filter). A "+" of a UTC offset arrives as a space when the client did not encode
    it; it is put back so ``?after=2024-05-01T12:00:00+02:00`` works either way."""
    known: dict[str, serializers.Field] = dict(serializer_class().fields.items())
    picked = {name: params.get(name, "") for name in known if params.get(name, "").strip()}
    for name, field in known.items():
        if name in picked and isinstance(field, serializers.DateTimeField):
            picked[name] = _UNENCODED_OFFSET.sub(r"\1+\2", picked[name].strip())
    return picked


class DeliveryAttemptSerializer(serializers.Serializer):
    number = serializers.IntegerField()
    outcome = serializers.CharField(help_text="success | transient | rate_limited | permanent")
    error = serializers.CharField()
    provider = serializers.CharField()
    target = serializers.CharField(help_text="The device token, address or URL called")
    created_at = serializers.DateTimeField()


class DeadLetterSerializer(serializers.Serializer):
    delivery_id = serializers.IntegerField()
    event_id = serializers.UUIDField(source="delivery.event_id")
    recipient = serializers.CharField(source="delivery.recipient.external_id", help_text="external_id")
    channel = serializers.CharField()
    type = serializers.CharField(source="notification_type")
    reason = serializers.CharField()
    attempts = serializers.IntegerField()
    replay_count = serializers.IntegerField(help_text="How often it was replayed before")
    created_at = serializers.DateTimeField()

    def get_fields(self) -> dict[str, serializers.Field]:
        # "errors" would shadow Serializer.errors as a class attribute.
        fields: dict[str, serializers.Field] = super().get_fields()
        fields["errors"] = DeliveryAttemptSerializer(
            source="delivery.attempt_log", many=True, help_text="The delivery's attempts, oldest first"
        )
        return fields


class DeadLetterPageSerializer(serializers.Serializer):
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = DeadLetterSerializer(many=True)


REPLAY_MAX_IDS = 10_000
_REPLAY_CHOICES = ("ids", "filter", "all")


class DeadLetterReplaySerializer(StrictSerializer):
    """Exactly one of ``ids``, ``filter`` or ``all``."""

    ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1),
        min_length=1,
        max_length=REPLAY_MAX_IDS,
        required=False,
        help_text="Delivery ids of dead letters",
    )
    filter = DeadLetterFilterSerializer(required=False)
    all = serializers.BooleanField(required=False, help_text="true: replay every open dead letter")

    def validate_filter(self, value: dict[str, Any]) -> dict[str, Any]:
        if not value:
            raise serializers.ValidationError(
                "give at least one of channel, type, reason, after, before; "
                'to replay every dead letter send {"all": true}'
            )
        return value

    def validate_all(self, value: bool) -> bool:
        if not value:
            raise serializers.ValidationError('must be true; to choose letters use "ids" or "filter"')
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        given = [name for name in _REPLAY_CHOICES if name in attrs]
        if not given:
            raise serializers.ValidationError({"ids": ["one of ids, filter or all is required"]})
        if len(given) > 1:
            message = f"give only one of ids, filter or all (got {', '.join(given)})"
            raise serializers.ValidationError({name: [message] for name in given})
        return attrs


class ReplayedSerializer(serializers.Serializer):
    replayed = serializers.IntegerField(help_text="How many deliveries were sent on their way again")


# --- Suppression list ---------------------------------------------------------------------


def suppression_address(kind: str, address: str) -> str:
    """The stored form of an address: lower-case email, E.164 phone. Raises
    serializers.ValidationError saying what is wrong with it."""
    address = address.strip()
    if kind == SuppressionKind.EMAIL:
        try:
            EmailValidator()(address)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(f"{address!r} is not an email address") from exc
        return address.lower()
    try:
        e164, _ = sms_normalise(address)
    except TransportError as exc:
        raise serializers.ValidationError(exc.reason) from exc
    except InvalidPhoneNumber as exc:
        raise serializers.ValidationError(str(exc)) from exc
    return e164


class SuppressionSerializer(StrictSerializer):
    kind = serializers.ChoiceField(choices=SuppressionKind.choices)
    address = serializers.CharField(
        max_length=320, help_text="Email address, or phone number in international form (+<country>...)"
    )
    reason = serializers.ChoiceField(
        choices=SuppressionReason.choices, required=False, default=SuppressionReason.MANUAL
    )
    detail = serializers.CharField(max_length=300, required=False, allow_blank=True, default="")
    created_at = serializers.DateTimeField(read_only=True)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        try:
            address = suppression_address(attrs["kind"], attrs["address"])
        except serializers.ValidationError as exc:
            raise serializers.ValidationError({"address": exc.detail}) from exc
        return {**attrs, "address": address}


class SuppressionQuerySerializer(StrictSerializer):
    kind = serializers.ChoiceField(choices=SuppressionKind.choices, required=False)
    address = serializers.CharField(
        max_length=320, required=False, help_text="Exact address; normalised like stored ones"
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if "address" in attrs:
            address = attrs["address"].strip()
            kind = attrs.get("kind") or (SuppressionKind.EMAIL if "@" in address else SuppressionKind.PHONE)
            if kind == SuppressionKind.PHONE and address.isdigit():
                # "?address=+1415..." unencoded: the query string turned the "+" into a space.
                address = f"+{address}"
            try:
                attrs = {**attrs, "address": suppression_address(kind, address)}
            except serializers.ValidationError as exc:
                raise serializers.ValidationError({"address": exc.detail}) from exc
        return attrs


class SuppressionPageSerializer(serializers.Serializer):
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = SuppressionSerializer(many=True)


# --- Webhook endpoints --------------------------------------------------------------------

WEBHOOK_SECRET_MIN = 16
# Plain http only to this machine: the provider sandbox and local development.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class WebhookEndpointSerializer(StrictSerializer):
    id = serializers.IntegerField(read_only=True)
    kind = serializers.ChoiceField(choices=WebhookKind.choices)
    url = serializers.URLField(
        max_length=2000, help_text="https; http only to 127.0.0.1 or localhost (development, sandbox)"
    )
    secret = serializers.CharField(
        write_only=True,
        required=False,
        allow_blank=True,
        max_length=100,
        help_text="Signing secret, required for generic webhooks (at least 16 characters); never returned",
    )
    has_secret = serializers.SerializerMethodField()
    active = serializers.BooleanField(read_only=True)
    created_at = serializers.DateTimeField(read_only=True)

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            given = sorted(name for name in data if name in self.fields and self.fields[name].read_only)
            if given:
                raise serializers.ValidationError(
                    {name: ["read-only field; the server sets it"] for name in given}
                )
        return super().to_internal_value(data)

    def get_has_secret(self, endpoint: Any) -> bool:
        return bool(endpoint.secret)

    def validate_url(self, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme == "https":
            return value
        if parts.scheme == "http" and (parts.hostname or "") in LOOPBACK_HOSTS:
            return value
        raise serializers.ValidationError(
            f"must be an https URL (http only to 127.0.0.1 or localhost), got scheme {parts.scheme!r}"
            if parts.scheme != "http"
            else f"must be an https URL; plain http is allowed only to 127.0.0.1 or localhost, "
            f"not {parts.hostname!r}"
        )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        secret = attrs.get("secret", "")
        if attrs["kind"] == WebhookKind.GENERIC:
            if not secret:
                raise serializers.ValidationError(
                    {"secret": ["a signing secret is required for generic webhooks"]}
                )
            if len(secret) < WEBHOOK_SECRET_MIN:
                raise serializers.ValidationError(
                    {"secret": [f"must be at least {WEBHOOK_SECRET_MIN} characters, got {len(secret)}"]}
                )
        elif secret:
            raise serializers.ValidationError(
                {"secret": [f"{attrs['kind']} webhooks are not signed; leave secret out"]}
            )
        return {**attrs, "secret": secret}
