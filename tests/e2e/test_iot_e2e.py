"""IoT end to end: the platform as make run starts it (web, workers, beat, its own Mosquitto
from ``manage.py mqtt_broker``, ``manage.py mqtt_ingest``), devices provisioned through the
API and simulated with paho-mqtt using their own credentials."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from harness.processes import wait_until
from tests.e2e.conftest import Stack, platform_stack
from tests.iot.device_client import SimulatedDevice

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e-iot")]


@pytest.fixture(scope="module")
def iot_stack() -> Iterator[Stack]:
    with platform_stack(with_iot=True) as running:
        yield running


def provision(stack: Stack, key: str, **more: Any) -> dict[str, Any]:
    response = stack.api.post("/api/v1/iot/devices/", json={"key": key, "kind": "thermo", **more})
    assert response.status_code == 201, response.text
    return dict(response.json()["mqtt"])


def connect(mqtt: dict[str, Any], **more: Any) -> SimulatedDevice:
    device = SimulatedDevice(mqtt["host"], mqtt["port"], mqtt["username"], mqtt["password"], **more)
    assert device.wait_connected(), f"{mqtt['username']} could not connect"
    return device


def stored(stack: Stack, key: str) -> list[tuple[str, datetime, float]]:
    with stack.db() as db:
        rows = db.execute(
            "SELECT metric, ts, value FROM iot_reading r JOIN iot_device d ON d.id = r.device_id"
            " WHERE d.key = %s ORDER BY ts, metric",
            [key],
        ).fetchall()
    return [(m, ts, v) for m, ts, v in rows]


def key_for(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


def test_a_provisioned_device_publishes_and_its_readings_are_queryable(iot_stack: Stack) -> None:
    key = key_for("e2e-dev")
    device = connect(provision(iot_stack, key))
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=30)
    for n in range(10):
        device.telemetry({"temp": 20.0 + n}, ts=(start + timedelta(seconds=n)).isoformat())
    # one more, timed from publish to row
    published = time.monotonic()
    device.telemetry({"temp": 99.0}, ts=(start + timedelta(seconds=20)).isoformat())
    wait_until(lambda: len(stored(iot_stack, key)) == 11, 5, interval=0.02, message="readings never stored")
    assert time.monotonic() - published < 1.0
    response = iot_stack.api.get(
        f"/api/v1/iot/devices/{key}/readings/",
        params={
            "metric": "temp",
            "from": start.isoformat(),
            "to": (start + timedelta(minutes=1)).isoformat(),
        },
    )
    assert response.status_code == 200, response.text
    assert [p["value"] for p in response.json()["points"]] == [20.0 + n for n in range(10)] + [99.0]
    body = iot_stack.api.get(f"/api/v1/iot/devices/{key}/").json()
    assert body["status"] == "online" and body["latest"]["temp"]["value"] == 99.0
    device.close()


def test_a_device_cannot_publish_for_another_nor_connect_with_a_wrong_password(iot_stack: Stack) -> None:
    mine, theirs = key_for("e2e-mine"), key_for("e2e-theirs")
    my_credentials = provision(iot_stack, mine)
    their_credentials = provision(iot_stack, theirs)
    device = connect(my_credentials)
    device.client.publish(f"devices/{theirs}/telemetry", json.dumps({"metrics": {"t": 1}}), qos=1)
    device.telemetry({"t": 2.0})
    wait_until(lambda: stored(iot_stack, mine), 5, message="own reading never stored")
    assert stored(iot_stack, theirs) == []
    wrong = SimulatedDevice(
        their_credentials["host"], their_credentials["port"], theirs, their_credentials["password"] + "x"
    )
    assert not wrong.wait_connected()
    assert wrong.refused.is_set()
    wrong.close()
    device.close()


def test_an_alert_rule_fires_and_then_resolves_in_the_recipients_inbox(iot_stack: Stack) -> None:
    key = key_for("e2e-alert")
    device = connect(provision(iot_stack, key, name="Freezer 3"))
    recipient, token = iot_stack.create_recipient("oncall")
    type_key = f"e2e.iot-alert-{uuid.uuid4().hex[:6]}"
    iot_stack.create_type(
        type_key,
        templates={
            "inapp": {
                "title": "{{ data.rule_name }} on {{ data.device_name }}: {{ data.state }}",
                "body": "{{ data.metric }} = {{ data.value }}",
                "url": "/iot/",
            }
        },
    )
    rule = {
        "key": f"freezer-warm-{uuid.uuid4().hex[:6]}",
        "name": "Too warm",
        "devices": [key],
        "metric": "temp",
        "op": ">",
        "threshold": -10,
        "for_seconds": 2,
        "clear_threshold": -15,
        "notify": {"type": type_key, "recipients": [recipient]},
    }
    created = iot_stack.api.post("/api/v1/iot/rules/", json=rule)
    assert created.status_code == 201, created.text
    inbox = iot_stack.end_user(token)

    def titles() -> list[str]:
        response = inbox.get("/api/v1/inbox/")
        assert response.status_code == 200, response.text
        return [str(item["title"]) for item in response.json()["results"]]

    start = datetime.now(UTC) - timedelta(seconds=20)
    # a breach that does not last long enough opens nothing
    device.telemetry({"temp": -5.0}, ts=start.isoformat())
    device.telemetry({"temp": -20.0}, ts=(start + timedelta(seconds=1)).isoformat())
    # one that lasts two seconds opens the alert, once
    for n, value in enumerate([-8.0, -7.0, -6.0, -5.0]):
        device.telemetry({"temp": value}, ts=(start + timedelta(seconds=3 + n)).isoformat())
    wait_until(lambda: any("opened" in t for t in titles()), 20, message="the alert never reached the inbox")
    # back below the clear threshold: resolved
    device.telemetry({"temp": -12.0}, ts=(start + timedelta(seconds=8)).isoformat())  # not yet: hysteresis
    device.telemetry({"temp": -16.0}, ts=(start + timedelta(seconds=9)).isoformat())
    wait_until(lambda: any("resolved" in t for t in titles()), 20, message="never resolved in the inbox")
    assert sorted(titles()) == sorted(["Too warm on Freezer 3: opened", "Too warm on Freezer 3: resolved"])
    alerts = iot_stack.api.get("/api/v1/iot/alerts/", params={"device": key}).json()["results"]
    assert [a["status"] for a in alerts] == ["resolved"]
    device.close()


def test_a_command_reaches_the_device_and_its_acknowledgement_is_recorded(iot_stack: Stack) -> None:
    key = key_for("e2e-cmd")
    device = connect(provision(iot_stack, key))
    response = iot_stack.api.post(
        f"/api/v1/iot/devices/{key}/commands/", json={"name": "reboot", "params": {"delay": 5}}
    )
    assert response.status_code == 202, response.text
    command = response.json()
    assert command["status"] == "sent"
    arrived = json.loads(device.wait_for("commands"))
    assert arrived == {"id": command["id"], "name": "reboot", "params": {"delay": 5}}
    device.publish("commands/ack", {"id": command["id"], "ok": True, "result": {"uptime": 0}})

    def acked() -> dict[str, Any] | None:
        body = iot_stack.api.get(f"/api/v1/iot/devices/{key}/commands/{command['id']}/").json()
        return body if body["status"] == "acked" else None

    answer = wait_until(acked, 5, message="the acknowledgement was never recorded")
    assert answer["ok"] is True and answer["result"] == {"uptime": 0}
    device.close()


def test_a_device_that_drops_without_disconnecting_goes_offline(iot_stack: Stack) -> None:
    key = key_for("e2e-will")
    device = connect(provision(iot_stack, key))

    def status() -> str:
        return str(iot_stack.api.get(f"/api/v1/iot/devices/{key}/").json()["status"])

    wait_until(lambda: status() == "online", 5, message="never online")
    device.drop()
    wait_until(lambda: status() == "offline", 10, message="never offline after dropping")
