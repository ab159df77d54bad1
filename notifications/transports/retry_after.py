"""Reading a provider's Retry-After hint (RFC 9110 section 10.2.3)."""

from __future__ import annotations

import math
import time
from datetime import UTC
from email.utils import parsedate_to_datetime

# A provider asking us to wait longer than this is treated as asking for a day: a delivery
# must not be parked for weeks by one garbled header.
RETRY_AFTER_CAP_SECONDS = 86_400.0


def retry_after_parse(value: str | None, *, now: float | None = None) -> float | None:
    """Return the wait a Retry-After header value asks for, in seconds.

    Accepts delay-seconds ("120", leniently "1.5") and an HTTP-date ("Wed, 21 Oct 2015
    07:28:00 GMT"), measured from ``now`` (a Unix time; the current time by default).
    Returns None when the value is absent, empty or unreadable (negative, NaN, no date);
    a date in the past gives 0.0. The result never exceeds ``RETRY_AFTER_CAP_SECONDS``.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    seconds: float
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            # RFC 9110 dates are always GMT; parsedate gives a naive datetime for "-0000".
            when = when.replace(tzinfo=UTC)
        current = time.time() if now is None else now
        seconds = max(0.0, when.timestamp() - current)
    else:
        if not math.isfinite(seconds) or seconds < 0:
            return None
    return min(seconds, RETRY_AFTER_CAP_SECONDS)
