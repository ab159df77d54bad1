"""Django's ASGI handler with the middleware chain run as one synchronous call, on threads
kept from one request to the next."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.http import FileResponse
from django.urls import set_script_prefix, set_urlconf
from django.utils.log import log_response

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
        self._sync_chain: Any = self._middleware_chain  # type: ignore[has-type]
        self._middleware_chain = sync_to_async(self._sync_chain, thread_sensitive=True)

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Django's ``handle`` with its hops (the request_started signal, the chain, the
        log line of an error response, and closing the response, which sends
        request_finished) made one: all of them run in ``_respond`` on the request's
        thread. A streaming response is closed once it has been streamed, as Django does,
        and the stream stops when the client goes."""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        try:
            response = await sync_to_async(self._respond, thread_sensitive=True)(scope, body_file)
            if not response.streaming:
                await self.send_response(response, send)
                return
            streaming = asyncio.create_task(self.send_response(response, send))
            disconnect = asyncio.create_task(self.listen_for_disconnect(receive))
            await asyncio.wait([streaming, disconnect], return_when=asyncio.FIRST_COMPLETED)
            for task in (disconnect, streaming):
                if not task.done():
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError, RequestAborted):
                    await task
            await sync_to_async(response.close, thread_sensitive=True)()
        finally:
            body_file.close()

    def _respond(self, scope: dict[str, Any], body_file: Any) -> Any:
        """On the request's thread: what Django's ``handle`` and ``get_response_async`` do
        around the chain, in one call. Returns the response (an HttpResponseBase)."""
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, response = self.create_request(scope, body_file)
        if request is not None:
            set_urlconf(settings.ROOT_URLCONF)
            response = self._sync_chain(request)
            response._resource_closers.append(request.close)
            if response.status_code >= 400:
                log_response(
                    "%s: %s", response.reason_phrase, request.path, response=response, request=request
                )
        assert response is not None
        response._handler_class = self.__class__  # type: ignore[attr-defined]
        if isinstance(response, FileResponse):
            response.block_size = self.chunk_size
        if not response.streaming:
            response.close()  # its content is in hand; request_finished is sent here
        return response

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
