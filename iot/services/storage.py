"""Storing a batch of readings: COPY, then one statement that keeps what is new and
rolls it up, then the rules, in one transaction.

The batch is copied into a temporary table (COPY, the fastest way in), and one statement
inserts it into the day partitions skipping what is there already (the primary key is
device, metric and time: a QoS 1 redelivery lands once) and adds exactly the rows it
inserted to the minute and hour rollups. Rollups are therefore always current and never
count a reading twice. The rules see the same new rows (iot/services/rules.py), and the
devices' last seen and latest values move, all before the commit: the ingest acknowledges
the messages to the broker only after it (iot/services/ingest.py), so a crash anywhere
means the broker sends them again and nothing is lost or doubled.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import connection, transaction

from iot.services.quarantine import Malformed, quarantine_many
from iot.services.rules import rules_evaluate


@dataclass(frozen=True)
class Row:
    device_id: int
    metric: str
    ts: datetime
    value: float
    received_at: datetime


@dataclass
class Stored:
    # the rows that were new, ordered by device, metric and time
    new: list[tuple[int, str, datetime, float]] = field(default_factory=list)
    duplicates: int = 0
    malformed: int = 0


_STAGING = """
CREATE TEMPORARY TABLE IF NOT EXISTS iot_staging (
    device_id bigint, metric varchar(64), ts timestamptz, value double precision, received_at timestamptz
) ON COMMIT DELETE ROWS
"""

_ROLLUP = """
INSERT INTO {table} (device_id, metric, bucket, count, sum, min, max)
SELECT device_id, metric, date_trunc('{unit}', ts), count(*), sum(value), min(value), max(value)
FROM inserted GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
ON CONFLICT (device_id, metric, bucket) DO UPDATE SET
    count = {table}.count + excluded.count,
    sum = {table}.sum + excluded.sum,
    min = LEAST({table}.min, excluded.min),
    max = GREATEST({table}.max, excluded.max)
"""

_MOVE = f"""
WITH inserted AS (
    INSERT INTO iot_reading (device_id, metric, ts, value, received_at)
    SELECT DISTINCT ON (device_id, metric, ts) device_id, metric, ts, value, received_at
    FROM iot_staging ORDER BY device_id, metric, ts
    ON CONFLICT DO NOTHING
    RETURNING device_id, metric, ts, value
), minute AS ({_ROLLUP.format(table="iot_rollup_minute", unit="minute")}
), hour AS ({_ROLLUP.format(table="iot_rollup_hour", unit="hour")}
)
SELECT device_id, metric, ts, value FROM inserted ORDER BY device_id, metric, ts
"""

# Per device: last seen, latest values (a newer value replaces an older one only), how many
# readings, and online unless revoked.
_DEVICES = """
UPDATE iot_device d SET
    last_seen_at = GREATEST(d.last_seen_at, v.seen),
    readings_count = d.readings_count + v.n,
    latest = (
        SELECT coalesce(jsonb_object_agg(key, value), '{}'::jsonb) FROM (
            SELECT DISTINCT ON (key) key, value
            FROM (SELECT * FROM jsonb_each(d.latest) UNION ALL SELECT * FROM jsonb_each(v.latest)) both_
            ORDER BY key, value->>'ts' DESC
        ) newest
    ),
    status = CASE WHEN d.revoked_at IS NULL THEN 'online' ELSE d.status END,
    status_changed_at = CASE WHEN d.revoked_at IS NULL AND d.status <> 'online' THEN v.seen
                             ELSE d.status_changed_at END
FROM (SELECT * FROM unnest(%s::bigint[], %s::timestamptz[], %s::bigint[], %s::jsonb[]) AS u(id, seen, n, latest)) v
WHERE d.id = v.id
"""


def _latest(rows: Sequence[tuple[int, str, datetime, float]]) -> dict[int, dict[str, dict[str, Any]]]:
    per_device: dict[int, dict[str, dict[str, Any]]] = {}
    for device_id, metric, ts, value in rows:
        metrics = per_device.setdefault(device_id, {})
        known = metrics.get(metric)
        stamp = ts.isoformat()
        if known is None or known["ts"] < stamp:
            metrics[metric] = {"ts": stamp, "value": value}
    return per_device


def readings_store(rows: Sequence[Row], malformed: Sequence[Malformed] = (), *, now: datetime) -> Stored:
    """Store ``rows`` and quarantine ``malformed`` in one transaction (see the module's
    docstring). Raises the database's error as it is; the caller retries the batch."""
    stored = Stored(malformed=len(malformed))
    with transaction.atomic():
        with connection.cursor() as cursor:
            if rows:
                cursor.execute(_STAGING)
                raw = cursor.cursor  # psycopg's own cursor, for COPY
                # Its errors become Django's, as the cursor's own would (a server gone
                # mid-COPY is an OperationalError the ingest waits out and retries).
                with (
                    connection.wrap_database_errors,
                    raw.copy(
                        "COPY iot_staging (device_id, metric, ts, value, received_at) FROM STDIN"
                    ) as copy,
                ):
                    for row in rows:
                        copy.write_row((row.device_id, row.metric, row.ts, row.value, row.received_at))
                cursor.execute(_MOVE)
                stored.new = [(d, m, ts, v) for d, m, ts, v in cursor.fetchall()]
                stored.duplicates = len(rows) - len(stored.new)
                seen: dict[int, datetime] = {}
                counts: dict[int, int] = {}
                for row in rows:
                    if row.device_id not in seen or seen[row.device_id] < row.received_at:
                        seen[row.device_id] = row.received_at
                latest = _latest(stored.new)
                for device_id, *_ in stored.new:
                    counts[device_id] = counts.get(device_id, 0) + 1
                ids = sorted(seen)
                cursor.execute(
                    _DEVICES,
                    [
                        ids,
                        [seen[i] for i in ids],
                        [counts.get(i, 0) for i in ids],
                        [json.dumps(latest.get(i, {})) for i in ids],
                    ],
                )
        quarantine_many(malformed)
        if stored.new:
            rules_evaluate(sorted(stored.new, key=lambda row: (row[0], row[1], row[2])), now=now)
    return stored


def statuses_store(statuses: Mapping[int, str], *, at: datetime) -> list[int]:
    """Set each device's status as its last message on ``devices/{key}/status`` said
    (``online`` or ``offline``, e.g. the broker's last will); revoked devices stay revoked.
    Returns the devices whose status changed."""
    changed: list[int] = []
    with transaction.atomic(), connection.cursor() as cursor:
        for device_id in sorted(statuses):
            status = statuses[device_id]
            cursor.execute(
                "UPDATE iot_device SET status = %s, status_changed_at = %s,"
                " last_seen_at = CASE WHEN %s = 'offline' THEN last_seen_at ELSE GREATEST(last_seen_at, %s) END"
                " WHERE id = %s AND revoked_at IS NULL AND status <> %s RETURNING id",
                [status, at, status, at, device_id, status],
            )
            if cursor.fetchone():
                changed.append(device_id)
    return changed
