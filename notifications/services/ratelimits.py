"""Per-user per-channel rate caps: fixed windows counted in Redis, one script call per page."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import redis
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from realtime.redis_client import redis_key, redis_sync

log = logging.getLogger(__name__)


@lru_cache(maxsize=16)
def rate_cap(channel: str) -> tuple[int, int] | None:
    """(count, seconds) for ``channel``, or None when uncapped."""
    spec = settings.RATE_CAPS.get(channel)
    if not spec or spec in {"0", "none", "off"}:
        return None
    try:
        count, seconds = (int(part) for part in spec.split("/"))
    except ValueError as exc:
        raise ImproperlyConfigured(f"RATE_CAP_{channel.upper()} must look like 100/60, got {spec!r}") from exc
    return count, seconds


# One round trip and one command for a whole page: count each recipient in the window's
# hash (one hash per channel and window, a field per recipient; it expires with its window)
# and answer only the positions past the cap (most pages: none). The ids travel as one
# comma-separated argument, so neither side handles a value per recipient (for a page of
# 5,000, building and parsing them cost more than the counting). One hash rather than a
# key per recipient: a field costs Redis about half the memory and CPU of a key with its
# own expiry (docs/benchmarks.md, P1). A Redis Cluster would put a window's counts on one
# node; we run one Redis.
_CONSUME = """
local key, ttl, limit = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
local over, i = {}, 0
for id in string.gmatch(ARGV[3], '[^,]+') do
  i = i + 1
  if redis.call('HINCRBY', key, id, 1) > limit then over[#over + 1] = i end
end
if redis.call('TTL', key) < 0 then redis.call('EXPIRE', key, ttl) end
return over
"""


@lru_cache(maxsize=1)
def _consume_script() -> Any:
    return redis_sync().register_script(_CONSUME)


def rate_caps_consume(*, channel: str, recipient_ids: Sequence[int]) -> list[bool]:
    """Count one send per entry of ``recipient_ids`` in the current window; returns, entry
    by entry, whether it is over the cap. A recipient may appear more than once (several
    small events fanned out together): each entry counts, and only those past the cap are
    over it, as if the events had come one by one.

    Counts are taken before the deliveries commit, so a page that is rolled back and planned
    again counts twice: at most one page of a crashed fan-out errs towards suppressing.
    When Redis does not answer, nothing is capped (logged): a cap protects users from
    floods, and losing a notification to a Redis hiccup would be the worse failure. The
    connection registry and the SMS abuse limits fail the same way (open).
    """
    cap = rate_cap(channel)
    if cap is None or not recipient_ids:
        return [False] * len(recipient_ids)
    limit, seconds = cap
    window = int(time.time()) // seconds
    try:
        over = _consume_script()(
            keys=[redis_key(f"rl:{channel}:{window}")],
            args=[seconds + 5, limit, ",".join(map(str, recipient_ids))],
        )
    except redis.RedisError as exc:
        log.warning(
            "rate caps not checked (Redis unavailable), %d %s sends uncapped: %s",
            len(recipient_ids),
            channel,
            exc,
        )
        return [False] * len(recipient_ids)
    capped = [False] * len(recipient_ids)
    for position in over:
        capped[int(position) - 1] = True
    return capped


def _caps(spec: str) -> list[tuple[int, int]]:
    caps = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        try:
            count, seconds = (int(x) for x in part.split("/"))
        except ValueError as exc:
            raise ImproperlyConfigured(
                f"MARKETING_CAPS must look like 1/86400,5/604800, got {spec!r}"
            ) from exc
        caps.append((count, seconds))
    return caps


def marketing_caps_consume(*, recipient_ids: Sequence[int]) -> dict[int, str]:
    """Count one marketing message per entry of ``recipient_ids`` against every cap of
    MARKETING_CAPS (e.g. 1 a day, 5 a week, fixed windows); returns {recipient id: the cap
    it is over} for those over one. Fails open when Redis does not answer, as the channel
    caps do."""
    caps = _caps(settings.MARKETING_CAPS)
    if not caps or not recipient_ids:
        return {}
    over: dict[int, str] = {}
    now = int(time.time())
    try:
        for limit, seconds in caps:
            positions = _consume_script()(
                keys=[redis_key(f"rl:marketing:{seconds}:{now // seconds}")],
                args=[seconds + 5, limit, ",".join(map(str, recipient_ids))],
            )
            for position in positions:
                over.setdefault(
                    recipient_ids[int(position) - 1], f"marketing cap: {limit} per {_span(seconds)}"
                )
    except redis.RedisError as exc:
        log.warning("marketing caps not checked (Redis unavailable): %s", exc)
        return {}
    return over


def _span(seconds: int) -> str:
    for unit, size in (("week", 604800), ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            count = seconds // size
            return unit if count == 1 else f"{count} {unit}s"
    return f"{seconds} s"
