"""The streaming API under ``/api/v1/streams/``: create a stream (a service for any owner,
an end user for themselves), read one (status, HLS address, viewers), rotate its secret
key (its owner or a service), and follow its owner (an end user).

The secret ``stream_key`` is shown only when it is made: in the answer that creates the
stream and in the one that rotates the key. Publishers send to ``ingest_url`` with it.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from rest_framework import exceptions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from notifications.api.auth import (
    ApiKeyAuthentication,
    EndUserTokenAuthentication,
    IsServiceOrEndUser,
    end_user_recipient,
)
from notifications.api.common import StrictSerializer, errors_response, operation, text_field
from notifications.services.validation import EXTERNAL_ID_MAX
from streaming import selectors
from streaming.models import LiveSession, Stream, StreamStatus
from streaming.services.chat import chat_viewers_count
from streaming.services.follows import follow, unfollow
from streaming.services.streams import (
    StreamRefused,
    hls_url,
    rtmp_ingest_url,
    stream_create,
    stream_key_rotate,
)

log = logging.getLogger(__name__)


class StreamingApiView(APIView):
    authentication_classes = [ApiKeyAuthentication, EndUserTokenAuthentication]
    permission_classes = [IsServiceOrEndUser]


class StreamCreateSerializer(StrictSerializer):
    key = text_field(
        max_length=64,
        help_text="The stream's public key: /live/{key}/ and its HLS path (a-z, 0-9 and dashes)",
    )
    title = text_field(max_length=200)
    owner = text_field(
        max_length=EXTERNAL_ID_MAX,
        required=False,
        help_text="The creator's external id (a service must give it; an end user creates their own)",
    )
    record = serializers.BooleanField(
        required=False, help_text="Keep the segments as a recording when it ends"
    )


class StreamSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    key = serializers.CharField()
    title = serializers.CharField()
    owner = serializers.CharField()
    status = serializers.ChoiceField(choices=StreamStatus.values)
    live_since = serializers.DateTimeField(allow_null=True)
    hls_url = serializers.CharField(help_text="The HLS master playlist: the source, 480p and 360p")
    viewers = serializers.IntegerField(
        allow_null=True,
        help_text="Viewers on the stream's page now (one per person); null while Redis is away",
    )
    page = serializers.CharField()
    chat_socket = serializers.CharField(help_text="/ws/streams/{key}/chat/?token=")


class StreamCreatedSerializer(StreamSerializer):
    ingest_url = serializers.CharField(help_text="Where to publish (RTMP; OBS's Server)")
    stream_key = serializers.CharField(help_text="The secret to publish with (OBS's Stream Key); shown once")


class StreamKeySerializer(serializers.Serializer):
    ingest_url = serializers.CharField()
    stream_key = serializers.CharField()


class FollowSerializer(serializers.Serializer):
    creator = serializers.CharField()
    following = serializers.BooleanField()


def _payload(stream: Stream) -> dict[str, Any]:
    live_since = None
    if stream.status == StreamStatus.LIVE:
        session = LiveSession.objects.filter(stream=stream, ended_at__isnull=True).only("started_at").first()
        live_since = session.started_at if session else None
    return {
        "id": str(stream.id),
        "key": stream.key,
        "title": stream.title,
        "owner": stream.owner.external_id,
        "status": stream.status,
        "live_since": live_since,
        "hls_url": hls_url(stream),
        "viewers": _viewers(stream),
        "page": f"/live/{stream.key}/",
        "chat_socket": f"/ws/streams/{stream.key}/chat/",
    }


def _viewers(stream: Stream) -> int | None:
    try:
        return chat_viewers_count(stream_id=stream.id)
    except redis.RedisError:
        log.warning("stream %s: viewers not counted, Redis does not answer", stream.key)
        return None


def _stream(key: str) -> Stream:
    stream = selectors.stream_by_key(key)
    if stream is None:
        raise exceptions.NotFound(f"no stream {key}")
    return stream


class StreamListView(StreamingApiView):
    @operation(
        summary="Create a stream",
        description=(
            "A stream of ``owner`` (a service; an end user creates their own and may leave ``owner`` out). "
            "The answer holds the secret ``stream_key`` to publish with to ``ingest_url``; it is not shown "
            "again (rotate it to get a new one)."
        ),
        request=StreamCreateSerializer,
        responses={201: StreamCreatedSerializer},
        errors=[400, 403],
    )
    def post(self, request: Request) -> Response:
        serializer = StreamCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        caller = end_user_recipient(request)
        owner = data.get("owner")
        if caller is not None:
            if owner is not None and owner != caller.external_id:
                raise exceptions.PermissionDenied("owner: an end user creates streams of their own only")
            owner = caller.external_id
        elif owner is None:
            return errors_response({"owner": ["a service must say whose stream it is"]})
        try:
            stream = stream_create(
                key=data["key"], title=data["title"], owner=owner, record=data.get("record", False)
            )
        except StreamRefused as refused:
            return errors_response({refused.field: [refused.message]})
        body = {**_payload(stream), "ingest_url": rtmp_ingest_url(), "stream_key": stream.stream_key}
        return Response(body, status=status.HTTP_201_CREATED)


class StreamView(StreamingApiView):
    @operation(
        summary="A stream",
        description="Whether it is live, where to play it (HLS), and how many watch it now.",
        responses={200: StreamSerializer},
    )
    def get(self, request: Request, stream: str) -> Response:
        return Response(_payload(_stream(stream)))


class StreamKeyView(StreamingApiView):
    @operation(
        summary="Rotate the stream key",
        description=(
            "A new secret key for the stream (its owner or a service); the old one publishes no more. "
            "A publisher already live stays on until it disconnects: cutting it off is the admin's "
            "``Cut off`` action."
        ),
        responses={200: StreamKeySerializer},
        errors=[403],
    )
    def post(self, request: Request, stream: str) -> Response:
        found = _stream(stream)
        caller = end_user_recipient(request)
        if caller is not None and caller.id != found.owner_id:
            raise exceptions.PermissionDenied("only the stream's owner rotates its key")
        return Response({"ingest_url": rtmp_ingest_url(), "stream_key": stream_key_rotate(found)})


class FollowView(StreamingApiView):
    def _caller(self, request: Request) -> Any:
        caller = end_user_recipient(request)
        if caller is None:
            raise exceptions.PermissionDenied("following is done with the viewer's own token")
        return caller

    @operation(
        summary="Follow the stream's creator",
        description="The caller is told through the notification pipeline when the creator goes live.",
        responses={200: FollowSerializer},
        errors=[400, 403],
    )
    def post(self, request: Request, stream: str) -> Response:
        found = _stream(stream)
        try:
            follow(follower=self._caller(request), creator_id=found.owner_id)
        except StreamRefused as refused:
            return errors_response({refused.field: [refused.message]})
        return Response({"creator": found.owner.external_id, "following": True})

    @operation(
        summary="Stop following the stream's creator",
        responses={200: FollowSerializer},
        errors=[403],
    )
    def delete(self, request: Request, stream: str) -> Response:
        found = _stream(stream)
        unfollow(follower=self._caller(request), creator_id=found.owner_id)
        return Response({"creator": found.owner.external_id, "following": False})
