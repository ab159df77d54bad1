"""Events: send one, read its status and its deliveries."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, PolymorphicProxySerializer, extend_schema_field
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from notifications import selectors
from notifications.api.common import (
    KEY_SHAPE,
    BulkRefusedSerializer,
    DateTimeField,
    JsonObjectField,
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
from notifications.models import KEY_PATTERN, Channel, DeliveryStatus, Event, EventStatus
from notifications.services.cancellation import EventAlreadySent, EventNotFound, event_cancel
from notifications.services.ingest import (
    EVENTS_BULK_MAX,
    EventSpec,
    IdempotencyConflict,
    IngestError,
    event_ingest,
    events_ingest_many,
)
from notifications.services.validation import EXTERNAL_ID_MAX, key_check

IDEMPOTENCY_KEY_MAX = 255


@extend_schema_field({"type": "string", "pattern": KEY_PATTERN, "maxLength": 100})
class KeyField(serializers.CharField):
    pass


@extend_schema_field({"type": "string", "nullable": True, "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]})
class OriginIpField(serializers.IPAddressField):
    pass


class EventFieldsSerializer(StrictSerializer):
    type = KeyField(max_length=100, trim_whitespace=False, help_text="Key of an existing notification type")
    data = JsonObjectField(  # type: ignore[assignment]
        required=False,
        default=dict,
        help_text="Template variables ({{ data.name }}); at most MAX_EVENT_DATA_BYTES (64 KiB) as compact JSON",
    )
    idempotency_key = text_field(
        max_length=IDEMPOTENCY_KEY_MAX,
        required=False,
        help_text="The same key with the same body answers 200 with the first event; "
        "with another body 409. Also taken from the Idempotency-Key header.",
    )
    send_at = DateTimeField(required=False, help_text="ISO 8601; later than now defers the send")
    send_at_local = serializers.CharField(
        required=False,
        max_length=40,
        trim_whitespace=False,
        help_text="A wall-clock time without offset (2026-12-01T09:00): the send goes out when it is "
        "that time in each recipient's timezone. A time the clocks skip (daylight saving) moves forward "
        "by the skip; a time that happens twice is the first. Not with send_at.",
    )
    origin_ip = OriginIpField(
        required=False,
        allow_null=True,
        trim_whitespace=False,
        help_text="IPv4 or IPv6 of the end user whose action caused the event (per-IP SMS limits)",
    )

    def validate_type(self, value: str) -> str:
        return checked(key_check, shaped(value, KEY_PATTERN, KEY_SHAPE))

    def validate_data(self, value: dict[str, Any]) -> dict[str, Any]:
        size = len(json.dumps(value, separators=(",", ":")).encode())
        if size > settings.MAX_EVENT_DATA_BYTES:
            raise serializers.ValidationError(
                f"data is {size} bytes; the limit is {settings.MAX_EVENT_DATA_BYTES}"
            )
        return value


def wall_time_parse(value: str, *, hint: str) -> datetime:
    """A wall-clock time (ISO 8601 date and time without offset), to the second; raises
    ValidationError saying what is wrong."""
    try:
        wall = datetime.fromisoformat(value)
    except ValueError:
        wall = None
    if wall is None or "T" not in value:
        raise serializers.ValidationError(f"expected a date and time like 2026-12-01T09:00, got {value!r}")
    if wall.tzinfo is not None:
        raise serializers.ValidationError(f"a wall-clock time has no offset; got {value!r} ({hint})")
    return wall.replace(microsecond=0)


def recipients_field(**kwargs: Any) -> serializers.ListField:
    return serializers.ListField(
        child=text_field(max_length=EXTERNAL_ID_MAX, min_length=1),
        min_length=1,
        max_length=settings.MAX_EXPLICIT_RECIPIENTS,
        help_text="external_ids of existing recipients; use a topic for more",
        **kwargs,
    )


class EventToRecipientsSerializer(EventFieldsSerializer):
    recipients = recipients_field()


class EventToTopicSerializer(EventFieldsSerializer):
    topic = KeyField(max_length=100, trim_whitespace=False, help_text="Key of an existing topic")


class EventCreateSerializer(EventFieldsSerializer):
    """Exactly one of ``recipients`` and ``topic`` (the schema's oneOf)."""

    recipients = recipients_field(required=False)
    topic = KeyField(max_length=100, trim_whitespace=False, required=False)

    def validate_topic(self, value: str) -> str:
        return checked(key_check, shaped(value, KEY_PATTERN, KEY_SHAPE))

    def validate_send_at_local(self, value: str) -> datetime:
        return wall_time_parse(value, hint="a time in each recipient's timezone; use send_at for one instant")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if "send_at" in attrs and "send_at_local" in attrs:
            raise serializers.ValidationError({"send_at_local": ["give send_at or send_at_local, not both"]})
        has_recipients, has_topic = "recipients" in attrs, "topic" in attrs
        if has_recipients == has_topic:
            message = (
                "give either recipients or topic, not both"
                if has_topic
                else "recipients or topic is required"
            )
            raise serializers.ValidationError({"recipients": [message]})
        return attrs


EVENT_CREATE = PolymorphicProxySerializer(
    component_name="EventCreate",
    serializers=[EventToRecipientsSerializer, EventToTopicSerializer],
    resource_type_field_name=None,
)


# One serializer checks every event body, single or bulk, in every thread: its
# ``run_validation`` keeps no state between values, and building its fields anew (a deep
# copy of each declared field) cost more than the checks themselves. Its fields are built
# here, once, before any thread shares it.
_EVENT_VALIDATOR = EventCreateSerializer()
_EVENT_VALIDATOR.fields  # noqa: B018


class EventAcceptedSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=["accepted"])


@extend_schema_field(
    {
        "type": "object",
        "additionalProperties": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 1}},
        "description": "{channel: {status: count}}",
    }
)
class DeliveryCountsField(serializers.DictField):
    pass


class EventSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    type = serializers.CharField()
    status = serializers.ChoiceField(choices=EventStatus.choices)
    created_at = serializers.DateTimeField()
    send_at = serializers.DateTimeField(allow_null=True)
    send_at_local = serializers.CharField(
        allow_null=True, help_text="The wall-clock time in each recipient's timezone"
    )
    recipients_planned = serializers.IntegerField(min_value=0)
    deliveries = DeliveryCountsField()


class DeliverySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    recipient = serializers.CharField(source="recipient.external_id", help_text="external_id")
    channel = serializers.ChoiceField(choices=Channel.choices)
    status = serializers.ChoiceField(choices=DeliveryStatus.choices)
    reason = serializers.CharField()
    attempts = serializers.IntegerField(min_value=0)
    aggregate_count = serializers.IntegerField(help_text="How many events this delivery stands for")
    provider = serializers.CharField(help_text="The provider account that last handled it; blank if none")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class DeliveryFilterSerializer(StrictSerializer):
    status = serializers.ChoiceField(choices=DeliveryStatus.choices, required=False)
    channel = serializers.ChoiceField(choices=Channel.choices, required=False)


class EventListView(APIView):
    @operation(
        summary="Send an event",
        description="To `recipients` (external_ids) or to every subscriber of `topic`. 202 when "
        "accepted; 200 with the same id when the idempotency key was used with the same body; "
        "409 when it was used with another. An unknown type, recipient or topic is a 400 naming it; "
        "nothing is half-stored.",
        request=EVENT_CREATE,
        parameters=[
            OpenApiParameter(
                "Idempotency-Key",
                {"type": "string", "maxLength": IDEMPOTENCY_KEY_MAX},
                OpenApiParameter.HEADER,
                required=False,
                description="Used when the body has no idempotency_key (the body's wins); empty means none",
            )
        ],
        responses={202: EventAcceptedSerializer, 200: EventAcceptedSerializer},
        errors=[400, 409],
    )
    def post(self, request: Request) -> Response:
        body = request.data
        if not isinstance(body, dict):
            return errors_response({"non_field_errors": ["the body must be a JSON object"]})
        header_key = request.headers.get("Idempotency-Key")
        if header_key is not None and len(header_key) > IDEMPOTENCY_KEY_MAX:
            return errors_response(
                {"Idempotency-Key": [f"at most {IDEMPOTENCY_KEY_MAX} characters, got {len(header_key)}"]}
            )
        if header_key and "idempotency_key" not in body:
            body = {**body, "idempotency_key": header_key}
        try:
            spec = _spec(_EVENT_VALIDATOR.run_validation(body))
        except (serializers.ValidationError, DjangoValidationError) as exc:
            raise serializers.ValidationError(serializers.as_serializer_error(exc)) from exc
        try:
            result = event_ingest(api_key=request.user.api_key, **vars(spec))  # type: ignore[union-attr]
        except IngestError as exc:
            return errors_response(exc.errors)
        except IdempotencyConflict as exc:
            return errors_response({"idempotency_key": [str(exc)]}, status.HTTP_409_CONFLICT)
        code = status.HTTP_202_ACCEPTED if result.created else status.HTTP_200_OK
        return Response({"id": str(result.event.id), "status": "accepted"}, status=code)

    @operation(
        summary="Cancel an event by its idempotency key",
        description="As `DELETE /api/v1/events/{id}/`, naming the event by the idempotency key this "
        "API key sent it with.",
        parameters=[
            OpenApiParameter(
                "idempotency_key",
                {"type": "string", "minLength": 1, "maxLength": IDEMPOTENCY_KEY_MAX},
                OpenApiParameter.QUERY,
                required=True,
            )
        ],
        responses={204: None},
        errors=[400, 404, 409],
    )
    def delete(self, request: Request) -> Response:
        key = request.query_params.get("idempotency_key", "")
        if not key:
            return errors_response({"idempotency_key": ["required: the key the event was sent with"]})
        if len(key) > IDEMPOTENCY_KEY_MAX:
            return errors_response(
                {"idempotency_key": [f"at most {IDEMPOTENCY_KEY_MAX} characters, got {len(key)}"]}
            )
        return _cancel(api_key=request.user.api_key, idempotency_key=key)  # type: ignore[union-attr]


def _cancel(**which: Any) -> Response:
    try:
        event_cancel(**which)
    except EventNotFound as exc:
        raise Http404("no such event") from exc
    except EventAlreadySent as exc:
        return errors_response({"status": [f"cannot cancel: {exc}"]}, status.HTTP_409_CONFLICT)
    return Response(status=status.HTTP_204_NO_CONTENT)


# --- Bulk ---------------------------------------------------------------------------------


@extend_schema_field(
    {
        "type": "object",
        "description": "An event body as for POST /api/v1/events/ (type, recipients or topic, data, "
        "idempotency_key, send_at, origin_ip); checked item by item",
    }
)
class BulkEventField(serializers.DictField):
    pass


class EventBulkSerializer(StrictSerializer):
    events = serializers.ListField(
        child=BulkEventField(),
        max_length=EVENTS_BULK_MAX,
        error_messages={"max_length": "at most {max_length} events per call"},
    )


class EventBulkAcceptedSerializer(serializers.Serializer):
    index = serializers.IntegerField(min_value=0)
    status = serializers.ChoiceField(
        choices=["accepted", "duplicate"],
        help_text="accepted: stored now; duplicate: its idempotency key was used before with the "
        "same body, and id is the first event's",
    )
    id = serializers.UUIDField()


class EventBulkResultsSerializer(serializers.Serializer):
    results = serializers.ListField(
        child=PolymorphicProxySerializer(
            component_name="EventBulkResult",
            serializers=[EventBulkAcceptedSerializer, BulkRefusedSerializer],
            resource_type_field_name=None,
        )
    )


def _spec(data: dict[str, Any]) -> EventSpec:
    """The event an EventCreateSerializer's validated data describes."""
    return EventSpec(
        type_key=data["type"],
        recipients=data.get("recipients"),
        topic_key=data.get("topic"),
        data=data["data"],
        idempotency_key=data.get("idempotency_key"),
        send_at=data.get("send_at"),
        send_at_local=data.get("send_at_local"),
        origin_ip=data.get("origin_ip"),
    )


def _specs(items: list[dict[str, Any]]) -> list[EventSpec | dict[str, Any]]:
    """Each item checked by the single-event serializer's rules."""
    specs: list[EventSpec | dict[str, Any]] = []
    for item in items:
        try:
            data = _EVENT_VALIDATOR.run_validation(item)
        except (serializers.ValidationError, DjangoValidationError) as exc:
            specs.append(dict(serializers.as_serializer_error(exc)))
            continue
        specs.append(_spec(data))
    return specs


class EventBulkView(APIView):
    @operation(
        summary="Send up to 1,000 events",
        description="Each item is an event body as for `POST /api/v1/events/`, validated and "
        "idempotent on its own. One result per item, in input order: `accepted` with the new "
        "event's `id`, `duplicate` with the first event's `id` (its idempotency key was used "
        "before with the same body, here or in an earlier call), or `error` with `errors` "
        "naming the field. A bad item never rejects or half-stores the others; only a body "
        'that is not `{"events": [objects]}` (at most 1,000) is a 400. Accepted events are '
        "fanned out together, many per task.",
        request=EventBulkSerializer,
        responses={200: EventBulkResultsSerializer},
        errors=[400, 413],
    )
    def post(self, request: Request) -> Response:
        serializer = EventBulkSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        items = _specs(serializer.validated_data["events"])
        results = events_ingest_many(api_key=request.user.api_key, items=items)  # type: ignore[union-attr]
        return Response(
            {
                "results": [
                    {"index": r.index, "status": r.status, "errors": r.errors}
                    if r.status == "error"
                    else {"index": r.index, "status": r.status, "id": str(r.event_id)}
                    for r in results
                ]
            }
        )


def _event(event_id: str) -> Event:
    try:
        parsed = uuid.UUID(event_id)
    except ValueError as exc:
        raise Http404(f"no event {event_id!r}") from exc
    return get_object_or_404(Event.objects.select_related("notification_type"), id=parsed)


class EventDetailView(APIView):
    @operation(
        summary="An event's status and delivery counts", responses={200: EventSerializer}, errors=[404]
    )
    def get(self, request: Request, event_id: str) -> Response:
        event = _event(event_id)
        return Response(
            {
                "id": str(event.id),
                "type": event.notification_type.key,
                "status": event.status,
                "created_at": event.created_at.isoformat(),
                "send_at": event.send_at.isoformat() if event.send_at else None,
                "send_at_local": event.send_at_local or None,
                "recipients_planned": event.planned_count,
                "deliveries": selectors.event_delivery_summary(event=event),
            }
        )

    @operation(
        summary="Cancel an event that has not gone out yet",
        description="A send scheduled for later (`send_at`), or one accepted whose fan-out has not "
        "begun: 204, and nothing of it is ever delivered; 204 again when it is cancelled already. "
        "409 once its fan-out has begun.",
        responses={204: None},
        errors=[409],
    )
    def delete(self, request: Request, event_id: str) -> Response:
        try:
            parsed = uuid.UUID(event_id)
        except ValueError as exc:
            raise Http404(f"no event {event_id!r}") from exc
        return _cancel(event_id=parsed)


class EventDeliveriesView(APIView):
    @operation(
        summary="An event's deliveries (paginated)",
        parameters=[
            query("status", {"type": "string", "enum": list(DeliveryStatus.values)}, blank=True),
            query("channel", {"type": "string", "enum": list(Channel.values)}, blank=True),
            *PAGE_PARAMETERS,
        ],
        responses={200: page_of("DeliveryPage", DeliverySerializer(many=True))},
        errors=[400, 404],
    )
    def get(self, request: Request, event_id: str) -> Response:
        event = _event(event_id)
        where = DeliveryFilterSerializer(
            data=query_params_for(DeliveryFilterSerializer, request.query_params)
        )
        where.is_valid(raise_exception=True)
        rows = selectors.event_deliveries(event=event).filter(**where.validated_data)
        paginator = Pagination()
        paginator.ordering = "id"
        page = paginator.paginate_queryset(rows, request, view=self)
        return paginator.get_paginated_response(DeliverySerializer(page, many=True).data)
