"""The streaming API under ``/api/v1/streams/`` (project/urls.py puts it before the v1
catch-all): streams, their keys, following their creators (streaming/api.py), and chat
moderation (streaming/chat_api.py). The ``stream`` path parameter's pattern is stated in
PATH_PARAMETERS of notifications/api/schema.py."""

from django.urls import URLPattern, path, register_converter

from notifications.api.schema import SegmentConverter
from streaming import api
from streaming.chat_api import chat_urlpatterns


class StreamConverter(SegmentConverter):
    regex = "[a-z0-9][a-z0-9-]{1,62}[a-z0-9]"


register_converter(StreamConverter, "stream")

urlpatterns: list[URLPattern] = [
    path("", api.StreamListView.as_view(), name="streams"),
    path("<stream:stream>/", api.StreamView.as_view(), name="stream"),
    path("<stream:stream>/key/", api.StreamKeyView.as_view(), name="stream-key"),
    path("<stream:stream>/follow/", api.FollowView.as_view(), name="stream-follow"),
    *chat_urlpatterns,
]
