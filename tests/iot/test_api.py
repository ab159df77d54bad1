"""The devices, readings and quarantine API (iot/api.py) with a private broker behind it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from rest_framework.test import APIClient

from harness.mqtt import PrivateBroker
from iot.models import Device
from iot.services.partitions import partitions_ensure
from iot.services.quarantine import quarantine_add
from iot.services.storage import Row, readings_store
from tests.iot.device_client import SimulatedDevice

pytestmark = pytest.mark.django_db


def provision(client: APIClient, key: str, **more: Any) -> dict[str, Any]:
    response = client.post("/api/v1/iot/devices/", {"key": key, "kind": "thermo", **more}, format="json")
    assert response.status_code == 201, response.content
    return dict(response.json())


def test_provisioning_answers_the_credentials_once_and_they_connect(
    service_client: APIClient, broker: PrivateBroker
) -> None:
    body = provision(service_client, "api-one", name="Boiler room")
    mqtt = body["mqtt"]
    assert mqtt["username"] == "api-one" and mqtt["client_id"] == "api-one"
    assert mqtt["port"] == broker.port and len(mqtt["password"]) >= 24
    assert mqtt["telemetry_topic"] == "devices/api-one/telemetry"
    device = SimulatedDevice(mqtt["host"], mqtt["port"], mqtt["username"], mqtt["password"])
    assert device.wait_connected()
    device.close()
    again = service_client.get("/api/v1/iot/devices/api-one/")
    assert again.status_code == 200
    assert "mqtt" not in again.json() and mqtt["password"] not in again.content.decode()
    assert again.json()["name"] == "Boiler room"


def test_bad_devices_are_refused_naming_the_field(service_client: APIClient, broker: PrivateBroker) -> None:
    refused = service_client.post(
        "/api/v1/iot/devices/", {"key": "No Spaces", "kind": "x", "colour": 1}, format="json"
    )
    assert refused.status_code == 400
    assert set(refused.json()["errors"]) == {"colour"}
    refused = service_client.post("/api/v1/iot/devices/", {"key": "No Spaces", "kind": ""}, format="json")
    assert refused.status_code == 400 and set(refused.json()["errors"]) >= {"key", "kind"}
    provision(service_client, "api-taken")
    taken = service_client.post("/api/v1/iot/devices/", {"key": "api-taken", "kind": "thermo"}, format="json")
    assert taken.status_code == 400 and "exists" in taken.json()["errors"]["key"][0]
    assert Device.objects.count() == 1


def test_revoking_through_the_api_disconnects_and_lists_it_as_revoked(
    service_client: APIClient, broker: PrivateBroker
) -> None:
    mqtt = provision(service_client, "api-revoked")["mqtt"]
    device = SimulatedDevice(mqtt["host"], mqtt["port"], mqtt["username"], mqtt["password"])
    assert device.wait_connected()
    response = service_client.delete("/api/v1/iot/devices/api-revoked/")
    assert response.status_code == 200 and response.json()["status"] == "revoked"
    wait = SimulatedDevice(
        mqtt["host"], mqtt["port"], mqtt["username"], mqtt["password"], client_id="api-revoked"
    )
    assert wait.refused.wait(5)
    listed = service_client.get("/api/v1/iot/devices/").json()["results"]
    assert [d["key"] for d in listed] == []
    listed = service_client.get("/api/v1/iot/devices/?revoked=true").json()["results"]
    assert [d["key"] for d in listed] == ["api-revoked"]
    device.close()
    wait.close()


def test_rotated_credentials_are_answered_once(service_client: APIClient, broker: PrivateBroker) -> None:
    first = provision(service_client, "api-rotate")["mqtt"]["password"]
    second = service_client.post("/api/v1/iot/devices/api-rotate/credentials/").json()["mqtt"]["password"]
    assert first != second


def test_readings_come_raw_or_rolled_up(service_client: APIClient, broker: PrivateBroker) -> None:
    provision(service_client, "api-series")
    device = Device.objects.get(key="api-series")
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    partitions_ensure(now)
    readings_store(
        [Row(device.id, "temp", now - timedelta(seconds=s), float(s), now) for s in range(0, 180, 10)],
        now=now,
    )
    start = (now - timedelta(minutes=5)).isoformat()
    end = (now + timedelta(minutes=1)).isoformat()
    raw = service_client.get(
        "/api/v1/iot/devices/api-series/readings/", {"metric": "temp", "from": start, "to": end}
    )
    assert raw.status_code == 200, raw.content
    assert raw.json()["bucket"] == "raw" and len(raw.json()["points"]) == 18
    minutes = service_client.get(
        "/api/v1/iot/devices/api-series/readings/",
        {"metric": "temp", "from": start, "to": end, "bucket": "1m"},
    ).json()
    assert [p["count"] for p in minutes["points"]] == [5, 6, 6, 1]
    assert minutes["points"][-1]["value"] == 0.0
    wide = service_client.get(
        "/api/v1/iot/devices/api-series/readings/",
        {"metric": "temp", "from": (now - timedelta(days=30)).isoformat(), "to": end},
    ).json()
    assert wide["bucket"] == "1h" and sum(p["count"] for p in wide["points"]) == 18


@pytest.mark.parametrize(
    ("query", "field"),
    [
        pytest.param({}, "metric", id="no-metric"),
        pytest.param({"metric": "t", "from": "yesterday"}, "from", id="bad-from"),
        pytest.param({"metric": "t", "to": "2026-12-01T10:00:00"}, "to", id="naive-to"),
        pytest.param({"metric": "t", "bucket": "5m"}, "bucket", id="bad-bucket"),
        pytest.param(
            {"metric": "t", "from": "2026-12-01T10:00:00Z", "to": "2026-12-01T09:00:00Z"},
            "from",
            id="backwards",
        ),
    ],
)
def test_a_bad_readings_query_names_the_parameter(
    service_client: APIClient, broker: PrivateBroker, query: dict[str, str], field: str
) -> None:
    provision(service_client, "api-bad-query")
    response = service_client.get("/api/v1/iot/devices/api-bad-query/readings/", query)
    assert response.status_code == 400 and field in response.json()["errors"]


def test_the_quarantine_shows_what_was_refused(service_client: APIClient, broker: PrivateBroker) -> None:
    provision(service_client, "api-quarantine")
    device = Device.objects.get(key="api-quarantine")
    quarantine_add(device.id, "devices/api-quarantine/telemetry", b"\xff\x00", "payload: not JSON")
    quarantine_add(device.id, "devices/api-quarantine/telemetry", b'{"metrics": 1}', "metrics: an object")
    results = service_client.get("/api/v1/iot/devices/api-quarantine/quarantine/").json()["results"]
    assert [(r["payload_encoding"], r["error"][:8]) for r in results] == [
        ("utf-8", "metrics:"),
        ("base64", "payload:"),
    ]
    assert service_client.get("/api/v1/iot/devices/api-quarantine/").json()["malformed_count"] == 2


def test_unknown_devices_are_not_found_and_services_only(
    service_client: APIClient, broker: PrivateBroker
) -> None:
    assert service_client.get("/api/v1/iot/devices/nobody/").status_code == 404
    assert service_client.get("/api/v1/iot/devices/Not_A_Key/").status_code == 404
    assert APIClient().get("/api/v1/iot/devices/").status_code == 401


def test_a_broker_that_is_down_is_a_503_and_nothing_is_stored(
    service_client: APIClient, broker: PrivateBroker, settings: Any
) -> None:
    from harness.processes import free_port

    settings.MQTT_PORT = free_port()
    response = service_client.post(
        "/api/v1/iot/devices/", {"key": "api-nobroker", "kind": "thermo"}, format="json"
    )
    assert response.status_code == 503 and "broker" in response.json()["errors"]
    assert not Device.objects.filter(key="api-nobroker").exists()


def test_a_bad_device_filter_names_the_parameter(service_client: APIClient) -> None:
    for query, field in [
        ("kind=" + "x" * 65, "kind"),
        ("kind=a&kind=b", "kind"),
        ("revoked=maybe", "revoked"),
    ]:
        response = service_client.get(f"/api/v1/iot/devices/?{query}")
        assert response.status_code == 400 and field in response.json()["errors"], query
