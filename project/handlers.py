"""Django's ASGI handler with the middleware chain run as one synchronous call."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler


class SyncChainASGIHandler(ASGIHandler):
    """Under ASGI, Django runs the middleware chain in asynchronous mode, and each
    ``MiddlewareMixin`` middleware (every one Django ships) then hands its
    ``process_request`` and ``process_response`` to a thread and back: 15 hops for one
    API call here (tests/project/test_asgi_handler.py), the view included. Here the
    chain is built synchronous, as under WSGI, and the whole of it (middleware and view)
    runs in one hop to the request's thread. Asynchronous views still work: Django runs
    them through ``async_to_sync`` on the server's event loop, and streams their
    asynchronous responses from the loop as before."""

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)
        chain: Any = self._middleware_chain  # type: ignore[has-type]
        self._middleware_chain = sync_to_async(chain, thread_sensitive=True)
