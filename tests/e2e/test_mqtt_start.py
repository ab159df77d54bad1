"""Starting a server on a port picked as free when another process took it meanwhile: the
platform's broker and web server wait for their own listener, not for anything answering
there (project/processes/platform.py); the broker moves to another free port when allowed."""

from __future__ import annotations

import http.server
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from django.conf import settings

from harness.processes import LOCALHOST, PlatformProcesses, TemporaryDatabase, free_port
from iot.services.broker import PLATFORM_USERNAME, broker_settings
from project.processes.platform import PortInUse

pytestmark = [pytest.mark.e2e]

SETTINGS_ENV = {"DJANGO_SETTINGS_MODULE": "project.settings"}


@pytest.fixture(scope="module")
def database() -> Iterator[TemporaryDatabase]:
    # The broker's clients come from the iot tables alone (iot/management/commands/mqtt_broker.py).
    with TemporaryDatabase(prefix="tmp_mqtt_start", migrate=False, env=SETTINGS_ENV) as created:
        created.run_manage("migrate", "iot", "--noinput")
        yield created


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port picked as free and then taken by someone else, who accepts connections."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        other.bind((LOCALHOST, free_port()))
        other.listen()
        yield other.getsockname()[1]


@pytest.fixture
def broker_on_taken_port(
    database: TemporaryDatabase, taken_port: int, tmp_path: Path
) -> Iterator[PlatformProcesses]:
    processes = PlatformProcesses(
        {
            **SETTINGS_ENV,
            "DATABASE_URL": database.url,
            # The broker's passwords derive from it (iot/services/broker.py): the test logs in.
            "SECRET_KEY": settings.SECRET_KEY,
            "MQTT_PORT": str(taken_port),
            "MQTT_DIR": str(tmp_path / "mqtt"),
        },
        workers=(),
        log_dir=tmp_path / "logs",
    )
    try:
        yield processes
    finally:
        processes.stop_all()


def platform_login(port: int) -> bool:
    """Log in to the broker on ``port`` as the platform: only ours knows its password."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
    )
    client.username_pw_set(PLATFORM_USERNAME, broker_settings().platform_password)
    answered = threading.Event()
    accepted: list[bool] = []

    def on_connect(
        client: mqtt.Client, userdata: object, flags: object, reason: object, props: object
    ) -> None:
        accepted.append(not getattr(reason, "is_failure", True))
        answered.set()

    client.on_connect = on_connect
    client.connect(LOCALHOST, port, keepalive=10)
    client.loop_start()
    try:
        assert answered.wait(10), f"no CONNACK from port {port}"
    finally:
        client.disconnect()
        client.loop_stop()
    return accepted == [True]


def test_it_moves_a_broker_whose_free_port_was_taken_to_another_and_keeps_it_on_restart(
    broker_on_taken_port: PlatformProcesses, taken_port: int
) -> None:
    processes = broker_on_taken_port

    processes.start_mqtt(pick_port=free_port)

    moved = processes.mqtt_address[1]
    assert moved != taken_port
    assert processes.env["MQTT_PORT"] == str(moved)
    assert "address already in use" in processes.processes["mqtt"].log_text(this_run_only=False).lower()
    assert platform_login(moved)
    # a restart (the broker fault test) comes back on the port it moved to
    processes.processes["mqtt"].stop()
    processes.start_mqtt()
    assert processes.mqtt_address[1] == moved
    assert platform_login(moved)


def test_it_refuses_a_taken_port_it_may_not_move_from(
    broker_on_taken_port: PlatformProcesses, taken_port: int
) -> None:
    with pytest.raises(PortInUse, match=f"port {taken_port}"):
        broker_on_taken_port.start_mqtt()

    assert broker_on_taken_port.env["MQTT_PORT"] == str(taken_port)


class _Healthy(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_it_does_not_take_another_web_server_on_its_port_for_its_own(tmp_path: Path) -> None:
    with http.server.ThreadingHTTPServer((LOCALHOST, free_port()), _Healthy) as other:
        thread = threading.Thread(target=other.serve_forever, daemon=True)
        thread.start()
        port = other.server_address[1]
        processes = PlatformProcesses(SETTINGS_ENV, port=port, workers=(), log_dir=tmp_path)
        try:
            with pytest.raises(PortInUse, match=f"port {port}"):
                processes.start_web()
        finally:
            processes.stop_all()
            other.shutdown()
