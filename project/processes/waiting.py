"""Waiting with a deadline, never a fixed sleep: for a condition, a port, an HTTP answer."""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

LOCALHOST = "127.0.0.1"

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float,
    interval: float = 0.05,
    message: str = "condition not met",
) -> T:
    """Call ``predicate`` until it returns a truthy value, and return that value.

    Raises ``TimeoutError(message)`` when ``timeout`` seconds pass first. Exceptions from the
    predicate propagate at once, so a predicate can abort the wait (a process died).
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{message} (after {timeout:.1f}s)")
        time.sleep(min(interval, remaining))


def port_is_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Return True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_status(url: str, timeout: float = 2.0) -> int:
    """GET ``url`` once and return the HTTP status, or 0 when nothing answered.

    Uses http.client rather than httpx so that polling writes no "HTTP Request" log lines
    into the output of whoever is waiting.
    """
    parts = urlsplit(url)
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_class(parts.hostname or LOCALHOST, parts.port, timeout=timeout)
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    except (OSError, http.client.HTTPException):
        return 0
    finally:
        connection.close()


def wait_for_http(
    url: str,
    timeout: float,
    *,
    alive: Callable[[], bool] | None = None,
) -> int:
    """Poll ``url`` with GET until it answers with any HTTP status, and return the status.

    ``alive`` (optional) is checked between attempts: when it returns False the wait stops
    with RuntimeError instead of running into the timeout (the server process died).
    """

    def answered() -> int:
        if alive is not None and not alive():
            raise RuntimeError(f"the process serving {url} exited before it answered")
        return http_status(url)

    return wait_until(answered, timeout, interval=0.1, message=f"no HTTP answer from {url}")
