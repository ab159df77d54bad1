"""A small synchronous client of the inbox socket for end-to-end tests."""

from __future__ import annotations

import json
import time
from typing import Any

from websockets.sync.client import ClientConnection, connect


class InboxSocket:
    """Wraps ``/ws/inbox/``: reads JSON frames with deadlines and keeps what it saw."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.frames: list[dict[str, Any]] = []

    @classmethod
    def open(cls, ws_url: str, *, token: str | None = None, **kwargs: Any) -> InboxSocket:
        query = f"?token={token}" if token is not None else ""
        connection = connect(f"{ws_url}/ws/inbox/{query}", open_timeout=10, close_timeout=2, **kwargs)
        # Entered at once: this object's own context manager closes it.
        return cls(connection.__enter__())

    def __enter__(self) -> InboxSocket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.connection.close()

    def send(self, frame: dict[str, Any]) -> None:
        self.connection.send(json.dumps(frame))

    def frame(self, timeout: float) -> dict[str, Any]:
        """The next frame; TimeoutError when none arrives within ``timeout`` seconds."""
        raw = self.connection.recv(timeout=timeout)
        frame = json.loads(raw)
        assert isinstance(frame, dict), f"a frame must be a JSON object, got {raw!r}"
        self.frames.append(frame)
        return frame

    def frame_of_type(self, frame_type: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {frame_type!r} frame within {timeout}s; saw {self.frames[-10:]}")
            frame = self.frame(remaining)
            if frame.get("type") == frame_type:
                return frame

    def notifications(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        """The next ``count`` notification frames (other frames are kept but skipped)."""
        return [self.frame_of_type("notification", timeout) for _ in range(count)]

    def notifications_within(self, seconds: float) -> list[dict[str, Any]]:
        """Every notification frame that arrives during the next ``seconds``."""
        deadline = time.monotonic() + seconds
        seen = []
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                frame = self.frame(remaining)
            except TimeoutError:
                break
            if frame.get("type") == "notification":
                seen.append(frame)
        return seen

    def wait_unread_count(self, count: int, timeout: float = 10.0) -> None:
        """Return once an unread_count frame with ``count`` arrives (or has arrived)."""
        deadline = time.monotonic() + timeout
        while count not in self.unread_counts():
            self.frame_of_type("unread_count", max(0.01, deadline - time.monotonic()))

    def unread_counts(self) -> list[int]:
        return [f["count"] for f in self.frames if f.get("type") == "unread_count"]
