"""Where matches run. Match servers (``manage.py match_server``) announce themselves in
Redis with a heartbeat that expires; matchmaking places a new match on one of its
region's live servers by rendezvous hashing of the match id (so any number of servers
share a region, and the same id always prefers the same server); a server claims what
was placed on it, or what nobody was placed on, with SKIP LOCKED. A match whose server's
heartbeat lapsed is ended as aborted (``matches_orphaned_abort``, from beat): no rating
changes, and its players are told.

The names in Redis and the hub messages between match servers and the match sockets
(gaming/consumers.py) are defined here too.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from gaming.models import Match, MatchStatus
from gaming.services.ratings import match_abort
from notifications.services.realtime import realtime_publish_entries
from realtime.redis_client import redis_key, redis_sync

HEARTBEAT_SECONDS = 1.0
HEARTBEAT_TTL_SECONDS = 5
# Hub message types (realtime/hub.py) from a match server to the match sockets.
TICK_MESSAGE = "match.tick"
END_MESSAGE = "match.end"


def server_key(name: str) -> str:
    return redis_key(f"gaming:server:{name}")


def region_key(region: str) -> str:
    return redis_key(f"gaming:servers:{region}")


def inbound_channel(match_id: Any) -> str:
    """Where the match sockets publish a match's joins, leaves and inputs for its server."""
    return redis_key(f"gaming:match:{match_id}:in")


def server_heartbeat_payload(
    *, region: str, matches: int, capacity: int, ticks: dict[str, Any] | None = None
) -> str:
    """What a server's heartbeat says: its region, matches held, capacity and (``ticks``)
    how its clocks kept time since the beat before (gaming/services/server.py)."""
    body: dict[str, Any] = {"region": region, "matches": matches, "capacity": capacity}
    if ticks is not None:
        body["ticks"] = ticks
    return json.dumps(body)


def servers_live(region: str) -> dict[str, dict[str, Any]]:
    """The live servers of ``region``: name → what its last heartbeat said."""
    client = redis_sync()
    names = sorted(
        n.decode() if isinstance(n, bytes) else str(n) for n in client.smembers(region_key(region))
    )
    if not names:
        return {}
    beats = client.mget([server_key(n) for n in names])
    live = {}
    for name, beat in zip(names, beats, strict=True):
        if beat is None:
            client.srem(region_key(region), name)
            continue
        live[name] = json.loads(beat)
    return live


def server_choose(region: str, match_id: Any) -> str:
    """The live server of ``region`` with room that the match id ranks first (rendezvous
    hashing), or "" when there is none (the first server of the region to look claims it)."""
    candidates = [
        n for n, beat in servers_live(region).items() if beat.get("matches", 0) < beat.get("capacity", 0)
    ]
    if not candidates:
        return ""

    def weight(name: str) -> bytes:
        return hashlib.blake2b(f"{name}:{match_id}".encode(), digest_size=8).digest()

    return max(candidates, key=weight)


def matches_claim(*, server: str, region: str, limit: int) -> list[Match]:
    """The assigned matches of ``region`` placed on ``server`` or on nobody, up to ``limit``,
    now running there."""
    if limit <= 0:
        return []
    with transaction.atomic():
        claimed = list(
            Match.objects.select_for_update(skip_locked=True)
            .filter(status=MatchStatus.ASSIGNED, region=region, server__in=[server, ""])
            .order_by("created_at")[:limit]
        )
        if not claimed:
            return []
        now = timezone.now()
        Match.objects.filter(id__in=[m.id for m in claimed]).update(
            status=MatchStatus.RUNNING, server=server, started_at=now
        )
        for match in claimed:
            match.status, match.server, match.started_at = MatchStatus.RUNNING, server, now
    return claimed


def match_players_of(match_id: Any) -> list[tuple[int, str]]:
    """(recipient id, external id) of the match's players."""
    with connection.cursor() as db:
        db.execute(
            """SELECT r.id, r.external_id FROM gaming_matchplayer p
               JOIN notifications_recipient r ON r.id = p.recipient_id
               WHERE p.match_id = %s ORDER BY r.id""",
            [match_id],
        )
        return [(int(rid), str(ext)) for rid, ext in db.fetchall()]


def end_message(match_id: Any, *, result: dict[str, Any] | None = None, reason: str = "") -> dict[str, Any]:
    return {
        "type": END_MESSAGE,
        "match": str(match_id),
        "result": result,
        "aborted": result is None,
        "reason": reason,
    }


def matches_orphaned_abort() -> int:
    """End as aborted the running matches whose server stopped beating; returns how many."""
    running = list(Match.objects.filter(status=MatchStatus.RUNNING).values_list("id", "server"))
    if not running:
        return 0
    client = redis_sync()
    servers = sorted({server for _, server in running})
    alive = dict(zip(servers, client.mget([server_key(s) for s in servers]), strict=True))
    aborted = 0
    for match_id, server in running:
        if alive.get(server) is None:
            reason = f"its match server {server or '(none)'} stopped"
            if match_abort(match_id=match_id, reason=reason):
                aborted += 1
                players = [rid for rid, _ in match_players_of(match_id)]
                realtime_publish_entries([(players, end_message(match_id, reason=reason))])
    return aborted
