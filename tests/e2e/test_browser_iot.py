"""The /iot/ page in headless Chromium (Debian's, driven by Playwright) against a whole
platform: a staff user opens it, selects a device, and its chart moves when a reading
arrives on the live channel; the range buttons and a drag across a chart reload the
history at the resolution the server picks; a command is sent from the form and its
refusal is shown beside the field.

How readings reach the page here: the test process publishes the ingest's live message
with ``iot.services.live.live_publish`` on the stack's Redis and namespace (``_publish``),
exactly what ``manage.py mqtt_ingest`` publishes after it stores a batch; the web
process's socket (iot/consumers.py) forwards it to the page. The history is inserted in
SQL in the stack's database."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings

from iot.services.live import live_publish
from realtime.redis_client import redis_sync
from tests.e2e.conftest import Stack, debian_chromium, platform_stack

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
    boiler = Device.objects.create(
        key={DEVICE!r}, name="Boiler room", kind="thermo", mqtt_password_hash="h", mqtt_salt="s",
        status="online", last_seen_at=at - timedelta(seconds=20),
        latest={{"temperature": {{"ts": at.isoformat(), "value": 21.4}}, "humidity": {{"ts": at.isoformat(), "value": 48.0}}}},
    )
    pump = Device.objects.create(
        key="pump-7", name="Cellar pump", kind="pump", mqtt_password_hash="h", mqtt_salt="s",
        status="offline", last_seen_at=at - timedelta(hours=3), latest={{"pressure": {{"ts": at.isoformat(), "value": 2.1}}}},
    )
    Device.objects.create(key="meter-2", name="Hall meter", kind="meter", mqtt_password_hash="h", mqtt_salt="s")
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


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with platform_stack() as running:
        running.manage("shell", "-c", SEED)
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with debian_chromium() as launched:
        yield launched


@contextlib.contextmanager
def _on_stack_redis(stack: Stack) -> Iterator[None]:
    """The settings pointed at the stack's Redis and namespace (the stack's processes get
    the test process's REDIS_NAMESPACE through their environment)."""
    redis_sync.cache_clear()
    try:
        with override_settings(
            REDIS_URL=stack.redis.url, REDIS_NAMESPACE=stack.env.get("REDIS_NAMESPACE", "")
        ):
            yield
    finally:
        redis_sync.cache_clear()


def _publish(stack: Stack, message: dict[str, Any]) -> None:
    """What the ingest publishes after storing a batch (iot/services/live.py)."""
    with _on_stack_redis(stack):
        live_publish(message)


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


def test_a_staff_users_live_chart_moves_when_a_reading_arrives(browser: Any, stack: Stack) -> None:
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
    _publish(
        stack,
        {
            "readings": {
                DEVICE: {"temperature": [[ts - 500, 24.5], [ts, 25.25]]},
                "pump-7": {"pressure": [[ts, 1.9]]},
            },
            "status": {"meter-2": "online"},
        },
    )

    page.wait_for_function(
        f"document.querySelector('.chart[data-metric=\"temperature\"]').dataset.lastX === '{ts}'",
        timeout=TIMEOUT_MS,
    )
    assert _points(page, "temperature") == before + 2
    assert page.text_content('.chart[data-metric="temperature"] .chart-value') == "25.25"
    page.wait_for_selector('.device-row[data-key="meter-2"] .dot[data-status="online"]', timeout=TIMEOUT_MS)
    assert page.text_content('.device-row[data-key="pump-7"] .latest-value[data-metric="pressure"]') == "1.9"
    # A metric the device had not reported before gets a chart of its own.
    _publish(stack, {"readings": {DEVICE: {"co2": [[ts + 1000, 612.0]]}}})
    page.wait_for_selector('.chart[data-metric="co2"][data-points="1"]', timeout=TIMEOUT_MS)
    _shot(page, "iot-live-after")
    page.set_viewport_size({"width": 420, "height": 900})
    page.wait_for_function("document.querySelector('.chart .u-over').getBoundingClientRect().width < 400")
    _shot(page, "iot-narrow")
    page.context.close()


def test_ranges_and_a_drag_reload_the_history_at_the_resolution_the_server_picks(
    browser: Any, stack: Stack
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


def test_a_refused_command_shows_its_error_beside_the_field(browser: Any, stack: Stack) -> None:
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


def test_a_user_who_is_not_staff_is_refused_the_page(browser: Any, stack: Stack) -> None:
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
