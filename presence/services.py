"""Who is online: online, idle or offline per end user, from the connection registry
(realtime/registry.py), and when each was last seen.

A user is online while any of their connections (a tab, an app instance) is live and not
idle, idle while every live one reported inactivity, offline with none. A connection is
live until its registration expires: 90 s after its last heartbeat when the client
vanished, PRESENCE_GRACE_SECONDS after a clean close (a page reload reconnects within it,
so the user does not flap to offline and back). Nothing here writes the database per
heartbeat: the registry keeps the last-seen moments in Redis, and ``last_seen_flush`` (a
periodic task) writes the ones that changed, in one statement.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import DatabaseError, connection, transaction

from presence.models import LastSeen
from presence.selectors import last_seen_stored
from realtime.redis_client import redis_key, redis_sync
from realtime.registry import (
    connection_states,
    expiring_done,
    expiring_due,
    last_seen_changed,
    last_seen_unchanged,
)

ONLINE = "online"
IDLE = "idle"
OFFLINE = "offline"
# Recipients whose last-seen moment is written per flush, at most.
FLUSH_MAX = 10_000
# The channel-layer message a status change is published as, to ``presence_group``.
PRESENCE_CHANGE = "presence.change"
# Recipients looked at per sweep, at most; and how long the last announced status of a
# recipient is remembered (past it, the next look announces it again: harmless).
SWEEP_MAX = 5_000
ANNOUNCED_TTL_SECONDS = 24 * 3600


def presence_group(recipient_id: int) -> str:
    """The channel-layer group of the connections watching this recipient."""
    return f"presence.{recipient_id}"


@dataclass(frozen=True)
class Presence:
    status: str
    last_seen: datetime | None


def _status(live: list[str]) -> str:
    """The status of a user whose live connections report these activities."""
    if not live:
        return OFFLINE
    return IDLE if all(state == IDLE for state in live) else ONLINE


def presence_of(recipient_ids: Iterable[int]) -> dict[int, Presence]:
    """The presence of each recipient: its status now, and when it was last seen (from
    Redis, or the database when Redis no longer has it; None when never)."""
    ids = list(dict.fromkeys(recipient_ids))
    states, seen = connection_states(ids)
    stored = last_seen_stored([rid for rid in ids if rid not in seen])
    result: dict[int, Presence] = {}
    for rid in ids:
        moment = seen.get(rid)
        result[rid] = Presence(
            status=_status(states.get(rid, [])),
            last_seen=datetime.fromtimestamp(moment, UTC) if moment is not None else stored.get(rid),
        )
    return result


def recipients_online(recipient_ids: Iterable[int]) -> set[int]:
    """The recipients online now (a live connection that is not idle): the ones who will
    see an in-app notification. Redis only; raises redis.RedisError when it is down."""
    ids = list(dict.fromkeys(recipient_ids))
    states, _ = connection_states(ids)
    return {rid for rid in ids if _status(states.get(rid, [])) == ONLINE}


def last_seen_flush(*, limit: int = FLUSH_MAX) -> int:
    """Write the last-seen moments that changed since the previous flush (one upsert);
    returns how many. A moment is only ever moved forward."""
    changed = last_seen_changed(limit=limit)
    if not changed:
        return 0
    ids = sorted(changed)
    moments = [datetime.fromtimestamp(changed[rid], UTC) for rid in ids]
    try:
        with transaction.atomic(), connection.cursor() as db:
            db.execute(
                f"""INSERT INTO {LastSeen._meta.db_table} AS s (recipient_id, at)
                    SELECT * FROM unnest(%s::bigint[], %s::timestamptz[])
                    ON CONFLICT (recipient_id) DO UPDATE SET at = GREATEST(s.at, EXCLUDED.at)""",
                [ids, moments],
            )
    except DatabaseError:
        # Handed back for the next flush: Redis still has every moment.
        last_seen_unchanged(ids)
        raise
    return len(ids)


def presence_changes(
    recipient_ids: Sequence[int], *, current: dict[int, Presence] | None = None
) -> dict[int, Presence]:
    """The recipients whose status differs from the one last announced for them, with
    their presence now (``current``, when the caller has it); each is remembered as
    announced (one round trip to compare and set them all)."""
    ids = list(dict.fromkeys(recipient_ids))
    if not ids:
        return {}
    now = current if current is not None else presence_of(ids)
    pipe = redis_sync().pipeline(transaction=False)
    for rid in ids:
        pipe.set(redis_key(f"presence:announced:{rid}"), now[rid].status, ex=ANNOUNCED_TTL_SECONDS, get=True)
    before = pipe.execute()
    return {
        rid: now[rid]
        for rid, previous in zip(ids, before, strict=True)
        if (previous.decode() if previous is not None else OFFLINE) != now[rid].status
    }


def presence_message(recipient_id: int, presence: Presence) -> dict[str, Any]:
    return {
        "type": PRESENCE_CHANGE,
        "recipient": recipient_id,
        "status": presence.status,
        "last_seen": presence.last_seen.isoformat() if presence.last_seen else None,
    }


async def presence_announce(layer: Any, changes: dict[int, Presence]) -> None:
    """Publish each change to the connections watching that recipient (nobody else)."""
    for rid, presence in changes.items():
        await layer.group_send(presence_group(rid), presence_message(rid, presence))


def presence_sweep(*, limit: int = SWEEP_MAX) -> int:
    """Announce the changes nobody caused: a linger or a registration that ran out (a tab
    closed PRESENCE_GRACE_SECONDS ago, a client silent for 90 s). Returns how many."""
    due = expiring_due(limit=limit, recheck_seconds=settings.PRESENCE_SWEEP_SECONDS * 2)
    if not due:
        return 0
    current = presence_of(due)
    changes = presence_changes(due, current=current)
    expiring_done(rid for rid, presence in current.items() if presence.status == OFFLINE)
    layer = get_channel_layer()
    if changes and layer is not None:
        async_to_sync(presence_announce)(layer, changes)
    return len(changes)
