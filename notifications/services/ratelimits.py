"""Per-user per-channel rate caps: fixed windows counted in Redis, one pipeline per page."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import redis
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from notifications.services.redis_client import redis_key, redis_sync

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


# One round trip and one command for a whole page: INCR each recipient's key, set its expiry
# when it is new, and answer only the positions past the cap (most pages: none). The ids
# travel as one comma-separated argument and the keys are made here from one prefix, so
# neither side handles a value per recipient (for a page of 5,000, building and parsing
# them cost more than the counting). A Redis Cluster would want the keys declared; we run
# one Redis.
_CONSUME = """
local prefix, suffix, ttl, limit = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local over, i = {}, 0
for id in string.gmatch(ARGV[5], '[^,]+') do
  i = i + 1
  local key = prefix .. id .. suffix
  local n = redis.call('INCR', key)
  if n == 1 then redis.call('EXPIRE', key, ttl) end
  if n > limit then over[#over + 1] = i end
end
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
            keys=[],
            args=[
                redis_key(f"rl:{channel}:"),
                f":{window}",
                seconds + 5,
                limit,
                ",".join(map(str, recipient_ids)),
            ],
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
