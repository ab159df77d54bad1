"""IoT ingestion under faults, each injected into a private instance: the ingest process
killed with SIGKILL in the middle of a burst, the platform's broker restarted, PostgreSQL
stopped for a few seconds. QoS 1 readings are neither lost nor stored twice: the ingest
acknowledges a message only after its batch committed (iot/services/ingest.py) and the
readings' primary key drops a redelivered one (iot/services/storage.py)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from harness.postgres import PrivatePostgres
from harness.processes import wait_until
from tests.e2e.conftest import Stack, platform_stack
from tests.iot.device_client import SimulatedDevice

pytestmark = [pytest.mark.e2e, pytest.mark.fault, pytest.mark.xdist_group("e2e-faults")]


def provision(stack: Stack, key: str) -> SimulatedDevice:
    response = stack.api.post("/api/v1/iot/devices/", json={"key": key, "kind": "fault"})
    assert response.status_code == 201, response.text
    mqtt = response.json()["mqtt"]
    device = SimulatedDevice(mqtt["host"], mqtt["port"], mqtt["username"], mqtt["password"])
    assert device.wait_connected()
    return device


def counts(stack: Stack, prefix: str) -> tuple[int, int, int]:
    """Rows stored, hourly rollup count, and the devices' readings counters, of the devices
    whose key starts with ``prefix``: all three equal when nothing was counted twice."""
    with stack.db() as db:
        rows = db.execute(
            "SELECT count(*) FROM iot_reading r JOIN iot_device d ON d.id = r.device_id WHERE d.key LIKE %s",
            [prefix + "%"],
        ).fetchone()
        rolled = db.execute(
            "SELECT coalesce(sum(count), 0) FROM iot_rollup_hour h JOIN iot_device d ON d.id = h.device_id"
            " WHERE d.key LIKE %s",
            [prefix + "%"],
        ).fetchone()
        counted = db.execute(
            "SELECT coalesce(sum(readings_count), 0) FROM iot_device WHERE key LIKE %s", [prefix + "%"]
        ).fetchone()
    assert rows and rolled and counted
    return int(rows[0]), int(rolled[0]), int(counted[0])


class Burst:
    """Each device publishes ``per_device`` QoS 1 readings with distinct timestamps, on a
    thread, as fast as the broker takes them."""

    def __init__(self, devices: list[SimulatedDevice], per_device: int, *, pause: float = 0.0) -> None:
        self.devices = devices
        self.per_device = per_device
        self.pause = pause
        self.start = datetime.now(UTC) - timedelta(minutes=30)
        self.errors: list[BaseException] = []
        self.sent = 0  # readings handed to the devices' clients so far
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        stop = threading.Event()
        try:
            for n in range(self.per_device):
                ts = (self.start + timedelta(milliseconds=n)).isoformat()
                for device in self.devices:
                    device.send(
                        f"devices/{device.key}/telemetry",
                        f'{{"ts": "{ts}", "metrics": {{"v": {n}}}}}'.encode(),
                    )
                    self.sent += 1
                if self.pause:
                    stop.wait(self.pause)
        except BaseException as error:  # noqa: BLE001 - the test reports it
            self.errors.append(error)

    def __enter__(self) -> Burst:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.thread.join(60)
        assert not self.errors, self.errors

    @property
    def total(self) -> int:
        return self.per_device * len(self.devices)


@pytest.fixture
def iot_stack() -> Iterator[Stack]:
    with platform_stack(with_iot=True) as running:
        yield running


def test_the_ingest_killed_mid_burst_loses_nothing_and_stores_nothing_twice(iot_stack: Stack) -> None:
    prefix = f"kill-{uuid.uuid4().hex[:4]}-"
    devices = [provision(iot_stack, f"{prefix}{n}") for n in range(10)]
    with Burst(devices, 400, pause=0.002) as burst:
        wait_until(lambda: counts(iot_stack, prefix)[0] >= 500, 30, message="the burst never started landing")
        iot_stack.processes.processes["ingest-1"].kill()
        killed_at = counts(iot_stack, prefix)[0]
    assert killed_at < burst.total, "the burst was over before the kill: make it longer"
    # the same session comes back: the broker sends it what it had not acknowledged
    iot_stack.processes.start_ingest("1")
    wait_until(
        lambda: counts(iot_stack, prefix)[0] == burst.total,
        60,
        message=f"readings lost: {counts(iot_stack, prefix)} of {burst.total}",
    )
    assert counts(iot_stack, prefix) == (burst.total,) * 3
    for device in devices:
        device.close()


def test_a_broker_restart_keeps_devices_and_readings_flowing(iot_stack: Stack) -> None:
    prefix = f"restart-{uuid.uuid4().hex[:4]}-"
    devices = [provision(iot_stack, f"{prefix}{n}") for n in range(3)]
    with Burst(devices, 100) as first:
        pass
    wait_until(lambda: counts(iot_stack, prefix)[0] == first.total, 20, message="first readings not stored")
    processes = iot_stack.processes
    processes.processes["mqtt"].stop()
    for device in devices:
        device.connected.clear()
    # the broker's clients are rebuilt from the database as it starts again
    processes.start_mqtt()
    for device in devices:
        assert device.wait_connected(20), f"{device.key} did not reconnect"
    # A reading published before the ingest subscribed again reaches no one (Mosquitto does
    # not restore shared subscriptions); its PUBACK says so and the device sends it again.
    second = Burst(devices, 100)
    second.start = first.start + timedelta(seconds=10)
    with second:
        pass
    wait_until(
        lambda: counts(iot_stack, prefix)[0] == first.total + second.total,
        30,
        message=f"readings after the restart not stored: {counts(iot_stack, prefix)}",
    )
    assert counts(iot_stack, prefix) == (first.total + second.total,) * 3
    for device in devices:
        device.close()


@pytest.fixture
def iot_stack_on_private_postgres(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Stack, PrivatePostgres]]:
    with PrivatePostgres() as postgres:
        monkeypatch.setenv("DATABASE_URL", postgres.url)
        with platform_stack(with_iot=True) as stack:
            yield stack, postgres


def test_readings_published_while_postgres_is_down_are_stored_when_it_returns(
    iot_stack_on_private_postgres: tuple[Stack, PrivatePostgres],
) -> None:
    stack, postgres = iot_stack_on_private_postgres
    prefix = f"pgdown-{uuid.uuid4().hex[:4]}-"
    devices = [provision(stack, f"{prefix}{n}") for n in range(3)]
    with Burst(devices, 300, pause=0.01) as burst:
        wait_until(lambda: counts(stack, prefix)[0] >= 100, 20, message="the burst never started landing")
        postgres.stop()
        # the outage lasts while the devices publish another 300 readings
        during = burst.sent + 300
        wait_until(
            lambda: burst.sent >= during or not burst.thread.is_alive(), 30, message="the burst stalled"
        )
        postgres.start()
    wait_until(
        lambda: counts(stack, prefix)[0] == burst.total,
        60,
        message=f"readings lost in the outage: {counts(stack, prefix)} of {burst.total}",
    )
    assert counts(stack, prefix) == (burst.total,) * 3
    assert stack.processes.processes["ingest-1"].alive
    for device in devices:
        device.close()
