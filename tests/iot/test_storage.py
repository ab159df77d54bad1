"""Payloads, partitions and the batch store (iot/services/payloads.py, partitions.py,
storage.py) against PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import cbor2
import pytest
from django.db import connection
from django.test import override_settings

from iot.models import Device, QuarantinedPayload, RollupHour, RollupMinute
from iot.selectors import readings_series
from iot.services.partitions import partitions_drop_expired, partitions_ensure, partitions_of, raw_oldest
from iot.services.payloads import PayloadError, telemetry_decode
from iot.services.quarantine import Malformed, quarantine_many
from iot.services.storage import Row, readings_store, statuses_store

NOW = datetime(2026, 12, 1, 12, 0, 30, tzinfo=UTC)
FUTURE = timedelta(minutes=5)
OLDEST = NOW - timedelta(days=7)


def decode(payload: bytes, *, cbor: bool = False) -> object:
    return telemetry_decode(payload, cbor=cbor, received_at=NOW, future=FUTURE, oldest=OLDEST)


def test_json_and_cbor_payloads_read_the_same() -> None:
    body = {"ts": "2026-12-01T12:00:00Z", "metrics": {"temp": 21.5, "hum": 40}}
    from_json = decode(json.dumps(body).encode())
    from_cbor = decode(cbor2.dumps(body), cbor=True)
    assert from_json == from_cbor
    epoch = decode(cbor2.dumps({"ts": 1_796_122_800_000, "metrics": {"t": 1}}), cbor=True)
    assert epoch.ts == datetime.fromtimestamp(1_796_122_800, tz=UTC)  # type: ignore[attr-defined]
    unstamped = decode(b'{"metrics": {"t": 1}}')
    assert unstamped.ts == NOW and not unstamped.stamped  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("payload", "names"),
    [
        pytest.param(b"not json", "payload: not JSON", id="not-json"),
        pytest.param(b"[1, 2]", "payload: an object", id="not-an-object"),
        pytest.param(b'{"ts": 1}', "metrics:", id="no-metrics"),
        pytest.param(b'{"metrics": {}}', "metrics: no metrics", id="empty-metrics"),
        pytest.param(b'{"metrics": {"t": "hot"}}', "metrics.t: a number", id="non-numeric"),
        pytest.param(b'{"metrics": {"t": true}}', "metrics.t: a number", id="boolean"),
        pytest.param(b'{"metrics": {"a/b": 1}}', "metrics: bad metric name", id="bad-name"),
        pytest.param(b'{"ts": "2027-01-01T00:00:00Z", "metrics": {"t": 1}}', "in the future", id="future"),
        pytest.param(b'{"ts": "2020-01-01T00:00:00Z", "metrics": {"t": 1}}', "older than", id="too-old"),
        pytest.param(b'{"ts": "yesterday", "metrics": {"t": 1}}', "ts: not an ISO 8601", id="bad-ts"),
        pytest.param(b'{"ts": "2026-12-01T12:00:00", "metrics": {"t": 1}}', "offset", id="naive-ts"),
        pytest.param(b'{"ts": 1700, "metrics": {"t": 1}}', "epoch milliseconds", id="seconds-not-ms"),
    ],
)
def test_a_malformed_payload_is_refused_naming_the_problem(payload: bytes, names: str) -> None:
    with pytest.raises(PayloadError) as refused:
        decode(payload)
    assert names in str(refused.value)


def test_bad_cbor_is_refused() -> None:
    with pytest.raises(PayloadError, match="not CBOR"):
        decode(b"\xff\xff\xff", cbor=True)


@pytest.fixture
def device(db: object) -> Device:
    partitions_ensure(NOW)
    return Device.objects.create(key="store-1", kind="thermo", mqtt_password_hash="x", mqtt_salt="x")


def row(device: Device, metric: str, seconds: float, value: float) -> Row:
    ts = NOW.replace(second=0) + timedelta(seconds=seconds)
    return Row(device.id, metric, ts, value, NOW)


def test_a_batch_is_stored_once_and_rolled_up(device: Device) -> None:
    batch = [row(device, "temp", s, v) for s, v in [(0, 10.0), (10, 20.0), (70, 30.0)]]
    first = readings_store(batch, now=NOW)
    assert len(first.new) == 3 and first.duplicates == 0
    # the same batch again (a QoS 1 redelivery), plus one new reading in the first minute
    again = readings_store([*batch, row(device, "temp", 20, 60.0)], now=NOW)
    assert len(again.new) == 1 and again.duplicates == 3
    minute = {r.bucket: (r.count, r.min, r.max, r.avg) for r in RollupMinute.objects.filter(device=device)}
    start = NOW.replace(second=0)
    assert minute == {start: (3, 10.0, 60.0, 30.0), start + timedelta(minutes=1): (1, 30.0, 30.0, 30.0)}
    hour = RollupHour.objects.get(device=device, metric="temp")
    assert (hour.count, hour.min, hour.max, hour.sum) == (4, 10.0, 60.0, 120.0)
    device.refresh_from_db()
    assert device.status == "online" and device.readings_count == 4
    assert device.latest["temp"]["value"] == 30.0
    raw = readings_series(device.id, "temp", start, start + timedelta(hours=1), "raw")
    assert [p.value for p in raw] == [10.0, 20.0, 60.0, 30.0]
    rolled = readings_series(device.id, "temp", start, start + timedelta(hours=1), "1m")
    assert [(p.count, p.value) for p in rolled] == [(3, 30.0), (1, 30.0)]


def test_duplicates_inside_one_batch_land_once(device: Device) -> None:
    stored = readings_store([row(device, "t", 0, 1.0), row(device, "t", 0, 1.0)], now=NOW)
    assert len(stored.new) == 1
    assert RollupHour.objects.get(device=device, metric="t").count == 1


@override_settings(IOT_QUARANTINE_PER_DEVICE=3)
def test_the_quarantine_keeps_the_newest_and_counts_them_all(device: Device) -> None:
    quarantine_many([Malformed(device.id, "devices/store-1/telemetry", b"x%d" % n, "bad") for n in range(5)])
    quarantine_many([Malformed(device.id, "devices/store-1/telemetry", b"y", "bad")])
    kept = list(
        QuarantinedPayload.objects.filter(device=device).order_by("id").values_list("payload", flat=True)
    )
    assert [bytes(p) for p in kept] == [b"x3", b"x4", b"y"]
    device.refresh_from_db()
    assert device.malformed_count == 6


def test_status_messages_set_online_and_offline_but_not_a_revoked_device(device: Device) -> None:
    assert statuses_store({device.id: "offline"}, at=NOW) == [device.id]
    assert statuses_store({device.id: "offline"}, at=NOW) == []
    device.refresh_from_db()
    assert device.status == "offline"
    Device.objects.filter(pk=device.pk).update(revoked_at=NOW, status="revoked")
    assert statuses_store({device.id: "online"}, at=NOW) == []


@override_settings(IOT_RAW_RETENTION_DAYS=7, IOT_MINUTE_RETENTION_DAYS=90)
def test_retention_drops_whole_partitions_and_keeps_the_rest(device: Device) -> None:
    readings_store([row(device, "t", 0, 1.0)], now=NOW)
    later = NOW + timedelta(days=8)
    created = partitions_ensure(later)
    assert f"iot_reading_p{(later + timedelta(days=2)):%Y%m%d}" in created
    dropped = partitions_drop_expired(later)
    assert f"iot_reading_p{NOW:%Y%m%d}" in dropped
    assert all(name >= f"iot_reading_p{raw_oldest(later):%Y%m%d}" for name in partitions_of("iot_reading"))
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM iot_reading WHERE device_id = %s", [device.id])
        assert cursor.fetchone() == (0,)
    # the rollups stay
    assert RollupHour.objects.filter(device=device).count() == 1
    assert RollupMinute.objects.filter(device=device).count() == 1
    far = NOW + timedelta(days=200)
    partitions_ensure(far)
    assert f"iot_rollup_minute_p{NOW:%Y%m}" in partitions_drop_expired(far)
    assert RollupHour.objects.filter(device=device).count() == 1


class _KillingRows(list[Row]):
    """Rows whose reading (inside the COPY) ends the storing connection's server process,
    as a PostgreSQL that stops mid-batch does."""

    def __iter__(self) -> Iterator[Row]:
        import psycopg

        pid = connection.connection.info.backend_pid
        settings = connection.settings_dict
        with psycopg.connect(
            host=settings["HOST"], port=settings["PORT"] or 5432, user=settings["USER"],
            password=settings["PASSWORD"], dbname=settings["NAME"], autocommit=True,
        ) as other:  # fmt: skip
            other.execute("SELECT pg_terminate_backend(%s)", (pid,))
        yield from super().__iter__()


def test_a_server_gone_mid_copy_is_the_operational_error_the_ingest_waits_out(
    transactional_db: object,
) -> None:
    from django.db import OperationalError

    partitions_ensure(NOW)
    stored = Device.objects.create(key="store-kill", kind="thermo", mqtt_password_hash="x", mqtt_salt="x")
    try:
        with pytest.raises(OperationalError):
            readings_store(_KillingRows([row(stored, "temp", 0, 1.0)]), now=NOW)
    finally:
        connection.close()
    assert readings_store([row(stored, "temp", 0, 1.0)], now=NOW).new  # the next try stores it
