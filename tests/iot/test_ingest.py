"""The ingest loop against a private broker (iot/services/ingest.py): a provisioned device
publishes with paho-mqtt and its readings, statuses and bad payloads land in PostgreSQL.
The loop runs on a thread of the test process here; tests/e2e/test_iot_e2e.py runs it as
its own process, killed and restarted."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import cbor2
import pytest
from django.db import connection

from harness.mqtt import PrivateBroker
from iot.models import Device, QuarantinedPayload, RollupMinute
from iot.services.devices import device_provision
from iot.services.ingest import Ingest
from project.processes.waiting import wait_until
from tests.iot.device_client import SimulatedDevice

pytestmark = pytest.mark.django_db(transaction=True)


def provisioned(broker: PrivateBroker, key: str) -> SimulatedDevice:
    made = device_provision(key=key, kind="thermo")
    device = SimulatedDevice(broker.settings.host, broker.port, key, made.password)
    assert device.wait_connected()
    return device


def readings(key: str) -> list[tuple[str, float]]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT metric, value FROM iot_reading r JOIN iot_device d ON d.id = r.device_id"
            " WHERE d.key = %s ORDER BY ts, metric",
            [key],
        )
        return list(cursor.fetchall())


def test_a_devices_readings_are_in_the_database_within_a_second(
    broker: PrivateBroker, ingest: Ingest
) -> None:
    device = provisioned(broker, "ingest-json")
    now = datetime.now(UTC)
    for n in range(5):
        device.telemetry({"temp": 20.0 + n, "hum": 40}, ts=(now + timedelta(seconds=n)).isoformat())
    published = datetime.now(UTC)
    wait_until(lambda: len(readings("ingest-json")) == 10, 5, message="readings never stored")
    assert datetime.now(UTC) - published < timedelta(seconds=1.5)
    assert [v for m, v in readings("ingest-json") if m == "temp"] == [20.0, 21.0, 22.0, 23.0, 24.0]
    stored = Device.objects.get(key="ingest-json")
    assert stored.status == "online" and stored.last_seen_at is not None
    assert RollupMinute.objects.filter(device=stored, metric="temp").exists()
    device.close()


def test_cbor_by_content_type_and_by_topic(broker: PrivateBroker, ingest: Ingest) -> None:
    device = provisioned(broker, "ingest-cbor")
    ms = int(datetime.now(UTC).timestamp() * 1000)
    device.publish("telemetry", cbor2.dumps({"ts": ms, "metrics": {"v": 1.5}}), cbor=True)
    device.publish("telemetry/cbor", cbor2.dumps({"ts": ms + 1, "metrics": {"v": 2.5}}))
    wait_until(
        lambda: len(readings("ingest-cbor")) == 2,
        5,
        message=f"CBOR readings never stored: {list(QuarantinedPayload.objects.values_list('error', flat=True))}",
    )
    assert [v for _, v in readings("ingest-cbor")] == [1.5, 2.5]
    device.close()


def test_malformed_payloads_are_counted_and_kept_and_ingestion_goes_on(
    broker: PrivateBroker, ingest: Ingest
) -> None:
    device = provisioned(broker, "ingest-bad")
    device.publish("telemetry", b"{not json")
    device.publish("telemetry", {"metrics": {"t": "hot"}})
    device.publish("telemetry", {"ts": "2099-01-01T00:00:00Z", "metrics": {"t": 1}})
    device.telemetry({"t": 7.0})
    wait_until(lambda: readings("ingest-bad") == [("t", 7.0)], 5, message="the good reading never stored")
    wait_until(lambda: Device.objects.get(key="ingest-bad").malformed_count == 3, 5, message="not counted")
    errors = sorted(
        QuarantinedPayload.objects.filter(device__key="ingest-bad").values_list("error", flat=True)
    )
    assert any("not JSON" in e for e in errors) and any("metrics.t" in e for e in errors)
    assert any("future" in e for e in errors)
    device.close()


def test_a_redelivered_reading_is_stored_once(broker: PrivateBroker, ingest: Ingest) -> None:
    device = provisioned(broker, "ingest-dup")
    ts = datetime.now(UTC).isoformat()
    for _ in range(3):
        device.telemetry({"t": 1.0}, ts=ts)
    device.telemetry({"t": 2.0})
    wait_until(lambda: len(readings("ingest-dup")) == 2, 5, message="readings never stored")
    assert Device.objects.get(key="ingest-dup").readings_count == 2
    device.close()


def test_a_device_that_drops_without_disconnecting_goes_offline(
    broker: PrivateBroker, ingest: Ingest
) -> None:
    device = provisioned(broker, "ingest-will")
    wait_until(lambda: Device.objects.get(key="ingest-will").status == "online", 5, message="never online")
    device.drop()
    wait_until(lambda: Device.objects.get(key="ingest-will").status == "offline", 10, message="never offline")


def test_a_device_cannot_publish_for_another(broker: PrivateBroker, ingest: Ingest) -> None:
    mine = provisioned(broker, "ingest-mine")
    provisioned(broker, "ingest-theirs").close()
    mine.client.publish("devices/ingest-theirs/telemetry", json.dumps({"metrics": {"t": 66}}), qos=1)
    mine.telemetry({"t": 1.0})
    wait_until(lambda: readings("ingest-mine") == [("t", 1.0)], 5, message="own reading never stored")
    assert readings("ingest-theirs") == []
    mine.close()
