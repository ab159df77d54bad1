"""Campaigns and the segments they send to (notifications/services/campaigns.py,
notifications/services/segments.py)."""

from __future__ import annotations

from typing import Any

from django.http import Http404
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from notifications.api.common import JsonObjectField, StrictSerializer, errors_response, operation
from notifications.api.events import KeyField
from notifications.models import Campaign, CampaignStatus, Channel, Segment
from notifications.services.campaigns import (
    THROTTLE_MAX,
    VARIANTS_MAX,
    CampaignRefused,
    campaign_cancel,
    campaign_create,
    campaign_pause,
    campaign_payload,
    campaign_resume,
    campaign_start,
)
from notifications.services.segments import FILTERS, segment_count, segment_save
from notifications.services.validation import ValidationFailed

AUDIENCE_SCHEMA = {
    "oneOf": [
        {
            "type": "object",
            "properties": {"topic": {"type": "string", "maxLength": 100}},
            "required": ["topic"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {"segment": {"type": "integer", "minimum": 1}},
            "required": ["segment"],
            "additionalProperties": False,
        },
    ],
    "description": "The topic's subscribers or the segment's recipients when it starts: {\"topic\": key} or "
    '{"segment": id}',
}
VARIANTS_SCHEMA = {
    "type": "array",
    "maxItems": VARIANTS_MAX,
    "items": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 40},
            "weight": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 1},
            "data": {"type": "object", "description": "Over the campaign's data"},
            "template_version": {
                "type": "integer",
                "minimum": 1,
                "description": "A version of the type's templates",
            },
        },
        "required": ["name"],
        "additionalProperties": False,
    },
    "description": "A/B variants: each recipient gets one, always the same, in the shares of the weights",
}
FILTERS_SCHEMA = {
    "type": "object",
    "properties": {
        "locales": {"type": "array", "items": {"type": "string"}, "description": "fr matches fr, fr-CA, ..."},
        "timezones": {"type": "array", "items": {"type": "string"}},
        "email_domain": {"type": "string"},
        "has": {"type": "array", "items": {"type": "string", "enum": ["email", "phone", "device"]}},
        "topics": {"type": "array", "items": {"type": "string"}, "description": "Subscribed to any of them"},
        "active_within_days": {"type": "integer", "minimum": 1, "maximum": 3650},
        "created_within_days": {"type": "integer", "minimum": 1, "maximum": 3650},
    },
    "additionalProperties": False,
    "description": "Every filter given must hold; the values of one filter are alternatives.",
}


@extend_schema_field(AUDIENCE_SCHEMA)
class AudienceField(JsonObjectField):
    pass


@extend_schema_field(VARIANTS_SCHEMA)
class VariantsField(serializers.ListField):
    pass


@extend_schema_field(FILTERS_SCHEMA)
class FiltersField(JsonObjectField):
    pass


class CampaignCreateSerializer(StrictSerializer):
    name = serializers.CharField(max_length=200)
    type = KeyField(max_length=100, trim_whitespace=False, help_text="Key of the notification type")
    audience = AudienceField()
    data = JsonObjectField(required=False, default=dict, help_text="Template variables")  # type: ignore[assignment]
    channels = serializers.ListField(
        child=serializers.ChoiceField(choices=Channel.choices),
        required=False,
        default=list,
        help_text="Channels of the type to send on; empty: all of them",
    )
    throttle_per_second = serializers.IntegerField(min_value=1, max_value=THROTTLE_MAX, default=100)
    send_at = serializers.DateTimeField(required=False, allow_null=True, default=None)
    variants = VariantsField(required=False, default=list)


class ProgressSerializer(serializers.Serializer):
    audience = serializers.IntegerField()
    sent = serializers.IntegerField(help_text="Recipients handed to a channel, each at most once")
    delivered = serializers.IntegerField()
    failed = serializers.IntegerField()
    suppressed = serializers.IntegerField()


class CampaignProgressSerializer(ProgressSerializer):
    held = serializers.IntegerField(help_text="Recipients whose messages wait for a resume")
    percent = serializers.IntegerField()


class VariantSerializer(serializers.Serializer):
    name = serializers.CharField()
    progress = ProgressSerializer()


class CampaignSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    type = serializers.CharField()
    status = serializers.ChoiceField(choices=CampaignStatus.choices)
    throttle_per_second = serializers.IntegerField()
    channels = serializers.ListField(child=serializers.CharField())
    send_at = serializers.DateTimeField(allow_null=True)
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    progress = CampaignProgressSerializer()
    variants = VariantSerializer(many=True)


def _campaign(campaign_id: int) -> Campaign:
    campaign = Campaign.objects.select_related("notification_type").filter(id=campaign_id).first()
    if campaign is None:
        raise Http404("no such campaign")
    return campaign


class CampaignListView(APIView):
    @operation(
        summary="Create a campaign",
        description="A draft: nothing is sent until it starts. Every wrong field is a 400 naming it.",
        request=CampaignCreateSerializer,
        responses={201: CampaignSerializer},
        errors=[400],
    )
    def post(self, request: Request) -> Response:
        body = CampaignCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        given = body.validated_data
        try:
            campaign = campaign_create(
                name=given["name"],
                type_key=given["type"],
                audience=given["audience"],
                data=given.get("data") or {},
                channels=given.get("channels") or [],
                throttle_per_second=given["throttle_per_second"],
                send_at=given.get("send_at"),
                variants=given.get("variants") or None,
            )
        except ValidationFailed as exc:
            return errors_response(exc.errors)
        return Response(campaign_payload(campaign), status=status.HTTP_201_CREATED)


class CampaignDetailView(APIView):
    @operation(summary="A campaign with its progress", responses={200: CampaignSerializer}, errors=[404])
    def get(self, request: Request, campaign_id: int) -> Response:
        return Response(campaign_payload(_campaign(campaign_id)))


def _step(name: str, summary: str, description: str, action: Any) -> type[APIView]:
    class StepView(APIView):
        @operation(
            summary=summary,
            description=description + " A step its status does not allow is a 409 naming `status`.",
            responses={200: CampaignSerializer},
            errors=[400, 404, 409] if name == "start" else [404, 409],
        )
        def post(self, request: Request, campaign_id: int) -> Response:
            try:
                campaign = action(campaign=_campaign(campaign_id))
            except CampaignRefused as exc:
                return errors_response({"status": [str(exc)]}, code=status.HTTP_409_CONFLICT)
            except ValidationFailed as exc:
                return errors_response(exc.errors)
            return Response(campaign_payload(campaign))

    StepView.__name__ = f"Campaign{name.title()}View"
    return StepView


CampaignStartView = _step(
    "start",
    "Start a campaign",
    "Snapshots the audience into its variants and sends at the throttle (or waits for `send_at`). Refused "
    "with a 400 naming each variable or template its data does not satisfy.",
    campaign_start,
)
CampaignPauseView = _step(
    "pause", "Pause a campaign", "Within a second nothing more goes out; what waits is held.", campaign_pause
)
CampaignResumeView = _step(
    "resume", "Resume a campaign", "Sends the rest from where it stopped; nothing twice.", campaign_resume
)
CampaignCancelView = _step(
    "cancel", "Cancel a campaign", "Nothing more goes out; what waited is suppressed.", campaign_cancel
)


class SegmentCreateSerializer(StrictSerializer):
    name = serializers.CharField(max_length=200)
    filters = FiltersField()


class SegmentSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    filters = serializers.DictField()
    count = serializers.IntegerField(help_text="Recipients matching now")


def _segment_payload(segment: Segment) -> dict[str, Any]:
    return {
        "id": segment.id,
        "name": segment.name,
        "filters": segment.filters,
        "count": segment_count(segment.filters),
    }


class SegmentListView(APIView):
    @operation(
        summary="Save a segment",
        description=f"Filters: {', '.join(FILTERS)}. Each wrong one is a 400 naming `filters.<name>`.",
        request=SegmentCreateSerializer,
        responses={201: SegmentSerializer},
        errors=[400],
    )
    def post(self, request: Request) -> Response:
        body = SegmentCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            segment = segment_save(name=body.validated_data["name"], filters=body.validated_data["filters"])
        except ValidationFailed as exc:
            return errors_response(exc.errors)
        return Response(_segment_payload(segment), status=status.HTTP_201_CREATED)


class SegmentDetailView(APIView):
    @operation(summary="A segment with its live count", responses={200: SegmentSerializer}, errors=[404])
    def get(self, request: Request, segment_id: int) -> Response:
        segment = Segment.objects.filter(id=segment_id).first()
        if segment is None:
            raise Http404("no such segment")
        return Response(_segment_payload(segment))
