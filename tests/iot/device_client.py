"""A simulated device for the tests: paho-mqtt with the device's own credentials, its last
will on ``devices/{key}/status``, commands and firmware offers collected as they come.

It keeps the device contract of docs/iot.md: a QoS 1 reading whose PUBACK says "no
matching subscribers" (MQTT v5 reason code 16) reached no ingest (in the moment after a
broker restart, before the ingest subscribed again) and is published again."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

NO_MATCHING_SUBSCRIBERS = 16
RESEND_AFTER_SECONDS = 0.2


class SimulatedDevice:
    def __init__(
        self, host: str, port: int, key: str, password: str, *, client_id: str | None = None
    ) -> None:
        self.key = key
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or key, protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set(key, password)
        self.client.will_set(f"devices/{key}/status", b"offline", qos=1)
        # Back within a second of a broker restart (paho's default backoff grows to 2 minutes).
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.connected = threading.Event()
        self.refused = threading.Event()
        self.received: list[tuple[str, bytes]] = []
        self.arrived = threading.Condition()
        # QoS 1 publishes not yet acknowledged, by message id, to publish again on reason 16
        self._unacked: dict[int, tuple[str, bytes | str, Properties | None]] = {}
        self.resent = 0
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.connect(host, port, keepalive=10)
        self.client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.refused.set()
            return
        client.publish(f"devices/{self.key}/status", b"online", qos=1)
        # What the platform sends it (not its own topics: a subscription matching its own
        # telemetry would make the broker answer "delivered" when no ingest took it).
        client.subscribe([(f"devices/{self.key}/{topic}", 1) for topic in ("commands", "firmware")])
        self.connected.set()

    def send(
        self, topic: str, payload: bytes | str, *, qos: int = 1, properties: Properties | None = None
    ) -> Any:
        """Publish, keeping a QoS 1 message until its PUBACK; returns paho's MessageInfo."""
        # paho runs on_publish holding this (reentrant) lock of its own: holding it here too,
        # the PUBACK's callback finds the message even when it comes before publish returns.
        with self.client._out_message_mutex:
            info = self.client.publish(topic, payload, qos=qos, properties=properties)
            if qos:
                self._unacked[info.mid] = (topic, payload, properties)
        return info

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        sent = self._unacked.pop(mid, None)  # on paho's thread, under the lock send() holds
        if sent is not None and getattr(reason, "value", 0) == NO_MATCHING_SUBSCRIBERS:
            self.resent += 1
            topic, payload, properties = sent
            timer = threading.Timer(
                RESEND_AFTER_SECONDS, lambda: self.send(topic, payload, properties=properties)
            )
            timer.daemon = True
            timer.start()

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self.arrived:
            self.received.append((message.topic, message.payload))
            self.arrived.notify_all()

    def wait_connected(self, timeout: float = 5.0) -> bool:
        """True once connected, False as soon as the broker refuses (or after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while not (self.connected.is_set() or self.refused.is_set()) and time.monotonic() < deadline:
            self.connected.wait(0.02)
        return self.connected.is_set()

    def publish(
        self, suffix: str, payload: bytes | str | dict[str, Any], *, qos: int = 1, cbor: bool = False
    ) -> None:
        body = json.dumps(payload).encode() if isinstance(payload, dict) else payload
        properties = None
        if cbor:
            properties = Properties(PacketTypes.PUBLISH)
            properties.ContentType = "application/cbor"
        info = self.send(f"devices/{self.key}/{suffix}", body, qos=qos, properties=properties)
        info.wait_for_publish(5)

    def telemetry(self, metrics: dict[str, float], *, ts: Any = None, qos: int = 1) -> None:
        body: dict[str, Any] = {"metrics": metrics}
        if ts is not None:
            body["ts"] = ts
        self.publish("telemetry", body, qos=qos)

    def wait_for(self, suffix: str, timeout: float = 5.0) -> bytes:
        topic = f"devices/{self.key}/{suffix}"
        with self.arrived:
            found = self.arrived.wait_for(lambda: any(t == topic for t, _ in self.received), timeout)
            assert found, f"nothing arrived on {topic} within {timeout} s"
            payload = next(p for t, p in self.received if t == topic)
            self.received = [(t, p) for t, p in self.received if t != topic or p is not payload]
            return payload

    def drop(self) -> None:
        """Vanish without a DISCONNECT (the broker publishes the last will)."""
        sock = self.client.socket()
        self.client.loop_stop()
        if sock is not None:
            sock.close()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
