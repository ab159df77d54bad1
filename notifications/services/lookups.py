"""Per-process caches of what every accepted event looks up: its API key and its
notification type.

Each use first reads one version number from Redis (one GET, cheaper than the query it
saves). Every change of a key or a type bumps the version after its commit
(``lookups_changed``: revoking a key, and any save or delete of either model through the
receivers in notifications/signals.py), and a process whose cache holds another version
empties it, so a revoked key is refused from the next request on in every process. Two
limits stand behind that: without Redis nothing is cached (the lookups go to PostgreSQL),
and an entry is kept at most LOOKUP_CACHE_SECONDS, so a bump lost to a Redis outage delays
a revocation by that much at most.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from typing import Any

import redis
from django.conf import settings
from django.db import transaction

from notifications.models import ApiKey, NotificationType
from notifications.services.redis_client import redis_key, redis_sync

log = logging.getLogger(__name__)

VERSION_KEY = "lookups:version"

_lock = threading.Lock()
_version: int | None = None
_entries: dict[tuple[str, str], tuple[float, Any]] = {}


def _cache_is_current() -> bool:
    """Whether this process may use its cache now (emptying it if the version moved)."""
    global _version
    try:
        raw = redis_sync().get(redis_key(VERSION_KEY))
    except redis.RedisError:
        return False
    version = int(raw or 0)
    with _lock:
        if version != _version:
            _entries.clear()
            _version = version
    return True


def _cached(kind: str, key: str) -> Any:
    entry = _entries.get((kind, key))
    if entry is None or time.monotonic() - entry[0] > settings.LOOKUP_CACHE_SECONDS:
        return None
    return entry[1]


def _keep(kind: str, key: str, value: Any) -> None:
    with _lock:
        _entries[(kind, key)] = (time.monotonic(), value)


def api_key_active(*, prefix: str, digest: str) -> ApiKey | None:
    """The unrevoked key with this prefix and digest, or None."""
    use_cache = _cache_is_current()
    if use_cache and (key := _cached("key", digest)) is not None:
        return key
    found = ApiKey.objects.filter(prefix=prefix, revoked_at__isnull=True).first()
    if found is None or not hmac.compare_digest(found.key_hash, digest):
        return None
    if use_cache:
        _keep("key", digest, found)
    return found


def notification_type_by_key(key: str) -> NotificationType | None:
    """The notification type with this key, or None."""
    use_cache = _cache_is_current()
    if use_cache and (found := _cached("type", key)) is not None:
        return found
    found = NotificationType.objects.filter(key=key).first()
    if found is not None and use_cache:
        _keep("type", key, found)
    return found


def lookups_changed() -> None:
    """A key or type changed: every process's cache is stale once this transaction commits."""

    def bump() -> None:
        try:
            redis_sync().incr(redis_key(VERSION_KEY))
        except redis.RedisError as exc:
            log.warning("cached keys and types not invalidated (Redis unavailable): %s", exc)

    transaction.on_commit(bump, robust=True)


def lookups_clear() -> None:
    """Empty this process's cache (tests roll back the rows it may hold)."""
    global _version
    with _lock:
        _entries.clear()
        _version = None
