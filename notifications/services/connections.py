"""Which recipients have a live socket (inbox websocket or SSE), kept in Redis.

Each connection is a member of ``inbox:conn:<recipient>`` scored by its expiry; connections
refresh it on every ping and while idle, so a process that died without cleaning up stops
counting within ``CONNECTION_TTL_SECONDS``. Dispatch pushes frames only to recipients found
here, so a fan-out to 100,000 mostly-offline users publishes only a handful of frames.
The presence app will build online/idle/offline on the same registry.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import redis.asyncio as aioredis

from notifications.services.redis_client import redis_key, redis_sync

CONNECTION_TTL_SECONDS = 90
# Every recipient with a registered connection, for one SMISMEMBER per page. An entry left
# by a crashed process only costs a publish nobody hears until the next disconnect of
# that recipient clears it.
ONLINE_SET = "inbox:online"


def _key(recipient_id: int) -> str:
    return redis_key(f"inbox:conn:{recipient_id}")


async def connection_register(client: aioredis.Redis, *, recipient_id: int, connection: str) -> None:
    key = _key(recipient_id)
    now = time.time()
    pipe = client.pipeline(transaction=False)
    pipe.zremrangebyscore(key, "-inf", now)
    pipe.zadd(key, {connection: now + CONNECTION_TTL_SECONDS})
    pipe.expire(key, CONNECTION_TTL_SECONDS)
    pipe.sadd(redis_key(ONLINE_SET), recipient_id)
    await pipe.execute()


async def connection_unregister(client: aioredis.Redis, *, recipient_id: int, connection: str) -> None:
    key = _key(recipient_id)
    pipe = client.pipeline(transaction=False)
    pipe.zrem(key, connection)
    pipe.zremrangebyscore(key, "-inf", time.time())
    pipe.zcard(key)
    *_, remaining = await pipe.execute()
    if not remaining:
        await client.srem(redis_key(ONLINE_SET), recipient_id)


def recipients_connected(recipient_ids: Iterable[int]) -> set[int]:
    """The subset of ``recipient_ids`` with at least one live connection."""
    ids = list(recipient_ids)
    if not ids:
        return set()
    flags = redis_sync().smismember(redis_key(ONLINE_SET), ids)
    return {rid for rid, present in zip(ids, flags, strict=True) if present}
