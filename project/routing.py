from django.urls import path, re_path

from collaboration.consumers import DocumentConsumer
from collaboration.ot_consumers import OtDocumentConsumer
from gaming.consumers import MatchConsumer
from iot.consumers import IotLiveConsumer
from notifications.consumers import InboxConsumer
from streaming.consumers import StreamChatConsumer

websocket_urlpatterns = [
    path("ws/inbox/", InboxConsumer.as_asgi()),
    # y-websocket appends the room name to serverUrl: /ws/docs/{key}, a trailing slash accepted.
    re_path(r"^ws/docs/(?P<key>[^/]+)/?$", DocumentConsumer.as_asgi()),
    # The server-ordered OT mode of a plain-text document (collaboration/ot_consumers.py).
    re_path(r"^ws/docs/(?P<key>[^/]+)/ot/?$", OtDocumentConsumer.as_asgi()),
    # The /iot/ page's live readings, device status and alert changes (staff sessions).
    path("ws/iot/", IotLiveConsumer.as_asgi()),
    # A player's match, whichever match server holds it (gaming/consumers.py).
    path("ws/matches/<uuid:match_id>/", MatchConsumer.as_asgi()),
    re_path(r"^ws/streams/(?P<key>[^/]+)/chat/?$", StreamChatConsumer.as_asgi()),
]
