"""The demo devices of ``make run``: three devices, a day of their history and a rule.

``make run`` seeds them (``manage.py seed_demo_iot``) before the platform's broker starts,
so they are stored the way ``device_provision`` stores a device but without telling the
broker: ``manage.py mqtt_broker`` builds its clients from the database as it starts, and
the demo devices are among them. Their passwords are derived from SECRET_KEY
(``demo_device_password``), so the simulator (``manage.py iot_simulate``) can connect as
each of them without a password being stored anywhere.

The values follow ``DemoMetric.value`` (a sine around a base, with noise) both in the
seeded history and in the simulator, so the charts run on without a jump where the
history ends and the live readings begin.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Max

from iot.models import Device, DeviceStatus, Reading, Rule
from iot.services.broker import PasswordHash, password_hash, password_matches
from iot.services.partitions import partitions_ensure
from iot.services.rules import rule_save, rule_states_for_new_device
from iot.services.storage import Row, readings_store

HISTORY = timedelta(hours=24)
HISTORY_STEP = timedelta(minutes=1)
DEMO_RULE_KEY = "demo-freezer-too-warm"
DEMO_RECIPIENT = "demo-user"


@dataclass(frozen=True)
class DemoMetric:
    """A plausible signal: ``base`` plus a sine of ``amplitude`` over ``period`` seconds,
    with Gaussian ``noise``, rounded to ``decimals``."""

    name: str
    base: float
    amplitude: float
    period: float
    noise: float
    decimals: int = 2

    def value(self, at: float, rng: random.Random) -> float:
        """The value at ``at`` (seconds since the epoch)."""
        wave = self.amplitude * math.sin(2 * math.pi * at / self.period)
        return round(self.base + wave + rng.gauss(0.0, self.noise), self.decimals)


@dataclass(frozen=True)
class DemoDevice:
    key: str
    name: str
    kind: str
    metrics: tuple[DemoMetric, ...] = field(default_factory=tuple)


DEMO_DEVICES: tuple[DemoDevice, ...] = (
    DemoDevice(
        "boiler-1",
        "Boiler room",
        "boiler",
        (
            DemoMetric("temperature", 62.0, 6.0, 6 * 3600, 0.3, 1),
            DemoMetric("pressure", 1.6, 0.15, 3 * 3600, 0.02, 2),
        ),
    ),
    # A compressor cycle of 40 minutes, well below the demo rule's -10 °C: the simulator's
    # warm-ups (an open door) are what trip it.
    DemoDevice(
        "freezer-1", "Kitchen freezer", "freezer", (DemoMetric("temperature", -18.5, 1.2, 2400, 0.15, 1),)
    ),
    DemoDevice(
        "meter-1",
        "Main meter",
        "meter",
        (
            DemoMetric("power", 2.4, 1.1, 24 * 3600, 0.15, 2),
            DemoMetric("voltage", 230.0, 1.5, 1800, 0.4, 1),
        ),
    ),
)

# The demo rule (rule_save's API-style data): an alert to the demo user when the freezer is
# above -10 °C for 30 s, cleared once it is back at -15 °C or colder.
DEMO_RULE: dict[str, object] = {
    "key": DEMO_RULE_KEY,
    "name": "Freezer too warm",
    "devices": ["freezer-1"],
    "metric": "temperature",
    "op": ">",
    "threshold": -10,
    "for_seconds": 30,
    "clear_threshold": -15,
    "severity": "warning",
    "notify": {"recipients": [DEMO_RECIPIENT]},
}


def demo_device_password(key: str) -> str:
    """The MQTT password of demo device ``key``: derived from SECRET_KEY, so the seed and
    the simulator agree on it without storing it."""
    digest = hmac.new(settings.SECRET_KEY.encode(), f"iot.demo-device.{key}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(digest.digest()).decode().rstrip("=")


@dataclass
class Seeded:
    devices_created: list[str] = field(default_factory=list)
    readings: int = 0
    rule_created: bool = False


def _demo_device_ensure(spec: DemoDevice) -> tuple[Device, bool]:
    """The demo device's row, made if missing; a stored hash that no longer matches the
    derived password (SECRET_KEY changed) is replaced. Revoked devices stay revoked."""
    password = demo_device_password(spec.key)
    device = Device.objects.filter(key=spec.key).first()
    if device is None:
        stored = password_hash(password)
        with transaction.atomic():
            device = Device.objects.create(
                key=spec.key,
                name=spec.name,
                kind=spec.kind,
                mqtt_password_hash=stored.hash,
                mqtt_salt=stored.salt,
                mqtt_iterations=stored.iterations,
            )
            rule_states_for_new_device(device)
        return device, True
    current = PasswordHash(device.mqtt_password_hash, device.mqtt_salt, device.mqtt_iterations)
    if device.revoked_at is None and not password_matches(password, current):
        stored = password_hash(password)
        Device.objects.filter(pk=device.pk).update(
            mqtt_password_hash=stored.hash, mqtt_salt=stored.salt, mqtt_iterations=stored.iterations
        )
    return device, False


def _history_rows(device: Device, spec: DemoDevice, *, start: datetime, end: datetime) -> list[Row]:
    """One reading a minute of each metric, from ``start`` (a minute boundary) before ``end``."""
    rng = random.Random(f"{spec.key}:{start.isoformat()}")
    rows: list[Row] = []
    at = start
    while at < end:
        stamp = at.timestamp()
        for metric in spec.metrics:
            rows.append(Row(device.id, metric.name, at, metric.value(stamp, rng), at))
        at += HISTORY_STEP
    return rows


def demo_seed(*, now: datetime) -> Seeded:
    """Make the demo devices, top up their history to one reading a minute of each metric
    over the day before ``now``, and make the demo rule. Idempotent: what exists is kept
    (a rule edited since stays as edited), and the history is only filled in after each
    device's newest reading. ``ValidationFailed`` from rule_save when the demo recipient
    does not exist (seed_demo makes it)."""
    seeded = Seeded()
    partitions_ensure(now)
    first = (now - HISTORY).replace(second=0, microsecond=0)
    rows: list[Row] = []
    fresh: list[int] = []
    for spec in DEMO_DEVICES:
        device, created = _demo_device_ensure(spec)
        if created:
            seeded.devices_created.append(spec.key)
        if device.revoked_at is not None:
            continue
        newest = Reading.objects.filter(device_id=device.id, ts__gte=first).aggregate(newest=Max("ts"))[
            "newest"
        ]
        start = first if newest is None else newest.replace(second=0, microsecond=0) + HISTORY_STEP
        device_rows = _history_rows(device, spec, start=start, end=now.replace(second=0, microsecond=0))
        if device_rows and device.status in (DeviceStatus.NEVER, DeviceStatus.OFFLINE):
            fresh.append(device.id)
        rows.extend(device_rows)
    if rows:
        readings_store(rows, now=now)
        seeded.readings = len(rows)
        # Storing readings marks their devices online; the history says nothing of that
        # (the simulator says online when it connects).
        Device.objects.filter(id__in=fresh).update(status=DeviceStatus.OFFLINE, status_changed_at=now)
    if not Rule.objects.filter(key=DEMO_RULE_KEY).exists():
        rule_save(dict(DEMO_RULE))
        seeded.rule_created = True
    return seeded
