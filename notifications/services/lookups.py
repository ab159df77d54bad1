"""Per-process caches of what every accepted event looks up: its API key and its
notification type.

Every change of a key or a type bumps a version number in Redis after its commit and
publishes it (``lookups_changed``: revoking a key, and any save or delete of either model
through the receivers in notifications/signals.py); the process that made the change
empties its own cache at once. In every process a watcher thread listens for those
messages and empties the cache when one arrives, so a revoked key is refused in every
process as soon as the message gets there (a Redis round trip), and a lookup costs no
call to Redis. While the watcher is not listening (starting, or Redis away), each use
reads the version with one GET instead and empties the cache if it moved. Two limits
stand behind that: without Redis nothing is cached (the lookups go to PostgreSQL), and an
entry is kept at most LOOKUP_CACHE_SECONDS, so a bump lost to a Redis outage delays a
revocation by that much at most.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from typing import Any

import redis
from django.conf import settings
from django.db import transaction

from notifications.models import ApiKey, NotificationType
from realtime.redis_client import redis_key, redis_sync

log = logging.getLogger(__name__)

VERSION_KEY = "lookups:version"
CHANGES_CHANNEL = "lookups:changed"
# The watcher's idle wait between checks that it should still run; a dead connection is
# found by redis-py's health check, a PING sent when the connection was idle this long.
_WATCH_SECONDS = 5.0

_lock = threading.Lock()
_version: int | None = None
_entries: dict[tuple[str, str], tuple[float, Any]] = {}
# Moves on each emptying of the cache: a lookup that read the database before an emptying
# does not store what it read after it (it may be what the change replaced).
_generation = 0


def _empty() -> None:
    """Inside _lock."""
    global _generation
    _entries.clear()
    _generation += 1


def _adopt(version: int) -> None:
    """The version is now ``version``: empty the cache if it held another."""
    global _version
    with _lock:
        if version != _version:
            _empty()
            _version = version


class _Watcher(threading.Thread):
    """Subscribes to CHANGES_CHANNEL and adopts each version published there. ``listening``
    is true from the moment it has subscribed and read the version until its connection
    fails; it then starts over after a second."""

    def __init__(self) -> None:
        super().__init__(name="lookups-watcher", daemon=True)
        self.listening = False

    def run(self) -> None:
        while True:
            try:
                self._listen()
            except (redis.RedisError, OSError, ValueError) as exc:
                log.info("lookup cache watcher reconnecting: %s", exc)
            except Exception:  # noqa: BLE001 - a dead watcher would leave a stale cache trusted
                log.exception("lookup cache watcher failed; reconnecting")
            finally:
                self.listening = False
            time.sleep(1.0)

    def _listen(self) -> None:
        client = redis.Redis.from_url(
            settings.REDIS_URL,
            socket_connect_timeout=1,
            socket_timeout=_WATCH_SECONDS + 5,
            health_check_interval=_WATCH_SECONDS,
        )
        with client.pubsub() as pubsub:
            pubsub.subscribe(redis_key(CHANGES_CHANNEL))
            # Confirmed before the version is read: a bump is then either in the version
            # read or in a message to come.
            while (message := pubsub.get_message(timeout=_WATCH_SECONDS)) is None or message[
                "type"
            ] != "subscribe":
                pass
            _adopt(int(client.get(redis_key(VERSION_KEY)) or 0))
            self.listening = True
            while True:
                message = pubsub.get_message(ignore_subscribe_messages=True, timeout=_WATCH_SECONDS)
                if message is not None and message["type"] == "message":
                    _adopt(int(message["data"]))


_watcher: _Watcher | None = None
_watcher_pid: int | None = None


def _watching() -> bool:
    """Whether this process's watcher is listening; starts it (again after a fork)."""
    global _watcher, _watcher_pid
    if _watcher_pid != os.getpid():
        with _lock:
            if _watcher_pid != os.getpid():
                _watcher = _Watcher()
                _watcher.start()
                _watcher_pid = os.getpid()
    return _watcher is not None and _watcher.listening and _watcher.is_alive()


def _cache_is_current() -> int | None:
    """The cache's generation if this process may use its cache now (emptying it if the
    version moved), else None."""
    if not _watching():
        try:
            raw = redis_sync().get(redis_key(VERSION_KEY))
        except redis.RedisError:
            return None
        _adopt(int(raw or 0))
    return _generation


def _cached(kind: str, key: str) -> Any:
    entry = _entries.get((kind, key))
    if entry is None or time.monotonic() - entry[0] > settings.LOOKUP_CACHE_SECONDS:
        return None
    return entry[1]


def _keep(kind: str, key: str, value: Any, generation: int) -> None:
    with _lock:
        if generation == _generation:
            _entries[(kind, key)] = (time.monotonic(), value)


def api_key_active(*, prefix: str, digest: str) -> ApiKey | None:
    """The unrevoked key with this prefix and digest, or None."""
    generation = _cache_is_current()
    if generation is not None and (key := _cached("key", digest)) is not None:
        return key
    found = ApiKey.objects.filter(prefix=prefix, revoked_at__isnull=True).first()
    if found is None or not hmac.compare_digest(found.key_hash, digest):
        return None
    if generation is not None:
        _keep("key", digest, found, generation)
    return found


def notification_type_by_key(key: str) -> NotificationType | None:
    """The notification type with this key, or None."""
    generation = _cache_is_current()
    if generation is not None and (found := _cached("type", key)) is not None:
        return found
    found = NotificationType.objects.filter(key=key).first()
    if found is not None and generation is not None:
        _keep("type", key, found, generation)
    return found


def lookups_changed() -> None:
    """A key or type changed: every process's cache is stale once this transaction commits."""

    def bump() -> None:
        with _lock:
            _empty()
        try:
            version = redis_sync().incr(redis_key(VERSION_KEY))
            redis_sync().publish(redis_key(CHANGES_CHANNEL), version)
        except redis.RedisError as exc:
            log.warning("cached keys and types not invalidated (Redis unavailable): %s", exc)

    transaction.on_commit(bump, robust=True)


def lookups_clear() -> None:
    """Empty this process's cache (tests roll back the rows it may hold)."""
    global _version
    with _lock:
        _empty()
        _version = None
