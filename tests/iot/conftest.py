"""A private Mosquitto with the platform's config for the IoT tests (harness/mqtt.py): one
per test process, the settings pointed at it for each test that asks for ``broker``."""

from __future__ import annotations

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
