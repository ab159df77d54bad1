"""The /iot/ page for staff (iot/views.py), its JSON endpoints, its live socket
(iot/consumers.py, over real Redis) and the chart bundle it loads being built from the
sources in the repository."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client

from iot.consumers import SOCKET_QUEUE_MAX, WATCH_MAX, IotLiveConsumer
from iot.models import Alert, Device, Rule
from iot.services.live import live_publish
from realtime.auth import CLOSE_FORBIDDEN_ORIGIN, CLOSE_UNAUTHORIZED

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "iot/static/iot/vendor/iot.js"
# A day and a month of their own for the rows these tests insert (rolled back with the test).
DAY = datetime(2024, 3, 5, tzinfo=UTC)
FRAME_TIMEOUT = 3


def _client(*, staff: bool) -> Client:
    user = get_user_model().objects.create_user(
        username=f"u-{uuid.uuid4().hex[:12]}", password="x" * 12, is_staff=staff
    )
    client = Client()
    client.force_login(user)
    return client


def _device(key: str | None = None, **fields: Any) -> Device:
    return Device.objects.create(
        key=key or f"dev-{uuid.uuid4().hex[:8]}",
        kind=fields.pop("kind", "thermo"),
        mqtt_password_hash="h",
        mqtt_salt="s",
        **fields,
    )


def _partitions() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE IF NOT EXISTS iot_reading_test_20240305 PARTITION OF iot_reading"
            " FOR VALUES FROM ('2024-03-05 00:00+00') TO ('2024-03-06 00:00+00')"
        )
        cursor.execute(
            "CREATE TABLE IF NOT EXISTS iot_rollup_minute_test_202403 PARTITION OF iot_rollup_minute"
            " FOR VALUES FROM ('2024-03-01 00:00+00') TO ('2024-04-01 00:00+00')"
        )


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


# --- the page -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_it_shows_staff_the_devices_and_the_selected_devices_charts() -> None:
    client = _client(staff=True)
    thermo = _device("thermo-1", name="Boiler room", latest={"temperature": {"ts": "x", "value": 21.5}})
    _device("pump-1", kind="pump")

    response = client.get("/iot/?device=thermo-1")

    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-key="thermo-1"' in html and 'data-key="pump-1"' in html
    assert f'data-series-url="/iot/devices/{thermo.key}/series/"' in html
    assert 'data-metrics="temperature"' in html
    assert '<figure class="chart" data-metric="temperature"' in html
    assert "iot/devices.js" in html and "iot/vendor/uPlot.min.css" in html
    assert 'data-watch="thermo-1,pump-1"' in html


@pytest.mark.django_db
def test_it_filters_the_devices_by_kind() -> None:
    client = _client(staff=True)
    _device("thermo-1")
    _device("pump-1", kind="pump")

    html = client.get("/iot/?kind=pump").content.decode()

    assert 'data-key="pump-1"' in html
    assert 'data-key="thermo-1"' not in html
    assert '<option value="pump" selected>' in html


@pytest.mark.django_db
def test_it_says_how_to_provision_a_device_when_there_is_none() -> None:
    html = _client(staff=True).get("/iot/").content.decode()

    assert "No devices yet" in html
    assert "POST /api/v1/iot/devices/" in html


@pytest.mark.django_db
def test_it_refuses_the_page_to_a_user_who_is_not_staff() -> None:
    response = _client(staff=False).get("/iot/")

    assert response.status_code == 403
    assert "Staff only" in response.content.decode()


@pytest.mark.django_db
def test_it_sends_a_visitor_to_the_login_form(client: Client) -> None:
    response = client.get("/iot/")

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=/iot/")


@pytest.mark.django_db
def test_the_json_endpoints_are_for_staff_only(client: Client) -> None:
    _device("thermo-1")

    assert client.get("/iot/alerts/").status_code == 401
    assert _client(staff=False).get("/iot/devices/thermo-1/series/?metric=t").status_code == 403


# --- history ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_series_endpoint_answers_raw_points_for_a_short_range() -> None:
    _partitions()
    device = _device()
    start = DAY + timedelta(hours=10)
    with connection.cursor() as cursor:
        for n in range(5):
            cursor.execute(
                "INSERT INTO iot_reading (device_id, metric, ts, value, received_at) VALUES (%s, %s, %s, %s, %s)",
                [device.id, "temperature", start + timedelta(seconds=10 * n), 20.0 + n, start],
            )

    response = _client(staff=True).get(
        f"/iot/devices/{device.key}/series/",
        {"metric": "temperature", "from": start.isoformat(), "to": str(_ms(start + timedelta(minutes=15)))},
    )

    assert response.status_code == 200
    body = response.json()
    assert body["bucket"] == "raw"
    assert body["asked"] == "auto"
    assert body["from"] == _ms(start)
    assert body["points"] == [
        [_ms(start + timedelta(seconds=10 * n)), 20.0 + n, 20.0 + n, 20.0 + n, 1] for n in range(5)
    ]
    assert body["truncated"] is False


@pytest.mark.django_db
def test_the_series_endpoint_answers_minute_rollups_with_min_and_max_for_a_day() -> None:
    _partitions()
    device = _device()
    minute = DAY + timedelta(hours=3)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO iot_rollup_minute (device_id, metric, bucket, count, sum, min, max)"
            " VALUES (%s, 'temperature', %s, 4, 84.0, 19.0, 23.5), (%s, 'temperature', %s, 2, 50.0, 24.0, 26.0)",
            [device.id, minute, device.id, minute + timedelta(minutes=1)],
        )

    response = _client(staff=True).get(
        f"/iot/devices/{device.key}/series/",
        {"metric": "temperature", "from": DAY.isoformat(), "to": (DAY + timedelta(hours=24)).isoformat()},
    )

    body = response.json()
    assert body["bucket"] == "1m"
    assert body["points"] == [
        [_ms(minute), 21.0, 19.0, 23.5, 4],
        [_ms(minute + timedelta(minutes=1)), 25.0, 24.0, 26.0, 2],
    ]


@pytest.mark.django_db
def test_the_series_endpoint_reads_the_bucket_it_is_asked_for() -> None:
    device = _device()

    body = (
        _client(staff=True)
        .get(f"/iot/devices/{device.key}/series/", {"metric": "temperature", "bucket": "1h"})
        .json()
    )

    assert (body["bucket"], body["asked"], body["points"]) == ("1h", "1h", [])
    assert body["to"] - body["from"] == 3_600_000


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "metric"),
        ({"metric": "a/b"}, "metric"),
        ({"metric": "t", "from": "yesterday"}, "from"),
        ({"metric": "t", "to": "2024-03-05T10:00:00"}, "to"),
        ({"metric": "t", "from": "2024-03-05T10:00:00Z", "to": "2024-03-05T09:00:00Z"}, "from"),
        ({"metric": "t", "bucket": "5m"}, "bucket"),
    ],
    ids=["no metric", "bad metric", "bad from", "naive to", "from after to", "bad bucket"],
)
def test_the_series_endpoint_names_a_bad_parameter(params: dict[str, str], field: str) -> None:
    device = _device()

    response = _client(staff=True).get(f"/iot/devices/{device.key}/series/", params)

    assert response.status_code == 400
    assert list(response.json()["errors"]) == [field]


@pytest.mark.django_db
def test_the_series_endpoint_answers_404_for_an_unknown_device() -> None:
    response = _client(staff=True).get("/iot/devices/nope/series/?metric=t")

    assert response.status_code == 404
    assert response.json() == {"errors": {"device": ["No device with the key 'nope'."]}}


# --- alerts -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_alerts_endpoint_lists_the_open_alerts() -> None:
    device = _device("thermo-1")
    rule = Rule.objects.create(key="too-hot", metric="temperature", op=">", threshold=30, notify={})
    alert = Alert.objects.create(rule=rule, device=device, value=31.5)
    Alert.objects.create(rule=Rule.objects.create(key="old", notify={}), device=device, status="resolved")

    body = _client(staff=True).get("/iot/alerts/").json()

    assert body == {
        "alerts": [
            {
                "id": alert.id,
                "rule": "too-hot",
                "severity": "warning",
                "device": "thermo-1",
                "reason": "threshold",
                "value": 31.5,
                "peak": None,
                "since": alert.opened_at.isoformat(),
            }
        ]
    }


# --- commands -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_command_form_with_bad_json_params_is_refused_naming_params() -> None:
    device = _device()

    response = _client(staff=True).post(
        f"/iot/devices/{device.key}/commands/", {"name": "reboot", "params": "{"}
    )

    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["params"]


@pytest.mark.django_db(transaction=True)
def test_a_command_is_sent_to_the_broker_and_its_status_can_be_read(broker: Any) -> None:
    device = _device()
    client = _client(staff=True)

    response = client.post(
        f"/iot/devices/{device.key}/commands/",
        json.dumps({"name": "reboot", "params": {"delay": 5}}),
        content_type="application/json",
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["name"], body["params"], body["status"], body["final"]) == (
        "reboot",
        {"delay": 5},
        "sent",
        False,
    )
    detail = client.get(f"/iot/devices/{device.key}/commands/{body['id']}/")
    assert detail.status_code == 200
    assert (detail.json()["id"], detail.json()["status"]) == (body["id"], "sent")
    assert client.get(f"/iot/devices/other/commands/{body['id']}/").status_code == 404


@pytest.mark.django_db
def test_a_command_the_service_refuses_answers_its_errors_by_field() -> None:
    device = _device()

    response = _client(staff=True).post(
        f"/iot/devices/{device.key}/commands/",
        json.dumps({"name": "9 lives", "params": [1]}),
        content_type="application/json",
    )

    assert response.status_code == 400
    errors = response.json()["errors"]
    assert sorted(errors) == ["name", "params"]
    assert errors["params"] == ["must be a JSON object, got list"]
    assert not device.commands.exists()


# --- the bundle ---------------------------------------------------------------------------


def _banner() -> str:
    head = BUNDLE.read_text(encoding="utf-8")[:2000]
    match = re.match(r"/\*(.*?)\*/", head, re.S)
    assert match, "the IoT bundle has no banner (assets/build.mjs writes one)"
    return match.group(1)


def test_the_chart_bundle_was_built_from_the_current_entry_build_script_and_lockfile() -> None:
    sources = b"".join(
        (REPO / name).read_bytes()
        for name in ("assets/iot-entry.js", "assets/build.mjs", "package-lock.json")
    )

    banner = _banner()

    assert f"sources-sha256: {hashlib.sha256(sources).hexdigest()}" in banner, (
        "iot/static/iot/vendor/iot.js is stale: run `make assets` and commit it"
    )


def test_the_chart_bundle_names_the_pinned_uplot_it_holds() -> None:
    pin = json.loads((REPO / "package.json").read_text())["devDependencies"]["uplot"]

    assert re.fullmatch(r"\d+\.\d+\.\d+", pin), f"uplot is not pinned exactly: {pin}"
    assert f"uplot {pin}" in _banner()
    assert f"uPlot {pin}" in (REPO / "iot/static/iot/vendor/uPlot.min.css").read_text()[:200]


# --- the socket ---------------------------------------------------------------------------


class _User:
    is_authenticated = True

    def __init__(self, *, staff: bool = True) -> None:
        self.is_staff = staff


def _socket(*, user: Any = None, origin: str | None = "http://testserver") -> WebsocketCommunicator:
    headers = [(b"origin", origin.encode())] if origin else []
    communicator = WebsocketCommunicator(IotLiveConsumer.as_asgi(), "/ws/iot/", headers=headers)
    communicator.scope["user"] = user
    return communicator


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    async_to_sync(scenario)()


async def _watching(socket: WebsocketCommunicator, devices: list[str]) -> None:
    await socket.send_json_to({"type": "watch", "devices": devices})
    assert await socket.receive_json_from(FRAME_TIMEOUT) == {"type": "watching", "devices": devices}


@pytest.mark.django_db(transaction=True)
def test_a_watched_devices_readings_arrive_and_an_unwatched_ones_do_not(settings: Any) -> None:
    settings.SOCKET_ALLOWED_ORIGINS = ["http://testserver"]

    async def scenario() -> None:
        socket = _socket(user=_User())
        connected, _ = await socket.connect()
        assert connected
        await _watching(socket, ["thermo-1"])

        live_publish(
            {
                "readings": {
                    "pump-1": {"pressure": [[1_700_000_000_000, 2.5]]},
                    "thermo-1": {"temperature": [[1_700_000_000_000, 21.5], [1_700_000_001_000, 21.6]]},
                },
                "status": {"pump-1": "offline"},
                "alerts": [7],
            }
        )

        frames = [await socket.receive_json_from(FRAME_TIMEOUT) for _ in range(3)]
        assert frames == [
            {
                "type": "readings",
                "device": "thermo-1",
                "metrics": {"temperature": [[1_700_000_000_000, 21.5], [1_700_000_001_000, 21.6]]},
            },
            {"type": "status", "device": "pump-1", "status": "offline"},
            {"type": "alerts", "ids": [7]},
        ]
        live_publish({"readings": {"pump-1": {"pressure": [[1_700_000_002_000, 2.6]]}}})
        assert await socket.receive_nothing(0.3)
        await socket.disconnect()

    run(scenario)


@pytest.mark.django_db(transaction=True)
def test_two_sockets_of_a_process_share_one_subscription(settings: Any) -> None:
    settings.SOCKET_ALLOWED_ORIGINS = ["http://testserver"]
    from iot.services.live import live_channel
    from realtime.redis_client import redis_sync

    async def scenario() -> None:
        sockets = [_socket(user=_User()) for _ in range(2)]
        for socket in sockets:
            assert (await socket.connect())[0]
            await _watching(socket, ["thermo-1"])

        assert redis_sync().pubsub_numsub(live_channel()) == [(live_channel().encode(), 1)]
        live_publish({"readings": {"thermo-1": {"t": [[1, 2.0]]}}})
        for socket in sockets:
            assert (await socket.receive_json_from(FRAME_TIMEOUT))["device"] == "thermo-1"
            await socket.disconnect()

    run(scenario)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("frame", "field", "message"),
    [
        ({"type": "watch", "devices": "thermo-1"}, "devices", "Expected a list of device keys, got str."),
        ({"type": "watch"}, "devices", "Expected a list of device keys, got NoneType."),
        ({"type": "watch", "devices": ["ok", 5]}, "devices", "Item 1 is not a device key: 5."),
        ({"type": "watch", "devices": ["Bad/Key"]}, "devices", "Item 0 is not a device key: 'Bad/Key'."),
        (
            {"type": "watch", "devices": [f"d{n}" for n in range(WATCH_MAX + 1)]},
            "devices",
            f"Watch at most {WATCH_MAX} devices at once, got {WATCH_MAX + 1}.",
        ),
        ({"type": "dance"}, "type", "Unknown frame type 'dance'; expected 'watch' or 'ping'."),
        ([1], "frame", "Expected a JSON object, got list."),
    ],
    ids=["string", "missing", "not a string", "not a key", "too many", "unknown type", "not an object"],
)
def test_a_bad_frame_gets_an_error_naming_the_field(
    frame: Any, field: str, message: str, settings: Any
) -> None:
    settings.SOCKET_ALLOWED_ORIGINS = ["http://testserver"]

    async def scenario() -> None:
        socket = _socket(user=_User())
        assert (await socket.connect())[0]

        await socket.send_json_to(frame)

        assert await socket.receive_json_from(FRAME_TIMEOUT) == {
            "type": "error",
            "field": field,
            "message": message,
        }
        await socket.send_to(text_data="not json")
        assert (await socket.receive_json_from(FRAME_TIMEOUT))["field"] == "frame"
        await socket.send_json_to({"type": "ping"})
        assert await socket.receive_json_from(FRAME_TIMEOUT) == {"type": "pong"}
        await socket.disconnect()

    run(scenario)


@pytest.mark.parametrize(
    ("user", "origin", "code"),
    [
        (None, "http://testserver", CLOSE_UNAUTHORIZED),
        (_User(staff=False), "http://testserver", 4403),
        (_User(), "https://evil.example", CLOSE_FORBIDDEN_ORIGIN),
        (_User(), None, CLOSE_FORBIDDEN_ORIGIN),
    ],
    ids=["visitor", "not staff", "foreign origin", "no origin"],
)
def test_it_refuses_sockets_that_are_not_staff_sessions_from_our_pages(
    user: Any, origin: str | None, code: int, settings: Any
) -> None:
    settings.SOCKET_ALLOWED_ORIGINS = ["http://testserver"]

    async def scenario() -> None:
        assert await _socket(user=user, origin=origin).connect() == (False, code)

    run(scenario)


def test_a_slow_socket_loses_its_oldest_frames_and_is_told_to_resync() -> None:
    consumer = IotLiveConsumer()
    consumer.outbox = collections.deque(maxlen=SOCKET_QUEUE_MAX)
    consumer.waiting = asyncio.Event()
    consumer.watched = frozenset({"thermo-1"})

    for n in range(SOCKET_QUEUE_MAX + 10):
        consumer.offer({"readings": {"thermo-1": {"t": [[n, 1.0]]}}})

    assert len(consumer.outbox) == SOCKET_QUEUE_MAX
    assert consumer.dropped == 10
    assert consumer.outbox[0]["metrics"] == {"t": [[10, 1.0]]}
