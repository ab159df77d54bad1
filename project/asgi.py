"""ASGI entry point: HTTP through Django, websockets through Channels.

Runs under uvicorn (the default of ``make run``) or daphne.
"""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
# django.core.asgi.get_asgi_application, with the handler that runs the middleware chain
# in one thread hop (project/handlers.py).
django.setup(set_prefix=False)

from project.handlers import SyncChainASGIHandler  # noqa: E402

django_asgi_app = SyncChainASGIHandler()

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
