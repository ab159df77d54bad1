"""Counters shared by every process, kept in one Redis hash and exported by /metrics.

Redis rather than per-process prometheus_client counters: the web process, several Celery
workers and beat all move the same numbers. A Redis flush resets them, which Prometheus
treats as a counter reset.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

import redis

from realtime.redis_client import redis_key, redis_sync

log = logging.getLogger(__name__)
METRICS_KEY = "metrics:counters"
# Delivery counters also go into one hash per minute, kept a day, for the admin charts.
SERIES_KEY = "metrics:deliveries:"
SERIES_TTL_SECONDS = 26 * 3600


def metrics_increment(counts: Counter[str] | dict[str, int]) -> None:
    """Add ``counts`` to the shared counters; never raises (metrics must not fail a send)."""
    if not counts:
        return
    try:
        pipe = redis_sync().pipeline(transaction=False)
        series = redis_key(f"{SERIES_KEY}{int(time.time() // 60)}")
        for name, value in counts.items():
            if value:
                pipe.hincrby(redis_key(METRICS_KEY), name, int(value))
                if name.startswith("deliveries:"):
                    pipe.hincrby(series, name.removeprefix("deliveries:"), int(value))
        pipe.expire(series, SERIES_TTL_SECONDS)
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("metrics not recorded: %s", exc)


def metrics_read() -> dict[str, int]:
    raw = redis_sync().hgetall(redis_key(METRICS_KEY))
    return {key.decode(): int(value) for key, value in raw.items()}  # type: ignore[union-attr]


def delivery_series(*, minutes: int = 60, now: float | None = None) -> list[tuple[int, dict[str, int]]]:
    """Deliveries counted per minute, oldest first: (minute start unix time,
    {"<channel>:<status>": count}). Counts are status changes recorded in that minute."""
    now = time.time() if now is None else now
    current = int(now // 60)
    minutes_range = range(current - minutes + 1, current + 1)
    pipe = redis_sync().pipeline(transaction=False)
    for minute in minutes_range:
        pipe.hgetall(redis_key(f"{SERIES_KEY}{minute}"))
    rows = pipe.execute()
    return [
        (minute * 60, {k.decode(): int(v) for k, v in row.items()})
        for minute, row in zip(minutes_range, rows, strict=True)
    ]
