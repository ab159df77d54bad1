"""v1 API views: parse, call a service or selector, shape the answer. No business logic."""

from __future__ import annotations

import uuid
from typing import Any

from django.db.models import Count
from django.http import Http404
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from notifications import selectors
from notifications.api.auth import EndUserTokenAuthentication, IsEndUser
from notifications.api.serializers import (
    DeadLetterFilterSerializer,
    DeadLetterPageSerializer,
    DeadLetterReplaySerializer,
    DeadLetterSerializer,
    DeliverySerializer,
    DeviceSerializer,
    EventAcceptedSerializer,
    EventCreateSerializer,
    EventSerializer,
    InboxItemSerializer,
    InboxPageSerializer,
    NotificationTypeSerializer,
    PreferencesSerializer,
    RecipientSerializer,
    ReplayedSerializer,
    SubscribersSerializer,
    SuppressionPageSerializer,
    SuppressionQuerySerializer,
    SuppressionSerializer,
    TokenSerializer,
    WebhookEndpointSerializer,
    dead_letter_filter,
    query_params_for,
    recipient_fields,
    suppression_address,
)
from notifications.models import (
    Channel,
    Event,
    InboxItem,
    NotificationType,
    Recipient,
    SuppressionKind,
    Topic,
)
from notifications.services.catalog import notification_type_save, notification_type_templates
from notifications.services.deadletters import deadletters_replay
from notifications.services.feedback import suppression_add, suppression_remove
from notifications.services.inbox import inbox_item_mark_read, inbox_item_payload, inbox_mark_all_read
from notifications.services.ingest import IdempotencyConflict, IngestError, event_ingest
from notifications.services.recipients import (
    device_register,
    preferences_get,
    preferences_replace,
    recipient_upsert,
    topic_subscribe,
    topic_unsubscribe,
    webhook_endpoint_add,
    webhook_endpoint_remove,
)
from notifications.services.tokens import end_user_token_issue

ERRORS = OpenApiResponse(description='{"errors": {field: [message, ...]}}')


def _errors(errors: dict[str, Any], code: int = status.HTTP_400_BAD_REQUEST) -> Response:
    return Response({"errors": errors}, status=code)


def _recipient(external_id: str) -> Recipient:
    return get_object_or_404(Recipient, external_id=external_id)


def _recipients_by_external_id(external_ids: list[str]) -> tuple[list[Recipient], list[str]]:
    wanted = list(dict.fromkeys(external_ids))
    found = {r.external_id: r for r in Recipient.objects.filter(external_id__in=wanted)}
    return list(found.values()), [e for e in wanted if e not in found]


class RecipientView(APIView):
    @extend_schema(responses={200: RecipientSerializer, 404: ERRORS}, summary="Get a recipient")
    def get(self, request: Request, external_id: str) -> Response:
        return Response(RecipientSerializer(_recipient(external_id)).data)

    @extend_schema(
        request=RecipientSerializer,
        responses={200: RecipientSerializer, 201: RecipientSerializer, 400: ERRORS},
        summary="Create or update a recipient",
    )
    def put(self, request: Request, external_id: str) -> Response:
        if len(external_id) > 200:
            return _errors({"external_id": ["at most 200 characters"]})
        serializer = RecipientSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        recipient, created = recipient_upsert(
            external_id=external_id, fields=recipient_fields(serializer.validated_data)
        )
        return Response(
            RecipientSerializer(recipient).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


class DeviceView(APIView):
    @extend_schema(
        request=DeviceSerializer,
        responses={201: DeviceSerializer, 200: DeviceSerializer, 400: ERRORS, 404: ERRORS},
        summary="Register a push token",
    )
    def post(self, request: Request, external_id: str) -> Response:
        recipient = _recipient(external_id)
        serializer = DeviceSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        device, created = device_register(recipient=recipient, **serializer.validated_data)
        return Response(
            DeviceSerializer(device).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )


class TokenView(APIView):
    @extend_schema(
        request=None, responses={200: TokenSerializer, 404: ERRORS}, summary="Issue an end-user token"
    )
    def post(self, request: Request, external_id: str) -> Response:
        recipient = _recipient(external_id)
        token, expires_at = end_user_token_issue(recipient_id=recipient.id)
        return Response({"token": token, "expires_at": expires_at.isoformat()})


class PreferencesView(APIView):
    @extend_schema(
        responses={200: PreferencesSerializer, 404: ERRORS}, summary="A recipient's stored preferences"
    )
    def get(self, request: Request, external_id: str) -> Response:
        return Response(preferences_get(recipient=_recipient(external_id)).as_dict())

    @extend_schema(
        request=PreferencesSerializer,
        responses={200: PreferencesSerializer, 400: ERRORS, 404: ERRORS},
        summary="Replace a recipient's preferences",
    )
    def put(self, request: Request, external_id: str) -> Response:
        recipient = _recipient(external_id)
        serializer = PreferencesSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        result = preferences_replace(
            recipient=recipient,
            channels=data["channels"],
            categories=data["categories"],
            types=data["types"],
            quiet_hours=data["quiet_hours"],
        )
        return Response(result.as_dict())


def _type_payload(notification_type: NotificationType) -> dict[str, Any]:
    window = notification_type.aggregation_window_seconds
    return {
        "key": notification_type.key,
        "name": notification_type.name,
        "category": notification_type.category,
        "channels": notification_type.channels,
        "templates": notification_type_templates(notification_type=notification_type),
        "aggregation": {"window_seconds": window} if window else None,
        "quiet_hours_policy": notification_type.quiet_hours_policy,
        "default_locale": notification_type.default_locale,
        "fallbacks": notification_type.fallbacks or [],
        "created_at": notification_type.created_at.isoformat(),
    }


def _type_fields(data: dict[str, Any]) -> dict[str, Any]:
    aggregation = data.get("aggregation") or {}
    return {
        "name": data.get("name", ""),
        "category": data["category"],
        "channels": data["channels"],
        "aggregation_window_seconds": aggregation.get("window_seconds"),
        "quiet_hours_policy": data["quiet_hours_policy"],
        "default_locale": data["default_locale"],
        "fallbacks": data.get("fallbacks", []),
    }


class NotificationTypeListView(APIView):
    @extend_schema(responses={200: NotificationTypeSerializer(many=True)}, summary="List notification types")
    def get(self, request: Request) -> Response:
        types = NotificationType.objects.prefetch_related("templates").order_by("key")
        return Response({"results": [_type_payload(t) for t in types]})

    @extend_schema(
        request=NotificationTypeSerializer,
        responses={201: NotificationTypeSerializer, 400: ERRORS},
        summary="Create a notification type",
    )
    def post(self, request: Request) -> Response:
        serializer = NotificationTypeSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        created = notification_type_save(
            key=data["key"], fields=_type_fields(data), templates=data["templates"]
        )
        return Response(_type_payload(created), status=status.HTTP_201_CREATED)


class NotificationTypeDetailView(APIView):
    @extend_schema(
        responses={200: NotificationTypeSerializer, 404: ERRORS}, summary="Get a notification type"
    )
    def get(self, request: Request, key: str) -> Response:
        return Response(_type_payload(get_object_or_404(NotificationType, key=key)))

    @extend_schema(
        request=NotificationTypeSerializer,
        responses={200: NotificationTypeSerializer, 400: ERRORS, 404: ERRORS},
        summary="Replace a notification type",
    )
    def put(self, request: Request, key: str) -> Response:
        instance = get_object_or_404(NotificationType, key=key)
        serializer = NotificationTypeSerializer(instance=instance, data={**request.data, "key": key})
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        saved = notification_type_save(
            key=key, fields=_type_fields(data), templates=data["templates"], instance=instance
        )
        return Response(_type_payload(saved))


class TopicSubscribersView(APIView):
    @extend_schema(
        request=SubscribersSerializer,
        responses={200: OpenApiTypes.OBJECT, 400: ERRORS},
        summary="Subscribe recipients to a topic (created on first use)",
    )
    def post(self, request: Request, key: str) -> Response:
        if (problem := _topic_key_problem(key)) is not None:
            return _errors({"key": [problem]})
        serializer = SubscribersSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        recipients, missing = _recipients_by_external_id(serializer.validated_data["recipients"])
        if missing:
            return _errors(
                {"recipients": [f"unknown recipients: {', '.join(repr(m) for m in missing[:20])}"]}
            )
        topic, added = topic_subscribe(topic_key=key, recipients=recipients)
        return Response({"topic": topic.key, "added": added, "subscribers": topic.subscriptions.count()})

    @extend_schema(
        request=SubscribersSerializer,
        responses={200: OpenApiTypes.OBJECT, 400: ERRORS, 404: ERRORS},
        summary="Unsubscribe recipients from a topic",
    )
    def delete(self, request: Request, key: str) -> Response:
        topic = get_object_or_404(Topic, key=key)
        serializer = SubscribersSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        recipients, _ = _recipients_by_external_id(serializer.validated_data["recipients"])
        removed = topic_unsubscribe(topic=topic, recipients=recipients)
        return Response({"topic": topic.key, "removed": removed, "subscribers": topic.subscriptions.count()})


def _topic_key_problem(key: str) -> str | None:
    from django.core.exceptions import ValidationError

    from notifications.models import KEY_VALIDATOR

    try:
        KEY_VALIDATOR(key)
    except ValidationError as exc:
        return str(exc.messages[0])
    return None


class TopicView(APIView):
    @extend_schema(responses={200: OpenApiTypes.OBJECT, 404: ERRORS}, summary="Get a topic")
    def get(self, request: Request, key: str) -> Response:
        topic = get_object_or_404(Topic.objects.annotate(n=Count("subscriptions")), key=key)
        return Response({"key": topic.key, "name": topic.name, "subscribers": topic.n})  # type: ignore[attr-defined]


class EventListView(APIView):
    @extend_schema(
        request=EventCreateSerializer,
        parameters=[OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER, required=False)],
        responses={
            202: EventAcceptedSerializer,
            200: EventAcceptedSerializer,
            400: ERRORS,
            401: ERRORS,
            409: ERRORS,
        },
        summary="Send an event",
    )
    def post(self, request: Request) -> Response:
        body = request.data
        if not isinstance(body, dict):
            return _errors({"non_field_errors": ["the body must be a JSON object"]})
        header_key = request.headers.get("Idempotency-Key")
        if header_key and "idempotency_key" not in body:
            body = {**body, "idempotency_key": header_key}
        serializer = EventCreateSerializer(data=body)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            result = event_ingest(
                api_key=request.user.api_key,  # type: ignore[union-attr]
                type_key=data["type"],
                recipients=data.get("recipients"),
                topic_key=data.get("topic"),
                data=data["data"],
                idempotency_key=data.get("idempotency_key"),
                send_at=data.get("send_at"),
                origin_ip=data.get("origin_ip"),
            )
        except IngestError as exc:
            return _errors(exc.errors)
        except IdempotencyConflict as exc:
            return _errors({"idempotency_key": [str(exc)]}, status.HTTP_409_CONFLICT)
        code = status.HTTP_202_ACCEPTED if result.created else status.HTTP_200_OK
        return Response({"id": str(result.event.id), "status": "accepted"}, status=code)


def _event(event_id: str) -> Event:
    try:
        parsed = uuid.UUID(event_id)
    except ValueError as exc:
        raise Http404("no such event") from exc
    return get_object_or_404(Event.objects.select_related("notification_type"), id=parsed)


class EventDetailView(APIView):
    @extend_schema(
        responses={200: EventSerializer, 404: ERRORS}, summary="An event's status and delivery counts"
    )
    def get(self, request: Request, event_id: str) -> Response:
        event = _event(event_id)
        summary = selectors.event_delivery_summary(event=event)
        return Response(
            {
                "id": str(event.id),
                "type": event.notification_type.key,
                "status": event.status,
                "created_at": event.created_at.isoformat(),
                "send_at": event.send_at.isoformat() if event.send_at else None,
                "recipients_planned": event.planned_count,
                "deliveries": summary,
            }
        )


class DeliveryPagination(CursorPagination):
    ordering = "id"
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000


class EventDeliveriesView(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter("status", str, required=False),
            OpenApiParameter("channel", str, required=False),
            OpenApiParameter("page_size", int, required=False),
            OpenApiParameter("cursor", str, required=False),
        ],
        responses={200: DeliverySerializer(many=True), 404: ERRORS},
        summary="An event's deliveries (paginated)",
    )
    def get(self, request: Request, event_id: str) -> Response:
        event = _event(event_id)
        qs = selectors.event_deliveries(event=event)
        for field in ("status", "channel"):
            if value := request.query_params.get(field):
                qs = qs.filter(**{field: value})
        paginator = DeliveryPagination()
        page = paginator.paginate_queryset(qs, request, view=self)
        return paginator.get_paginated_response(DeliverySerializer(page, many=True).data)


class DeadLetterPagination(CursorPagination):
    # Newest first; the delivery id breaks ties between letters of the same instant.
    ordering = ("-created_at", "-delivery_id")
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000


class DeadLetterListView(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter("channel", str, required=False, enum=[c.value for c in Channel]),
            OpenApiParameter("type", str, required=False, description="Notification type key"),
            OpenApiParameter("reason", str, required=False, description="Part of the reason"),
            OpenApiParameter("after", OpenApiTypes.DATETIME, required=False, description="Dead since"),
            OpenApiParameter("before", OpenApiTypes.DATETIME, required=False, description="Dead before"),
            OpenApiParameter("page_size", int, required=False),
            OpenApiParameter("cursor", str, required=False),
        ],
        responses={200: DeadLetterPageSerializer, 400: ERRORS, 401: ERRORS},
        summary="Open dead letters, newest first (paginated)",
        description="Deliveries whose retries ran out and that were not replayed yet, each with "
        "its attempt history in `errors`.",
    )
    def get(self, request: Request) -> Response:
        where = DeadLetterFilterSerializer(
            data=query_params_for(DeadLetterFilterSerializer, request.query_params)
        )
        where.is_valid(raise_exception=True)
        rows = selectors.deadletters_open_list(where=dead_letter_filter(where.validated_data))
        paginator = DeadLetterPagination()
        page = paginator.paginate_queryset(rows, request, view=self)
        return paginator.get_paginated_response(DeadLetterSerializer(page, many=True).data)


class DeadLetterReplayView(APIView):
    @extend_schema(
        request=DeadLetterReplaySerializer,
        responses={200: ReplayedSerializer, 400: ERRORS, 401: ERRORS},
        summary="Replay dead letters: by ids, by filter, or all",
        description='Exactly one of `{"ids": [...]}`, `{"filter": {...}}` or `{"all": true}`. Each '
        "replayed delivery gets a fresh retry budget and is sent again; letters already "
        "replayed are skipped.",
    )
    def post(self, request: Request) -> Response:
        if not isinstance(request.data, dict):
            return _errors({"non_field_errors": ["the body must be a JSON object"]})
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
    @extend_schema(
        request=None,
        responses={200: ReplayedSerializer, 401: ERRORS, 404: ERRORS},
        summary="Replay one dead letter",
        operation_id="v1_dead_letter_replay_one",
    )
    def post(self, request: Request, delivery_id: int) -> Response:
        if deadletters_replay(delivery_ids=[delivery_id]) == 0:
            raise Http404(f"no open dead letter for delivery {delivery_id}")
        return Response({"replayed": 1})


class SuppressionPagination(CursorPagination):
    ordering = "-id"
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000


class SuppressionListView(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter("kind", str, required=False, enum=[k.value for k in SuppressionKind]),
            OpenApiParameter("address", str, required=False, description="One exact address"),
            OpenApiParameter("page_size", int, required=False),
            OpenApiParameter("cursor", str, required=False),
        ],
        responses={200: SuppressionPageSerializer, 400: ERRORS, 401: ERRORS},
        summary="The suppression list, newest first (paginated)",
    )
    def get(self, request: Request) -> Response:
        query = SuppressionQuerySerializer(
            data=query_params_for(SuppressionQuerySerializer, request.query_params)
        )
        query.is_valid(raise_exception=True)
        rows = selectors.suppressions_list(
            kind=query.validated_data.get("kind", ""), address=query.validated_data.get("address", "")
        )
        paginator = SuppressionPagination()
        page = paginator.paginate_queryset(rows, request, view=self)
        return paginator.get_paginated_response(SuppressionSerializer(page, many=True).data)

    @extend_schema(
        request=SuppressionSerializer,
        responses={201: SuppressionSerializer, 200: SuppressionSerializer, 400: ERRORS, 401: ERRORS},
        summary="Suppress an address (nothing is sent to it, whatever the category)",
        description="201 when added; 200 with the existing entry when the address is listed already.",
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
            SuppressionSerializer(entry).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


class SuppressionDetailView(APIView):
    @extend_schema(
        request=None,
        responses={204: None, 400: ERRORS, 401: ERRORS, 404: ERRORS},
        summary="Take an address off the suppression list",
    )
    def delete(self, request: Request, kind: str, address: str) -> Response:
        if kind not in SuppressionKind.values:
            return _errors(
                {"kind": [f"unknown kind {kind!r}; expected one of {', '.join(SuppressionKind.values)}"]}
            )
        try:
            stored = suppression_address(kind, address)
        except serializers.ValidationError:
            stored = address  # Not valid now, so it cannot be listed; the lookup says 404.
        if suppression_remove(kind=kind, address=stored) == 0:
            raise Http404(f"{address!r} is not on the {kind} suppression list")
        return Response(status=status.HTTP_204_NO_CONTENT)


class WebhookEndpointListView(APIView):
    @extend_schema(
        responses={
            200: inline_serializer("WebhookEndpointList", {"results": WebhookEndpointSerializer(many=True)}),
            401: ERRORS,
            404: ERRORS,
        },
        summary="A recipient's webhook endpoints",
    )
    def get(self, request: Request, external_id: str) -> Response:
        endpoints = selectors.webhook_endpoints(recipient=_recipient(external_id))
        return Response({"results": WebhookEndpointSerializer(endpoints, many=True).data})

    @extend_schema(
        request=WebhookEndpointSerializer,
        responses={
            201: WebhookEndpointSerializer,
            200: WebhookEndpointSerializer,
            400: ERRORS,
            401: ERRORS,
            404: ERRORS,
        },
        summary="Add a webhook endpoint (Slack, Teams or signed generic)",
        description="201 when added; 200 when the recipient had this URL already (its kind and "
        "secret are replaced and it is reactivated). The secret is never returned.",
    )
    def post(self, request: Request, external_id: str) -> Response:
        recipient = _recipient(external_id)
        serializer = WebhookEndpointSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        endpoint, created = webhook_endpoint_add(recipient=recipient, **serializer.validated_data)
        return Response(
            WebhookEndpointSerializer(endpoint).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


class WebhookEndpointDetailView(APIView):
    @extend_schema(
        request=None, responses={204: None, 401: ERRORS, 404: ERRORS}, summary="Remove a webhook endpoint"
    )
    def delete(self, request: Request, external_id: str, endpoint_id: int) -> Response:
        if not webhook_endpoint_remove(recipient=_recipient(external_id), endpoint_id=endpoint_id):
            raise Http404(f"recipient {external_id!r} has no webhook endpoint {endpoint_id}")
        return Response(status=status.HTTP_204_NO_CONTENT)


class EndUserView(APIView):
    authentication_classes = [EndUserTokenAuthentication]
    permission_classes = [IsEndUser]


def _non_negative(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if not raw.isdigit():
        raise serializers.ValidationError({name: [f"must be a non-negative integer, got {raw!r}"]})
    return int(raw)


class InboxView(EndUserView):
    @extend_schema(
        parameters=[
            OpenApiParameter("after", int, required=False, description="Items with seq > after, ascending"),
            OpenApiParameter(
                "before", int, required=False, description="Items with seq < before, newest first"
            ),
            OpenApiParameter("limit", int, required=False, description="1..200, default 50"),
        ],
        responses={200: InboxPageSerializer, 400: ERRORS, 401: ERRORS},
        summary="The end user's inbox",
    )
    def get(self, request: Request) -> Response:
        recipient_id = request.user.recipient_id  # type: ignore[union-attr]
        after, before = _non_negative(request, "after"), _non_negative(request, "before")
        limit = _non_negative(request, "limit") or 50
        items = selectors.inbox_items(recipient_id=recipient_id, after=after, before=before, limit=limit)
        return Response(
            {
                "results": [inbox_item_payload(item) for item in items],
                "unread_count": selectors.inbox_unread_count(recipient_id=recipient_id),
                "last_seq": selectors.inbox_last_seq(recipient_id=recipient_id),
            }
        )


class InboxUnreadCountView(EndUserView):
    @extend_schema(responses={200: OpenApiTypes.OBJECT, 401: ERRORS}, summary="Unread count")
    def get(self, request: Request) -> Response:
        return Response({"count": selectors.inbox_unread_count(recipient_id=request.user.recipient_id)})  # type: ignore[union-attr]


class InboxReadView(EndUserView):
    @extend_schema(
        request=None, responses={200: InboxItemSerializer, 404: ERRORS}, summary="Mark an item read"
    )
    def post(self, request: Request, item_id: int) -> Response:
        try:
            item = inbox_item_mark_read(recipient_id=request.user.recipient_id, item_id=item_id)  # type: ignore[union-attr]
        except InboxItem.DoesNotExist as exc:
            raise Http404("no such inbox item") from exc
        return Response(inbox_item_payload(item))


class InboxReadAllView(EndUserView):
    @extend_schema(request=None, responses={200: OpenApiTypes.OBJECT}, summary="Mark every item read")
    def post(self, request: Request) -> Response:
        changed = inbox_mark_all_read(recipient_id=request.user.recipient_id)  # type: ignore[union-attr]
        return Response({"marked_read": changed, "unread_count": 0})
