"""A private Mosquitto with the platform's config for the IoT tests (harness/mqtt.py): one
per test process, the settings pointed at it for each test that asks for ``broker``."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from harness.mqtt import PrivateBroker


@pytest.fixture(scope="session")
def _session_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    with PrivateBroker(tmp_path_factory.mktemp("mosquitto")) as broker:
        yield broker


@pytest.fixture
def broker(_session_broker: PrivateBroker, settings: Any) -> Iterator[PrivateBroker]:
    from iot.services.broker import dynamic_security

    if not (_session_broker.process and _session_broker.process.alive):
        _session_broker.start(rewrite=False)
    settings.MQTT_HOST = _session_broker.settings.host
    settings.MQTT_PORT = _session_broker.port
    yield _session_broker
    dynamic_security().close()


@pytest.fixture
def ingest(broker: PrivateBroker) -> Iterator[Any]:
    """The ingest loop (iot/services/ingest.py) on a thread of the test process, subscribed
    to the private broker under a session of its own; stopped (and its failure reported)
    when the test ends. tests/e2e runs it as its own process instead."""
    from django.db import connection

    from iot.services.ingest import Ingest

    running = Ingest(broker.settings, name=f"test-{uuid.uuid4().hex[:8]}", batch_seconds=0.05)
    ready = threading.Event()
    running.on_ready = ready.set
    failures: list[BaseException] = []

    def run() -> None:
        try:
            running.run()
        except BaseException as error:  # noqa: BLE001 - reported by the test
            failures.append(error)
        finally:
            connection.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(15), failures
    yield running
    running.stop()
    thread.join(10)
    assert not failures, failures
