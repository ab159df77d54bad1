"""The /iot/ page in headless Chromium (Debian's, driven by Playwright) against a whole
platform with its own MQTT broker and ingest (``platform_stack(with_iot=True)``): a staff
user opens it, selects a device, and its chart moves when the device publishes a reading;
a rule made over the API opens an alert the page shows when a breaching reading arrives;
a command sent from the page's form reaches the device, which acknowledges it, and the
page says so; the range buttons and a drag across a chart reload the history at the
resolution the server picks; a refused command shows its error beside the field.

The devices are provisioned through ``POST /api/v1/iot/devices/`` and publish with
paho-mqtt under their own credentials (tests/iot/device_client.py), as real ones do; the
ingest stores their readings and tells the web process, whose socket tells the page. The
history (an hour of readings, a day of minute rollups) and the seeded alert are inserted
in SQL in the stack's database."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Stack, debian_chromium, platform_stack
from tests.iot.device_client import SimulatedDevice

pytestmark = pytest.mark.xdist_group("browser-iot")

TIMEOUT_MS = 15_000
SCREENSHOTS = Path("/tmp/iot-screenshots")
PASSWORD = "a-long-test-password"
DEVICE = "boiler-1"

# A staff user, three devices (one with an hour of readings and a day of minute rollups)
# and an open alert, in the stack's database.
SEED = f"""
# In a function: manage.py shell -c runs the code with separate globals and locals.
def seed():
    import math
    from datetime import timedelta
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.utils.timezone import now
    from iot.models import Alert, Device, Rule
    from iot.services.partitions import partitions_ensure

    User = get_user_model()
    for username, staff in (("ops", True), ("viewer", False)):
        user, _ = User.objects.get_or_create(username=username)
        user.is_staff = staff
        user.set_password({PASSWORD!r})
        user.save()
    at = now()
    partitions_ensure(at)
    # Provisioned over the API already; given a past here.
    Device.objects.filter(key={DEVICE!r}).update(
        status="online", last_seen_at=at - timedelta(seconds=20),
        latest={{"temperature": {{"ts": at.isoformat(), "value": 21.4}}, "humidity": {{"ts": at.isoformat(), "value": 48.0}}}},
    )
    Device.objects.filter(key="pump-7").update(
        status="offline", last_seen_at=at - timedelta(hours=3), latest={{"pressure": {{"ts": at.isoformat(), "value": 2.1}}}},
    )
    boiler = Device.objects.get(key={DEVICE!r})
    pump = Device.objects.get(key="pump-7")
    rule = Rule.objects.create(key="pump-pressure-low", metric="pressure", op="<", threshold=2.5, notify={{}}, severity="critical")
    Alert.objects.create(rule=rule, device=pump, value=2.1, opened_at=at - timedelta(minutes=42))
    with connection.cursor() as cursor:
        for n in range(1, 100):
            ts = at - timedelta(seconds=30 * n)
            for metric, value in (("temperature", 21 + math.sin(n / 9) * 1.5), ("humidity", 48 + math.cos(n / 13) * 4)):
                cursor.execute(
                    "INSERT INTO iot_reading (device_id, metric, ts, value, received_at) VALUES (%s, %s, %s, %s, %s)",
                    [boiler.id, metric, ts, value, ts],
                )
        minute = at.replace(second=0, microsecond=0)
        for n in range(1, 24 * 60):
            bucket = minute - timedelta(minutes=n)
            for metric, base in (("temperature", 21), ("humidity", 48)):
                avg = base + math.sin(n / 90) * 2
                cursor.execute(
                    "INSERT INTO iot_rollup_minute (device_id, metric, bucket, count, sum, min, max)"
                    " VALUES (%s, %s, %s, 2, %s, %s, %s)",
                    [boiler.id, metric, bucket, avg * 2, avg - 0.6, avg + 0.6],
                )


seed()
"""


# Provisioned through the API: key -> (kind, name).
DEVICES = {
    DEVICE: ("thermo", "Boiler room"),
    "pump-7": ("pump", "Cellar pump"),
    "meter-2": ("meter", "Hall meter"),
}


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with platform_stack(with_iot=True) as running:
        yield running


@pytest.fixture(scope="module")
def credentials(stack: Stack) -> dict[str, dict[str, Any]]:
    """Each device's MQTT credentials, as ``POST /api/v1/iot/devices/`` hands them out once;
    then the history seeded."""
    handed_out = {}
    for key, (kind, name) in DEVICES.items():
        response = stack.api.post("/api/v1/iot/devices/", json={"key": key, "kind": kind, "name": name})
        assert response.status_code == 201, response.text
        handed_out[key] = response.json()["mqtt"]
    stack.manage("shell", "-c", SEED)
    return handed_out


def _device(credentials: dict[str, dict[str, Any]], key: str) -> SimulatedDevice:
    """``key`` connected to the stack's broker with its own credentials (closed by the caller)."""
    mqtt = credentials[key]
    device = SimulatedDevice(mqtt["host"], mqtt["port"], mqtt["username"], mqtt["password"])
    assert device.wait_connected(), f"the broker refused {key}"
    return device


@pytest.fixture(scope="module")
def boiler(credentials: dict[str, dict[str, Any]]) -> Iterator[SimulatedDevice]:
    device = _device(credentials, DEVICE)
    yield device
    device.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with debian_chromium() as launched:
        yield launched


def _logged_in(browser: Any, stack: Stack, username: str, path: str) -> Any:
    ctx = browser.new_context(viewport={"width": 1360, "height": 900})
    page = ctx.new_page()
    page.goto(f"{stack.web_url}/accounts/login/?next={path}")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("[type=submit]")
    page.wait_for_url(f"{stack.web_url}{path}")
    return page


def _points(page: Any, metric: str) -> int:
    return int(page.get_attribute(f'.chart[data-metric="{metric}"]', "data-points") or 0)


def _shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_a_staff_users_live_chart_moves_when_the_device_publishes_a_reading(
    browser: Any, stack: Stack, credentials: dict[str, dict[str, Any]], boiler: SimulatedDevice
) -> None:
    page = _logged_in(browser, stack, "ops", "/iot/")
    page.click(f'.device-row[data-key="{DEVICE}"]')
    page.wait_for_url(f"**/iot/?device={DEVICE}")
    page.wait_for_selector('#iot-status[data-state="live"]', timeout=TIMEOUT_MS)
    page.wait_for_selector('.chart[data-metric="temperature"][data-state="ready"]', timeout=TIMEOUT_MS)
    page.wait_for_function(
        "document.querySelector('.chart[data-metric=\"temperature\"]').dataset.points > 90",
        timeout=TIMEOUT_MS,
    )
    assert page.text_content("#resolution") == "Raw readings"
    before = _points(page, "temperature")
    _shot(page, "iot-live-before")

    ts = int(time.time() * 1000)
    boiler.telemetry({"temperature": 24.5}, ts=ts - 500)
    boiler.telemetry({"temperature": 25.25}, ts=ts)
    pump = _device(credentials, "pump-7")
    pump.telemetry({"pressure": 1.9}, ts=ts)
    # Connecting, a device says online on devices/{key}/status (its last will says offline).
    meter = _device(credentials, "meter-2")

    page.wait_for_function(
        f"document.querySelector('.chart[data-metric=\"temperature\"]').dataset.lastX === '{ts}'",
        timeout=TIMEOUT_MS,
    )
    assert _points(page, "temperature") == before + 2
    assert page.text_content('.chart[data-metric="temperature"] .chart-value') == "25.25"
    page.wait_for_selector('.device-row[data-key="meter-2"] .dot[data-status="online"]', timeout=TIMEOUT_MS)
    assert page.text_content('.device-row[data-key="pump-7"] .latest-value[data-metric="pressure"]') == "1.9"
    # Its reading stored, the offline pump is online again.
    page.wait_for_selector('.device-row[data-key="pump-7"] .dot[data-status="online"]', timeout=TIMEOUT_MS)
    # A metric the device had not reported before gets a chart of its own.
    boiler.telemetry({"co2": 612.0}, ts=ts + 1000)
    page.wait_for_selector('.chart[data-metric="co2"][data-points="1"]', timeout=TIMEOUT_MS)
    _shot(page, "iot-live-after")
    page.set_viewport_size({"width": 420, "height": 900})
    page.wait_for_function("document.querySelector('.chart .u-over').getBoundingClientRect().width < 400")
    # Nothing wider than the window, the top bar with its IoT link included.
    assert page.evaluate("document.documentElement.scrollWidth") <= 420
    assert page.evaluate("document.querySelector('.topbar').getBoundingClientRect().right") <= 420
    _shot(page, "iot-narrow")
    page.context.close()
    pump.close()
    meter.close()


def test_ranges_and_a_drag_reload_the_history_at_the_resolution_the_server_picks(
    browser: Any, stack: Stack, credentials: dict[str, dict[str, Any]]
) -> None:
    page = _logged_in(browser, stack, "ops", f"/iot/?device={DEVICE}")
    page.wait_for_selector('.chart[data-metric="temperature"][data-state="ready"]', timeout=TIMEOUT_MS)

    page.click('.range[data-seconds="86400"]')
    page.wait_for_selector('#resolution[data-bucket="1m"]', timeout=TIMEOUT_MS)
    page.wait_for_function(
        "document.querySelector('.chart[data-metric=\"temperature\"]').dataset.points > 1000",
        timeout=TIMEOUT_MS,
    )
    assert page.get_attribute('.range[data-seconds="86400"]', "aria-pressed") == "true"
    _shot(page, "iot-24h-rollups")

    # Drag across the newest tenth of the day: a fixed range of about 2 hours, raw readings.
    box = page.locator('.chart[data-metric="temperature"] .u-over').bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.89, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.995, y, steps=5)
    page.mouse.up()
    page.wait_for_selector("#zoom-reset:not(.hidden)", timeout=TIMEOUT_MS)
    page.wait_for_selector('#resolution[data-bucket="raw"]', timeout=TIMEOUT_MS)
    assert page.get_attribute("#live-chip", "class").split() == ["chip", "live-chip", "paused"]
    page.wait_for_function(
        "document.querySelector('.chart[data-metric=\"temperature\"]').dataset.points > 50",
        timeout=TIMEOUT_MS,
    )
    _shot(page, "iot-zoomed")

    page.click("#zoom-reset")
    page.wait_for_selector('#resolution[data-bucket="1m"]', timeout=TIMEOUT_MS)
    assert page.text_content("#live-chip") == "Live"
    page.context.close()


def test_a_rule_made_over_the_api_opens_an_alert_the_page_shows(
    browser: Any, stack: Stack, credentials: dict[str, dict[str, Any]], boiler: SimulatedDevice
) -> None:
    page = _logged_in(browser, stack, "ops", f"/iot/?device={DEVICE}")
    page.wait_for_selector('#iot-status[data-state="live"]', timeout=TIMEOUT_MS)
    assert page.text_content("#alerts-count") == "1"
    ops, _ = stack.create_recipient("ops")
    rule = {
        "key": "boiler-too-hot",
        "name": "Boiler too hot",
        "devices": [DEVICE],
        "metric": "temperature",
        "op": ">",
        "threshold": 80,
        "clear_threshold": 70,
        "severity": "critical",
        "notify": {"recipients": [ops]},
    }
    response = stack.api.post("/api/v1/iot/rules/", json=rule)
    assert response.status_code == 201, response.text

    # The ingest picks a new rule up within IOT_RULES_CACHE_SECONDS: the device goes on
    # publishing too hot a temperature, once a second, until the page shows the alert.
    alert = '.alert-item[data-rule="boiler-too-hot"]'
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while not page.query_selector(alert):
        assert time.monotonic() < deadline, "the alert never showed"
        boiler.telemetry({"temperature": 86.5}, ts=int(time.time() * 1000))
        page.wait_for_timeout(1000)
    assert page.text_content(f"{alert} .device-key") == DEVICE
    assert page.text_content(f"{alert} .alert-reason") == "threshold · 86.5"
    assert "severity-critical" in (page.get_attribute(alert, "class") or "")
    assert page.text_content("#alerts-count") == "2"
    _shot(page, "iot-alert-open")

    # Back under the clear threshold: the alert resolves and leaves the panel.
    boiler.telemetry({"temperature": 64.0}, ts=int(time.time() * 1000))
    page.wait_for_selector(alert, state="detached", timeout=TIMEOUT_MS)
    assert page.text_content("#alerts-count") == "1"
    page.context.close()


def test_a_command_from_the_page_reaches_the_device_and_its_acknowledgement_shows(
    browser: Any, stack: Stack, credentials: dict[str, dict[str, Any]], boiler: SimulatedDevice
) -> None:
    page = _logged_in(browser, stack, "ops", f"/iot/?device={DEVICE}")
    page.wait_for_selector('#iot-status[data-state="live"]', timeout=TIMEOUT_MS)

    page.fill("#command-name", "reboot")
    page.fill("#command-params", '{"delay": 5}')
    page.click("#command-send")
    received = json.loads(boiler.wait_for("commands", timeout=TIMEOUT_MS / 1000))
    assert (received["name"], received["params"]) == ("reboot", {"delay": 5})
    page.wait_for_selector(f'.command[data-id="{received["id"]}"]', timeout=TIMEOUT_MS)
    _shot(page, "iot-command-sent")

    boiler.publish("commands/ack", {"id": received["id"], "ok": True, "result": {"rebooted": True}})
    entry = f'.command[data-id="{received["id"]}"]'
    page.wait_for_selector(f'{entry}[data-status="acked"]', timeout=TIMEOUT_MS)
    assert page.text_content(f"{entry} .command-status") == "acknowledged"
    assert page.text_content(f"{entry} .command-result") == '{"rebooted":true}'
    _shot(page, "iot-command-acked")
    page.context.close()


def test_a_refused_command_shows_its_error_beside_the_field(
    browser: Any, stack: Stack, credentials: dict[str, dict[str, Any]]
) -> None:
    page = _logged_in(browser, stack, "ops", f"/iot/?device={DEVICE}")
    page.wait_for_selector('#iot-status[data-state="live"]', timeout=TIMEOUT_MS)

    page.fill("#command-name", "reboot")
    page.fill("#command-params", "[1, 2]")
    page.click("#command-send")
    page.wait_for_selector("#command-params-error:not(.hidden)", timeout=TIMEOUT_MS)
    assert "JSON object" in page.text_content("#command-params-error")

    page.fill("#command-name", "9 lives")
    page.fill("#command-params", '{"delay": 5}')
    page.click("#command-send")
    page.wait_for_selector("#command-name-error:not(.hidden)", timeout=TIMEOUT_MS)
    assert "9 lives" in page.text_content("#command-name-error")
    assert page.get_attribute("#command-name", "aria-invalid") == "true"
    _shot(page, "iot-command-error")
    page.context.close()


def test_a_user_who_is_not_staff_is_refused_the_page(
    browser: Any, stack: Stack, credentials: dict[str, dict[str, Any]]
) -> None:
    ctx = browser.new_context()
    page = ctx.new_page()
    page.goto(f"{stack.web_url}/accounts/login/?next=/iot/")
    page.fill("input[name=username]", "viewer")
    page.fill("input[name=password]", PASSWORD)
    with page.expect_response(lambda r: r.url.endswith("/iot/")) as answer:
        page.click("[type=submit]")
    assert answer.value.status == 403
    assert page.text_content("h1") == "Staff only"
    ctx.close()
