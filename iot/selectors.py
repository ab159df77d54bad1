"""Reading devices and their time series."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from django.db import connection
from django.db.models import QuerySet

from iot.models import Device, QuarantinedPayload

Bucket = Literal["raw", "1m", "1h"]
BUCKETS: tuple[Bucket, ...] = ("raw", "1m", "1h")
# The most points one series answer holds; a longer raw range asks for rollups instead.
SERIES_MAX_POINTS = 10_000
# "auto": raw up to this span, minute rollups up to the next, hourly beyond.
RAW_SPAN = timedelta(hours=6)
MINUTE_SPAN = timedelta(days=7)


@dataclass(frozen=True)
class Point:
    ts: datetime
    # raw: the value; rollups: the average of the bucket
    value: float
    min: float
    max: float
    count: int


def device_by_key(key: str) -> Device | None:
    return Device.objects.filter(key=key).first()


def devices_list(*, kind: str | None = None, include_revoked: bool = False) -> QuerySet[Device]:
    devices = Device.objects.order_by("key")
    if kind:
        devices = devices.filter(kind=kind)
    if not include_revoked:
        devices = devices.filter(revoked_at__isnull=True)
    return devices


def bucket_for_span(start: datetime, end: datetime) -> Bucket:
    span = end - start
    if span <= RAW_SPAN:
        return "raw"
    if span <= MINUTE_SPAN:
        return "1m"
    return "1h"


_ROLLUP_TABLES = {"1m": "iot_rollup_minute", "1h": "iot_rollup_hour"}


def readings_series(
    device_id: int,
    metric: str,
    start: datetime,
    end: datetime,
    bucket: Bucket,
    *,
    limit: int = SERIES_MAX_POINTS,
) -> list[Point]:
    """The points of one metric in ``[start, end)``, oldest first, at most ``limit``
    (the newest ``limit`` when there are more). Raw readings read the day partitions the
    range touches; rollups their own tables."""
    with connection.cursor() as cursor:
        if bucket == "raw":
            cursor.execute(
                "SELECT ts, value, value, value, 1 FROM ("
                " SELECT ts, value FROM iot_reading"
                " WHERE device_id = %s AND metric = %s AND ts >= %s AND ts < %s"
                " ORDER BY ts DESC LIMIT %s) newest ORDER BY ts",
                [device_id, metric, start, end, limit],
            )
        else:
            table = _ROLLUP_TABLES[bucket]
            cursor.execute(
                "SELECT bucket, sum / count, min, max, count FROM ("  # noqa: S608 - a fixed table name
                f" SELECT bucket, sum, count, min, max FROM {table}"
                " WHERE device_id = %s AND metric = %s AND bucket >= %s AND bucket < %s"
                " ORDER BY bucket DESC LIMIT %s) newest ORDER BY bucket",
                [device_id, metric, start, end, limit],
            )
        return [Point(ts, value, low, high, count) for ts, value, low, high, count in cursor.fetchall()]


def device_metrics(device: Device) -> list[str]:
    """The metrics a device has reported, from its latest values."""
    return sorted(device.latest)


def quarantine_of(device: Device, *, limit: int = 50) -> QuerySet[QuarantinedPayload]:
    return QuarantinedPayload.objects.filter(device=device).order_by("-id")[:limit]
