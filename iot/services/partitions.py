"""The time series' partitions: made ahead of time, dropped whole when they expire.

``iot_reading`` has one partition a day (``iot_reading_p20261201``), ``iot_rollup_minute``
one a month (``iot_rollup_minute_p202612``); ``iot_rollup_hour`` is kept for good. Retention
drops a partition once its whole range is older than the setting: never a DELETE, so
expiring a day of readings costs the same whatever it held. The ingest makes the
partitions it needs when it starts and then every few minutes; the beat task
``iot.tasks.partitions_task`` does both jobs too, so either keeps the tables working.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction

# Made this far ahead: a clock that runs a little fast, or a day's turn, finds its partition.
DAYS_AHEAD = 2
# One advisory lock for every change of the partitions (ingest processes and beat race).
_LOCK = 0x10_7_0001
_RAW_NAME = re.compile(r"^iot_reading_p(\d{8})$")
_MINUTE_NAME = re.compile(r"^iot_rollup_minute_p(\d{6})$")


@dataclass(frozen=True)
class Changes:
    created: list[str]
    dropped: list[str]


def _month_start(day: date) -> date:
    return day.replace(day=1)


def _next_month(day: date) -> date:
    return (day.replace(day=28) + timedelta(days=4)).replace(day=1)


def _at(day: date) -> str:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).isoformat()


def raw_oldest(now: datetime) -> datetime:
    """The oldest reading kept: the start of the oldest day partition retention keeps."""
    first = (now.astimezone(UTC) - timedelta(days=settings.IOT_RAW_RETENTION_DAYS)).date()
    return datetime(first.year, first.month, first.day, tzinfo=UTC)


def _existing(cursor: object, parent: str) -> list[str]:
    cursor.execute(  # type: ignore[attr-defined]
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = %s ORDER BY 1",
        [parent],
    )
    return [name for (name,) in cursor.fetchall()]  # type: ignore[attr-defined]


def partitions_ensure(now: datetime) -> list[str]:
    """Make the partitions from the oldest retained through DAYS_AHEAD days from now."""
    today = now.astimezone(UTC).date()
    created: list[str] = []
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK])
        have = set(_existing(cursor, "iot_reading")) | set(_existing(cursor, "iot_rollup_minute"))
        day = raw_oldest(now).date()
        while day <= today + timedelta(days=DAYS_AHEAD):
            name = f"iot_reading_p{day:%Y%m%d}"
            if name not in have:
                cursor.execute(
                    f"CREATE TABLE {name} PARTITION OF iot_reading"  # noqa: S608 - names made here
                    f" FOR VALUES FROM ('{_at(day)}') TO ('{_at(day + timedelta(days=1))}')"
                )
                created.append(name)
            day += timedelta(days=1)
        month = _month_start(today - timedelta(days=settings.IOT_MINUTE_RETENTION_DAYS))
        while month <= _month_start(today + timedelta(days=DAYS_AHEAD)):
            name = f"iot_rollup_minute_p{month:%Y%m}"
            if name not in have:
                cursor.execute(
                    f"CREATE TABLE {name} PARTITION OF iot_rollup_minute"  # noqa: S608 - names made here
                    f" FOR VALUES FROM ('{_at(month)}') TO ('{_at(_next_month(month))}')"
                )
                created.append(name)
            month = _next_month(month)
    return created


def partitions_drop_expired(now: datetime) -> list[str]:
    """Drop every partition whose whole range is older than its retention."""
    today = now.astimezone(UTC).date()
    raw_cutoff = today - timedelta(days=settings.IOT_RAW_RETENTION_DAYS)
    minute_cutoff = today - timedelta(days=settings.IOT_MINUTE_RETENTION_DAYS)
    dropped: list[str] = []
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK])
        for name in _existing(cursor, "iot_reading"):
            match = _RAW_NAME.match(name)
            if match and datetime.strptime(match[1], "%Y%m%d").date() + timedelta(days=1) <= raw_cutoff:
                cursor.execute(f"DROP TABLE {name}")
                dropped.append(name)
        for name in _existing(cursor, "iot_rollup_minute"):
            match = _MINUTE_NAME.match(name)
            if match:
                start = datetime.strptime(match[1] + "01", "%Y%m%d").date()
                if _next_month(start) <= minute_cutoff:
                    cursor.execute(f"DROP TABLE {name}")
                    dropped.append(name)
    return dropped


def partitions_maintain(now: datetime) -> Changes:
    dropped = partitions_drop_expired(now)
    return Changes(created=partitions_ensure(now), dropped=dropped)


def partitions_of(parent: str) -> list[str]:
    with connection.cursor() as cursor:
        return _existing(cursor, parent)
