"""Topics and their subscribers."""

from __future__ import annotations

from django.db.models import Count
from django.shortcuts import get_object_or_404
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from notifications.api.common import StrictSerializer, operation, text_field
from notifications.models import Topic
from notifications.services.recipients import (
    TOPIC_SUBSCRIBERS_MAX,
    topic_subscribers_add,
    topic_subscribers_remove,
)
from notifications.services.validation import EXTERNAL_ID_MAX


class SubscribersSerializer(StrictSerializer):
    recipients = serializers.ListField(
        child=text_field(max_length=EXTERNAL_ID_MAX, min_length=1),
        min_length=1,
        max_length=TOPIC_SUBSCRIBERS_MAX,
        help_text="external_ids",
    )


class SubscribedSerializer(serializers.Serializer):
    topic = serializers.CharField()
    added = serializers.IntegerField(min_value=0, help_text="Subscriptions that are new")
    subscribers = serializers.IntegerField(min_value=0, help_text="Subscribers now")


class UnsubscribedSerializer(serializers.Serializer):
    topic = serializers.CharField()
    removed = serializers.IntegerField(min_value=0)
    subscribers = serializers.IntegerField(min_value=0, help_text="Subscribers now")


class TopicSerializer(serializers.Serializer):
    key = serializers.CharField()
    name = serializers.CharField()
    subscribers = serializers.IntegerField(min_value=0)


class TopicView(APIView):
    @operation(summary="Get a topic", responses={200: TopicSerializer}, errors=[404])
    def get(self, request: Request, key: str) -> Response:
        topic = get_object_or_404(Topic.objects.annotate(n=Count("subscriptions")), key=key)
        return Response({"key": topic.key, "name": topic.name, "subscribers": topic.n})  # type: ignore[attr-defined]


class TopicSubscribersView(APIView):
    @operation(
        summary="Subscribe recipients to a topic (created on first use)",
        description="Up to 10,000 external_ids per call; an unknown one is a 400 and nothing is stored.",
        request=SubscribersSerializer,
        responses={200: SubscribedSerializer},
        errors=[400],
    )
    def post(self, request: Request, key: str) -> Response:
        serializer = SubscribersSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        topic, added, subscribers = topic_subscribers_add(
            topic_key=key, external_ids=serializer.validated_data["recipients"]
        )
        return Response({"topic": topic.key, "added": added, "subscribers": subscribers})

    @operation(
        summary="Unsubscribe recipients from a topic",
        description="Unknown external_ids and recipients who were not subscribed are skipped.",
        request=SubscribersSerializer,
        responses={200: UnsubscribedSerializer},
        errors=[400, 404],
    )
    def delete(self, request: Request, key: str) -> Response:
        topic = get_object_or_404(Topic, key=key)
        serializer = SubscribersSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        removed, subscribers = topic_subscribers_remove(
            topic=topic, external_ids=serializer.validated_data["recipients"]
        )
        return Response({"topic": topic.key, "removed": removed, "subscribers": subscribers})
