"""Campaigns against a whole platform (web, workers, beat): a throttled campaign paused
from its admin page in headless Chromium stops within a second, resumes where it stopped
and reaches every recipient exactly once, its chart over time drawn by the vendored chart
library (as the delivery charts are); a campaign cancelled through the API in the middle
of its send stops for good."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.processes import assert_steady, wait_until
from tests.e2e.conftest import Stack, debian_chromium, platform_stack

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e-campaigns")]

AUDIENCE = 240
THROTTLE = 30  # sends per second: the whole audience in about 8 s
PASSWORD = "staff-password-1"
STAFF = """
from django.contrib.auth import get_user_model
get_user_model().objects.create_superuser(username="ops", email="ops@x.test", password="{password}")
"""


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    # No marketing caps: the two campaigns here go to audiences of their own anyway.
    with platform_stack({"MARKETING_CAPS": ""}) as running:
        running.manage("shell", "-c", STAFF.format(password=PASSWORD))
        yield running


def _campaign(stack: Stack) -> int:
    """A marketing type, an audience of AUDIENCE fresh recipients on a topic, a draft."""
    suffix = uuid.uuid4().hex[:6]
    kind = stack.api.post(
        "/api/v1/notification-types/",
        json={
            "key": f"e2e.offer.{suffix}",
            "category": "marketing",
            "channels": ["inapp"],
            "templates": {"inapp": {"title": "{{ data.headline }}", "body": "", "url": ""}},
            "variables": {"headline": {"type": "string", "example": "Sale"}},
        },
    )
    assert kind.status_code == 201, kind.text
    people = [{"external_id": f"shopper-{suffix}-{i}", "name": f"Shopper {i}"} for i in range(AUDIENCE)]
    assert stack.api.post("/api/v1/recipients/bulk/", json={"recipients": people}).status_code == 200
    topic = f"e2e.shoppers.{suffix}"
    subscribed = stack.api.post(
        f"/api/v1/topics/{topic}/subscribers/", json={"recipients": [p["external_id"] for p in people]}
    )
    assert subscribed.status_code in (200, 201), subscribed.text
    created = stack.api.post(
        "/api/v1/campaigns/",
        json={
            "name": f"Sale {suffix}",
            "type": f"e2e.offer.{suffix}",
            "audience": {"topic": topic},
            "data": {"headline": f"Sale {suffix}"},
            "throttle_per_second": THROTTLE,
            "variants": [
                {"name": "A", "weight": 1},
                {"name": "B", "weight": 1, "data": {"headline": "B side"}},
            ],
        },
    )
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "draft"
    return int(created.json()["id"])


def _progress(stack: Stack, campaign_id: int) -> dict[str, Any]:
    response = stack.api.get(f"/api/v1/campaigns/{campaign_id}/")
    assert response.status_code == 200, response.text
    return dict(response.json())


def _sent(stack: Stack, campaign_id: int) -> int:
    return int(_progress(stack, campaign_id)["progress"]["sent"])


def _sending(stack: Stack, campaign_id: int, at_least: int) -> None:
    wait_until(
        lambda: _sent(stack, campaign_id) >= at_least, 30, interval=0.1, message=f"never sent {at_least}"
    )


def test_a_campaign_paused_from_its_page_stops_within_a_second_and_resumes_without_duplicates(
    stack: Stack, tmp_path: Path
) -> None:
    campaign_id = _campaign(stack)
    with debian_chromium() as browser:
        page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        url = f"/admin/notifications/campaign/{campaign_id}/change/"
        page.goto(f"{stack.web_url}/admin/login/?next={url}")
        page.fill("input[name=username]", "ops")
        page.fill("input[name=password]", PASSWORD)
        page.click("[type=submit]")
        page.locator("#campaign-live").wait_for()

        page.click("#campaign-start")
        page.locator(".messagelist").filter(has_text="Started: sending at 30 per second.").wait_for()
        _sending(stack, campaign_id, 60)
        page.wait_for_function("document.getElementById('bar-sent').style.width !== '0%'")
        page.screenshot(path=str(tmp_path / "running.png"), full_page=True)

        page.click("#campaign-pause")
        paused_at = time.monotonic()
        page.locator(".messagelist").filter(has_text="Paused").wait_for()
        assert time.monotonic() - paused_at < 1.0, "the pause answered within a second"
        settled = assert_steady(
            lambda: _sent(stack, campaign_id), 2.0, interval=0.2, message="sent after the pause"
        )
        assert _progress(stack, campaign_id)["status"] == "paused"
        assert settled < AUDIENCE
        page.locator("#campaign-status[data-status=paused]").wait_for()
        page.screenshot(path=str(tmp_path / "paused.png"), full_page=True)

        page.click("#campaign-resume")
        page.locator(".messagelist").filter(has_text="Resumed").wait_for()
        page.locator("#campaign-status[data-status=completed]").wait_for(timeout=60_000)
        # The chart over time is drawn by the vendored Chart.js, with what was sent in it.
        # Completed means every recipient was sent to; the counts shown may be a few seconds
        # older than the status (notifications/services/campaigns.py caches them).
        progress = wait_until(
            lambda: (p := _progress(stack, campaign_id))["progress"]["sent"] == AUDIENCE and p,
            10,
            interval=0.2,
            message=f"the counts never showed all {AUDIENCE} sent",
        )
        chart = page.locator("#campaign-chart canvas[data-drawn='1']")
        chart.wait_for()
        spec = page.evaluate("JSON.parse(document.querySelector('#campaign-chart canvas').dataset.chart)")
        sent_over_time = sum(v or 0 for s in spec["series"] if s["name"] == "sent" for v in s["values"])
        assert 0 < sent_over_time <= AUDIENCE, (spec, progress)
        page.screenshot(path=str(tmp_path / "completed.png"), full_page=True)

        page.goto(f"{stack.web_url}/admin/notifications/delivery/charts/")
        drawn = page.locator("canvas[data-drawn='1']")
        drawn.first.wait_for()
        assert drawn.count() == page.locator("canvas[data-chart]").count() == 5
        page.screenshot(path=str(tmp_path / "delivery-charts.png"), full_page=True)

    final = _progress(stack, campaign_id)
    assert final["progress"]["sent"] == AUDIENCE and final["status"] == "completed"
    assert sum(v["progress"]["sent"] for v in final["variants"]) == AUDIENCE
    with stack.db() as db:
        items = db.execute(
            """SELECT count(*), count(DISTINCT i.recipient_id) FROM notifications_inboxitem i
               JOIN notifications_event e ON e.id = i.event_id WHERE e.campaign_id = %s""",
            [campaign_id],
        ).fetchone()
    assert items == (AUDIENCE, AUDIENCE), "each recipient exactly once"


def test_a_campaign_cancelled_in_the_middle_stops_for_good(stack: Stack) -> None:
    campaign_id = _campaign(stack)
    assert stack.api.post(f"/api/v1/campaigns/{campaign_id}/start/").status_code == 200
    _sending(stack, campaign_id, 40)

    cancelled = stack.api.post(f"/api/v1/campaigns/{campaign_id}/cancel/")

    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    settled = assert_steady(
        lambda: _sent(stack, campaign_id), 2.0, interval=0.2, message="sent after the cancel"
    )
    assert settled < AUDIENCE
    again = stack.api.post(f"/api/v1/campaigns/{campaign_id}/resume/")
    assert again.status_code == 409 and "only a paused one resumes" in again.json()["errors"]["status"][0]


def test_campaign_traffic_waits_on_its_own_queue_and_never_delays_a_transactional_send(stack: Stack) -> None:
    """With the campaign worker stopped, a started campaign sends nothing (its pages and
    sends are on the campaign queue), while a transactional event to one of its recipients
    is delivered at once; the campaign goes out when its worker is back."""
    stack.processes.kill_worker("campaign", signal.SIGKILL)
    campaign_id = _campaign(stack)
    recipient = f"shopper-{_progress(stack, campaign_id)['type'].rsplit('.', 1)[1]}-0"
    assert stack.api.post(f"/api/v1/campaigns/{campaign_id}/start/").status_code == 200
    receipt = stack.create_type(f"e2e.receipt.{uuid.uuid4().hex[:6]}")

    event_id = stack.send(type=receipt["key"], recipients=[recipient], data={"title": "Your receipt"})

    def delivered() -> bool:
        rows = stack.api.get(f"/api/v1/events/{event_id}/deliveries/").json()["results"]
        return bool(rows) and rows[0]["status"] == "delivered"

    wait_until(delivered, 15, interval=0.1, message="the transactional send waited")
    assert _sent(stack, campaign_id) == 0, "nothing of the campaign went out without its worker"
    stack.processes.restart_worker("campaign")
    wait_until(
        lambda: _progress(stack, campaign_id)["status"] == "completed",
        60,
        interval=0.2,
        message="never completed",
    )
    assert _sent(stack, campaign_id) == AUDIENCE
