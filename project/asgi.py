"""ASGI entry point: HTTP through Django, websockets through Channels.

Runs under uvicorn (the default of ``make run``) or daphne.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from project.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Origin is checked by the consumer itself: token sockets may come from any origin
        # (the token is not an ambient credential), cookie sockets only from ours.
        "websocket": AuthMiddlewareStack(URLRouter(websocket_urlpatterns)),
    }
)
