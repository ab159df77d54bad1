"""Stop requests: the signals that ask a supervisor to stop, and what it raises when one
arrives while it is still starting."""

from __future__ import annotations

import signal
from types import FrameType, TracebackType
from typing import Any, Self

# --- Stop requests from signals ----------------------------------------------------------------


class StopSignals:
    """SIGINT, SIGTERM and SIGHUP as stop requests for a supervisor's main thread.

    ``with StopSignals() as stop:`` installs the handlers (the previous ones come back on
    exit); ``stop.requested`` turns true at the first signal and ``stop.repeated`` at the
    second. The handler only counts: it runs between two bytecodes of the main thread,
    where taking a lock that thread holds (an Event's, stdout's buffer) would deadlock and
    raising would abandon whatever was half done (a fork whose child nobody tracks).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.received: list[str] = []
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return bool(self.received)

    @property
    def repeated(self) -> bool:
        return len(self.received) > 1

    @property
    def first(self) -> str:
        """The name of the first signal received ("" when none was)."""
        return self.received[0] if self.received else ""

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signal.Signals(signum).name)

    def __enter__(self) -> Self:
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class StartInterrupted(Exception):
    """A stop was requested while the platform was starting."""
