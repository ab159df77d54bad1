"""The platform's publishing connection to its broker: commands and firmware offers.

One connected client of the ``platform`` user per process, made on first use and made
again when it was lost, when the process forked (a Celery prefork child must not share
its parent's socket and network thread) or when the broker's settings changed (tests).
``publish`` returns once the broker answered the message's PUBACK, so a caller that got
no exception knows the broker holds the message; it raises ``BrokerUnavailable`` instead
of letting paho keep the message queued for a later connection: a command the platform
recorded as not sent must not reach the device behind its back.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from iot.services.broker import PLATFORM_USERNAME, BrokerSettings, BrokerUnavailable, broker_settings

# How many QoS 1 messages may wait for their PUBACK at once (paho's default is 20): a
# stage of a rollout offers to thousands of devices in one go.
MAX_INFLIGHT = 1000
CONNECT_TIMEOUT = 5.0


class Publisher:
    """A lazily connected platform client. Thread-safe: paho's ``publish`` is, and the
    connection is made under a lock; PUBACKs are awaited outside it."""

    def __init__(self, broker: BrokerSettings) -> None:
        self.broker = broker
        self._lock = threading.Lock()
        self._client: mqtt.Client | None = None
        self._pid = os.getpid()
        # mid -> the PUBACK's reason code, for the mids whose PUBACK refused the message.
        self._refused: dict[int, str] = {}

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        if reason is not None and reason.is_failure:
            self._refused[mid] = str(reason)

    def _connect(self) -> mqtt.Client:
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"platform-publisher-{uuid.uuid4().hex[:12]}",
            protocol=mqtt.MQTTv5,
        )
        client.username_pw_set(PLATFORM_USERNAME, self.broker.platform_password)
        client.max_inflight_messages_set(MAX_INFLIGHT)
        client.on_publish = self._on_publish
        connected = threading.Event()
        outcome: dict[str, Any] = {}

        def on_connect(c: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
            outcome["reason"] = reason
            connected.set()

        client.on_connect = on_connect
        try:
            client.connect(self.broker.host, self.broker.port, keepalive=30, clean_start=True)
        except OSError as error:
            raise BrokerUnavailable(
                f"the MQTT broker at {self.broker.host}:{self.broker.port}: {error}"
            ) from None
        client.loop_start()
        reason = outcome.get("reason") if connected.wait(CONNECT_TIMEOUT) else None
        if reason is None or reason.is_failure:
            client.loop_stop()
            client.disconnect()
            why = f"refused the platform ({reason})" if reason is not None else "did not answer in time"
            raise BrokerUnavailable(f"the MQTT broker at {self.broker.host}:{self.broker.port} {why}")
        return client

    def _connected(self) -> mqtt.Client:
        with self._lock:
            if self._pid != os.getpid():
                # Forked: the parent's network thread does not exist here; drop its client
                # without disconnecting the parent's session.
                self._client, self._pid = None, os.getpid()
            if self._client is None or not self._client.is_connected():
                self._close_locked()
                self._refused.clear()
                self._client = self._connect()
            return self._client

    def _close_locked(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            client.disconnect()
            client.loop_stop()

    def _discard(self, client: mqtt.Client) -> None:
        """Drop ``client`` if it is still the current one, and with it whatever paho keeps
        queued for it."""
        with self._lock:
            if self._client is client:
                self._close_locked()

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def publish_many(
        self, messages: Sequence[tuple[str, bytes]], *, qos: int = 1, timeout: float = 5.0
    ) -> list[str | None]:
        """Publish every ``(topic, payload)`` and wait for their PUBACKs together; returns,
        in order, None for each the broker took or the reason it was not. Raises
        ``BrokerUnavailable`` when there is no connection at all."""
        if not messages:
            return []
        client = self._connected()
        infos: list[mqtt.MQTTMessageInfo] = [
            client.publish(topic, payload, qos=qos) for topic, payload in messages
        ]
        deadline = time.monotonic() + timeout
        outcomes: list[str | None] = []
        lost = False
        for info in infos:
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_AGAIN):
                outcomes.append(f"publishing failed ({mqtt.error_string(info.rc)})")
                lost = True
                continue
            try:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as error:
                outcomes.append(str(error))
                lost = True
                continue
            if not info.is_published():
                outcomes.append("the MQTT broker did not acknowledge the message in time")
                lost = True
            elif (refused := self._refused.pop(info.mid, None)) is not None:
                outcomes.append(f"the MQTT broker refused the message ({refused})")
            else:
                outcomes.append(None)
        if lost:
            self._discard(client)
        return outcomes

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, timeout: float = 5.0) -> None:
        """Publish and wait for the PUBACK (QoS 1); ``BrokerUnavailable`` on any failure."""
        (outcome,) = self.publish_many([(topic, payload)], qos=qos, timeout=timeout)
        if outcome is not None:
            raise BrokerUnavailable(outcome)


_shared: Publisher | None = None
_shared_lock = threading.Lock()


def publisher() -> Publisher:
    """The process's publisher for the configured broker (settings MQTT_HOST/MQTT_PORT)."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared.broker != broker_settings():
            if _shared is not None:
                _shared.close()
            _shared = Publisher(broker_settings())
        return _shared


def publish(topic: str, payload: bytes, *, qos: int = 1, timeout: float = 5.0) -> None:
    """Publish on the process's connection, waiting for the broker's PUBACK; raises
    ``BrokerUnavailable`` when the broker is unreachable, too slow or refused it."""
    publisher().publish(topic, payload, qos=qos, timeout=timeout)


def publish_many(
    messages: Sequence[tuple[str, bytes]], *, qos: int = 1, timeout: float = 5.0
) -> list[str | None]:
    """``Publisher.publish_many`` on the process's connection."""
    return publisher().publish_many(messages, qos=qos, timeout=timeout)


def publisher_close() -> None:
    """Disconnect the process's publisher (tests, shutdown); the next publish reconnects."""
    global _shared
    with _shared_lock:
        if _shared is not None:
            _shared.close()
            _shared = None
