"""The ingest's MQTT client (iot/services/ingest.py, ``_IngestClient``) against a private
broker: a PUBLISH without properties takes the short way to ``on_plain_publish``, one with
properties paho's own way to ``on_message``, and ``ack_many`` acknowledges a whole batch in
one write, so that the broker does not send those messages again."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from harness.mqtt import PrivateBroker
from iot.services.broker import PLATFORM_USERNAME
from iot.services.ingest import _IngestClient
from project.processes.waiting import wait_until


class Subscriber:
    """An ``_IngestClient`` with a persistent session on its own shared group."""

    def __init__(self, broker: PrivateBroker, name: str, group: str) -> None:
        self.plain: list[tuple[str, bytes, int, int]] = []
        self.full: list[mqtt.MQTTMessage] = []
        self.subscribed = threading.Event()
        self.client = _IngestClient(
            mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5, manual_ack=True
        )
        self.client.username_pw_set(PLATFORM_USERNAME, broker.settings.platform_password)
        self.client.on_plain_publish = lambda *args: self.plain.append(args)
        self.client.on_message = lambda client, userdata, message: self.full.append(message)
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.on_connect = lambda client, *args: client.subscribe(
            f"$share/{group}/devices/+/telemetry", qos=1
        )
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 600
        self.client.connect(broker.settings.host, broker.port, clean_start=False, properties=properties)
        self.client.loop_start()
        assert self.subscribed.wait(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def publisher(broker: PrivateBroker) -> Iterator[mqtt.Client]:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.username_pw_set(PLATFORM_USERNAME, broker.settings.platform_password)
    client.connect(broker.settings.host, broker.port)
    client.loop_start()
    yield client
    client.disconnect()
    client.loop_stop()


def test_a_publish_without_properties_takes_the_short_way_and_one_with_them_pahos(
    broker: PrivateBroker, publisher: mqtt.Client
) -> None:
    group = uuid.uuid4().hex[:8]
    subscriber = Subscriber(broker, f"client-{group}", group)
    cbor = Properties(PacketTypes.PUBLISH)
    cbor.ContentType = "application/cbor"
    publisher.publish("devices/dév-1/telemetry", b'{"metrics": {"t": 1}}', qos=1).wait_for_publish(5)
    publisher.publish("devices/dev-2/telemetry", b"\xa1", qos=1, properties=cbor).wait_for_publish(5)
    publisher.publish("devices/dev-3/telemetry", b"", qos=0).wait_for_publish(5)
    wait_until(lambda: len(subscriber.plain) + len(subscriber.full) == 3, 5, message="messages not received")
    subscriber.close()

    (first, third) = subscriber.plain
    assert first[:3] == ("devices/dév-1/telemetry", b'{"metrics": {"t": 1}}', 1) and first[3] > 0
    assert third == ("devices/dev-3/telemetry", b"", 0, 0)
    (with_properties,) = subscriber.full
    assert with_properties.topic == "devices/dev-2/telemetry" and with_properties.payload == b"\xa1"
    assert getattr(with_properties.properties, "ContentType", None) == "application/cbor"


def test_messages_acknowledged_together_are_not_sent_again_and_the_rest_are(
    broker: PrivateBroker, publisher: mqtt.Client
) -> None:
    group = uuid.uuid4().hex[:8]
    name = f"client-{group}"
    subscriber = Subscriber(broker, name, group)
    for n in range(10):
        publisher.publish(f"devices/dev-{n}/telemetry", str(n).encode(), qos=1).wait_for_publish(5)
    wait_until(lambda: len(subscriber.plain) == 10, 5, message="messages not received")
    acknowledged = subscriber.plain[:6]
    subscriber.client.ack_many([mid for *_, mid in acknowledged])
    # The broker reads a connection's packets in order, so its answer to a QoS 1 publish sent
    # after the PUBACKs means it has taken them. Without this, the reconnect below can take
    # the session over before the broker has read the old socket, which it then closes with
    # the PUBACKs unread: all ten would come again (at least once, as MQTT promises, but not
    # what this test is about).
    subscriber.client.publish(f"devices/sync-{group}/sync", b"", qos=1).wait_for_publish(5)
    subscriber.close()

    again = Subscriber(broker, name, group)
    wait_until(
        lambda: len(again.plain) >= 4,
        5,
        message="the unacknowledged messages were not sent again",
    )
    again.client.ack_many([mid for *_, mid in again.plain])
    again.close()
    # (a resent acknowledged message would come first: the broker resends in order)
    assert sorted(payload for _, payload, *_ in again.plain) == [b"6", b"7", b"8", b"9"]
