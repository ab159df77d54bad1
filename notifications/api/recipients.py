"""Recipients: upsert one or many, push devices, end-user tokens."""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import PolymorphicProxySerializer, extend_schema_field
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from notifications.api.common import (
    PHONE_SHAPE,
    BulkRefusedSerializer,
    StrictSerializer,
    checked,
    operation,
    shaped,
    text_field,
)
from notifications.api.schema import EMAIL_PATTERN
from notifications.models import DevicePlatform, Recipient
from notifications.services.recipients import (
    RECIPIENTS_BULK_MAX,
    device_register,
    recipient_upsert,
    recipients_bulk_upsert,
)
from notifications.services.validation import (
    LOCALE_PATTERN,
    PHONE_PATTERN,
    RECIPIENT_FIELDS,
    TIMEZONES,
    email_normalise,
    locale_check,
    phone_normalise,
    timezone_check,
)
from realtime.tokens import end_user_token_issue

# "format: phone" is a number libphonenumber accepts as valid; the pattern is its shape.
PHONE_SCHEMA = {
    "type": "string",
    "anyOf": [{"pattern": PHONE_PATTERN, "format": "phone"}, {"maxLength": 0}],
    "description": "International number (+<country><number>, e.g. +14155550100), stored in E.164; "
    '"" for none',
}
EMAIL_SCHEMA = {
    "type": "string",
    "anyOf": [{"format": "email", "pattern": EMAIL_PATTERN, "maxLength": 254}, {"maxLength": 0}],
    "description": '"" for none',
}
# The very set timezone_check accepts, so the enum and the rule cannot drift apart.
TIMEZONE_SCHEMA = {"type": "string", "enum": sorted(TIMEZONES), "description": "IANA time zone"}


@extend_schema_field(PHONE_SCHEMA)
class PhoneField(serializers.CharField):
    pass


@extend_schema_field(EMAIL_SCHEMA)
class EmailField(serializers.CharField):
    pass


@extend_schema_field(TIMEZONE_SCHEMA)
class TimezoneField(serializers.CharField):
    pass


@extend_schema_field({"type": "string", "pattern": LOCALE_PATTERN, "maxLength": 20})
class LocaleField(serializers.CharField):
    pass


class RecipientUpsertSerializer(StrictSerializer):
    """The fields of a recipient; only those given change. Judged by the rules of
    services/validation.py, which recipient_upsert applies again."""

    name = text_field(max_length=200, required=False, allow_blank=True)
    email = EmailField(max_length=254, required=False, allow_blank=True, trim_whitespace=False)
    phone = PhoneField(max_length=32, required=False, allow_blank=True, trim_whitespace=False)
    locale = LocaleField(max_length=20, required=False, trim_whitespace=False)
    timezone = TimezoneField(max_length=64, required=False, trim_whitespace=False)

    def validate_email(self, value: str) -> str:
        return checked(email_normalise, value)

    def validate_phone(self, value: str) -> str:
        if value:
            shaped(value, PHONE_PATTERN, PHONE_SHAPE)
        return checked(phone_normalise, value)

    def validate_locale(self, value: str) -> str:
        return checked(locale_check, shaped(value, LOCALE_PATTERN, "a locale such as 'en' or 'pt-BR'"))

    def validate_timezone(self, value: str) -> str:
        return checked(timezone_check, value)


class RecipientSerializer(serializers.Serializer):
    external_id = serializers.CharField()
    name = serializers.CharField()
    email = serializers.CharField(help_text='"" for none')
    phone = serializers.CharField(help_text='E.164, "" for none')
    locale = serializers.CharField()
    timezone = serializers.CharField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class RecipientView(APIView):
    @operation(summary="Get a recipient", responses={200: RecipientSerializer}, errors=[404])
    def get(self, request: Request, external_id: str) -> Response:
        return Response(RecipientSerializer(get_object_or_404(Recipient, external_id=external_id)).data)

    @operation(
        summary="Create or update a recipient",
        description="201 when created, 200 when updated; only the fields given change.",
        request=RecipientUpsertSerializer,
        responses={200: RecipientSerializer, 201: RecipientSerializer},
        errors=[400],
    )
    def put(self, request: Request, external_id: str) -> Response:
        serializer = RecipientUpsertSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        recipient, created = recipient_upsert(external_id=external_id, fields=dict(serializer.validated_data))
        return Response(
            RecipientSerializer(recipient).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


# --- Bulk ---------------------------------------------------------------------------------

_FIELD_DOCS = {
    "external_id": "Required: the producing service's own id of the user (1 to 200 characters)",
    **{name: f"As in PUT /api/v1/recipients/{{external_id}}/ ({name})" for name in RECIPIENT_FIELDS},
}
# Deliberately unconstrained: each item is judged on its own and a bad one is an "error"
# result in a 200, so no item value can make the request a 400.
BULK_ITEM_SCHEMA = {
    "type": "object",
    "description": "external_id plus the fields of the single upsert; checked item by item",
    "properties": {name: {"description": text} for name, text in _FIELD_DOCS.items()},
}


@extend_schema_field(BULK_ITEM_SCHEMA)
class BulkItemField(serializers.DictField):
    pass


class RecipientBulkSerializer(StrictSerializer):
    recipients = serializers.ListField(child=BulkItemField(), max_length=RECIPIENTS_BULK_MAX)


class BulkUpsertedSerializer(serializers.Serializer):
    index = serializers.IntegerField(min_value=0)
    status = serializers.ChoiceField(choices=["created", "updated"])
    id = serializers.CharField(help_text="The external_id")


class BulkResultsSerializer(serializers.Serializer):
    results = serializers.ListField(
        child=PolymorphicProxySerializer(
            component_name="RecipientBulkResult",
            serializers=[BulkUpsertedSerializer, BulkRefusedSerializer],
            resource_type_field_name=None,
        )
    )


class RecipientBulkView(APIView):
    @operation(
        summary="Create or update up to 1,000 recipients",
        description="One result per item, in input order: created or updated with its `id` "
        "(external_id), or an error with `errors`. A bad item, or a later item repeating an "
        "external_id, never rejects or half-stores the others; only a body that is not "
        '`{"recipients": [objects]}` (at most 1,000) is a 400.',
        request=RecipientBulkSerializer,
        responses={200: BulkResultsSerializer},
        errors=[400],
    )
    def post(self, request: Request) -> Response:
        serializer = RecipientBulkSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        results = recipients_bulk_upsert(items=request.data["recipients"])
        return Response({"results": [_bulk_result(result) for result in results]})


def _bulk_result(result: Any) -> dict[str, Any]:
    if result.status == "error":
        return {"index": result.index, "status": "error", "errors": result.errors}
    return {"index": result.index, "status": result.status, "id": result.external_id}


# --- Devices and tokens ---------------------------------------------------------------------


class DeviceSerializer(StrictSerializer):
    id = serializers.IntegerField(read_only=True)
    platform = serializers.ChoiceField(choices=DevicePlatform.choices)
    token = text_field(max_length=512, min_length=1)
    active = serializers.BooleanField(read_only=True)
    created_at = serializers.DateTimeField(read_only=True)


class DeviceView(APIView):
    @operation(
        summary="Register a push token",
        description="201 when new; 200 when the token was known (it moves to this recipient "
        "and is reactivated).",
        request=DeviceSerializer,
        responses={201: DeviceSerializer, 200: DeviceSerializer},
        errors=[400, 404],
    )
    def post(self, request: Request, external_id: str) -> Response:
        recipient = get_object_or_404(Recipient, external_id=external_id)
        serializer = DeviceSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        device, created = device_register(recipient=recipient, **serializer.validated_data)
        return Response(
            DeviceSerializer(device).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )


class TokenSerializer(serializers.Serializer):
    token = serializers.CharField()
    expires_at = serializers.DateTimeField()


class TokenView(APIView):
    @operation(
        summary="Issue an end-user token",
        description="A short-lived signed token for the inbox API and sockets of this recipient.",
        request=None,
        responses={200: TokenSerializer},
        errors=[404],
    )
    def post(self, request: Request, external_id: str) -> Response:
        recipient = get_object_or_404(Recipient, external_id=external_id)
        token, expires_at = end_user_token_issue(recipient_id=recipient.id)
        return Response({"token": token, "expires_at": expires_at.isoformat()})
