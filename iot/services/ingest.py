"""The MQTT ingest: what ``python manage.py mqtt_ingest`` runs.

It subscribes with MQTT v5 shared subscriptions (``$share/ingest/devices/+/...``), so the
broker spreads the devices' messages over however many ingest processes run, and gathers
what arrives into batches of ``IOT_BATCH_MAX`` messages or ``IOT_BATCH_SECONDS``, whichever
comes first. A batch is stored in one transaction (iot/services/storage.py) and only then
acknowledged to the broker (paho-mqtt's manual acknowledgements): a QoS 1 message the
process had not stored when it died, or while PostgreSQL was away, is sent again by the
broker (the session outlives the process and the broker's restarts), and a message sent
twice is stored once. QoS 0 readings are best effort by definition.

Its session is named by ``--name`` (``ingest-<name>``): a process that comes back under the
same name picks up what the broker kept for it.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as mqtt
from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, close_old_connections, connection
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from iot.models import Device
from iot.services.alerts import alerts_changed_take
from iot.services.broker import PLATFORM_USERNAME, BrokerSettings
from iot.services.live import live_publish
from iot.services.partitions import partitions_ensure, raw_oldest
from iot.services.payloads import PayloadError, telemetry_decode
from iot.services.quarantine import Malformed
from iot.services.storage import Row, readings_store, statuses_store

logger = logging.getLogger(__name__)

SHARE_GROUP = "ingest"
RECONNECT_MIN_SECONDS = 0.25
RECONNECT_MAX_SECONDS = 2.0
SUBSCRIPTIONS = (
    "devices/+/telemetry",
    "devices/+/telemetry/cbor",
    "devices/+/status",
    "devices/+/commands/ack",
    "devices/+/firmware/status",
)
# How long the broker keeps an ingest's session (and the QoS 1 messages waiting for it)
# after the process went away.
SESSION_EXPIRY_SECONDS = 7 * 24 * 3600
# QoS 1 messages the broker may have sent and not had acknowledged: bounds what waits in
# memory here (QoS 0 messages beyond QUEUE_MAX are dropped, as QoS 0 allows).
RECEIVE_MAXIMUM = 20_000
QUEUE_MAX = 100_000
PARTITIONS_EVERY_SECONDS = 600.0
SWEEP_EVERY_SECONDS = 1.0
CBOR = "application/cbor"


@dataclass(slots=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    mid: int
    content_type: str
    received_at: datetime
    # The connection it came on: an acknowledgement on a later connection would name
    # another message.
    connection: int


@dataclass
class Counters:
    messages: int = 0
    readings: int = 0
    duplicates: int = 0
    malformed: int = 0
    batches: int = 0
    dropped_qos0: int = 0
    retries: int = 0
    last_batch_seconds: float = 0.0
    started: float = field(default_factory=time.monotonic)


class _BufferedSocket:
    """The broker's socket, read 256 KB at a time. paho-mqtt reads each packet's header a
    byte at a time, three system calls a message; this hands it those bytes from one read.
    ``pending()`` is what paho's loop asks an SSL socket, so that it reads what is
    buffered before it waits in select again."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buffer = bytearray()

    def recv(self, size: int) -> bytes:
        if not self._buffer:
            data = self._sock.recv(262_144)
            if not data:
                return b""
            self._buffer += data
        if size >= len(self._buffer):
            taken = bytes(self._buffer)
            self._buffer.clear()
            return taken
        taken = bytes(self._buffer[:size])
        del self._buffer[:size]
        return taken

    def pending(self) -> int:
        return len(self._buffer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


_PUBACK = struct.Struct("!BBH")
PUBACK = 0x40


class _IngestClient(mqtt.Client):
    """paho-mqtt's client on a buffered socket (about a fifth less CPU per message, measured
    with 50,000 QoS 1 messages: 98 µs to 76 µs), with a short way for the common PUBLISH.

    A reading's PUBLISH carries no MQTT v5 properties; paho still builds and fills a
    ``Properties`` object and an ``MQTTMessage`` for it and matches its topic against the
    callbacks, which was most of its cost per message. Such a packet goes straight to
    ``on_plain_publish``; one with properties (a content type) or anything unusual takes
    paho's own way to ``on_message``. The acknowledgements of a stored batch leave as one
    write (``ack_many``) instead of one queued packet and wake-up each."""

    on_plain_publish: Callable[[str, bytes, int, int], None] | None = None

    def _handle_publish(self) -> mqtt.MQTTErrorCode:
        handler = self.on_plain_publish
        packet = self._in_packet["packet"]
        qos = (self._in_packet["command"] & 0x06) >> 1
        if handler is not None and qos <= 1 and self._protocol == mqtt.MQTTv5 and len(packet) >= 3:
            end = 2 + ((packet[0] << 8) | packet[1])
            at = end + 2 if qos else end
            # the property length, a variable byte integer: 0 is the single byte 0
            if at < len(packet) and packet[at] == 0:
                try:
                    topic = bytes(packet[2:end]).decode()
                except UnicodeDecodeError:
                    return super()._handle_publish()
                mid = (packet[end] << 8) | packet[end + 1] if qos else 0
                handler(topic, bytes(packet[at + 1 :]), qos, mid)
                return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        return super()._handle_publish()

    def ack_many(self, mids: list[int]) -> None:
        """Acknowledge these QoS 1 messages (manual acknowledgement) in one write."""
        if mids:
            packet = b"".join(_PUBACK.pack(PUBACK, 2, mid) for mid in mids)
            self._packet_queue(PUBACK, packet, 0, 1)

    def _create_socket(self) -> Any:
        return _BufferedSocket(super()._create_socket())

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        result = super().loop_read(max_packets)
        # paho reads one packet per call when nothing is in flight; drain what is buffered
        # (bounded, so that the acknowledgements queued meanwhile are written soon).
        rounds = 0
        while result == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS and rounds < 5_000:
            sock = self._sock
            if not isinstance(sock, _BufferedSocket) or not sock.pending():
                break
            result = super().loop_read(max_packets)
            rounds += 1
        return result


def _device_key(topic: str) -> tuple[str, str]:
    """``devices/{key}/rest`` → (key, rest)."""
    _, key, rest = topic.split("/", 2)
    return key, rest


class Ingest:
    def __init__(
        self,
        broker: BrokerSettings,
        *,
        name: str = "1",
        batch_max: int | None = None,
        batch_seconds: float | None = None,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self.broker = broker
        self.name = name
        self.batch_max = batch_max or settings.IOT_BATCH_MAX
        self.batch_seconds = batch_seconds if batch_seconds is not None else settings.IOT_BATCH_SECONDS
        self.on_ready = on_ready
        self.stopping = threading.Event()
        self.counters = Counters()
        self._queue: deque[Message] = deque()
        self._arrived = threading.Condition()
        self._connection = 0
        self._subscribed = threading.Event()
        self._devices: dict[str, tuple[int, bool]] = {}
        self._client = self._make_client()

    # -- the MQTT side (paho's network thread) --

    def _make_client(self) -> _IngestClient:
        client = _IngestClient(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"ingest-{self.name}",
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        client.username_pw_set(PLATFORM_USERNAME, self.broker.platform_password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_plain_publish = self._arrive
        client.on_subscribe = lambda *args: self._subscribed.set()
        # Back soon after the broker: Mosquitto 2.0 keeps this session's queued messages over a
        # restart but not its shared subscriptions, so until _on_connect subscribes again a
        # reading finds no subscriber (its PUBACK says so, reason 16: docs/iot.md). paho
        # sleeps fractions of a second although its annotation says int.
        client.reconnect_delay_set(min_delay=RECONNECT_MIN_SECONDS, max_delay=RECONNECT_MAX_SECONDS)  # type: ignore[arg-type]
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        return client

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            logger.error("ingest: the broker refused the connection: %s", reason)
            return
        with self._arrived:
            self._connection += 1
        logger.info("ingest %s connected (session present: %s)", self.name, flags.session_present)
        client.subscribe([(f"$share/{SHARE_GROUP}/{topic}", 1) for topic in SUBSCRIPTIONS])

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if not self.stopping.is_set():
            logger.warning("ingest %s lost the broker (%s); reconnecting", self.name, reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        props = getattr(message, "properties", None)
        content_type = getattr(props, "ContentType", "") or ""
        self._arrive(message.topic, message.payload, message.qos, message.mid, content_type)

    def _arrive(self, topic: str, payload: bytes, qos: int, mid: int, content_type: str = "") -> None:
        with self._arrived:
            if qos == 0 and len(self._queue) >= QUEUE_MAX:
                self.counters.dropped_qos0 += 1
                return
            self._queue.append(
                Message(topic, payload, qos, mid, content_type, datetime.now(UTC), self._connection)
            )
            # Wake the loop for the first message of a batch and for a full one only: it
            # gathers the rest until the batch's deadline (a wake per message cost the GIL).
            if len(self._queue) == 1 or len(self._queue) >= self.batch_max:
                self._arrived.notify()

    # -- the loop (the main thread) --

    def connect(self) -> None:
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = SESSION_EXPIRY_SECONDS
        properties.ReceiveMaximum = RECEIVE_MAXIMUM
        # connect_async: a broker that is not up yet is retried by the network loop.
        self._client.connect_async(
            self.broker.host, self.broker.port, keepalive=15, clean_start=False, properties=properties
        )
        self._client.loop_start()

    def _take(self) -> list[Message]:
        """Wait for a message, then gather until the batch is full or old enough."""
        with self._arrived:
            if not self._arrived.wait_for(
                lambda: self._queue or self.stopping.is_set(), timeout=SWEEP_EVERY_SECONDS
            ):
                return []
            deadline = time.monotonic() + self.batch_seconds
            while len(self._queue) < self.batch_max and not self.stopping.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._arrived.wait(left)
            count = min(len(self._queue), self.batch_max)
            return [self._queue.popleft() for _ in range(count)]

    def _ack(self, messages: Iterable[Message]) -> None:
        current = self._connection
        self._client.ack_many([m.mid for m in messages if m.qos > 0 and m.connection == current])

    def _learn_devices(self, batch: list[Message]) -> None:
        """Look up, in one query, the devices of ``batch`` this process does not know yet."""
        unknown = {_device_key(m.topic)[0] for m in batch if m.topic.count("/") >= 2} - self._devices.keys()
        if unknown:
            rows = Device.objects.filter(key__in=unknown).values_list("key", "id", "revoked_at")
            for key, device_id, revoked_at in rows:
                self._devices[key] = (device_id, revoked_at is not None)

    def handle(self, batch: list[Message]) -> None:
        """Store one batch (retrying while the database is away), then tell the rest."""
        now = datetime.now(UTC)
        oldest = raw_oldest(now)
        future = timedelta(seconds=settings.IOT_FUTURE_SECONDS)
        rows: list[Row] = []
        malformed: list[Malformed] = []
        statuses: dict[int, str] = {}
        others: list[tuple[str, Message]] = []
        live: dict[str, dict[str, list[list[float]]]] = {}
        self._with_database(lambda: self._learn_devices(batch))
        for message in batch:
            try:
                key, rest = _device_key(message.topic)
            except ValueError:
                continue
            device = self._devices.get(key)
            if device is None:
                malformed.append(Malformed(None, message.topic, message.payload, f"no device {key!r}"))
                continue
            device_id, _revoked = device
            if rest in ("telemetry", "telemetry/cbor"):
                try:
                    reading = telemetry_decode(
                        message.payload,
                        cbor=rest.endswith("cbor") or message.content_type == CBOR,
                        received_at=message.received_at,
                        future=future,
                        oldest=oldest,
                    )
                except PayloadError as error:
                    malformed.append(Malformed(device_id, message.topic, message.payload, str(error)))
                    continue
                points = live.setdefault(key, {})
                for metric, value in reading.metrics.items():
                    rows.append(Row(device_id, metric, reading.ts, value, message.received_at))
                    points.setdefault(metric, []).append([reading.ts.timestamp() * 1000, value])
            elif rest == "status":
                text = message.payload.decode("utf-8", "replace").strip().strip('"').lower()
                if text in ("online", "offline"):
                    statuses[device_id] = text
                else:
                    malformed.append(
                        Malformed(
                            device_id,
                            message.topic,
                            message.payload,
                            'status: "online" or "offline" expected',
                        )
                    )
            else:
                others.append((rest, message))
        alerts_changed_take()  # what an earlier, failed attempt noted
        stored = self._with_database(lambda: readings_store(rows, malformed, now=now))
        changed = self._with_database(lambda: statuses_store(statuses, at=now)) if statuses else []
        for rest, message in others:
            self._with_database(lambda rest=rest, message=message: self._other(rest, message))  # type: ignore[misc]
        self.counters.messages += len(batch)
        self.counters.readings += len(stored.new)
        self.counters.duplicates += stored.duplicates
        self.counters.malformed += stored.malformed
        self.counters.batches += 1
        alerts = sorted(set(alerts_changed_take()))
        if stored.new or changed or alerts:
            keys = {device_id: key for key, (device_id, _) in self._devices.items()}
            live_publish(
                {
                    "readings": live if stored.new else {},
                    "status": {keys[i]: statuses[i] for i in changed if i in keys},
                    "alerts": alerts,
                }
            )

    def _other(self, rest: str, message: Message) -> None:
        key, _ = _device_key(message.topic)
        if rest == "commands/ack":
            from iot.services.commands import command_ack

            command_ack(key, message.payload, topic=message.topic)
        elif rest == "firmware/status":
            from iot.services.firmware import firmware_report

            firmware_report(key, message.payload, topic=message.topic)

    def _with_database(self, work: Callable[[], Any]) -> Any:
        """Run ``work`` until it succeeds; while the database is away, wait and retry (the
        batch is not acknowledged meanwhile, so the broker keeps it)."""
        delay = 0.2
        while True:
            try:
                return work()
            except (OperationalError, InterfaceError) as error:
                if self.stopping.is_set():
                    raise
                self.counters.retries += 1
                logger.warning("ingest: the database is away (%s); retrying in %.1f s", error, delay)
                connection.close()
                self.stopping.wait(delay)
                delay = min(delay * 2, 5.0)
            except DatabaseError as error:
                if "no partition" in str(error):
                    connection.close()
                    self._with_database(lambda: partitions_ensure(datetime.now(UTC)))
                    continue
                raise

    def run(self) -> None:
        """Ingest until ``stopping`` is set (SIGTERM); the batch in hand is stored and
        acknowledged before the process leaves."""
        self._with_database(lambda: partitions_ensure(datetime.now(UTC)))
        self.connect()
        if not self._subscribed.wait(30):
            raise TimeoutError(
                f"ingest {self.name}: no subscription at {self.broker.host}:{self.broker.port}"
            )
        logger.info("ingest %s subscribed to %s", self.name, ", ".join(SUBSCRIPTIONS))
        if self.on_ready:
            self.on_ready()
        next_partitions = time.monotonic() + PARTITIONS_EVERY_SECONDS
        next_sweep = time.monotonic() + SWEEP_EVERY_SECONDS
        try:
            while not self.stopping.is_set():
                self._step()
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + SWEEP_EVERY_SECONDS
                    self._sweep()
                if time.monotonic() >= next_partitions:
                    next_partitions = time.monotonic() + PARTITIONS_EVERY_SECONDS
                    self._with_database(lambda: partitions_ensure(datetime.now(UTC)))
                    self._devices.clear()
            self._leave()
        finally:
            self._client.loop_stop()

    def _step(self) -> None:
        batch = self._take()
        if batch:
            started = time.monotonic()
            close_old_connections()
            self.handle(batch)
            self._ack(batch)
            self.counters.last_batch_seconds = time.monotonic() - started

    def _leave(self) -> None:
        """A stop asked for: take no more, store and acknowledge what came, and end the
        session, so the broker gives this process's share to the others instead of
        keeping it for a process that will not come back. (A process that dies keeps its
        session: its messages wait for it to return under the same name.)"""
        unsubscribed = threading.Event()
        self._client.on_unsubscribe = lambda *args: unsubscribed.set()
        self._client.unsubscribe([f"$share/{SHARE_GROUP}/{topic}" for topic in SUBSCRIPTIONS])
        unsubscribed.wait(5)
        while self._queue:
            self._step()
        ending = Properties(PacketTypes.DISCONNECT)
        ending.SessionExpiryInterval = 0
        self._client.disconnect(properties=ending)

    def _sweep(self) -> None:
        from iot.services.rules import rules_no_data_sweep

        self._with_database(lambda: rules_no_data_sweep(now=datetime.now(UTC)))

    def stop(self) -> None:
        self.stopping.set()
        with self._arrived:
            self._arrived.notify_all()
