"""One Redis subscription per web process for the frames of all its live connections.

Services publish with ``hub_publish`` (sync: Celery workers and views) or
``hub_publish_async``: one Redis PUBLISH carries any number of entries, each a message and
the recipients it is for, on one channel that every web process reads. The hub of each
process parses a publish once and hands each message straight to the live connections it
holds for those recipients (``deliver``); a recipient it holds none of costs one dict
lookup. This is how Socket.IO's Redis adapter carries broadcasts between nodes.

Before the hub, each recipient's frame was a channel-layer ``group_send``: one publish per
recipient from the worker, and in the web process one pub/sub message, one decode and one
channel queue per socket, which made a broadcast to 10,000 connected users take two
seconds (docs/benchmarks.md, P3 broadcast). Every process reads every publish; a process
parses a page of 2,000 recipients in a few milliseconds, so this stays cheap for as many
web processes as a deployment runs.

At-most-once, like any pub/sub: the apps' stores are the truth and clients resume from
them. Frames for one recipient arrive in the order they were published from one process.
When the subscription drops and comes back, every connection the hub holds is told
(``hub_resumed``), so an app can read from its store what it may have missed meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import weakref
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import redis.asyncio as aioredis

from realtime.redis_client import redis_key, redis_sync
from realtime.subscription import read_channel_forever

log = logging.getLogger(__name__)

HUB_CHANNEL = "realtime:hub"
# The name of each hub's subscription connection in CLIENT LIST: this, the process id and
# the hub's own.
HUB_CLIENT_NAME = "realtime-hub"
# Entries per PUBLISH at most, so that one message stays well inside Redis's output buffer
# for a subscriber (client-output-buffer-limit pubsub) however large a page is.
PUBLISH_ENTRIES_MAX = 2000

# One entry: (recipient ids, message). The message is the same object for each of them;
# receivers must not change it, except to keep what they derive from it for the next
# receiver under a key of their own that starts with an underscore.
Entry = tuple[Sequence[int], dict[str, Any]]


class HubConnection(Protocol):
    """What the hub needs of a live connection (realtime/connection.py)."""

    recipient_id: int

    def deliver(self, message: dict[str, Any]) -> None: ...

    def hub_resumed(self) -> None: ...


def _channel() -> str:
    return redis_key(HUB_CHANNEL)


def _encode(entries: Sequence[Entry]) -> list[str]:
    """The PUBLISH payloads for the entries: JSON ``[[[recipient, ...], message], ...]``,
    split so that none addresses more than PUBLISH_ENTRIES_MAX recipients."""
    payloads: list[str] = []
    batch: list[Any] = []
    size = 0
    for recipients, message in entries:
        ids = list(recipients)
        if not ids:
            continue
        if batch and size + len(ids) > PUBLISH_ENTRIES_MAX:
            payloads.append(json.dumps(batch, separators=(",", ":")))
            batch, size = [], 0
        batch.append([ids, message])
        size += len(ids)
    if batch:
        payloads.append(json.dumps(batch, separators=(",", ":")))
    return payloads


def hub_publish(entries: Sequence[Entry]) -> None:
    """Publish the entries to every web process (sync). Raises redis.RedisError: callers
    that publish after a commit log it and go on (clients resume)."""
    payloads = _encode(entries)
    if not payloads:
        return
    client = redis_sync()
    if len(payloads) == 1:
        client.publish(_channel(), payloads[0])
        return
    pipe = client.pipeline(transaction=False)
    for payload in payloads:
        pipe.publish(_channel(), payload)
    pipe.execute()


async def hub_publish_async(client: aioredis.Redis, entries: Sequence[Entry]) -> None:
    """``hub_publish`` from an event loop, with that loop's client."""
    for payload in _encode(entries):
        await client.publish(_channel(), payload)


class _Hub:
    """The live connections of one event loop by recipient, and the task that reads the
    hub channel while there are any."""

    def __init__(self) -> None:
        self.connections: dict[int, dict[HubConnection, None]] = {}
        self.count = 0
        # How its subscription shows in Redis's CLIENT LIST.
        self.name = f"{HUB_CLIENT_NAME}-{os.getpid()}-{id(self):x}"
        self.task: asyncio.Task[None] | None = None
        # Resolved once the subscription is confirmed (or failed, for the first attempt).
        self.ready: asyncio.Future[None] | None = None

    async def add(self, connection: HubConnection) -> None:
        """Hold ``connection`` and return once the hub is subscribed: a message published
        from then on reaches it. Raises redis.RedisError (or OSError) when the first
        subscription cannot be made; the connection is then not held."""
        self.connections.setdefault(connection.recipient_id, {})[connection] = None
        self.count += 1
        if self.task is None or self.task.done():
            loop = asyncio.get_running_loop()
            self.ready = loop.create_future()
            self.task = loop.create_task(self._read_forever(self.ready))
        assert self.ready is not None
        try:
            await asyncio.shield(self.ready)
        except BaseException:
            self.discard(connection)
            raise

    def discard(self, connection: HubConnection) -> None:
        held = self.connections.get(connection.recipient_id)
        if held is None or connection not in held:
            return
        del held[connection]
        if not held:
            del self.connections[connection.recipient_id]
        self.count -= 1
        if not self.count and self.task is not None:
            self.task.cancel()
            self.task = None
            self.ready = None

    def dispatch(self, payload: bytes | str) -> None:
        try:
            entries = json.loads(payload)
            shaped = [
                (list(recipients), message) for recipients, message in entries if isinstance(message, dict)
            ]
        except (ValueError, TypeError):
            log.warning("a hub message that is not a JSON list of [recipients, message] was dropped")
            return
        connections = self.connections
        for recipients, message in shaped:
            for recipient_id in recipients:
                held = connections.get(recipient_id)
                if held is None:
                    continue
                for connection in list(held):
                    try:
                        connection.deliver(message)
                    except Exception:  # noqa: BLE001 - one connection must not cost the others
                        log.exception("a live connection of recipient %s failed a hub message", recipient_id)

    async def _read_forever(self, ready: asyncio.Future[None]) -> None:
        await read_channel_forever(
            _channel(),
            client_name=self.name,
            ready=ready,
            on_message=self.dispatch,
            on_resumed=self._resumed,
            what="hub",
        )

    def _resumed(self) -> None:
        log.info("hub subscription restored; %d live connections resume", self.count)
        for held in list(self.connections.values()):
            for connection in list(held):
                try:
                    connection.hub_resumed()
                except Exception:  # noqa: BLE001
                    log.exception("a live connection failed to resume")


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Hub] = weakref.WeakKeyDictionary()


def _hub() -> _Hub:
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = _Hub()
    return hub


async def hub_add(connection: HubConnection) -> None:
    """Deliver the hub's messages for ``connection.recipient_id`` to ``connection`` (see
    ``_Hub.add``)."""
    await _hub().add(connection)


def hub_discard(connection: HubConnection) -> None:
    _hub().discard(connection)


def hub_recipients() -> Iterable[int]:
    """The recipients this event loop holds connections of (for tests and diagnostics)."""
    return list(_hub().connections)
