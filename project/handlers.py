"""Django's ASGI handler with the middleware chain run as one synchronous call, on threads
kept from one request to the next."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.core.handlers.asgi import ASGIHandler

# Idle request threads kept for the next requests; more are started while more requests
# run at once, and those past this many stop when their request is done.
IDLE_THREADS_KEPT = 32


class SyncChainASGIHandler(ASGIHandler):
    """Under ASGI, Django runs the middleware chain in asynchronous mode, and each
    ``MiddlewareMixin`` middleware (every one Django ships) then hands its
    ``process_request`` and ``process_response`` to a thread and back: 15 hops for one
    API call here (tests/project/test_asgi_handler.py), the view included. Here the
    chain is built synchronous, as under WSGI, and the whole of it (middleware and view)
    runs in one hop to the request's thread. Asynchronous views still work: Django runs
    them through ``async_to_sync`` on the server's event loop, and streams their
    asynchronous responses from the loop as before.

    Each request still gets a thread of its own for its synchronous work (Django's
    thread-sensitive context), but not a new one: Django starts a thread per request, and
    another to join it when the request ends; here an idle one is taken from those kept,
    as a threaded WSGI server does."""

    def __init__(self) -> None:
        super().__init__()
        self._idle: list[_RequestThread] = []

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)
        chain: Any = self._middleware_chain  # type: ignore[has-type]
        self._middleware_chain = sync_to_async(chain, thread_sensitive=True)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)  # refuses it
            return
        try:
            executor = self._idle.pop()
        except IndexError:
            executor = _RequestThread()
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            # Kept once its thread is idle: a request cancelled by a disconnect may leave
            # its view running there, and the next request must not queue behind it.
            executor.when_idle(lambda: self._keep(executor))

    def _keep(self, executor: _RequestThread) -> None:
        if len(self._idle) < IDLE_THREADS_KEPT:
            self._idle.append(executor)
        else:
            executor.shutdown(wait=False)


class _RequestThread(ThreadPoolExecutor):
    """One thread that counts the calls it has not finished, to tell when it is idle."""

    def __init__(self) -> None:
        super().__init__(max_workers=1, thread_name_prefix="request")
        self._count_lock = threading.Lock()
        self._unfinished = 0
        self._on_idle: Callable[[], None] | None = None

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        with self._count_lock:
            self._unfinished += 1
        future = super().submit(fn, *args, **kwargs)
        future.add_done_callback(self._finished)
        return future

    def _finished(self, _: Future[Any]) -> None:
        with self._count_lock:
            self._unfinished -= 1
            callback = self._on_idle if self._unfinished == 0 else None
            if callback is not None:
                self._on_idle = None
        if callback is not None:
            callback()

    def when_idle(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` now if no call is unfinished, else once the last one is."""
        with self._count_lock:
            if self._unfinished:
                self._on_idle = callback
                return
        callback()
