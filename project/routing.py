from django.urls import path, re_path

from collaboration.consumers import DocumentConsumer
from collaboration.ot_consumers import OtDocumentConsumer
from notifications.consumers import InboxConsumer

websocket_urlpatterns = [
    path("ws/inbox/", InboxConsumer.as_asgi()),
    # y-websocket appends the room name to serverUrl: /ws/docs/{key}, a trailing slash accepted.
    re_path(r"^ws/docs/(?P<key>[^/]+)/?$", DocumentConsumer.as_asgi()),
    # The server-ordered OT mode of a plain-text document (collaboration/ot_consumers.py).
    re_path(r"^ws/docs/(?P<key>[^/]+)/ot/?$", OtDocumentConsumer.as_asgi()),
]
