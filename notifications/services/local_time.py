"""A wall-clock time in a recipient's timezone, as the instant it names ("at 09:00 in each
recipient's local time").

Daylight saving time is defined, not left to chance:
- a wall time that does not exist (the clocks jumped over it) moves forward by the length
  of the jump: 02:30 on a night the clocks go from 02:00 to 03:00 is 03:30, as dateutil's
  ``resolve_imaginary`` has it (the time a person would read on a clock that kept running);
- a wall time that happens twice (the clocks went back over it) is its first occurrence,
  still on summer time (``fold=0``).
An unknown timezone name counts as UTC, as planning does for quiet hours.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dateutil import tz

# The widest offsets in use (UTC-12 to UTC+14): a wall time comes in some timezone at most
# this early and at most this late against the same wall time read as UTC.
EARLIEST_OFFSET = timedelta(hours=14)
LATEST_OFFSET = timedelta(hours=12)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def wall_time_instant(wall: datetime, timezone_name: str) -> datetime:
    """The instant (aware, UTC) at which clocks in ``timezone_name`` show ``wall`` (naive)."""
    if wall.tzinfo is not None:
        raise ValueError("a wall-clock time has no offset of its own")
    local = tz.resolve_imaginary(wall.replace(tzinfo=_zone(timezone_name), fold=0))
    return local.astimezone(UTC)


def wall_time_earliest(wall: datetime) -> datetime:
    """The first instant at which any timezone shows ``wall`` (UTC+14's)."""
    return wall.replace(tzinfo=UTC) - EARLIEST_OFFSET
