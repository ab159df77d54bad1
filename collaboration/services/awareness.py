"""Who is in a document and where their cursor is (y-protocols awareness), kept in Redis
so that every web process knows every client of a document.

Each client's latest state is kept in the document's hash with its clock and when it was
last heard of. A socket that joins, or asks (query-awareness), is sent the states heard
of within COLLAB_AWARENESS_TIMEOUT_SECONDS. A client that is not heard of for that long
(its process died, its network went) is cleared for every peer by whichever socket of the
document notices first: removing it from the hash is the claim, so it is cleared once.
A socket that closes clears its own clients at once (collaboration/consumers.py).
"""

from __future__ import annotations

import json
import time
from typing import Any, cast

from django.conf import settings

from collaboration.services.protocol import AwarenessEntry
from realtime.redis_client import redis_async, redis_key


def _key(document_id: int) -> str:
    return redis_key(f"collab:awareness:{document_id}")


def _timeout() -> float:
    return float(settings.COLLAB_AWARENESS_TIMEOUT_SECONDS)


async def awareness_record(document_id: int, entries: list[AwarenessEntry]) -> None:
    """Remember the states a client sent (a state of None forgets that client)."""
    if not entries:
        return
    now = time.time()
    live: dict[str, str] = {
        str(e.client_id): json.dumps({"clock": e.clock, "state": e.state, "at": now}, separators=(",", ":"))
        for e in entries
        if e.state is not None
    }
    gone = [str(e.client_id) for e in entries if e.state is None]
    pipe = redis_async().pipeline(transaction=False)
    if live:
        pipe.hset(_key(document_id), mapping=cast(Any, live))  # redis types want a Mapping of its unions
    if gone:
        pipe.hdel(_key(document_id), *gone)
    # The hash outlives its last renewal by two timeouts, then goes on its own.
    pipe.expire(_key(document_id), max(1, int(_timeout() * 2) + 1))
    await pipe.execute()


async def awareness_forget(document_id: int, client_ids: list[int]) -> None:
    if client_ids:
        await redis_async().hdel(_key(document_id), *[str(c) for c in client_ids])


# Deletes a client's entry only if it is still the one read: a client that renewed its
# state meanwhile is not cleared.
_DELETE_IF_UNCHANGED = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""


async def _stored(document_id: int) -> dict[int, tuple[dict[str, object], bytes]]:
    raw = await redis_async().hgetall(_key(document_id))
    found: dict[int, tuple[dict[str, object], bytes]] = {}
    for client, value in raw.items():
        try:
            found[int(client)] = (json.loads(value), value if isinstance(value, bytes) else value.encode())
        except (ValueError, TypeError):
            continue
    return found


async def awareness_current(document_id: int) -> list[AwarenessEntry]:
    """The states of the document's clients heard of within the timeout."""
    horizon = time.time() - _timeout()
    return [
        AwarenessEntry(client, int(str(value["clock"])), value["state"])
        for client, (value, _) in sorted((await _stored(document_id)).items())
        if float(str(value["at"])) >= horizon
    ]


async def awareness_expire(document_id: int) -> list[AwarenessEntry]:
    """Claim the clients not heard of within the timeout: the removals to send every peer
    (clock + 1, no state), each returned to one caller only."""
    horizon = time.time() - _timeout()
    stale = {c: v for c, v in (await _stored(document_id)).items() if float(str(v[0]["at"])) < horizon}
    claimed: list[AwarenessEntry] = []
    for client, (value, raw) in sorted(stale.items()):
        deleted = await redis_async().eval(_DELETE_IF_UNCHANGED, 1, _key(document_id), str(client), raw)
        if deleted:
            claimed.append(AwarenessEntry(client, int(str(value["clock"])) + 1, None))
    return claimed
