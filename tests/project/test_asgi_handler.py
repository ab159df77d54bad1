"""The ASGI handler runs a request's middleware chain and view in one thread hop
(project/handlers.py). Test bodies run the application through ``async_to_sync``."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from asgiref.sync import SyncToAsync, async_to_sync
from asgiref.testing import ApplicationCommunicator

from project.handlers import SyncChainASGIHandler
from tests.asgi_scope import http_get_scope

pytestmark = pytest.mark.django_db(transaction=True)


async def _get(application: Any, path: str) -> tuple[int, bytes]:
    scope = http_get_scope(path)
    communicator = ApplicationCommunicator(application, scope)
    await communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
    start = await communicator.receive_output(10)
    body = b""
    while True:
        message = await communicator.receive_output(10)
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await communicator.wait(10)
    return start["status"], body


def test_a_request_goes_through_every_middleware_and_its_view_in_one_thread_hop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    application = SyncChainASGIHandler()
    hops: list[str] = []
    real = SyncToAsync.__call__

    async def counted(self: SyncToAsync, *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(self.func, "__qualname__", repr(self.func)))
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(SyncToAsync, "__call__", counted)

    status, _ = async_to_sync(_get)(application, "/api/v1/events/")

    assert status == 401  # through authentication, to the view's answer
    # one hop in all: the request_started signal, the chain, the error log line and the
    # response's close (request_finished). Django's own handler took one hop for each of
    # the signals and the log line, two per middleware, and one for the view.
    assert len(hops) == 1, hops


def test_a_static_file_is_served_through_the_synchronous_chain() -> None:
    from django.contrib.staticfiles import finders

    found = finders.find("admin/css/base.css")
    assert found is not None
    status, body = async_to_sync(_get)(SyncChainASGIHandler(), "/static/admin/css/base.css")
    assert status == 200 and body


def test_requests_one_after_another_run_on_the_same_kept_thread() -> None:
    from django.core.signals import request_started

    application = SyncChainASGIHandler()
    threads: list[str] = []

    def record(**kwargs: Any) -> None:  # a synchronous receiver runs on the request's thread
        threads.append(threading.current_thread().name)

    request_started.connect(record)
    try:

        async def three() -> None:
            for _ in range(3):
                assert (await _get(application, "/api/v1/events/"))[0] == 401
                # the thread is kept once it is idle
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 5
                while not application._idle:
                    assert loop.time() < deadline, "the request's thread was never kept"
                    await asyncio.sleep(0.005)

        async_to_sync(three)()
    finally:
        request_started.disconnect(record)

    assert len(threads) == 3 and len(set(threads)) == 1, threads
    assert threads[0].startswith("request")


def test_a_request_thread_still_busy_is_kept_only_once_its_work_is_done() -> None:
    from project.handlers import _RequestThread

    thread = _RequestThread()
    release = threading.Event()
    kept: list[str] = []
    thread.submit(release.wait, 10)  # a view still running after its request was cancelled

    thread.when_idle(lambda: kept.append("kept"))
    assert kept == []
    release.set()
    thread.shutdown(wait=True)
    assert kept == ["kept"]
    # and an idle one is kept at once
    idle = _RequestThread()
    idle.when_idle(lambda: kept.append("at once"))
    assert kept == ["kept", "at once"]
    idle.shutdown()
