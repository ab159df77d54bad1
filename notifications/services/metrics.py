"""Counters shared by every process, kept in one Redis hash and exported by /metrics.

Redis rather than per-process prometheus_client counters: the web process, several Celery
workers and beat all move the same numbers. A Redis flush resets them, which Prometheus
treats as a counter reset.
"""

from __future__ import annotations

import logging
from collections import Counter

import redis

from notifications.services.redis_client import redis_key, redis_sync

log = logging.getLogger(__name__)
METRICS_KEY = "metrics:counters"


def metrics_increment(counts: Counter[str] | dict[str, int]) -> None:
    """Add ``counts`` to the shared counters; never raises (metrics must not fail a send)."""
    if not counts:
        return
    try:
        pipe = redis_sync().pipeline(transaction=False)
        for name, value in counts.items():
            if value:
                pipe.hincrby(redis_key(METRICS_KEY), name, int(value))
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("metrics not recorded: %s", exc)


def metrics_read() -> dict[str, int]:
    raw = redis_sync().hgetall(redis_key(METRICS_KEY))
    return {key.decode(): int(value) for key, value in raw.items()}  # type: ignore[union-attr]
