"""uvicorn's websocket protocol (``websockets-sansio``) with less held per idle connection:
``--ws realtime.uvicorn_websocket:IdleLightWebSocketProtocol``, as ``make run`` and the
benchmarks start uvicorn (project/processes, project/serve.py).

One web process is to hold ten thousand idle sockets at 30 KB each or less (docs/benchmarks.md, P3),
and tracemalloc inside the server showed what uvicorn keeps per socket that an idle one
never uses again: the handshake's request and response (their headers, parsed twice over,
about 4.5 KB; the ASGI scope keeps its own copy of the request headers), and an
``asyncio.Queue`` and an ``asyncio.Event`` (three deques and a fourth inside the event,
about 4 KB, allocated whether anything waits or not). This protocol drops the first once
the handshake is answered and replaces the others with a queue and a flag that hold
storage only while something waits. Everything else is uvicorn's own code, unchanged.

It builds on uvicorn's internals (the attributes ``queue``, ``writable``, ``request`` and
``response``), which is why uvicorn is pinned in requirements.txt; tests/realtime checks
it against the installed uvicorn through a real server.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from realtime.queues import EntryQueue


class _Flag:
    """What uvicorn uses of its ``writable`` event (``set``, ``clear``, ``is_set``,
    ``wait``), with a list of waiters only while the transport's buffer is full."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        while not self._set:
            waiter = asyncio.get_running_loop().create_future()
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(waiter)
            await waiter
        return True


class IdleLightWebSocketProtocol(WebSocketsSansIOProtocol):
    """``WebSocketsSansIOProtocol`` holding less per idle connection (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = EntryQueue(0)  # type: ignore[assignment]
        self.writable = _Flag()  # type: ignore[assignment]

    async def send(self, message: Any) -> None:
        await super().send(message)
        # Once the handshake is answered uvicorn never reads them again.
        # The request is emptied too: the parser of uvicorn's ServerProtocol keeps it.
        if self.handshake_complete and getattr(self, "response", None) is not None:
            if getattr(self, "request", None) is not None:
                self.request.headers.clear()
            self.request = None  # type: ignore[assignment]
            self.response = None  # type: ignore[assignment]
