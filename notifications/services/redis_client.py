"""The one Redis connection pool of a process (rate caps, metrics, connection registry)."""

from __future__ import annotations

from functools import lru_cache

import redis
import redis.asyncio as aioredis
from django.conf import settings


@lru_cache(maxsize=1)
def redis_sync() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=3)


def redis_async() -> aioredis.Redis:
    """A client for the running event loop (asyncio clients must not cross loops)."""
    return aioredis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=3)


def redis_key(name: str) -> str:
    """``name`` inside this deployment's REDIS_NAMESPACE."""
    return f"{settings.REDIS_NAMESPACE}{name}"
