"""``/ws/iot/``: the ``/iot/`` page's live feed, for staff sessions from our own pages.

The ingest publishes one Redis message per stored batch (iot/services/live.py). Each web
process reads that channel once, with one subscription per event loop (``_LiveFeed``),
parses each message once and offers it to every socket of the loop; a socket keeps what
concerns it. One Redis connection per open page would cost a connection and its buffers
each, and every message would be parsed once per page.

Client frames: ``{"type": "watch", "devices": [key, ...]}`` (at most WATCH_MAX, replacing
the previous list), ``{"type": "ping"}``. Server frames:
``{"type": "watching", "devices": [...]}``, ``{"type": "readings", "device": key,
"metrics": {metric: [[ts_ms, value], ...]}}`` for the watched devices only,
``{"type": "status", "device": key, "status": ...}`` and ``{"type": "alerts", "ids":
[...]}`` for every device, ``{"type": "resync", "reason": "dropped" | "resubscribed"}``
when the socket missed frames (the page reloads its history), ``{"type": "pong"}`` and
``{"type": "error", "field": ..., "message": ...}``.

Each socket holds a bounded queue: a page that cannot keep up loses its oldest frames (and
is told with a resync), never the process its memory.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import re
import weakref
from typing import Any

import redis
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from iot.models import DEVICE_KEY_PATTERN
from iot.services.live import live_channel
from realtime.auth import CLOSE_FORBIDDEN_ORIGIN, CLOSE_TOO_SLOW, CLOSE_UNAUTHORIZED, origin
from realtime.subscription import read_channel_forever

log = logging.getLogger(__name__)

CLOSE_NOT_STAFF = 4403
CLOSE_UNAVAILABLE = 1011
# Devices one socket may watch: a page shows one device's charts and a list's values.
WATCH_MAX = 50
# Frames waiting for one socket at most; past that the oldest are dropped.
SOCKET_QUEUE_MAX = 500
LIVE_CLIENT_NAME = "iot-live"
_DEVICE_KEY = re.compile(DEVICE_KEY_PATTERN)


class _LiveFeed:
    """The live channel's one subscription on an event loop, and the sockets it feeds; the
    reading task runs only while the loop has sockets."""

    def __init__(self) -> None:
        self.sockets: dict[IotLiveConsumer, None] = {}
        self.task: asyncio.Task[None] | None = None
        self.ready: asyncio.Future[None] | None = None
        self.name = f"{LIVE_CLIENT_NAME}-{os.getpid()}-{id(self):x}"

    async def add(self, socket: IotLiveConsumer) -> None:
        """Feed ``socket`` and return once subscribed (a message published from then on
        reaches it). Raises redis.RedisError or OSError when the first subscription fails."""
        self.sockets[socket] = None
        if self.task is None or self.task.done():
            loop = asyncio.get_running_loop()
            self.ready = loop.create_future()
            self.task = loop.create_task(self._read_forever(self.ready))
        assert self.ready is not None
        try:
            await asyncio.shield(self.ready)
        except BaseException:
            self.discard(socket)
            raise

    def discard(self, socket: IotLiveConsumer) -> None:
        if socket not in self.sockets:
            return
        del self.sockets[socket]
        if not self.sockets and self.task is not None:
            self.task.cancel()
            self.task = None
            self.ready = None

    def dispatch(self, payload: bytes | str) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            log.warning("a live IoT message that is not JSON was dropped")
            return
        if not isinstance(message, dict):
            return
        for socket in list(self.sockets):
            try:
                socket.offer(message)
            except Exception:  # noqa: BLE001 - one socket must not cost the others
                log.exception("an IoT socket failed a live message")

    async def _read_forever(self, ready: asyncio.Future[None]) -> None:
        await read_channel_forever(
            live_channel(),
            client_name=self.name,
            ready=ready,
            on_message=self.dispatch,
            on_resumed=self._resumed,
            what="live IoT",
        )

    def _resumed(self) -> None:
        # Messages published while the subscription was down are gone.
        for socket in list(self.sockets):
            socket.resync("resubscribed")


_feeds: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LiveFeed] = weakref.WeakKeyDictionary()


def _feed() -> _LiveFeed:
    loop = asyncio.get_running_loop()
    feed = _feeds.get(loop)
    if feed is None:
        feed = _feeds[loop] = _LiveFeed()
    return feed


def watch_devices(content: dict[str, Any]) -> tuple[list[str] | None, str]:
    """(the device keys of a watch frame, "") or (None, what is wrong with ``devices``)."""
    devices = content.get("devices")
    if not isinstance(devices, list):
        return None, f"Expected a list of device keys, got {type(devices).__name__}."
    if len(devices) > WATCH_MAX:
        return None, f"Watch at most {WATCH_MAX} devices at once, got {len(devices)}."
    for index, key in enumerate(devices):
        if not isinstance(key, str) or not _DEVICE_KEY.fullmatch(key):
            return None, f"Item {index} is not a device key: {key!r}."
    return list(dict.fromkeys(devices)), ""


class IotLiveConsumer(AsyncJsonWebsocketConsumer):
    watched: frozenset[str] = frozenset()
    fed = False
    dropped = 0
    sender: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHORIZED)
            return
        if not user.is_staff:
            await self.close(code=CLOSE_NOT_STAFF)
            return
        # The session cookie goes with any page's request: only our pages may use it.
        if origin(self.scope) not in settings.SOCKET_ALLOWED_ORIGINS:
            await self.close(code=CLOSE_FORBIDDEN_ORIGIN)
            return
        self.outbox: collections.deque[dict[str, Any]] = collections.deque(maxlen=SOCKET_QUEUE_MAX)
        self.waiting = asyncio.Event()
        try:
            await _feed().add(self)
        except (redis.RedisError, OSError) as error:
            log.warning("IoT socket refused: no live subscription (%s)", error)
            await self.close(code=CLOSE_UNAVAILABLE)
            return
        self.fed = True
        await self.accept()
        self.sender = asyncio.create_task(self._send_queued())

    async def disconnect(self, code: int) -> None:
        if self.fed:
            _feed().discard(self)
            self.fed = False
        if self.sender is not None:
            self.sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.sender

    # --- client frames -----------------------------------------------------------------

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any
    ) -> None:
        if text_data is None:
            self.error("frame", "Send JSON text frames, not binary ones.")
            return
        try:
            content = json.loads(text_data)
        except ValueError:
            self.error("frame", "Expected a JSON object, got text that is not JSON.")
            return
        await self.receive_json(content)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if not isinstance(content, dict):
            self.error("frame", f"Expected a JSON object, got {type(content).__name__}.")
            return
        frame_type = content.get("type")
        if frame_type == "watch":
            devices, problem = watch_devices(content)
            if devices is None:
                self.error("devices", problem)
                return
            self.watched = frozenset(devices)
            self.queue({"type": "watching", "devices": devices})
        elif frame_type == "ping":
            self.queue({"type": "pong"})
        else:
            self.error("type", f"Unknown frame type {frame_type!r}; expected 'watch' or 'ping'.")

    def error(self, field: str, message: str) -> None:
        self.queue({"type": "error", "field": field, "message": message})

    # --- from the feed: queue and return, never await ----------------------------------

    def offer(self, message: dict[str, Any]) -> None:
        """Queue the frames of one live message that concern this socket."""
        readings = message.get("readings")
        if isinstance(readings, dict) and self.watched:
            for key in self.watched.intersection(readings):
                metrics = readings[key]
                if isinstance(metrics, dict) and metrics:
                    self.queue({"type": "readings", "device": key, "metrics": metrics})
        status = message.get("status")
        if isinstance(status, dict):
            for key, state in status.items():
                self.queue({"type": "status", "device": key, "status": state})
        alerts = message.get("alerts")
        if isinstance(alerts, list) and alerts:
            self.queue({"type": "alerts", "ids": alerts})

    def resync(self, reason: str) -> None:
        self.queue({"type": "resync", "reason": reason})

    def queue(self, frame: dict[str, Any]) -> None:
        if not hasattr(self, "outbox"):
            return
        if len(self.outbox) == self.outbox.maxlen:
            # The deque drops the oldest on append; the page hears it missed some.
            self.dropped += 1
        self.outbox.append(frame)
        self.waiting.set()

    async def _send_queued(self) -> None:
        timeout = settings.SOCKET_SEND_TIMEOUT_SECONDS
        while True:
            await self.waiting.wait()
            self.waiting.clear()
            while self.outbox:
                if self.dropped:
                    frame: dict[str, Any] = {"type": "resync", "reason": "dropped", "frames": self.dropped}
                    self.dropped = 0
                else:
                    frame = self.outbox.popleft()
                try:
                    async with asyncio.timeout(timeout):
                        await self.send_json(frame)
                except TimeoutError:
                    # Not reading at all: close it; the page reconnects and reloads.
                    await self.close(code=CLOSE_TOO_SLOW)
                    return
