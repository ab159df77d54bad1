"""Reading a device's telemetry payload, JSON or CBOR (RFC 8949, decoded by cbor2):
``{"ts": ISO 8601 | epoch ms (optional), "metrics": {name: number}}``.

A payload that cannot be read raises ``Malformed`` with a message naming the part that is
wrong; the ingest counts and quarantines it (iot/services/quarantine.py) and goes on.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import cbor2

from iot.models import METRIC_PATTERN

PAYLOAD_MAX_BYTES = 65_536
METRICS_MAX = 100
_METRIC = re.compile(METRIC_PATTERN)
# epoch milliseconds from 2001 on: smaller numbers are seconds sent by mistake, or nonsense
_EPOCH_MS_MIN = 978_307_200_000


class PayloadError(Exception):
    """What is wrong with a payload, for the quarantine and the device's counters."""


@dataclass(frozen=True)
class Telemetry:
    ts: datetime
    metrics: dict[str, float]
    # False when the device sent no timestamp and the arrival time stands in: a redelivery
    # then cannot be told from a new reading.
    stamped: bool


def _timestamp(value: Any) -> datetime:
    if isinstance(value, datetime):  # a CBOR date/time tag
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, bool):
        raise PayloadError("ts: an ISO 8601 string or epoch milliseconds, got a boolean")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < _EPOCH_MS_MIN:
            raise PayloadError(f"ts: epoch milliseconds expected, got {value!r}")
        try:
            return datetime.fromtimestamp(value / 1000, tz=UTC)
        except (OverflowError, ValueError, OSError):
            raise PayloadError(f"ts: epoch milliseconds out of range, got {value!r}") from None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
        except ValueError:
            raise PayloadError(f"ts: not an ISO 8601 time: {value[:40]!r}") from None
        if parsed.tzinfo is None:
            raise PayloadError("ts: an ISO 8601 time needs its offset (e.g. Z or +02:00)")
        return parsed
    raise PayloadError(f"ts: an ISO 8601 string or epoch milliseconds, got {type(value).__name__}")


def _metrics(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        raise PayloadError("metrics: an object of metric names to numbers is required")
    if not value:
        raise PayloadError("metrics: no metrics")
    if len(value) > METRICS_MAX:
        raise PayloadError(f"metrics: at most {METRICS_MAX} in one message, got {len(value)}")
    metrics: dict[str, float] = {}
    for name, number in value.items():
        if not isinstance(name, str) or not _METRIC.fullmatch(name):
            raise PayloadError(
                f"metrics: bad metric name {str(name)[:70]!r} (letters, digits, _ . : -, at most 64)"
            )
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise PayloadError(f"metrics.{name}: a number is required, got {type(number).__name__}")
        number = float(number)
        if not math.isfinite(number):
            raise PayloadError(f"metrics.{name}: a finite number is required")
        metrics[name] = number
    return metrics


def telemetry_decode(
    payload: bytes, *, cbor: bool, received_at: datetime, future: timedelta, oldest: datetime
) -> Telemetry:
    """The reading in ``payload``; ``PayloadError`` naming the problem otherwise."""
    if len(payload) > PAYLOAD_MAX_BYTES:
        raise PayloadError(f"payload: at most {PAYLOAD_MAX_BYTES} bytes, got {len(payload)}")
    try:
        body = cbor2.loads(payload) if cbor else json.loads(payload)
    except (ValueError, cbor2.CBORDecodeError, UnicodeDecodeError, RecursionError) as error:
        kind = "CBOR" if cbor else "JSON"
        raise PayloadError(f"payload: not {kind} ({str(error)[:120]})") from None
    if not isinstance(body, dict):
        raise PayloadError('payload: an object {"ts", "metrics"} is required')
    metrics = _metrics(body.get("metrics"))
    raw_ts = body.get("ts")
    ts = received_at if raw_ts is None else _timestamp(raw_ts)
    if ts > received_at + future:
        raise PayloadError(
            f"ts: {ts.isoformat()} is in the future (more than {future.total_seconds():.0f} s ahead)"
        )
    if ts < oldest:
        raise PayloadError(f"ts: {ts.isoformat()} is older than the raw readings are kept")
    return Telemetry(ts=ts.astimezone(UTC), metrics=metrics, stamped=raw_ts is not None)
