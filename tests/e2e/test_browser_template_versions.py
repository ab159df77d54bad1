"""Template versions in the admin, in headless Chromium (Debian's, driven by Playwright)
against a whole platform: a staff member writes a draft of a critical type's templates
with the live preview following every keystroke, asks for approval; a second staff
member approves it (now published) and sends a test to themself, which the pipeline
delivers rendered by that version."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.processes import wait_until
from tests.e2e.conftest import Stack, debian_chromium, platform_stack

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e-browser-template-versions")]

PASSWORD = "staff-password-1"
STAFF = """
from django.contrib.auth import get_user_model
from notifications.models import Recipient
User = get_user_model()
for name in ("ana", "bob"):
    user = User.objects.create_superuser(username=name, email=name + "@x.test", password="{password}")
Recipient.objects.create(external_id="bob-self", name="Bob", user=User.objects.get(username="bob"))
"""


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with platform_stack() as running:
        running.manage("shell", "-c", STAFF.format(password=PASSWORD))
        yield running


@pytest.fixture
def browser() -> Iterator[Any]:
    with debian_chromium() as chromium:
        yield chromium


def log_in(browser: Any, stack: Stack, username: str, url: str) -> Any:
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.goto(f"{stack.web_url}/admin/login/?next={url}")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("[type=submit]")
    page.wait_for_url(f"{stack.web_url}{url}")
    return page


def test_a_draft_previewed_live_is_approved_by_a_second_staff_member_and_sent_as_a_test(
    stack: Stack, browser: Any, tmp_path: Path
) -> None:
    key = f"e2e.alert.{uuid.uuid4().hex[:6]}"
    created = stack.api.post(
        "/api/v1/notification-types/",
        json={
            "key": key,
            "category": "critical",
            "channels": ["inapp", "email"],
            "templates": {
                "inapp": {"title": "Alert on order {{ data.order_id }}", "body": "", "url": ""},
                "email": {
                    "subject": "Order {{ data.order_id }}",
                    "html": "<p>Order <b>{{ data.order_id }}</b></p>",
                },
            },
            "variables": {"order_id": {"type": "integer", "example": 42}},
        },
    )
    assert created.status_code == 201, created.text
    with stack.db() as db:
        row = db.execute("SELECT id FROM notifications_notificationtype WHERE key = %s", [key]).fetchone()
    assert row is not None

    ana = log_in(
        browser, stack, "ana", f"/admin/notifications/templateversion/add/?notification_type={row[0]}"
    )
    ana.fill("input[name=note]", "say which account")
    ana.click("input[name=_continue]")
    ana.locator("#tv-preview").wait_for()
    preview = ana.locator("#tv-cards")
    preview.locator("[data-channel=inapp] .tv-title").filter(has_text="Alert on order 42").wait_for()
    assert "Order 42" in preview.locator("[data-channel=email] .tv-subject").inner_text()

    templates = ana.locator("#id_templates")
    templates.fill(templates.input_value().replace("Alert on order", "Account alert for order"))
    preview.locator("[data-channel=inapp] .tv-title").filter(has_text="Account alert for order 42").wait_for()
    templates.fill(templates.input_value().replace("{{ data.order_id }}</b>", "{{ data.account }}</b>"))
    ana.locator("#tv-live-errors").filter(has_text="uses data.account").wait_for()
    templates.fill(templates.input_value().replace("{{ data.account }}</b>", "{{ data.order_id }}</b>"))
    ana.locator("#tv-status[data-state=ready]").wait_for()
    ana.screenshot(path=str(tmp_path / "draft.png"), full_page=True)
    assert "Order 42" in ana.frame_locator("[data-channel=email] iframe").locator("body").inner_text()

    ana.click("input[name=_continue]")
    ana.locator(".messagelist").wait_for()
    ana.click("#tv-publish")
    ana.locator(".messagelist").filter(has_text="awaits the approval of a second staff member").wait_for()
    assert ana.locator("#tv-approve").count() == 0
    version_url = ana.url.split(stack.web_url, 1)[1]

    bob = log_in(browser, stack, "bob", version_url)
    assert "<ins>+Account alert for order {{ data.order_id }}</ins>" in bob.content()
    bob.click("#tv-approve")
    bob.locator(".messagelist").filter(has_text="Approved: version 2 is published.").wait_for()
    assert bob.locator(".tv-badge").first.inner_text() == "Published"
    bob.screenshot(path=str(tmp_path / "approved.png"), full_page=True)

    bob.click("#tv-send-test")
    bob.locator(".messagelist").filter(has_text="Test sent to you").wait_for()

    def delivered() -> Any:
        with stack.db() as db:
            return db.execute(
                """SELECT i.title, d.template_version FROM notifications_inboxitem i
                   JOIN notifications_delivery d ON d.id = i.delivery_id
                   JOIN notifications_recipient r ON r.id = i.recipient_id
                   WHERE r.external_id = 'bob-self'"""
            ).fetchone()

    assert wait_until(delivered, 30, interval=0.2, message="the test send never reached bob's inbox") == (
        "Account alert for order 42",
        2,
    )
