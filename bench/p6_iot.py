"""P6: MQTT readings ingested and stored, alerts to an inbox, a day of one metric queried.

One stack in the layout of ``make run`` with its IoT processes: web, Celery workers and
beat, the platform's own Mosquitto (``manage.py mqtt_broker``: dynamic security on a free
port) and ``manage.py mqtt_ingest`` (one process, then a second one sharing the load
through the shared subscription). Devices are provisioned by ``device_provision`` (the
service the API calls: a row, and a client and role in the running broker) in one
``manage.py shell``.

1. **Ingest throughput** (target ≥ 10,000 msg/s): D simulated devices, each its own MQTT
   3.1.1 connection with its own credentials and client id, spread over G load processes
   that drive them from one selector loop each, publish JSON readings ``{"ts": <send time, epoch ms>,
   "metrics": {"temp": v}}`` at QoS 1, open loop at a fixed total rate, for S seconds.
   *Stored/s* is the slope of ``count(*)`` of the phase's rows in ``iot_reading``, sampled
   every second, over the steady window (the first seconds left out); the run waits until
   every published reading is a row (or a deadline passes: the rest is lost).
2. **Publish → row** (target p99 ≤ 1 s): a probe device publishes a marked reading every
   50 ms among the load; a poller asks the database every 10 ms for the probe's new rows.
   Latency = when the poller first saw the row (committed, visible to another session) −
   the wall-clock time the reading was published (its ``ts``). Beside it, for every
   reading of the load, ``received_at − ts``: publish → the ingest had it in memory.
3. **Alert → notification** (target ≤ 2 s): A devices, one threshold rule each
   (``for_seconds`` 0) notifying a recipient of its own; during the load each device
   publishes one breaching reading; latency = when the recipient's inbox row is first
   seen (polled every 20 ms) − the publish.
4. **Baselines, same run**: the same publishers and messages to a bare paho subscriber
   (``devices/+/telemetry``, QoS 1, counting; no database), before the ingest starts; a
   bare COPY of as many rows as the headline phase published into a plain table with the
   same columns and primary key.
5. **A day of one metric**: 86,400 one-per-second readings of one device stored through
   ``readings_store`` (as the ingest stores them: rollups included), then
   ``GET /api/v1/iot/devices/{key}/readings/?bucket=1m`` over the 24 h (1,440 points)
   timed, the median of N calls; beside it the raw API (capped at its 10,000 newest
   points) and the SQL of the raw day, of the minute rollup and of a minute aggregate
   computed from the raw rows.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import select
import selectors
import socket
import statistics
import struct
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.stack import (
    Progress,
    Stack,
    bench_stack,
    cpu_sample,
    cpu_seconds,
    percentile,
    raise_fd_limit,
)
from harness.processes import free_port

TARGET_RATE = 10_000.0
P99_TARGET_S = 1.0
ALERT_TARGET_S = 2.0
METRIC = "temp"
PROBE_METRIC = "probe"
SERIES_METRIC = "humidity"
# A value no load reading reaches and every alert reading does.
ALERT_THRESHOLD = 1_000.0
PROBE_INTERVAL_S = 0.05
PROBE_POLL_S = 0.01
INBOX_POLL_S = 0.02
COUNT_EVERY_S = 1.0
# After the load: how long the rows may take to arrive before the rest counts as lost.
DRAIN_TIMEOUT_S = 120.0
KEEPALIVE_S = 60
# The rate of the last phase, as a share of what the most ingest processes stored at the
# target rate: a load the stack keeps up with.
SUSTAINED_SHARE = 0.6


def _fmt_rate(rate: float) -> str:
    return f"{rate:,.0f}"


TYPE_KEY = "bench.p6-alert"
SEED_BATCH = 5_000


# --- results -------------------------------------------------------------------------------------


@dataclass
class GeneratorStats:
    published: int = 0
    acked: int = 0
    connect_failures: int = 0
    send_lag_p99_ms: float = 0.0
    cpu_seconds: float = 0.0
    finished: float = 0.0  # wall clock: the last reading published


@dataclass
class Phase:
    """One load phase: the devices publishing to a bare subscriber or to the ingest."""

    label: str  # "bare subscriber" or "N ingest process(es)"
    ingest_processes: int  # 0: the bare subscriber
    devices: int
    offered_rate: float
    seconds: float
    published: int
    acked: int
    stored: int  # rows (or messages the bare subscriber counted)
    steady_per_second: float  # rows (messages) per second over the steady window
    published_per_second: float
    drain_seconds: float | None  # end of publishing -> the last row stored (None: never)
    # what was stored after the publishing ended, per second: the rate with no load generator running
    drain_per_second: float | None
    lost: int
    send_lag_p99_ms: float
    # publish -> row visible (probe, polled), or publish -> subscriber (bare)
    latency_samples: int = 0
    p50_ms: float = float("nan")
    p95_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    # publish -> the ingest received it (received_at - ts), every reading of the phase
    arrival_p50_ms: float | None = None
    arrival_p99_ms: float | None = None
    alerts: list[float] = field(default_factory=list)  # publish -> inbox row seen, seconds
    alerts_missing: int = 0
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    batch_settings: str = ""
    # the last phase: offered a share of what the stack stored, for unqueued latencies
    kept_up: bool = False

    @property
    def meets_throughput(self) -> bool:
        return self.lost == 0 and self.steady_per_second >= TARGET_RATE * 0.98

    @property
    def meets_latency(self) -> bool:
        return self.lost == 0 and self.p99_ms <= P99_TARGET_S * 1000

    @property
    def meets_alerts(self) -> bool | None:
        if not self.alerts and not self.alerts_missing:
            return None
        return self.alerts_missing == 0 and max(self.alerts) <= ALERT_TARGET_S


@dataclass
class CopyBaseline:
    rows: int
    temporary_per_second: float  # COPY into a temporary table (no WAL)
    logged_per_second: float  # COPY into an ordinary table (WAL), as iot_reading is


@dataclass
class Queries:
    readings: int  # seeded, one per second
    seed_seconds: float
    calls: int
    api_minute_ms: float  # GET ...?bucket=1m over the day, median
    api_minute_points: int
    api_raw_ms: float  # GET ...?bucket=raw over the day (capped to the newest points)
    api_raw_points: int
    sql_raw_ms: float  # the day's raw rows
    sql_minute_ms: float  # the day's minute rollups
    sql_aggregate_ms: float  # the day's raw rows grouped by minute (what the rollups spare)


@dataclass
class P6Result:
    devices: int
    rate: float
    seconds: float
    generator_processes: int
    provision_seconds: float
    baseline: Phase | None
    phases: list[Phase]
    copy: CopyBaseline | None
    queries: Queries | None
    notes: list[str] = field(default_factory=list)

    @property
    def headline(self) -> Phase | None:
        """The layout of make run (one ingest process) when it ran, else the first."""
        return next(
            (p for p in self.phases if p.ingest_processes == 1), self.phases[0] if self.phases else None
        )

    @property
    def best(self) -> Phase | None:
        return max(self.phases, key=lambda p: p.steady_per_second, default=None)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for phase, stored in zip(self.phases, data["phases"], strict=True):
            stored["meets_throughput"] = phase.meets_throughput
            stored["meets_latency"] = phase.meets_latency
            stored["meets_alerts"] = phase.meets_alerts
        data["headline_index"] = self.phases.index(self.headline) if self.headline else None
        return data

    def summary(self) -> str:
        lines = [f"P6: {self.devices:,} devices provisioned in {self.provision_seconds:.1f} s"]
        for phase in [self.baseline, *self.phases]:
            if phase is None:
                continue
            alerts = (
                f"; alert → inbox p50 {statistics.median(phase.alerts):.2f} s, max {max(phase.alerts):.2f} s, "
                f"missing {phase.alerts_missing}"
                if phase.alerts
                else ""
            )
            lines.append(
                f"P6 {phase.label}: offered {phase.offered_rate:,.0f}/s, published {phase.published_per_second:,.0f}/s, "
                f"stored {phase.steady_per_second:,.0f}/s (steady), lost {phase.lost}, "
                f"publish → {'row' if phase.ingest_processes else 'subscriber'} p50 {phase.p50_ms:.0f} ms, "
                f"p99 {phase.p99_ms:.0f} ms{alerts}"
            )
        if self.copy is not None:
            lines.append(
                f"P6 bare COPY of {self.copy.rows:,} rows: {self.copy.temporary_per_second:,.0f}/s "
                f"(temporary), {self.copy.logged_per_second:,.0f}/s (logged)"
            )
        if self.queries is not None:
            q = self.queries
            lines.append(
                f"P6 a day of one metric ({q.readings:,} readings): API 1m {q.api_minute_ms:.1f} ms "
                f"({q.api_minute_points:,} points), API raw {q.api_raw_ms:.1f} ms ({q.api_raw_points:,} points), "
                f"SQL raw {q.sql_raw_ms:.1f} ms, SQL rollup {q.sql_minute_ms:.1f} ms, "
                f"SQL aggregate of raw {q.sql_aggregate_ms:.1f} ms"
            )
        return "\n".join(lines)


# --- the load processes (paho clients on one selector loop each) -----------------------------------


def _cpu_of(pid: int) -> float:
    """CPU seconds (user + system) a process has used, from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _remaining_length(size: int) -> bytes:
    out = bytearray()
    while True:
        byte, size = size % 128, size // 128
        out.append(byte | 0x80 if size else byte)
        if not size:
            return bytes(out)


def _utf8(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


def _connect_packet(key: str, password: str) -> bytes:
    """MQTT 3.1.1 CONNECT: clean session, username and password, the key as client id."""
    variable = _utf8("MQTT") + bytes([4, 0x80 | 0x40 | 0x02]) + struct.pack("!H", KEEPALIVE_S)
    payload = _utf8(key) + _utf8(key) + _utf8(password)
    return bytes([0x10]) + _remaining_length(len(variable) + len(payload)) + variable + payload


class _RawDevice:
    """A simulated device on a plain socket speaking MQTT 3.1.1: CONNECT, QoS 1 PUBLISH,
    PUBACKs counted, PINGREQ to stay alive. Lighter than a paho client per device (the
    load generator shares the two cores with what it measures); the ingest is paho."""

    def __init__(self, host: str, port: int, key: str, password: str) -> None:
        self.key = key
        self.topic = _utf8(f"devices/{key}/telemetry")
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(_connect_packet(key, password))
        connack = b""
        while len(connack) < 4:
            chunk = self.sock.recv(4 - len(connack))
            if not chunk:
                raise ConnectionError(f"{key}: the broker closed the connection")
            connack += chunk
        if connack[0] != 0x20 or connack[3] != 0:
            raise ConnectionError(f"{key}: CONNACK return code {connack[3]}")
        self.sock.setblocking(False)
        self.buffer = bytearray()
        self.packet_id = 0

    def publish(self, body: bytes) -> None:
        self.packet_id = self.packet_id % 65535 + 1
        variable = self.topic + struct.pack("!H", self.packet_id)
        packet = bytes([0x32]) + _remaining_length(len(variable) + len(body)) + variable + body
        view = memoryview(packet)
        while view:
            try:
                sent = self.sock.send(view)
            except BlockingIOError:
                select.select([], [self.sock], [], 1.0)
                continue
            view = view[sent:]

    def read_acks(self) -> int:
        """Read what arrived; return how many PUBACKs it held."""
        try:
            while True:
                chunk = self.sock.recv(65_536)
                if not chunk:
                    break
                self.buffer += chunk
        except BlockingIOError:
            pass
        acks, position = 0, 0
        buffer = self.buffer
        while len(buffer) - position >= 2:
            size, multiplier, index = 0, 1, position + 1
            while index < len(buffer):
                byte = buffer[index]
                size += (byte & 0x7F) * multiplier
                multiplier *= 128
                index += 1
                if not byte & 0x80:
                    break
            else:
                break
            if len(buffer) - index < size:
                break
            if buffer[position] >> 4 == 4:
                acks += 1
            position = index + size
        del buffer[:position]
        return acks

    def ping(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self.sock.send(b"\xc0\x00")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.send(b"\xe0\x00")
            self.sock.close()


def _generator_main(
    conn: Connection, host: str, port: int, devices: list[tuple[str, str]], offset: float
) -> None:
    """A load process: connect a device per credential pair, then publish on command.

    Commands: ``("run", start_epoch, seconds, per_device_rate)`` answered with a
    ``GeneratorStats`` dict; ``("stop",)``. Between commands the connections are kept
    alive (acknowledgements read, keepalive pings)."""
    selector = selectors.DefaultSelector()
    clients: list[_RawDevice] = []
    acked = [0]
    refused: list[str] = []
    for key, password in devices:
        try:
            client = _RawDevice(host, port, key, password)
        except (OSError, ConnectionError) as error:
            refused.append(str(error))
            continue
        selector.register(client.sock, selectors.EVENT_READ, client)
        clients.append(client)

    def pump(timeout: float) -> None:
        for key, _ in selector.select(timeout):
            acked[0] += key.data.read_acks()

    last_misc = 0.0

    def misc() -> None:
        nonlocal last_misc
        now = time.monotonic()
        if now - last_misc >= KEEPALIVE_S / 3:
            last_misc = now
            for client in clients:
                client.ping()

    conn.send(("connected", len(clients), refused[:5]))

    while True:
        while not conn.poll(0.2):
            pump(0)
            misc()
        command = conn.recv()
        if command[0] == "stop":
            break
        _, start, seconds, per_device_rate = command
        count = len(clients)
        interval = 1.0 / per_device_rate
        # Each device at its own phase of the interval, the processes interleaved.
        phases = [((i + offset) / count) * interval for i in range(count)]
        end = start + seconds
        published, lags = 0, []
        acked_before = acked[0]
        cpu_before = sum(os.times()[:2])
        round_start, i = start, 0
        value = 20.0
        while True:
            due = round_start + phases[i]
            if due >= end:
                break
            now = time.time()
            if due > now:
                pump(min(due - now, 0.005))
                continue
            if published % 100 == 0:
                lags.append(now - due)
            if published % 64 == 0:
                pump(0)
            value = 20.0 + (published % 50) / 10
            clients[i].publish(
                b'{"ts":%d,"metrics":{"%s":%s}}' % (int(now * 1000), METRIC.encode(), str(value).encode())
            )
            published += 1
            i += 1
            if i == count:
                i, round_start = 0, round_start + interval
                misc()
        finished = time.time()
        # The acknowledgements of what was sent (the broker has each message then).
        settle = time.monotonic() + 30
        while acked[0] - acked_before < published and time.monotonic() < settle:
            pump(0.01)
            misc()
        stats = GeneratorStats(
            published=published,
            acked=acked[0] - acked_before,
            connect_failures=len(refused),
            send_lag_p99_ms=percentile(lags, 0.99) * 1000 if lags else 0.0,
            cpu_seconds=sum(os.times()[:2]) - cpu_before,
            finished=finished,
        )
        conn.send(("done", asdict(stats)))
    for client in clients:
        client.close()


class Generators:
    """G load processes holding the devices' connections."""

    def __init__(self, host: str, port: int, devices: list[tuple[str, str]], processes: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.processes: list[Any] = []
        processes = max(1, min(processes, len(devices)))
        for number in range(processes):
            parent, child = context.Pipe()
            share = devices[number::processes]
            process = context.Process(
                target=_generator_main,
                args=(child, host, port, share, number / processes),
                daemon=True,
                name=f"p6-devices-{number}",
            )
            process.start()
            self.pipes.append(parent)
            self.processes.append(process)
        connected = 0
        problems: list[str] = []
        for pipe, process in zip(self.pipes, self.processes, strict=True):
            deadline = time.monotonic() + 120
            while not pipe.poll(0.5):
                if not process.is_alive() or time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(f"load process {process.name} did not connect its devices")
            _, count, refused = pipe.recv()
            connected += count
            problems += refused
        if connected != len(devices):
            raise RuntimeError(f"{connected} of {len(devices)} devices connected; refused: {problems}")

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    def cpu(self) -> float:
        return sum(_cpu_of(pid) for pid in self.pids())

    def start(self, start: float, seconds: float, per_device_rate: float) -> None:
        for pipe in self.pipes:
            pipe.send(("run", start, seconds, per_device_rate))

    def results(self, timeout: float) -> GeneratorStats:
        total = GeneratorStats()
        lags = []
        for pipe in self.pipes:
            if not pipe.poll(timeout):
                raise RuntimeError("a load process did not report")
            _, stats = pipe.recv()
            total.published += stats["published"]
            total.acked += stats["acked"]
            total.connect_failures += stats["connect_failures"]
            total.cpu_seconds += stats["cpu_seconds"]
            total.finished = max(total.finished, stats["finished"])
            lags.append(stats["send_lag_p99_ms"])
        total.send_lag_p99_ms = max(lags, default=0.0)
        return total

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(Exception):
                pipe.send(("stop",))
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.kill()


# --- the bare subscriber (baseline) ----------------------------------------------------------------


def _subscriber_main(conn: Connection, host: str, port: int, username: str, password: str) -> None:
    """A plain paho subscriber on ``devices/+/telemetry`` (QoS 1) counting messages: per
    0.1 s of arrival, and publish → arrival from each payload's ``ts``."""
    import paho.mqtt.client as mqtt

    counts: dict[int, int] = {}
    latencies: list[float] = []
    subscribed = threading.Event()

    def on_message(client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        now = time.time()
        slot = int(now * 10)
        counts[slot] = counts.get(slot, 0) + 1
        try:
            latencies.append(now - json.loads(message.payload)["ts"] / 1000)
        except (ValueError, KeyError, TypeError):
            pass

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"p6-bare-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
    )
    client.username_pw_set(username, password)
    client.on_message = on_message
    client.on_subscribe = lambda *args: subscribed.set()
    client.connect(host, port, keepalive=KEEPALIVE_S)
    client.subscribe("devices/+/telemetry", qos=1)
    client.loop_start()
    conn.send(("subscribed", subscribed.wait(30)))
    while True:
        command = conn.recv()
        if command[0] == "report":
            conn.send(("report", dict(counts), list(latencies), sum(os.times()[:2])))
        elif command[0] == "stop":
            break
    client.disconnect()
    client.loop_stop()


# --- the stack and its devices -------------------------------------------------------------------


@dataclass
class Provisioned:
    platform_password: str
    devices: dict[str, tuple[int, str]]  # key -> (id, password)
    seconds: float


_PROVISION = """
import json, time
from iot.services.broker import broker_settings
from iot.services.devices import device_provision
keys = {keys!r}
started = time.monotonic()
out = {{}}
for key in keys:
    made = device_provision(key=key, kind="bench")
    out[key] = [made.device.id, made.password]
print("P6PROVISIONED " + json.dumps({{"platform": broker_settings().platform_password, "devices": out,
      "seconds": time.monotonic() - started}}))
"""


def provision(stack: Stack, keys: list[str]) -> Provisioned:
    """``device_provision`` for each key in one ``manage.py shell`` of the stack: the rows,
    and each device's client and role added to the running broker."""
    output = stack.database.run_manage("shell", "-c", _PROVISION.format(keys=keys), timeout=900)
    line = next(line for line in output.splitlines() if line.startswith("P6PROVISIONED "))
    body = json.loads(line.removeprefix("P6PROVISIONED "))
    return Provisioned(
        platform_password=body["platform"],
        devices={key: (int(v[0]), str(v[1])) for key, v in body["devices"].items()},
        seconds=float(body["seconds"]),
    )


def _create_alert_rules(stack: Stack, devices: list[str]) -> dict[str, str]:
    """A recipient and a rule (``temp`` above the threshold, at once) per device; returns
    device key -> the recipient's external id."""
    with stack.client() as api:
        response = api.post(
            "/api/v1/notification-types/",
            json={
                "key": TYPE_KEY,
                "category": "transactional",
                "channels": ["inapp"],
                "templates": {
                    "inapp": {
                        "title": "{{ data.rule_name }} on {{ data.device_name }}: {{ data.state }}",
                        "body": "{{ data.metric }} = {{ data.value }}",
                        "url": "/iot/",
                    }
                },
            },
        )
        if response.status_code not in (200, 201):
            raise RuntimeError(f"creating the alert type: {response.status_code} {response.text}")
        recipients: dict[str, str] = {}
        for key in devices:
            external_id = f"p6-oncall-{key}"
            response = api.put(f"/api/v1/recipients/{external_id}/", json={"name": key, "timezone": "UTC"})
            if response.status_code not in (200, 201):
                raise RuntimeError(
                    f"creating recipient {external_id}: {response.status_code} {response.text}"
                )
            response = api.post(
                "/api/v1/iot/rules/",
                json={
                    "key": f"p6-hot-{key}",
                    "name": "Too hot",
                    "devices": [key],
                    "metric": METRIC,
                    "op": ">",
                    "threshold": ALERT_THRESHOLD,
                    "for_seconds": 0,
                    "notify": {"type": TYPE_KEY, "recipients": [external_id]},
                },
            )
            if response.status_code != 201:
                raise RuntimeError(f"creating the rule for {key}: {response.status_code} {response.text}")
            recipients[key] = external_id
    return recipients


class _Device:
    """One device in this process (paho with its own network thread): the probe and the
    alerting devices, which publish now and then."""

    def __init__(self, host: str, port: int, key: str, password: str) -> None:
        import paho.mqtt.client as mqtt

        self.key = key
        self.topic = f"devices/{key}/telemetry"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=key, protocol=mqtt.MQTTv311)
        self.client.username_pw_set(key, password)
        self.connected = threading.Event()
        self.client.on_connect = lambda *args: self.connected.set()
        self.client.connect(host, port, keepalive=KEEPALIVE_S)
        self.client.loop_start()
        if not self.connected.wait(10):
            raise RuntimeError(f"device {key} could not connect")

    def publish(self, metric: str, value: float) -> float:
        """Publish one reading stamped with the time it is sent; return that time."""
        sent = time.time()
        stamp = int(sent * 1000)
        self.client.publish(self.topic, f'{{"ts":{stamp},"metrics":{{"{metric}":{value}}}}}', qos=1)
        return stamp / 1000

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# --- measuring a phase -----------------------------------------------------------------------------


class _Watch:
    """Threads that, during a phase, count the phase's rows every second, publish the probe's
    readings and poll for them, publish each alerting device's breach on schedule and poll
    the inboxes. All times are wall-clock (one machine, one clock)."""

    def __init__(
        self,
        stack: Stack,
        *,
        since: datetime,
        probe: _Device | None,
        probe_id: int | None,
        alerts: list[tuple[_Device, str, float]],  # device, recipient, when (epoch) to breach
        stop_probe_at: float,
    ) -> None:
        self.stack = stack
        self.since = since
        self.probe, self.probe_id = probe, probe_id
        self.alerts = alerts
        self.stop_probe_at = stop_probe_at
        self.counts: list[tuple[float, int]] = []
        self.probe_sent: dict[int, float] = {}  # ts in ms -> sent
        self.probe_latencies: list[float] = []
        self.alert_sent: dict[str, float] = {}
        self.alert_latencies: dict[str, float] = {}
        self.stopping = threading.Event()
        self.threads = [
            threading.Thread(target=self._count, daemon=True),
            threading.Thread(target=self._probe_publish, daemon=True),
            threading.Thread(target=self._probe_poll, daemon=True),
            threading.Thread(target=self._alerts, daemon=True),
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(10)

    def _count(self) -> None:
        with self.stack.db_connect() as db:
            while not self.stopping.is_set():
                moment = time.time()
                (count,) = db.execute(
                    "SELECT count(*) FROM iot_reading WHERE metric = %s AND ts >= %s", [METRIC, self.since]
                ).fetchone()
                self.counts.append((moment, int(count)))
                self.stopping.wait(COUNT_EVERY_S - (time.time() - moment) % COUNT_EVERY_S)

    def _probe_publish(self) -> None:
        if self.probe is None:
            return
        value = 0
        while not self.stopping.is_set() and time.time() < self.stop_probe_at:
            value += 1
            sent = self.probe.publish(PROBE_METRIC, float(value))
            self.probe_sent[int(round(sent * 1000))] = sent
            self.stopping.wait(PROBE_INTERVAL_S)

    def _probe_poll(self) -> None:
        if self.probe is None:
            return
        last = self.since
        with self.stack.db_connect() as db:
            while not self.stopping.is_set():
                rows = db.execute(
                    "SELECT ts FROM iot_reading WHERE device_id = %s AND metric = %s AND ts > %s ORDER BY ts",
                    [self.probe_id, PROBE_METRIC, last],
                ).fetchall()
                seen = time.time()
                for (ts,) in rows:
                    self.probe_latencies.append(seen - ts.timestamp())
                    last = ts
                self.stopping.wait(PROBE_POLL_S)

    def _alerts(self) -> None:
        if not self.alerts:
            return
        pending = {recipient: device for device, recipient, _ in self.alerts}
        schedule = sorted(self.alerts, key=lambda entry: entry[2])
        with self.stack.db_connect() as db:
            while pending and not self.stopping.is_set():
                now = time.time()
                while schedule and schedule[0][2] <= now:
                    device, recipient, _ = schedule.pop(0)
                    self.alert_sent[recipient] = device.publish(METRIC, ALERT_THRESHOLD * 5)
                waiting = [r for r in pending if r in self.alert_sent]
                if waiting:
                    rows = db.execute(
                        "SELECT r.external_id FROM notifications_inboxitem i"
                        " JOIN notifications_recipient r ON r.id = i.recipient_id WHERE r.external_id = ANY(%s)",
                        [waiting],
                    ).fetchall()
                    seen = time.time()
                    for (external_id,) in rows:
                        if external_id in pending:
                            self.alert_latencies[external_id] = seen - self.alert_sent[external_id]
                            del pending[external_id]
                self.stopping.wait(INBOX_POLL_S)


def _steady_rate(samples: list[tuple[float, int]], start: float, end: float) -> float:
    """Rows per second between the first sample at or after ``start`` and the last at or
    before ``end`` (NaN with fewer than two)."""
    inside = [(t, n) for t, n in samples if start <= t <= end]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return float("nan")
    return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


def _warmup(seconds: float) -> float:
    return min(3.0, seconds / 4)


def _cpu_with_generators(
    stack: Stack, before: Any, after: Any, generators: float, extra: dict[str, float]
) -> dict[str, float]:
    cpu = cpu_seconds(stack, before, after)
    cpu["device processes"] = generators
    for name, value in extra.items():
        cpu[name] = value
    # The machine's other processes: what no named part used (the load processes are named now).
    named = sum(v for k, v in cpu.items() if k not in ("other processes", "machine"))
    cpu["other processes"] = max(0.0, cpu["machine"] - named)
    return {name: round(value, 2) for name, value in cpu.items()}


def bare_phase(
    stack: Stack,
    generators: Generators,
    broker: tuple[str, int],
    platform_password: str,
    *,
    devices: int,
    rate: float,
    seconds: float,
) -> Phase:
    """The same publishers to a bare paho subscriber: what the broker and paho's receive
    path do with no database."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(
        target=_subscriber_main,
        args=(child, broker[0], broker[1], "platform", platform_password),
        daemon=True,
    )
    process.start()
    try:
        if not parent.poll(60) or not parent.recv()[1]:
            raise RuntimeError("the bare subscriber did not subscribe")
        before, generators_before, subscriber_before = (
            cpu_sample(),
            generators.cpu(),
            _cpu_of(process.pid or 0),
        )
        start = time.time() + 0.5
        generators.start(start, seconds, rate / devices)
        sent = generators.results(seconds + 90)
        # Wait until the subscriber has every message (or nothing comes any more).
        deadline, last_total, total = time.time() + DRAIN_TIMEOUT_S, -1, 0
        counts: dict[int, int] = {}
        latencies: list[float] = []
        while time.time() < deadline:
            parent.send(("report",))
            _, counts, latencies, _ = parent.recv()
            total = sum(counts.values())
            if total >= sent.published or total == last_total:
                break
            last_total = total
            time.sleep(1.0)
        after = cpu_sample()
        cpu = _cpu_with_generators(
            stack,
            before,
            after,
            generators.cpu() - generators_before,
            {"bare subscriber": _cpu_of(process.pid or 0) - subscriber_before},
        )
        parent.send(("stop",))
    finally:
        process.join(10)
        if process.is_alive():
            process.kill()
    end = start + seconds
    slots = sorted(counts)
    # The steady window: from the warm-up's end until the last reading was published.
    window_end = max(end, sent.finished)
    steady = sum(n for slot, n in counts.items() if start + _warmup(seconds) <= slot / 10 < window_end) / (
        window_end - start - _warmup(seconds)
    )
    last_arrival = (slots[-1] + 1) / 10 if slots else None
    drained = bool(last_arrival) and total >= sent.published
    after_load = sum(n for slot, n in counts.items() if slot / 10 >= sent.finished)
    return Phase(
        label="bare subscriber",
        ingest_processes=0,
        devices=devices,
        offered_rate=rate,
        seconds=seconds,
        published=sent.published,
        acked=sent.acked,
        stored=total,
        steady_per_second=steady,
        published_per_second=sent.published / max(sent.finished - start, seconds),
        drain_seconds=max(0.0, last_arrival - sent.finished) if drained and last_arrival else None,
        drain_per_second=after_load / (last_arrival - sent.finished)
        if drained and last_arrival and last_arrival - sent.finished > 1
        else None,
        lost=max(0, sent.published - total),
        send_lag_p99_ms=sent.send_lag_p99_ms,
        latency_samples=len(latencies),
        p50_ms=percentile(latencies, 0.5) * 1000,
        p95_ms=percentile(latencies, 0.95) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        max_ms=max(latencies, default=float("nan")) * 1000,
        cpu_seconds=cpu,
    )


def ingest_phase(
    stack: Stack,
    generators: Generators,
    *,
    ingest_processes: int,
    devices: int,
    rate: float,
    seconds: float,
    probe: _Device | None,
    probe_id: int | None,
    alerts: list[tuple[_Device, str]],
    batch_settings: str,
    progress: bool,
    label: str = "",
) -> Phase:
    # Every reading of this phase is stamped after ``since`` (the earlier phases' before it).
    since = datetime.now(UTC)
    start = time.time() + 0.5
    end = start + seconds
    schedule = [
        (
            device,
            recipient,
            start + _warmup(seconds) + (number + 0.5) * (seconds - _warmup(seconds)) / len(alerts),
        )
        for number, (device, recipient) in enumerate(alerts)
    ]
    watch = _Watch(stack, since=since, probe=probe, probe_id=probe_id, alerts=schedule, stop_probe_at=end)
    before, generators_before = cpu_sample(), generators.cpu()
    watch.start()
    generators.start(start, seconds, rate / devices)
    bar = Progress(f"P6 load, {ingest_processes} ingest", int(seconds), enabled=progress)
    while time.time() < end:
        bar.update(max(0, int(time.time() - start)))
        time.sleep(0.5)
    bar.finish(int(seconds))
    sent = generators.results(90)
    # Drain: until every published reading is a row, or nothing moves for a while.
    deadline, moved, last = time.time() + DRAIN_TIMEOUT_S, time.time(), -1
    done_at: float | None = None
    while time.time() < deadline and time.time() - moved < 20:
        stored = watch.counts[-1][1] if watch.counts else 0
        if stored >= sent.published:
            done_at = watch.counts[-1][0]
            break
        if stored != last:
            last, moved = stored, time.time()
        time.sleep(0.2)
    # The alerts still on their way get a few seconds more.
    alert_deadline = time.time() + 10
    while len(watch.alert_latencies) < len(alerts) and time.time() < alert_deadline:
        time.sleep(0.05)
    watch.stop()
    after = cpu_sample()
    cpu = _cpu_with_generators(stack, before, after, generators.cpu() - generators_before, {})
    with stack.db_connect() as db:
        (stored_total,) = db.execute(
            "SELECT count(*) FROM iot_reading WHERE metric = %s AND ts >= %s", [METRIC, since]
        ).fetchone()
        arrival = db.execute(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY received_at - ts),"
            " percentile_cont(0.99) WITHIN GROUP (ORDER BY received_at - ts)"
            " FROM iot_reading WHERE metric = %s AND ts >= %s AND value < %s",
            [METRIC, since, ALERT_THRESHOLD],
        ).fetchone()
    stored_at_finish = max((n for t, n in watch.counts if t <= sent.finished), default=0)
    # The alert readings are rows of the metric too; the load's own are what was published.
    stored_load = int(stored_total) - len(watch.alert_sent)
    latencies = watch.probe_latencies
    stack.check_alive()
    return Phase(
        label=label or f"{ingest_processes} ingest process{'es' if ingest_processes > 1 else ''}",
        ingest_processes=ingest_processes,
        devices=devices,
        offered_rate=rate,
        seconds=seconds,
        published=sent.published,
        acked=sent.acked,
        stored=stored_load,
        steady_per_second=_steady_rate(watch.counts, start + _warmup(seconds), max(end, sent.finished)),
        published_per_second=sent.published / max(sent.finished - start, seconds),
        drain_seconds=max(0.0, done_at - sent.finished) if done_at is not None else None,
        drain_per_second=(sent.published - stored_at_finish) / (done_at - sent.finished)
        if done_at is not None and done_at - sent.finished > 1
        else None,
        lost=max(0, sent.published - stored_load),
        send_lag_p99_ms=sent.send_lag_p99_ms,
        latency_samples=len(latencies),
        p50_ms=percentile(latencies, 0.5) * 1000,
        p95_ms=percentile(latencies, 0.95) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        max_ms=max(latencies, default=float("nan")) * 1000,
        arrival_p50_ms=arrival[0].total_seconds() * 1000 if arrival and arrival[0] is not None else None,
        arrival_p99_ms=arrival[1].total_seconds() * 1000 if arrival and arrival[1] is not None else None,
        alerts=sorted(watch.alert_latencies.values()),
        alerts_missing=len(alerts) - len(watch.alert_latencies),
        cpu_seconds=cpu,
        batch_settings=batch_settings,
    )


# --- baselines and queries -----------------------------------------------------------------------


def copy_baseline(stack: Stack, rows: int) -> CopyBaseline:
    """``rows`` readings-shaped rows COPYed into a temporary table and into an ordinary
    one, each with iot_reading's columns and primary key; rows per second, one transaction."""
    now = datetime.now(UTC)
    data = [(1 + i % 1000, METRIC, now - timedelta(milliseconds=i), 20.5, now) for i in range(rows)]
    rates = []
    with stack.db_connect() as db:
        for kind in ("TEMPORARY", ""):
            name = f"p6_copy_{uuid.uuid4().hex[:8]}"
            db.execute(
                f"CREATE {kind} TABLE {name} (device_id bigint, metric varchar(64), ts timestamptz,"
                " value double precision, received_at timestamptz, PRIMARY KEY (device_id, metric, ts))"
            )
            started = time.perf_counter()
            with db.transaction(), db.cursor() as cursor:
                with cursor.copy(
                    f"COPY {name} (device_id, metric, ts, value, received_at) FROM STDIN"
                ) as copy:
                    for row in data:
                        copy.write_row(row)
            rates.append(rows / (time.perf_counter() - started))
            db.execute(f"DROP TABLE {name}")
    return CopyBaseline(rows=rows, temporary_per_second=rates[0], logged_per_second=rates[1])


_SEED = """
import json, time
from datetime import datetime, timedelta, UTC
from iot.services.storage import Row, readings_store
start = datetime.fromisoformat({start!r})
count, batch = {count}, {batch}
started = time.monotonic()
for first in range(0, count, batch):
    now = datetime.now(UTC)
    rows = [Row({device_id}, {metric!r}, start + timedelta(seconds=i), 40.0 + (i % 600) / 10, now)
            for i in range(first, min(count, first + batch))]
    readings_store(rows, now=now)
print("P6SEEDED", time.monotonic() - started)
"""


def query_day(stack: Stack, key: str, device_id: int, *, readings: int, calls: int) -> Queries:
    """Seed ``readings`` one-per-second readings ending a minute ago through the ingest's
    own storage, then time the day's queries (median of ``calls`` each, after one)."""
    end = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=1)
    start = end - timedelta(seconds=readings)
    output = stack.database.run_manage(
        "shell",
        "-c",
        _SEED.format(
            start=start.isoformat(),
            count=readings,
            batch=SEED_BATCH,
            device_id=device_id,
            metric=SERIES_METRIC,
        ),
        timeout=900,
    )
    seed_seconds = float(next(line for line in output.splitlines() if line.startswith("P6SEEDED")).split()[1])
    day_end = start + timedelta(days=1)

    def timed(call: Any) -> tuple[float, Any]:
        call()
        times, answer = [], None
        for _ in range(calls):
            began = time.perf_counter()
            answer = call()
            times.append(time.perf_counter() - began)
        return statistics.median(times) * 1000, answer

    params = {"metric": SERIES_METRIC, "from": start.isoformat(), "to": day_end.isoformat()}
    with stack.client() as api:

        def get(bucket: str) -> Any:
            response = api.get(f"/api/v1/iot/devices/{key}/readings/", params={**params, "bucket": bucket})
            response.raise_for_status()
            return response.json()

        api_minute, minute_body = timed(lambda: get("1m"))
        api_raw, raw_body = timed(lambda: get("raw"))
    with stack.db_connect() as db:
        window = [device_id, SERIES_METRIC, start, day_end]
        sql_raw, _ = timed(
            lambda: db.execute(
                "SELECT ts, value FROM iot_reading WHERE device_id = %s AND metric = %s AND ts >= %s AND ts < %s"
                " ORDER BY ts",
                window,
            ).fetchall()
        )
        sql_minute, _ = timed(
            lambda: db.execute(
                "SELECT bucket, sum / count, min, max, count FROM iot_rollup_minute"
                " WHERE device_id = %s AND metric = %s AND bucket >= %s AND bucket < %s ORDER BY bucket",
                window,
            ).fetchall()
        )
        sql_aggregate, _ = timed(
            lambda: db.execute(
                "SELECT date_trunc('minute', ts), avg(value), min(value), max(value), count(*) FROM iot_reading"
                " WHERE device_id = %s AND metric = %s AND ts >= %s AND ts < %s GROUP BY 1 ORDER BY 1",
                window,
            ).fetchall()
        )
    return Queries(
        readings=readings,
        seed_seconds=seed_seconds,
        calls=calls,
        api_minute_ms=api_minute,
        api_minute_points=len(minute_body["points"]),
        api_raw_ms=api_raw,
        api_raw_points=len(raw_body["points"]),
        sql_raw_ms=sql_raw,
        sql_minute_ms=sql_minute,
        sql_aggregate_ms=sql_aggregate,
    )


# --- the whole benchmark -------------------------------------------------------------------------


@contextlib.contextmanager
def iot_stack(*, template: str | None, env: dict[str, str]) -> Iterator[tuple[Stack, tuple[str, int]]]:
    """A bench stack (web, workers, beat) with the platform's own broker on a free port;
    yields it and the broker's address. The ingest processes are started by the caller."""
    directory = tempfile.mkdtemp(prefix="p6-mqtt-")
    port = free_port()
    with bench_stack(
        template=template, label="p6", env={"MQTT_PORT": str(port), "MQTT_DIR": directory, **env}
    ) as stack:
        stack.platform.start_mqtt()
        yield stack, ("127.0.0.1", port)


def run(
    *,
    template: str | None,
    devices: int = 1_000,
    rate: float = TARGET_RATE,
    seconds: float = 20.0,
    ingests: tuple[int, ...] = (1, 2),
    alerts: int = 10,
    generator_processes: int = 2,
    baseline: bool = True,
    day_readings: int = 86_400,
    query_calls: int = 20,
    batch_max: int | None = None,
    batch_seconds: float | None = None,
    progress: bool = True,
    sustained: bool = True,
) -> P6Result:
    raise_fd_limit(6 * devices + 4096)
    env: dict[str, str] = {}
    if batch_max:
        env["IOT_BATCH_MAX"] = str(batch_max)
    if batch_seconds is not None:
        env["IOT_BATCH_SECONDS"] = str(batch_seconds)
    notes: list[str] = []
    with iot_stack(template=template, env=env) as (stack, broker):
        load_keys = [f"p6-d{number:05d}" for number in range(devices)]
        alert_keys = {n: [f"p6-alert{n}-{i:02d}" for i in range(alerts)] for n in ingests}
        probe_keys = {n: f"p6-probe{n}" for n in ingests}
        # The last phase: the most ingest processes at a rate they keep up with, for the
        # latencies of a stack that is not behind (at the target rate they measure the backlog).
        if sustained:
            alert_keys[0] = [f"p6-alert-kept-{i:02d}" for i in range(alerts)]
            probe_keys[0] = "p6-probe-kept"
        series_key = "p6-series"
        everything = load_keys + [k for ks in alert_keys.values() for k in ks] + list(probe_keys.values())
        provisioned = provision(stack, [*everything, series_key])
        recipients = _create_alert_rules(stack, [k for ks in alert_keys.values() for k in ks])
        generators = Generators(
            broker[0],
            broker[1],
            [(key, provisioned.devices[key][1]) for key in load_keys],
            generator_processes,
        )
        own: list[_Device] = []
        try:

            def device(key: str) -> _Device:
                made = _Device(broker[0], broker[1], key, provisioned.devices[key][1])
                own.append(made)
                return made

            bare = (
                bare_phase(
                    stack,
                    generators,
                    broker,
                    provisioned.platform_password,
                    devices=devices,
                    rate=rate,
                    seconds=seconds,
                )
                if baseline
                else None
            )
            phases: list[Phase] = []
            batch = (
                f"IOT_BATCH_MAX={env.get('IOT_BATCH_MAX', 'default')}, "
                f"IOT_BATCH_SECONDS={env.get('IOT_BATCH_SECONDS', 'default')}"
            )
            started = 0
            for count in sorted(ingests):
                while started < count:
                    started += 1
                    stack.platform.start_ingest(str(started))
                phases.append(
                    ingest_phase(
                        stack,
                        generators,
                        ingest_processes=count,
                        devices=devices,
                        rate=rate,
                        seconds=seconds,
                        probe=device(probe_keys[count]),
                        probe_id=provisioned.devices[probe_keys[count]][0],
                        alerts=[(device(key), recipients[key]) for key in alert_keys[count]],
                        batch_settings=batch,
                        progress=progress,
                    )
                )
            kept = [p for p in phases if p.ingest_processes == max(ingests)]
            if sustained and kept:
                kept_rate = max(100.0, round(kept[0].steady_per_second * SUSTAINED_SHARE, -2))
                phases.append(
                    ingest_phase(
                        stack,
                        generators,
                        ingest_processes=max(ingests),
                        devices=devices,
                        rate=kept_rate,
                        seconds=seconds,
                        probe=device(probe_keys[0]),
                        probe_id=provisioned.devices[probe_keys[0]][0],
                        alerts=[(device(key), recipients[key]) for key in alert_keys[0]],
                        batch_settings=batch,
                        progress=progress,
                        label=f"{max(ingests)} ingest process{'es' if max(ingests) > 1 else ''}, "
                        f"{_fmt_rate(kept_rate)}/s offered ({SUSTAINED_SHARE:.0%} of what they stored)",
                    )
                )
                phases[-1].kept_up = True
        finally:
            for made in own:
                made.close()
            generators.close()
        headline = next((p for p in phases if p.ingest_processes == 1), phases[0] if phases else None)
        copy = copy_baseline(stack, headline.published) if headline and headline.published else None
        queries = (
            query_day(
                stack,
                series_key,
                provisioned.devices[series_key][0],
                readings=day_readings,
                calls=query_calls,
            )
            if day_readings
            else None
        )
        stack.check_alive()
    return P6Result(
        devices=devices,
        rate=rate,
        seconds=seconds,
        generator_processes=generator_processes,
        provision_seconds=provisioned.seconds,
        baseline=bare,
        phases=phases,
        copy=copy,
        queries=queries,
        notes=notes,
    )
