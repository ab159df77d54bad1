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

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from django.db import DatabaseError, connection, transaction

from presence.models import LastSeen
from presence.selectors import last_seen_stored
from realtime.registry import connection_states, last_seen_changed, last_seen_unchanged

ONLINE = "online"
IDLE = "idle"
OFFLINE = "offline"
# Recipients whose last-seen moment is written per flush, at most.
FLUSH_MAX = 10_000


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
