"""The one Redis connection pool of a process (rate caps, metrics, connection registry)."""

from __future__ import annotations

import asyncio
import weakref
from functools import lru_cache

import redis
import redis.asyncio as aioredis
from django.conf import settings


@lru_cache(maxsize=1)
def redis_sync() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=3)


_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = (
    weakref.WeakKeyDictionary()
)


def redis_async() -> aioredis.Redis:
    """The client of the running event loop, shared by all its sockets (asyncio clients must
    not cross loops). Its pool grows with concurrent commands, not with connections: one
    client per socket cost a Redis connection and its buffers per idle websocket."""
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        client = aioredis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=3)
        _async_clients[loop] = client
    return client


def redis_key(name: str) -> str:
    """``name`` inside this deployment's REDIS_NAMESPACE."""
    return f"{settings.REDIS_NAMESPACE}{name}"
