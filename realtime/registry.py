"""Which end users have a live connection (a websocket or an SSE stream), kept in Redis.

Each connection is a member of ``inbox:conn:<recipient>`` scored by its expiry; connections
refresh it on every ping and every 30 s, so a process that died without cleaning up stops
counting within ``CONNECTION_TTL_SECONDS``. A clean close removes it; for presence it
lingers ``linger_seconds`` more in ``inbox:lingering:<recipient>`` (the grace for a page
reload), which dispatch never reads. Dispatch pushes frames only
to recipients found here, so a fan-out to 100,000 mostly-offline users publishes only a
handful of frames. Presence (presence/services.py) reads the same registry: each
connection's activity (``active`` or ``idle``, as its client reports it) and the moment
each user was last seen.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence

import redis.asyncio as aioredis

from realtime.redis_client import redis_key, redis_sync

CONNECTION_TTL_SECONDS = 90
# Every recipient with a registered connection, for one SMISMEMBER per page. An entry left
# by a crashed process only costs a publish nobody hears until the next disconnect of
# that recipient clears it.
ONLINE_SET = "inbox:online"
ACTIVE = "active"
IDLE = "idle"
# Recipients seen since the last flush of last-seen moments to the database.
SEEN_CHANGED = "presence:seen-changed"
# How long Redis remembers a user's last-seen moment (the database keeps it after).
SEEN_TTL_SECONDS = 7 * 24 * 3600
# Recipients scored by when their presence may change on its own (a registration or a
# linger running out), for presence's sweep (presence/services.py).
EXPIRING = "presence:expiring"


def _key(recipient_id: int) -> str:
    return redis_key(f"inbox:conn:{recipient_id}")


def _states_key(recipient_id: int) -> str:
    return redis_key(f"inbox:state:{recipient_id}")


def _lingering_key(recipient_id: int) -> str:
    return redis_key(f"inbox:lingering:{recipient_id}")


def _seen_key(recipient_id: int) -> str:
    return redis_key(f"presence:seen:{recipient_id}")


def _seen(pipe: aioredis.client.Pipeline, recipient_id: int, now: float) -> None:
    pipe.set(_seen_key(recipient_id), now, ex=SEEN_TTL_SECONDS)
    pipe.sadd(redis_key(SEEN_CHANGED), recipient_id)


async def connection_register(client: aioredis.Redis, *, recipient_id: int, connection: str) -> None:
    """Register or renew a connection (on open, on a ping, every 30 s)."""
    await connections_register(client, [(recipient_id, connection)])


# What registering or renewing a connection does, run inside Redis: one script call per
# batch of connections instead of nine pipelined commands each. A web process renews all
# of its connections every 30 s, and building and parsing 90,000 commands for 10,000
# sockets held its event loop for over a second (docs/benchmarks.md, P3 broadcast).
# KEYS: the online set, the expiring set, the seen-changed set, then per connection its
# (connections, states, seen) keys. ARGV: now, the TTL, the seen TTL, the initial
# activity, then per connection (recipient id, connection name).
_REGISTER_LUA = """
local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
for i = 0, (#KEYS - 3) / 3 - 1 do
  local key, states, seen = KEYS[4 + 3 * i], KEYS[5 + 3 * i], KEYS[6 + 3 * i]
  local rid, connection = ARGV[5 + 2 * i], ARGV[6 + 2 * i]
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  redis.call('ZADD', key, now + ttl, connection)
  redis.call('EXPIRE', key, ttl)
  -- A new connection is active until its client says otherwise; a renewal keeps its state.
  redis.call('HSETNX', states, connection, ARGV[4])
  redis.call('EXPIRE', states, ttl)
  redis.call('SADD', KEYS[1], rid)
  redis.call('ZADD', KEYS[2], now + ttl, rid)
  redis.call('SET', seen, ARGV[1], 'EX', ARGV[3])
  redis.call('SADD', KEYS[3], rid)
end
return 0
"""


async def connections_register(client: aioredis.Redis, connections: Sequence[tuple[int, str]]) -> None:
    """Register or renew each (recipient id, connection) in one round trip (a process
    renews all of its connections together every 30 s)."""
    if not connections:
        return
    keys = [redis_key(ONLINE_SET), redis_key(EXPIRING), redis_key(SEEN_CHANGED)]
    args: list[str | int] = [repr(time.time()), CONNECTION_TTL_SECONDS, SEEN_TTL_SECONDS, ACTIVE]
    for recipient_id, connection in connections:
        keys += [_key(recipient_id), _states_key(recipient_id), _seen_key(recipient_id)]
        args += [recipient_id, connection]
    await client.register_script(_REGISTER_LUA)(keys=keys, args=args)


async def connection_activity(
    client: aioredis.Redis, *, recipient_id: int, connection: str, state: str
) -> None:
    """The connection's client reports it is ``active`` or ``idle``."""
    if state not in (ACTIVE, IDLE):
        raise ValueError(f"activity must be {ACTIVE!r} or {IDLE!r}, got {state!r}")
    pipe = client.pipeline(transaction=False)
    pipe.hset(_states_key(recipient_id), connection, state)
    pipe.expire(_states_key(recipient_id), CONNECTION_TTL_SECONDS)
    _seen(pipe, recipient_id, time.time())
    await pipe.execute()


async def connection_unregister(
    client: aioredis.Redis, *, recipient_id: int, connection: str, linger_seconds: float = 0.0
) -> None:
    """A connection closed cleanly: it no longer receives frames. With ``linger_seconds``
    it still counts for presence that long, with its last activity (a reload that
    reconnects within it does not look like leaving), in a sorted set of its own, so the
    registry's answer to dispatch (who has a live connection) is not held up by it."""
    key, states = _key(recipient_id), _states_key(recipient_id)
    now = time.time()
    state = await client.hget(states, connection) if linger_seconds > 0 else None
    pipe = client.pipeline(transaction=False)
    pipe.zrem(key, connection)
    pipe.hdel(states, connection)
    pipe.zremrangebyscore(key, "-inf", now)
    pipe.zcard(key)
    if linger_seconds > 0:
        lingering = _lingering_key(recipient_id)
        activity = state.decode() if isinstance(state, bytes) else ACTIVE
        pipe.zremrangebyscore(lingering, "-inf", now)
        pipe.zadd(lingering, {f"{activity}:{connection}": now + linger_seconds})
        pipe.expire(lingering, math.ceil(linger_seconds) + 1)
        pipe.zadd(redis_key(EXPIRING), {str(recipient_id): now + linger_seconds})
    _seen(pipe, recipient_id, now)
    remaining = (await pipe.execute())[3]
    if not remaining:
        await client.srem(redis_key(ONLINE_SET), recipient_id)


def recipients_connected(recipient_ids: Iterable[int]) -> set[int]:
    """The subset of ``recipient_ids`` with at least one live connection."""
    ids = list(recipient_ids)
    if not ids:
        return set()
    flags = redis_sync().smismember(redis_key(ONLINE_SET), ids)
    return {rid for rid, present in zip(ids, flags, strict=True) if present}


# The four reads of connection_states per recipient, run inside Redis: one command per
# STATES_CHUNK recipients instead of four each. A presence subscription asks about 500 users
# at once, and building and parsing 2,000 pipelined commands took the web process ten times
# the CPU of one script call (15 ms against 1.4 ms, bench/p3_presence.py's subscriptions).
_STATES_LUA = """
local out = {}
for i = 1, #KEYS, 4 do
  out[#out + 1] = redis.call('ZRANGEBYSCORE', KEYS[i], ARGV[1], '+inf')
  out[#out + 1] = redis.call('HGETALL', KEYS[i + 1])
  out[#out + 1] = redis.call('ZRANGEBYSCORE', KEYS[i + 2], ARGV[1], '+inf')
  out[#out + 1] = redis.call('GET', KEYS[i + 3])
end
return out
"""
# Recipients per script call: a call blocks Redis while it runs (about 3 ms for 500).
STATES_CHUNK = 500


def connection_states(recipient_ids: Sequence[int]) -> tuple[dict[int, list[str]], dict[int, float]]:
    """For each recipient, the activity of each connection that counts for presence (its
    live connections, and those closed within their linger; none: offline), and the moment
    it was last seen, where Redis still has it. One round trip."""
    now = time.time()
    client = redis_sync()
    script = client.register_script(_STATES_LUA)
    pipe = client.pipeline(transaction=False)
    for start in range(0, len(recipient_ids), STATES_CHUNK):
        keys = []
        for rid in recipient_ids[start : start + STATES_CHUNK]:
            keys += [_key(rid), _states_key(rid), _lingering_key(rid), _seen_key(rid)]
        script(keys=keys, args=[now], client=pipe)
    replies = [reply for chunk in pipe.execute() for reply in chunk]
    states: dict[int, list[str]] = {}
    seen: dict[int, float] = {}
    for index, rid in enumerate(recipient_ids):
        live, activity, lingering, moment = replies[4 * index : 4 * index + 4]
        # HGETALL inside a script answers a flat list: name, value, name, value...
        by_connection = {activity[i].decode(): activity[i + 1].decode() for i in range(0, len(activity), 2)}
        counted = [by_connection.get(name.decode(), ACTIVE) for name in live]
        counted += [member.decode().partition(":")[0] for member in lingering]
        if counted:
            states[rid] = counted
        if moment is not None:
            seen[rid] = float(moment)
    return states, seen


def last_seen_changed(*, limit: int) -> dict[int, float]:
    """Take up to ``limit`` recipients seen since the last call, with their moments (a
    caller that fails to store them hands them back with ``last_seen_unchanged``)."""
    client = redis_sync()
    taken: list[bytes] = client.spop(redis_key(SEEN_CHANGED), limit) or []  # type: ignore[assignment]
    ids = [int(value) for value in taken]
    if not ids:
        return {}
    moments = client.mget([_seen_key(rid) for rid in ids])
    return {rid: float(moment) for rid, moment in zip(ids, moments, strict=True) if moment is not None}


def last_seen_unchanged(recipient_ids: Iterable[int]) -> None:
    """Hand back recipients taken by ``last_seen_changed`` whose moments were not stored."""
    ids = list(recipient_ids)
    if ids:
        redis_sync().sadd(redis_key(SEEN_CHANGED), *ids)


def expiring_due(*, limit: int, recheck_seconds: float) -> list[int]:
    """Recipients whose presence may have changed on its own by now; each is looked at
    again ``recheck_seconds`` later (a connection it still has keeps pushing that on)."""
    client = redis_sync()
    now = time.time()
    members: list[bytes] = client.zrangebyscore(redis_key(EXPIRING), "-inf", now, start=0, num=limit)  # type: ignore[assignment]
    due = [int(value) for value in members]
    if due:
        client.zadd(redis_key(EXPIRING), {str(rid): now + recheck_seconds for rid in due})
    return due


def expiring_done(recipient_ids: Iterable[int]) -> None:
    """Recipients with nothing left to expire (offline): no longer looked at."""
    ids = [str(rid) for rid in recipient_ids]
    if ids:
        redis_sync().zrem(redis_key(EXPIRING), *ids)
