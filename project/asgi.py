"""ASGI entry point: HTTP through Django, websockets through Channels.

Runs under uvicorn (the default of ``make run``) or daphne.
"""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
# django.core.asgi.get_asgi_application, with the handler that runs the middleware chain
# in one thread hop (project/handlers.py).
django.setup(set_prefix=False)

from django.conf import settings  # noqa: E402

from project.handlers import SyncChainASGIHandler  # noqa: E402
from realtime.gc_pauses import gc_pauses_bound  # noqa: E402

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

# Thousands of sockets' objects, skipped by garbage collections (realtime/gc_pauses.py).
gc_pauses_bound(
    freeze_seconds=settings.REALTIME_GC_FREEZE_SECONDS, full_seconds=settings.REALTIME_GC_FULL_SECONDS
)
