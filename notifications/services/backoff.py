"""When to try again: the one place the retry backoff is computed (provider sends, soft
bounces, senders deferred by an open breaker)."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from django.conf import settings


def retry_delay(*, attempt: int, retry_after: float | None = None) -> float:
    """Seconds until retry number ``attempt`` (1-based): exponential backoff with full
    jitter, capped at SEND_BACKOFF_CAP_SECONDS; a provider's Retry-After is a floor, with
    jitter on top so a crowd told "1 second" does not come back in the same millisecond."""
    base = settings.SEND_BACKOFF_BASE_SECONDS
    ceiling = min(settings.SEND_BACKOFF_CAP_SECONDS, base * (2 ** max(0, attempt - 1)))
    delay = random.uniform(base / 2, max(base / 2, ceiling))
    if retry_after is not None:
        delay = max(retry_after, 0.0) + random.uniform(0, base / 2)
    return min(delay, settings.SEND_BACKOFF_CAP_SECONDS)


def retry_at(*, now: datetime, attempt: int, retry_after: float | None = None) -> datetime:
    """The due time of retry number ``attempt`` (see retry_delay)."""
    return now + timedelta(seconds=retry_delay(attempt=attempt, retry_after=retry_after))


def deferred_until(*, now: datetime, blocked_until: datetime) -> datetime:
    """When a send that could not be tried (every provider's breaker open, pacing full)
    comes back: once the block ends, spread over up to one backoff base so a crowd of
    deferred sends does not return in the same instant."""
    jitter = timedelta(seconds=random.uniform(0, settings.SEND_BACKOFF_BASE_SECONDS))
    return max(blocked_until, now) + jitter
