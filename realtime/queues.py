"""Queues that hold nothing while empty, for what one web process keeps per idle socket
(ten thousand of them: docs/benchmarks.md, P3). No Django here: uvicorn imports its websocket
protocol (realtime/uvicorn_websocket.py) before the application."""

from __future__ import annotations

import asyncio
import collections
from typing import Any


class EntryQueue:
    """A FIFO for one reader, bounded by ``maxsize`` (0: unbounded), as much of
    ``asyncio.Queue`` as a live connection and uvicorn's protocol use (``put_nowait``
    raising ``asyncio.QueueFull``, ``get``, ``get_nowait``, ``qsize``, ``empty``,
    ``maxsize``). An ``asyncio.Queue`` allocates three deques and an Event up front, about
    3 KB per socket whether anything is queued or not; this one holds a deque only while
    entries wait, and a future only while its reader waits."""

    __slots__ = ("_items", "_waiter", "maxsize")

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: collections.deque[Any] | None = None
        self._waiter: asyncio.Future[None] | None = None

    def qsize(self) -> int:
        return len(self._items) if self._items is not None else 0

    def empty(self) -> bool:
        return not self._items

    def full(self) -> bool:
        return 0 < self.maxsize <= self.qsize()

    def put_nowait(self, entry: Any) -> None:
        if self.full():
            raise asyncio.QueueFull
        if self._items is None:
            self._items = collections.deque()
        self._items.append(entry)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def get_nowait(self) -> Any:
        if not self._items:
            raise asyncio.QueueEmpty
        entry = self._items.popleft()
        if not self._items:
            self._items = None
        return entry

    async def get(self) -> Any:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.get_nowait()
