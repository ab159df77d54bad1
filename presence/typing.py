"""Typing indicators: who is typing in a room (a conversation, a document, a stream's chat),
ephemeral, in Redis only.

A room is an opaque key chosen by the app that shows it (at most ROOM_MAX characters).
Someone typing is a member of the room's sorted set, scored by when their indicator runs
out (TYPING_SECONDS after their last keystroke frame). Each change is published to the
room's channel-layer group as the full list of who is typing now, so a watcher never has
to merge deltas. An indicator clears itself: the typer's connection announces the room
again when it runs out (``typing_expire_later``), and a connection that closes clears its
own at once. Watchers also get ``expires_in`` so a client can clear a stale indicator by
itself should that announcement never come (its server died).

Keyed by an opaque label of the typer (the app's external id); nothing here knows an
app's models.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

from django.conf import settings

from realtime.redis_client import redis_async, redis_key

# The channel-layer message a room's typers are published as, to ``typing_group``.
TYPING_CHANGE = "typing.change"
ROOM_MAX = 200
# Typers listed per room at most (a room where more type at once shows "several").
TYPERS_MAX = 50


def _room_id(room: str) -> str:
    # Channel-layer group names allow only ASCII letters, digits, "-", "_" and "." (and
    # under 100 characters); a room key may hold anything else.
    return hashlib.sha256(room.encode()).hexdigest()[:32]


def typing_group(room: str) -> str:
    return f"typing.{_room_id(room)}"


def _key(room: str) -> str:
    return redis_key(f"typing:{_room_id(room)}")


async def typing_set(room: str, label: str, *, typing: bool) -> tuple[bool, list[str]]:
    """Record that ``label`` is typing in ``room`` (or stopped); returns whether that
    changed who is typing there, and who is now (oldest first), expired ones dropped."""
    client = redis_async()
    key = _key(room)
    now = time.time()
    seconds = settings.TYPING_SECONDS
    async with client.pipeline(transaction=True) as pipe:
        # Expired indicators first, so someone typing again after theirs ran out counts
        # as new (watchers were told it ran out).
        pipe.zremrangebyscore(key, "-inf", now)
        if typing:
            pipe.zadd(key, {label: now + seconds})
        else:
            pipe.zrem(key, label)
        pipe.zrange(key, 0, TYPERS_MAX - 1)
        # The set outlives its last indicator by little: nothing to sweep.
        pipe.expire(key, int(seconds) + 5)
        results = await pipe.execute()
    typers = [member.decode() if isinstance(member, bytes) else member for member in results[2]]
    changed = bool(results[0]) or bool(results[1])
    return changed, typers


async def typing_now(room: str) -> list[str]:
    """Who is typing in ``room`` now."""
    client = redis_async()
    members: list[Any] = await client.zrangebyscore(_key(room), time.time(), "+inf", start=0, num=TYPERS_MAX)
    return [member.decode() if isinstance(member, bytes) else str(member) for member in members]


def typing_message(room: str, typers: list[str]) -> dict[str, Any]:
    return {"type": TYPING_CHANGE, "room": room, "recipients": typers, "expires_in": settings.TYPING_SECONDS}


async def typing_announce(layer: Any, room: str, typers: list[str]) -> None:
    await layer.group_send(typing_group(room), typing_message(room, typers))


async def typing_expire_later(layer: Any, room: str) -> None:
    """Sleep until an indicator set now has run out, then announce the room again (the
    caller cancels this when the same typer types again, and starts a new one)."""
    await asyncio.sleep(settings.TYPING_SECONDS + 0.05)
    await typing_announce(layer, room, await typing_now(room))
