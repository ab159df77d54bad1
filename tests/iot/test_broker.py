"""The broker enforces each device's credentials and topics (iot/services/broker.py,
iot/services/devices.py), against a private Mosquitto with the platform's config."""

from __future__ import annotations

import base64
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from harness.mqtt import PrivateBroker
from iot.models import Device, DeviceStatus
from iot.services.broker import DeviceCredential, PasswordHash, password_hash, password_matches
from iot.services.devices import device_credentials_rotate, device_provision, device_revoke
from notifications.services.validation import ValidationFailed
from project.processes.waiting import wait_until

pytestmark = pytest.mark.django_db


class Client:
    """A device as paho-mqtt sees it: connect, publish, subscribe, what arrived."""

    def __init__(self, broker: PrivateBroker, username: str, password: str, client_id: str) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(username, password)
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.reason: Any = None
        self.received: list[tuple[str, bytes]] = []
        self.granted: list[Any] = []
        self.subscribed = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda c, u, f, rc, p: self.disconnected.set()
        self.client.on_message = lambda c, u, m: self.received.append((m.topic, m.payload))
        self.client.on_subscribe = self._on_subscribe
        self.client.connect(broker.settings.host, broker.port)
        self.client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        self.reason = reason
        if reason.is_failure:
            self.disconnected.set()
        else:
            self.connected.set()

    def _on_subscribe(
        self, client: Any, userdata: Any, mid: int, codes: list[ReasonCode], props: Any
    ) -> None:
        self.granted = codes
        self.subscribed.set()

    def wait_connected(self) -> bool:
        """True once connected, False as soon as the broker refuses (or after 5 s)."""
        deadline = time.monotonic() + 5
        while not (self.connected.is_set() or self.disconnected.is_set()) and time.monotonic() < deadline:
            self.connected.wait(0.02)
        return self.connected.is_set()

    def subscribe(self, topic: str) -> ReasonCode:
        self.subscribed.clear()
        self.client.subscribe(topic, qos=1)
        assert self.subscribed.wait(5)
        return self.granted[0]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_the_broker_hash_is_the_plugins_pbkdf2_of_the_password() -> None:
    stored = password_hash("secretpw", salt=base64.b64decode("99mPJBkjbTVCn05q"))
    assert password_matches("secretpw", stored)
    assert not password_matches("secretpw!", stored)
    # what `mosquitto_ctrl dynsec init` wrote for this password and salt
    assert stored == PasswordHash(
        "GyLmXzB7iEO49QmxxYb4LH6D/q/u5UistBmNWB1pfZL0xwwZyaceEAjn3ioCK0TXWAKkPD2qfCsaijYEzc/ygg==",
        "99mPJBkjbTVCn05q",
        101,
    )


def test_a_provisioned_device_publishes_only_under_its_own_topics(broker: PrivateBroker) -> None:
    mine = device_provision(key="acl-one", kind="thermo")
    other = device_provision(key="acl-two", kind="thermo")
    assert password_matches(
        mine.password,
        PasswordHash(mine.device.mqtt_password_hash, mine.device.mqtt_salt, mine.device.mqtt_iterations),
    )
    assert mine.password not in str(Device.objects.filter(key="acl-one").values().get())

    watcher = Client(broker, other.device.key, other.password, other.device.key)
    assert watcher.wait_connected()
    assert not watcher.subscribe("devices/acl-two/#").is_failure
    # a device may not even subscribe elsewhere
    assert watcher.subscribe("devices/acl-one/#").is_failure
    assert watcher.subscribe("#").is_failure

    device = Client(broker, mine.device.key, mine.password, mine.device.key)
    assert device.wait_connected()
    device.client.publish("devices/acl-two/telemetry", b'{"metrics": {"t": 1}}', qos=1).wait_for_publish(5)
    device.client.publish("devices/acl-one/telemetry", b'{"metrics": {"t": 2}}', qos=1).wait_for_publish(5)
    other_self = Client(broker, other.device.key, other.password, other.device.key + "-x")
    # a client id other than the device's own is refused
    assert not other_self.wait_connected()
    other_self.close()
    # the watcher got nothing from acl-one's attempt on acl-two's topic
    device.client.publish("devices/acl-two/telemetry", b"again", qos=1).wait_for_publish(5)
    watcher.client.publish("devices/acl-two/telemetry", b"own", qos=1).wait_for_publish(5)
    # The broker had acknowledged the refused publishes before "own" was sent, so anything
    # it forwarded of them would have reached the watcher first.
    wait_until(lambda: any(p == b"own" for _, p in watcher.received), 5, message="own message never arrived")
    assert [payload for _, payload in watcher.received] == [b"own"]
    device.close()
    watcher.close()


def test_a_wrong_password_is_refused(broker: PrivateBroker) -> None:
    provisioned = device_provision(key="wrong-pw", kind="thermo")
    attempt = Client(broker, "wrong-pw", provisioned.password + "x", "wrong-pw")
    assert not attempt.wait_connected()
    assert attempt.reason is not None and attempt.reason.is_failure
    attempt.close()


def test_revoking_disconnects_the_device_at_once_and_keeps_it_out(broker: PrivateBroker) -> None:
    provisioned = device_provision(key="revoked-one", kind="thermo")
    device = Client(broker, "revoked-one", provisioned.password, "revoked-one")
    assert device.wait_connected()
    device_revoke(provisioned.device)
    assert device.disconnected.wait(5)
    device.close()
    again = Client(broker, "revoked-one", provisioned.password, "revoked-one")
    assert not again.wait_connected()
    again.close()
    assert Device.objects.get(key="revoked-one").status == DeviceStatus.REVOKED


def test_rotating_credentials_retires_the_old_password(broker: PrivateBroker) -> None:
    first = device_provision(key="rotating", kind="thermo")
    second = device_credentials_rotate(first.device)
    old = Client(broker, "rotating", first.password, "rotating")
    assert not old.wait_connected()
    old.close()
    new = Client(broker, "rotating", second.password, "rotating")
    assert new.wait_connected()
    new.close()


def test_a_broker_rebuilt_from_the_database_knows_its_devices(broker: PrivateBroker, tmp_path: Any) -> None:
    provisioned = device_provision(key="rebuilt", kind="thermo")
    device = provisioned.device
    other = PrivateBroker(tmp_path)
    credential = DeviceCredential(
        device.key, PasswordHash(device.mqtt_password_hash, device.mqtt_salt, device.mqtt_iterations)
    )
    other.start([credential])
    try:
        client = Client(other, "rebuilt", provisioned.password, "rebuilt")
        assert client.wait_connected()
        client.close()
    finally:
        other.stop()


def test_bad_device_fields_are_named_and_nothing_is_stored(broker: PrivateBroker) -> None:
    with pytest.raises(ValidationFailed) as failed:
        device_provision(key="Bad/Key", kind="", name=5)
    assert set(failed.value.errors) == {"key", "kind", "name"}
    device_provision(key="taken", kind="thermo")
    with pytest.raises(ValidationFailed) as again:
        device_provision(key="taken", kind="thermo")
    assert "exists" in again.value.errors["key"][0]
    assert not Device.objects.filter(key="Bad/Key").exists()
