"""Dead letters: deliveries whose retries ran out, with their history, and their replay."""

from __future__ import annotations

from typing import Any

from django.http import Http404
from drf_spectacular.utils import PolymorphicProxySerializer, extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from notifications import selectors
from notifications.api.common import (
    DateTimeField,
    StrictSerializer,
    WholeNumberField,
    errors_response,
    operation,
    query,
    query_params_for,
    text_field,
)
from notifications.api.pagination import PAGE_PARAMETERS, Pagination, page_of
from notifications.api.schema import ID_MAX, NO_NUL_PATTERN
from notifications.models import AttemptOutcome, Channel
from notifications.services.deadletters import DeadLetterFilter, deadletters_replay

REPLAY_MAX_IDS = 10_000
_REPLAY_CHOICES = ("ids", "filter", "all")


class DeadLetterFilterSerializer(StrictSerializer):
    channel = serializers.ChoiceField(choices=Channel.choices, required=False)
    type = text_field(max_length=100, required=False, help_text="Notification type key")
    reason = text_field(max_length=200, required=False, help_text="Part of the reason, case-insensitive")
    after = DateTimeField(required=False, help_text="Dead since (inclusive)")
    before = DateTimeField(required=False, help_text="Dead before (exclusive); later than after")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        after, before = attrs.get("after"), attrs.get("before")
        if after is not None and before is not None and after >= before:
            raise serializers.ValidationError({"before": ["must be later than after"]})
        return attrs


class DeadLetterFilterBodySerializer(DeadLetterFilterSerializer):
    """A replay filter: at least one condition (``{"all": true}`` says "every letter")."""

    schema_extra = {"minProperties": 1}


def dead_letter_filter(validated: dict[str, Any]) -> DeadLetterFilter:
    return DeadLetterFilter(
        channel=validated.get("channel", ""),
        notification_type=validated.get("type", ""),
        reason_contains=validated.get("reason", ""),
        created_after=validated.get("after"),
        created_before=validated.get("before"),
    )


class DeliveryAttemptSerializer(serializers.Serializer):
    number = serializers.IntegerField()
    outcome = serializers.ChoiceField(choices=AttemptOutcome.choices)
    error = serializers.CharField()
    provider = serializers.CharField()
    target = serializers.CharField(help_text="The device token, address or URL called")
    created_at = serializers.DateTimeField()


class DeadLetterSerializer(serializers.Serializer):
    delivery_id = serializers.IntegerField()
    event_id = serializers.UUIDField(source="delivery.event_id")
    recipient = serializers.CharField(source="delivery.recipient.external_id", help_text="external_id")
    channel = serializers.ChoiceField(choices=Channel.choices)
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


class ReplayByIdsSerializer(StrictSerializer):
    ids = serializers.ListField(
        child=WholeNumberField(min_value=1, max_value=ID_MAX),
        min_length=1,
        max_length=REPLAY_MAX_IDS,
        help_text="Delivery ids of dead letters",
    )


class ReplayByFilterSerializer(StrictSerializer):
    filter = DeadLetterFilterBodySerializer()


@extend_schema_field({"type": "boolean", "enum": [True]})
class TrueField(serializers.BooleanField):
    pass


class ReplayAllSerializer(StrictSerializer):
    all = TrueField(help_text="true: replay every open dead letter")


class DeadLetterReplaySerializer(StrictSerializer):
    """Exactly one of ``ids``, ``filter`` or ``all`` (the schema's oneOf)."""

    ids = serializers.ListField(
        child=WholeNumberField(min_value=1, max_value=ID_MAX),
        min_length=1,
        max_length=REPLAY_MAX_IDS,
        required=False,
    )
    filter = DeadLetterFilterBodySerializer(required=False)
    all = serializers.BooleanField(required=False)

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


REPLAY_REQUEST = PolymorphicProxySerializer(
    component_name="DeadLetterReplay",
    serializers=[ReplayByIdsSerializer, ReplayByFilterSerializer, ReplayAllSerializer],
    resource_type_field_name=None,
)


class ReplayedSerializer(serializers.Serializer):
    replayed = serializers.IntegerField(
        min_value=0, help_text="How many deliveries were sent on their way again"
    )


_FILTER_PARAMETERS = [
    query("channel", {"type": "string", "enum": list(Channel.values)}, blank=True),
    query(
        "type",
        {"type": "string", "maxLength": 100, "pattern": NO_NUL_PATTERN},
        "Notification type key",
        blank=True,
    ),
    query(
        "reason",
        {"type": "string", "maxLength": 200, "pattern": NO_NUL_PATTERN},
        "Part of the reason",
        blank=True,
    ),
    query("after", {"type": "string", "format": "date-time"}, "Dead since (inclusive)", blank=True),
    query(
        "before",
        {"type": "string", "format": "date-time"},
        "Dead before (exclusive); later than after",
        blank=True,
    ),
]


class DeadLetterListView(APIView):
    @operation(
        summary="Open dead letters, newest first (paginated)",
        description="Deliveries whose retries ran out and that were not replayed yet, each with "
        "its attempt history in `errors`.",
        parameters=[*_FILTER_PARAMETERS, *PAGE_PARAMETERS],
        responses={200: page_of("DeadLetterPage", DeadLetterSerializer(many=True))},
        errors=[400, 404],
    )
    def get(self, request: Request) -> Response:
        where = DeadLetterFilterSerializer(
            data=query_params_for(DeadLetterFilterSerializer, request.query_params)
        )
        where.is_valid(raise_exception=True)
        rows = selectors.deadletters_open_list(where=dead_letter_filter(where.validated_data))
        paginator = Pagination()
        # Newest first; the delivery id breaks ties between letters of the same instant.
        paginator.ordering = ("-created_at", "-delivery_id")
        page = paginator.paginate_queryset(rows, request, view=self)
        return paginator.get_paginated_response(DeadLetterSerializer(page, many=True).data)


class DeadLetterReplayView(APIView):
    @operation(
        summary="Replay dead letters: by ids, by filter, or all",
        description='Exactly one of `{"ids": [...]}`, `{"filter": {...}}` or `{"all": true}`. Each '
        "replayed delivery gets a fresh retry budget and is sent again; letters already "
        "replayed are skipped.",
        request=REPLAY_REQUEST,
        responses={200: ReplayedSerializer},
        errors=[400],
    )
    def post(self, request: Request) -> Response:
        if not isinstance(request.data, dict):
            return errors_response({"non_field_errors": ["the body must be a JSON object"]})
        serializer = DeadLetterReplaySerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        if "ids" in data:
            replayed = deadletters_replay(delivery_ids=list(dict.fromkeys(data["ids"])))
        elif "filter" in data:
            replayed = deadletters_replay(where=dead_letter_filter(data["filter"]))
        else:
            replayed = deadletters_replay(everything=True)
        return Response({"replayed": replayed})


class DeadLetterReplayOneView(APIView):
    @operation(
        summary="Replay one dead letter",
        request=None,
        responses={200: ReplayedSerializer},
        errors=[404],
        operation_id="v1_dead_letter_replay_one",
    )
    def post(self, request: Request, delivery_id: int) -> Response:
        if deadletters_replay(delivery_ids=[delivery_id]) == 0:
            raise Http404(f"no open dead letter for delivery {delivery_id}")
        return Response({"replayed": 1})
