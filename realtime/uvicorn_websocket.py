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

It also offers the application an ASGI extension, ``realtime.websocket.send_texts``
(``SEND_TEXTS``, advertised in the scope's ``extensions``): the message
``{"type": SEND_TEXTS, "texts": [...]}`` sends several text frames in one write to the
socket. A broadcast sends each socket two frames (the notification and the unread count);
through ``websocket.send`` that was two trips through the ASGI send chain and two system
calls per socket (docs/benchmarks.md, P3 broadcast). Apps that do not know it, and servers
that do not offer it, use ``websocket.send`` as before.

It builds on uvicorn's internals (the attributes ``queue``, ``writable``, ``request``,
``response``, ``conn``, ``transport``, ``handshake_complete``, ``close_sent``,
``initial_response`` and ``disconnected``), which is why uvicorn is pinned in
requirements.txt; tests/realtime checks it against the installed uvicorn through a real
server.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

from realtime.queues import EntryQueue

# The ASGI extension of this protocol (module docstring).
SEND_TEXTS = "realtime.websocket.send_texts"


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

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        self.scope["extensions"][SEND_TEXTS] = {"write_now": self.write_texts_now}

    async def send(self, message: Any) -> None:
        if message["type"] == SEND_TEXTS:
            await self._send_texts(message["texts"])
            return
        await super().send(message)
        # Once the handshake is answered uvicorn never reads them again.
        # The request is emptied too: the parser of uvicorn's ServerProtocol keeps it.
        if self.handshake_complete and getattr(self, "response", None) is not None:
            if getattr(self, "request", None) is not None:
                self.request.headers.clear()
            self.request = None  # type: ignore[assignment]
            self.response = None  # type: ignore[assignment]

    def write_texts_now(self, texts: list[str]) -> bool:
        """Each text as a frame, all in one write, now, when the connection is open and its
        transport takes data without waiting (not paused by flow control); otherwise
        nothing is written and the answer is False (the caller sends the awaiting way)."""
        if (
            self.disconnected
            or not self.writable.is_set()
            or not self.handshake_complete
            or self.close_sent
            or self.initial_response is not None
            or self.conn.state is not State.OPEN
            or self.transport.is_closing()
        ):
            return False
        for text in texts:
            self.conn.send_text(text.encode())
        self.transport.write(b"".join(self.conn.data_to_send()))
        return True

    async def _send_texts(self, texts: list[str]) -> None:
        """``write_texts_now`` once the transport takes data; outside an open connection,
        each text goes the way uvicorn sends a ``websocket.send`` (which knows what to
        refuse)."""
        await self.writable.wait()
        if self.disconnected:
            raise ClientDisconnected()
        if not self.write_texts_now(texts):
            for text in texts:
                await super().send({"type": "websocket.send", "text": text})
