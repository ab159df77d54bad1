"""The suppression list: addresses nothing is sent to, whatever the category."""

from __future__ import annotations

from typing import Any

from django.http import Http404
from drf_spectacular.utils import PolymorphicProxySerializer, extend_schema_field
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from notifications import selectors
from notifications.api.common import (
    PHONE_SHAPE,
    StrictSerializer,
    checked,
    errors_response,
    operation,
    query,
    query_params_for,
    shaped,
    text_field,
)
from notifications.api.pagination import PAGE_PARAMETERS, Pagination, page_of
from notifications.api.schema import EMAIL_PATTERN
from notifications.models import SuppressionKind, SuppressionReason
from notifications.services.feedback import suppression_add, suppression_remove
from notifications.services.validation import PHONE_PATTERN, suppression_address_normalise

ADDRESS_MAX = 320


class SuppressionSerializer(StrictSerializer):
    """What the request may say; the address must be of the kind (the schema's oneOf)."""

    kind = serializers.ChoiceField(choices=SuppressionKind.choices)
    address = text_field(max_length=ADDRESS_MAX, help_text="Email address, or phone number (+<country>...)")
    reason = serializers.ChoiceField(
        choices=SuppressionReason.choices, required=False, default=SuppressionReason.MANUAL
    )
    detail = text_field(max_length=300, required=False, allow_blank=True, default="")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        try:
            if attrs["kind"] == SuppressionKind.PHONE:
                shaped(attrs["address"], PHONE_PATTERN, PHONE_SHAPE)
            address = checked(suppression_address_normalise, kind=attrs["kind"], address=attrs["address"])
        except serializers.ValidationError as exc:
            raise serializers.ValidationError({"address": exc.detail}) from exc
        return {**attrs, "address": address}


@extend_schema_field({"type": "string", "enum": [SuppressionKind.EMAIL.value]})
class EmailKindField(serializers.CharField):
    pass


@extend_schema_field({"type": "string", "enum": [SuppressionKind.PHONE.value]})
class PhoneKindField(serializers.CharField):
    pass


@extend_schema_field(
    {"type": "string", "format": "email", "pattern": EMAIL_PATTERN, "maxLength": ADDRESS_MAX}
)
class EmailAddressField(serializers.CharField):
    pass


@extend_schema_field({"type": "string", "format": "phone", "pattern": PHONE_PATTERN})
class PhoneAddressField(serializers.CharField):
    pass


class _SuppressionFields(StrictSerializer):
    reason = serializers.ChoiceField(choices=SuppressionReason.choices, required=False)
    detail = text_field(max_length=300, required=False, allow_blank=True)


class EmailSuppressionSerializer(_SuppressionFields):
    kind = EmailKindField()
    address = EmailAddressField(help_text="Stored in lower case")


class PhoneSuppressionSerializer(_SuppressionFields):
    kind = PhoneKindField()
    address = PhoneAddressField(help_text="International number; stored in E.164")


SUPPRESSION_REQUEST = PolymorphicProxySerializer(
    component_name="SuppressionCreate",
    serializers=[EmailSuppressionSerializer, PhoneSuppressionSerializer],
    resource_type_field_name=None,
)


class SuppressionOutSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=SuppressionKind.choices)
    address = serializers.CharField()
    reason = serializers.ChoiceField(choices=SuppressionReason.choices)
    detail = serializers.CharField()
    created_at = serializers.DateTimeField()


class SuppressionQuerySerializer(StrictSerializer):
    kind = serializers.ChoiceField(choices=SuppressionKind.choices, required=False)
    address = text_field(max_length=ADDRESS_MAX, required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if "address" in attrs:
            address = attrs["address"].strip()
            # The address says what it is; with another ?kind= it simply matches nothing.
            own_kind = SuppressionKind.EMAIL if "@" in address else SuppressionKind.PHONE
            if own_kind == SuppressionKind.PHONE and address.isdigit():
                # "?address=+1415..." unencoded: the query string turned the "+" into a space.
                address = f"+{address}"
            try:
                normalised = checked(suppression_address_normalise, kind=own_kind, address=address)
            except serializers.ValidationError as exc:
                raise serializers.ValidationError({"address": exc.detail}) from exc
            attrs = {"kind": own_kind, **attrs, "address": normalised}
        return attrs


class SuppressionListView(APIView):
    @operation(
        summary="The suppression list, newest first (paginated)",
        parameters=[
            query("kind", {"type": "string", "enum": list(SuppressionKind.values)}, blank=True),
            query(
                "address",
                {
                    # One flat anyOf (not query's blank wrapper around another): generators
                    # are much quicker with it.
                    "type": "string",
                    "anyOf": [
                        {"format": "email", "pattern": EMAIL_PATTERN, "maxLength": ADDRESS_MAX},
                        {"pattern": PHONE_PATTERN, "format": "phone"},
                        {"maxLength": 0},
                    ],
                },
                "One exact address, in any form that normalises to it (its kind follows from an '@'); "
                "empty means no filter",
            ),
            *PAGE_PARAMETERS,
        ],
        responses={200: page_of("SuppressionPage", SuppressionOutSerializer(many=True))},
        errors=[400, 404],
    )
    def get(self, request: Request) -> Response:
        where = SuppressionQuerySerializer(
            data=query_params_for(SuppressionQuerySerializer, request.query_params)
        )
        where.is_valid(raise_exception=True)
        rows = selectors.suppressions_list(
            kind=where.validated_data.get("kind", ""), address=where.validated_data.get("address", "")
        )
        paginator = Pagination()
        paginator.ordering = "-id"
        page = paginator.paginate_queryset(rows, request, view=self)
        return paginator.get_paginated_response(SuppressionOutSerializer(page, many=True).data)

    @operation(
        summary="Suppress an address (nothing is sent to it, whatever the category)",
        description="201 when added; 200 with the existing entry when the address is listed already.",
        request=SUPPRESSION_REQUEST,
        responses={201: SuppressionOutSerializer, 200: SuppressionOutSerializer},
        errors=[400],
    )
    def post(self, request: Request) -> Response:
        serializer = SuppressionSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        created = suppression_add(
            kind=data["kind"], address=data["address"], reason=data["reason"], detail=data["detail"]
        )
        entry = selectors.suppression_get(kind=data["kind"], address=data["address"])
        return Response(
            SuppressionOutSerializer(entry).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


class SuppressionDetailView(APIView):
    @operation(
        summary="Take an address off the suppression list",
        request=None,
        responses={204: None},
        errors=[400, 404],
    )
    def delete(self, request: Request, kind: str, address: str) -> Response:
        if kind not in SuppressionKind.values:
            return errors_response(
                {"kind": [f"unknown kind {kind!r}; expected one of {', '.join(SuppressionKind.values)}"]}
            )
        if suppression_remove(kind=kind, address=address) == 0:
            raise Http404(f"{address!r} is not on the {kind} suppression list")
        return Response(status=status.HTTP_204_NO_CONTENT)
