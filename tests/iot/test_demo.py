"""The IoT demo of make run: ``seed_demo_iot`` (iot/services/demo.py) and ``iot_simulate``.

The seed makes three devices the broker lets in once it rebuilds its clients from the
database, a day of their history and a rule; run again, it changes nothing. The simulator
runs as make run starts it (its own process) against a private broker rebuilt from the
seeded database, with the ingest on a thread here: its readings are stored, it answers a
command, and SIGTERM stops it cleanly with its devices reported offline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.utils import timezone

from harness.mqtt import PrivateBroker
from iot.management.commands.iot_simulate import WARM_UP_FALL, WARM_UP_HOLD, WARM_UP_RISE, warm_up_temperature
from iot.models import Command, CommandStatus, Device, Reading, RollupHour, Rule
from iot.services.broker import PasswordHash, password_matches
from iot.services.commands import command_send
from iot.services.demo import DEMO_DEVICES, DEMO_RULE_KEY, demo_device_password, demo_seed
from iot.services.devices import device_credentials_active
from iot.services.ingest import Ingest
from project.processes.waiting import wait_until
from tests.notifications.factories import RecipientFactory

pytestmark = pytest.mark.django_db(transaction=True)

REPO_ROOT = Path(__file__).resolve().parents[2]
METRICS = sum(len(spec.metrics) for spec in DEMO_DEVICES)


@pytest.fixture
def demo_user() -> Any:
    return RecipientFactory(external_id="demo-user", name="Demo User", email="demo@example.com")


def _readings(key: str) -> int:
    return Reading.objects.filter(device_id=Device.objects.get(key=key).id).count()


def test_it_seeds_the_devices_a_day_of_history_and_the_rule_once(demo_user: Any) -> None:
    started = time.monotonic()
    call_command("seed_demo_iot", stdout=open(os.devnull, "w"))  # noqa: SIM115
    took = time.monotonic() - started

    devices = {device.key: device for device in Device.objects.all()}
    assert sorted(devices) == ["boiler-1", "freezer-1", "meter-1"]
    for spec in DEMO_DEVICES:
        device = devices[spec.key]
        assert device.kind == spec.kind
        stored = PasswordHash(device.mqtt_password_hash, device.mqtt_salt, device.mqtt_iterations)
        assert password_matches(demo_device_password(spec.key), stored)
        # A reading a minute of each metric over the day, as history: the device is not online.
        assert _readings(spec.key) == 1440 * len(spec.metrics)
        assert device.status == "offline" and set(device.latest) == {m.name for m in spec.metrics}
        assert RollupHour.objects.filter(device=device).count() >= 24 * len(spec.metrics)
    assert took < 10, f"seeding took {took:.1f}s"
    rule = Rule.objects.get(key=DEMO_RULE_KEY)
    assert [d.key for d in rule.devices.all()] == ["freezer-1"]
    assert (rule.metric, rule.op, rule.threshold, rule.for_seconds, rule.clear_threshold) == (
        "temperature", ">", -10.0, 30.0, -15.0,
    )  # fmt: skip
    assert rule.notify == {"type": "iot.alert", "recipients": ["demo-user"]}

    # Again: nothing new but the minutes that passed meanwhile, and an edited rule stays.
    Rule.objects.filter(key=DEMO_RULE_KEY).update(threshold=-8)
    readings = Reading.objects.count()
    call_command("seed_demo_iot", stdout=open(os.devnull, "w"))  # noqa: SIM115
    assert Device.objects.count() == 3 and Rule.objects.count() == 1
    assert Reading.objects.count() - readings <= METRICS
    assert Rule.objects.get(key=DEMO_RULE_KEY).threshold == -8


def test_the_history_is_topped_up_after_the_newest_reading(demo_user: Any) -> None:
    now = timezone.now()
    demo_seed(now=now)
    later = demo_seed(now=now + timedelta(minutes=10))
    assert later.devices_created == [] and not later.rule_created
    assert later.readings == 10 * METRICS
    assert _readings("freezer-1") == 1440 + 10


def test_a_freezer_warm_up_trips_the_demo_rule_and_clears_it() -> None:
    base = -18.5
    values = [
        warm_up_temperature(base, float(second))
        for second in range(int(WARM_UP_RISE + WARM_UP_HOLD + WARM_UP_FALL) + 5)
    ]
    above = [second for second, value in enumerate(values) if value > -10]
    # One run above -10 °C, longer than the rule's 30 s, then back to -15 °C or colder.
    assert above == list(range(above[0], above[-1] + 1))
    assert 45 <= len(above) <= 120
    assert values[-1] == base and min(values[above[-1] + 1 :]) <= -15


@pytest.fixture
def seeded_broker(broker: PrivateBroker, demo_user: Any) -> PrivateBroker:
    """The demo seeded, then the broker restarted on files rebuilt from the database, as
    make run starts ``mqtt_broker`` after ``seed_demo_iot``."""
    demo_seed(now=timezone.now())
    broker.restart(rewrite=True, devices=device_credentials_active())
    return broker


def _simulator(broker: PrivateBroker, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "project.settings.test",
        "SECRET_KEY": settings.SECRET_KEY,
        "MQTT_HOST": broker.settings.host,
        "MQTT_PORT": str(broker.port),
    }
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "manage.py"), "iot_simulate", "--interval", "0.2"],
            cwd=REPO_ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


def test_the_simulated_devices_publish_answer_a_command_and_stop_on_sigterm(
    seeded_broker: PrivateBroker, ingest: Ingest, tmp_path: Path
) -> None:
    log = tmp_path / "iot_simulate.log"
    process = _simulator(seeded_broker, log)
    try:
        history = {spec.key: _readings(spec.key) for spec in DEMO_DEVICES}

        def publishing() -> bool:
            return all(
                _readings(spec.key) >= history[spec.key] + 3 * len(spec.metrics) for spec in DEMO_DEVICES
            )

        wait_until(publishing, 20, message=f"readings never stored; simulator log:\n{log.read_text()}")
        assert set(Device.objects.values_list("status", flat=True)) == {"online"}

        freezer = Device.objects.get(key="freezer-1")
        command = command_send(freezer, name="reboot", params={"delay": 0})
        assert command.status == CommandStatus.SENT
        wait_until(
            lambda: Command.objects.get(pk=command.pk).status == CommandStatus.ACKED,
            10,
            message=f"the command was never acknowledged; simulator log:\n{log.read_text()}",
        )
        answered = Command.objects.get(pk=command.pk)
        assert answered.ok is True and answered.result == {"rebooted": True, "uptime_s": 0}

        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(5) == 0, log.read_text()
        assert time.monotonic() - started < 3
        wait_until(
            lambda: set(Device.objects.values_list("status", flat=True)) == {"offline"},
            10,
            message="the devices were not reported offline",
        )
        assert "stopped: boiler-1" in log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
