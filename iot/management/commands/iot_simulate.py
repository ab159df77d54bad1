"""``python manage.py iot_simulate``: the demo devices (iot/services/demo.py) publishing a
reading of each metric every second to the platform's broker, as real devices would.

Each device connects with its own credentials (the password seed_demo_iot derived from
SECRET_KEY), leaves a last will of ``offline`` on ``devices/{key}/status``, says
``online`` there when it connects, and answers every command on ``devices/{key}/commands``
with ``{"id", "ok": true, "result"}`` on ``devices/{key}/commands/ack``. Every few minutes
the freezer warms up past the demo rule for about a minute (a door left open; the command
``open_door`` starts one at once), so an alert opens and resolves.

make run starts it when IOT_DEMO_DEVICES is on (run_platform's ``iot-demo`` process).
A device the broker refuses (not seeded yet, or revoked) is retried with a back-off; the
simulator itself runs until SIGTERM or SIGINT, then says ``offline`` for each device and
disconnects.
"""

from __future__ import annotations

import json
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from django.core.management.base import BaseCommand, CommandError, CommandParser

from iot.services.broker import broker_settings
from iot.services.demo import DEMO_DEVICES, DemoDevice, demo_device_password

# A warm-up of the freezer: seconds rising to its peak, held there, falling back.
WARM_UP_RISE = 40.0
WARM_UP_HOLD = 60.0
WARM_UP_FALL = 50.0
WARM_UP_PEAK = -6.0
# The first warm-up comes soon after the start, so a demo shows an alert early.
FIRST_WARM_UP_SECONDS = 90.0


def warm_up_temperature(value: float, elapsed: float, peak: float = WARM_UP_PEAK) -> float:
    """The freezer's temperature ``elapsed`` seconds into a warm-up, from ``value`` (what
    it would be otherwise) towards ``peak`` and back."""
    if elapsed < 0 or elapsed >= WARM_UP_RISE + WARM_UP_HOLD + WARM_UP_FALL:
        return value
    if elapsed < WARM_UP_RISE:
        share = elapsed / WARM_UP_RISE
    elif elapsed < WARM_UP_RISE + WARM_UP_HOLD:
        share = 1.0
    else:
        share = 1.0 - (elapsed - WARM_UP_RISE - WARM_UP_HOLD) / WARM_UP_FALL
    return round(max(value, value + (peak - value) * share), 1)


class DemoDeviceClient:
    """One demo device: its MQTT connection (paho's network thread), its values and the
    commands it answers."""

    def __init__(
        self,
        spec: DemoDevice,
        host: str,
        port: int,
        *,
        warm_up_every: float,
        log: Callable[[str], None],
    ) -> None:
        self.spec = spec
        self.log = log
        self.rng = random.Random(spec.key)
        self.warm_up_every = warm_up_every
        self.warm_up_at = (
            time.time() + min(FIRST_WARM_UP_SECONDS, warm_up_every) if warm_up_every > 0 else math.inf
        )
        self.started = time.monotonic()
        self.published = 0
        self.commands_answered = 0
        self._refusals = 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=spec.key, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(spec.key, demo_device_password(spec.key))
        self.client.will_set(self.topic("status"), b"offline", qos=1)
        self.client.reconnect_delay_set(1, 30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.connect_async(host, port, keepalive=30)
        self.client.loop_start()

    def topic(self, suffix: str) -> str:
        return f"devices/{self.spec.key}/{suffix}"

    # -- paho's callbacks, on its network thread --

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self._refusals += 1
            if self._refusals == 1 or self._refusals % 20 == 0:
                self.log(
                    f"{self.spec.key}: the broker refused the connection ({reason}); "
                    "was `manage.py seed_demo_iot` run before the broker started? Retrying."
                )
            return
        self._refusals = 0
        client.publish(self.topic("status"), b"online", qos=1)
        client.subscribe(self.topic("commands"), qos=1)
        self.log(f"{self.spec.key}: connected, publishing {', '.join(m.name for m in self.spec.metrics)}")

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason is not None and reason.is_failure and self._refusals == 0:
            self.log(f"{self.spec.key}: disconnected ({reason}); reconnecting")

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic != self.topic("commands"):
            return
        try:
            command = json.loads(message.payload)
            command_id = command["id"]
            name = str(command.get("name", ""))
            params = command.get("params") or {}
        except (ValueError, TypeError, KeyError):
            self.log(f"{self.spec.key}: a command it cannot read: {message.payload[:200]!r}")
            return
        answer = {"id": command_id, "ok": True, "result": self.command_result(name, params)}
        client.publish(self.topic("commands/ack"), json.dumps(answer), qos=1)
        self.commands_answered += 1
        self.log(f"{self.spec.key}: command {name} {json.dumps(params)} acknowledged")

    def command_result(self, name: str, params: Any) -> dict[str, Any]:
        """What the device answers to a command (it does every one)."""
        if name == "reboot":
            self.started = time.monotonic()
            return {"rebooted": True, "uptime_s": 0}
        if name == "open_door" and self.spec.kind == "freezer":
            self.warm_up_at = time.time()
            return {"door": "open", "seconds": WARM_UP_RISE + WARM_UP_HOLD}
        return {"done": name, "params": params, "uptime_s": round(time.monotonic() - self.started)}

    # -- readings, on the simulator's thread --

    def _warm_up(self, now: float, value: float) -> float:
        """``value`` raised by a warm-up under way at ``now`` (the freezer's temperature)."""
        elapsed = now - self.warm_up_at
        total = WARM_UP_RISE + WARM_UP_HOLD + WARM_UP_FALL
        if elapsed < 0:
            return value
        if elapsed >= total:
            again = self.warm_up_every * self.rng.uniform(0.8, 1.4)
            self.warm_up_at = now + again if again > 0 else math.inf
            return value
        return warm_up_temperature(value, elapsed, WARM_UP_PEAK + self.rng.gauss(0.0, 0.2))

    def reading(self, now: float) -> dict[str, Any]:
        metrics = {metric.name: metric.value(now, self.rng) for metric in self.spec.metrics}
        if self.spec.kind == "freezer" and "temperature" in metrics:
            metrics["temperature"] = self._warm_up(now, metrics["temperature"])
        return {"ts": int(now * 1000), "metrics": metrics}

    def publish_reading(self, now: float) -> bool:
        """Publish one reading of each metric (QoS 1); False while not connected."""
        if not self.client.is_connected():
            return False
        self.client.publish(self.topic("telemetry"), json.dumps(self.reading(now)), qos=1)
        self.published += 1
        return True

    def close(self, timeout: float = 1.0) -> None:
        """Say ``offline`` (a clean disconnect sends no last will) and disconnect."""
        if self.client.is_connected():
            info = self.client.publish(self.topic("status"), b"offline", qos=1)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                pass
        self.client.disconnect()
        self.client.loop_stop()


class DemoSimulator:
    """The demo devices publishing every ``interval`` seconds until ``stop()``."""

    def __init__(
        self,
        host: str,
        port: int,
        devices: Sequence[DemoDevice] = DEMO_DEVICES,
        *,
        interval: float = 1.0,
        warm_up_every: float = 300.0,
        log: Callable[[str], None] = print,
    ) -> None:
        self.host = host
        self.port = port
        self.specs = list(devices)
        self.interval = interval
        self.warm_up_every = warm_up_every
        self.log = log
        self.devices: list[DemoDeviceClient] = []
        self._stop = threading.Event()

    def run(self) -> None:
        self.devices = [
            DemoDeviceClient(spec, self.host, self.port, warm_up_every=self.warm_up_every, log=self.log)
            for spec in self.specs
        ]
        try:
            next_tick = time.monotonic()
            while not self._stop.wait(max(0.0, next_tick - time.monotonic())):
                now = time.time()
                for device in self.devices:
                    device.publish_reading(now)
                next_tick += self.interval
                # Behind by more than a tick (a paused process): carry on from now.
                next_tick = max(next_tick, time.monotonic() - self.interval)
        finally:
            for device in self.devices:
                device.close()

    def stop(self) -> None:
        self._stop.set()


class Command(BaseCommand):
    help = "Simulate the demo devices (seed_demo_iot) publishing to the platform's broker until SIGTERM."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--interval", type=float, default=1.0, help="seconds between readings (default 1)"
        )
        parser.add_argument(
            "--warm-up-every",
            type=float,
            default=300.0,
            help="about how many seconds between the freezer's warm-ups; 0 for none (default 300)",
        )
        parser.add_argument(
            "--devices", default="", help="comma-separated demo device keys (default: all of them)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        interval: float = options["interval"]
        if not 0.05 <= interval <= 3600:
            raise CommandError(f"--interval must be between 0.05 and 3600 seconds, not {interval}")
        known = {spec.key: spec for spec in DEMO_DEVICES}
        wanted = [key.strip() for key in options["devices"].split(",") if key.strip()] or list(known)
        unknown = sorted(set(wanted) - set(known))
        if unknown:
            raise CommandError(
                f"--devices: unknown demo devices {', '.join(unknown)}; known: {', '.join(known)}"
            )
        broker = broker_settings()

        def log(line: str) -> None:
            self.stdout.write(f"{datetime.now(UTC):%H:%M:%S} iot_simulate: {line}")
            self.stdout.flush()

        simulator = DemoSimulator(
            broker.host,
            broker.port,
            [known[key] for key in wanted],
            interval=interval,
            warm_up_every=max(0.0, options["warm_up_every"]),
            log=log,
        )
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: simulator.stop())
        log(
            f"{len(wanted)} demo devices on mqtt://{broker.host}:{broker.port}, a reading every {interval:g}s"
        )
        simulator.run()
        log(
            "stopped: "
            + ", ".join(f"{device.spec.key} {device.published} readings" for device in simulator.devices)
        )
