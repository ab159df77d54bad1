"""Calls the sandbox makes to the platform: Twilio status callbacks and inbound messages,
Mailgun tracking webhooks.

Callbacks run after a delay, in order of scheduling, through a bounded queue drained by a
fixed number of workers: a campaign at thousands of sends per second must not open
thousands of connections to the platform, and a platform that is down must not grow the
sandbox's memory without bound. A failed callback is logged and recorded (status 0), never
raised: the sandbox keeps serving whatever the platform does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from sandbox.state import SandboxState

logger = logging.getLogger("sandbox.outbound")

Job = Callable[[], Awaitable[None]]
MAX_PENDING = 100_000
CALLBACK_TIMEOUT_SECONDS = 10.0


class CallbackQueue:
    """Runs jobs (coroutines calling the platform) after a delay, ``concurrency`` at a time."""

    def __init__(self, *, state: SandboxState, concurrency: int, max_pending: int = MAX_PENDING) -> None:
        self.state = state
        self.concurrency = max(1, concurrency)
        self._queue: asyncio.Queue[tuple[float, Job]] = asyncio.Queue(maxsize=max_pending)
        self._workers: list[asyncio.Task[None]] = []
        self._running = 0
        self.failures = 0
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=CALLBACK_TIMEOUT_SECONDS),
            connector=aiohttp.TCPConnector(limit=self.concurrency * 2),
        )
        self._workers = [asyncio.create_task(self._work()) for _ in range(self.concurrency)]

    async def close(self) -> None:
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        if self.session is not None:
            await self.session.close()
            self.session = None

    def schedule(self, delay_seconds: float, job: Job, *, on_dropped: Callable[[], None]) -> None:
        """Run ``job`` after ``delay_seconds``; call ``on_dropped`` instead when the queue is full."""
        try:
            self._queue.put_nowait((time.monotonic() + delay_seconds, job))
        except asyncio.QueueFull:
            logger.warning("callback queue full (%d pending): callback dropped", self._queue.qsize())
            on_dropped()

    @property
    def pending(self) -> int:
        """Callbacks scheduled and not finished yet (queued or being sent)."""
        return self._queue.qsize() + self._running

    async def _work(self) -> None:
        while True:
            due, job = await self._queue.get()
            self._running += 1
            try:
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await job()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("sandbox callback failed")
            finally:
                self._running -= 1
                self._queue.task_done()

    async def post(
        self,
        url: str,
        *,
        data: dict[str, str] | None = None,
        json_body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        auth: aiohttp.BasicAuth | None = None,
    ) -> tuple[int, str]:
        """POST to the platform; return (status, body text), or (0, the error) when nothing
        answered."""
        session = self.session
        if session is None:
            return 0, "sandbox is stopping"
        try:
            async with session.post(url, data=data, json=json_body, headers=headers, auth=auth) as response:
                text = await response.text(errors="replace")
                return response.status, text[:2000]
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            # A platform that is down would otherwise log thousands of lines per second.
            self.failures += 1
            if self.failures == 1 or self.failures % 1000 == 0:
                logger.warning("callback to %s failed (%d failures so far): %r", url, self.failures, error)
            return 0, repr(error)
