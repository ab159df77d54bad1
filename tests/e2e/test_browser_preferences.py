"""The preference center in headless Chromium (Debian's, driven by Playwright) against a
whole platform with the provider sandbox: what a person saves on /preferences/ changes
what the next event delivers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from harness.processes import wait_until
from tests.e2e.conftest import Stack, debian_chromium, log_in_as_demo, platform_stack

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e-browser-preferences")]

DEMO = "demo-user"  # seed_demo's recipient, linked to the login demo / demo-password
TEMPLATES = {
    "inapp": {"title": "{{ data.actor }} liked your post", "body": "", "url": ""},
    "email": {"subject": "{{ data.actor }} liked your post", "html": "<p>Liked</p>", "text": "Liked"},
    "push": {"title": "New like", "body": "{{ data.actor }} liked your post"},
}


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with platform_stack(with_sandbox=True) as running:
        # A "demo" key first, so seed_demo creates none and leaves var/demo-api-key alone.
        running.manage("create_api_key", "demo")
        running.manage("seed_demo", "--subscribers", "1")
        yield running


@pytest.fixture
def browser() -> Iterator[Any]:
    with debian_chromium() as chromium:
        yield chromium


def social_type(stack: Stack) -> str:
    """A social type sent in-app, by email and by push; returns its key."""
    key = f"e2e.prefs.{uuid.uuid4().hex[:8]}"
    body = {
        "key": key,
        "name": f"Liked {key[-8:]}",
        "category": "social",
        "channels": ["inapp", "email", "push"],
        "templates": TEMPLATES,
    }
    response = stack.api.post("/api/v1/notification-types/", json=body)
    assert response.status_code == 201, response.text
    return key


def log_in_to_preferences(page: Any, stack: Stack) -> None:
    log_in_as_demo(page, f"{stack.web_url}/preferences/")


def deliveries(stack: Stack, event_id: str) -> dict[str, dict[str, Any]]:
    response = stack.api.get(f"/api/v1/events/{event_id}/deliveries/")
    assert response.status_code == 200, response.text
    return {row["channel"]: row for row in response.json()["results"]}


def wait_for_statuses(stack: Stack, event_id: str, wanted: dict[str, set[str]]) -> dict[str, dict[str, Any]]:
    """Poll the event's deliveries until each channel's status is one of ``wanted``'s."""

    def reached() -> dict[str, dict[str, Any]] | None:
        rows = deliveries(stack, event_id)
        ok = all(channel in rows and rows[channel]["status"] in s for channel, s in wanted.items())
        return rows if ok else None

    try:
        return wait_until(reached, 30, interval=0.2, message=f"deliveries never reached {wanted}")
    except TimeoutError as error:
        raise AssertionError(f"{error}: {deliveries(stack, event_id)}") from None


def test_it_suppresses_the_channel_a_person_turned_off_in_the_page(stack: Stack, browser: Any) -> None:
    # given a social type on three channels, and the demo user on their preference center
    key = social_type(stack)
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    log_in_to_preferences(page, stack)
    email_box = page.locator(f'input[type=checkbox][name="type:{key}:email"]')
    assert email_box.is_checked()
    assert page.get_by_label(f"Liked {key[-8:]} by Email").count() == 1

    # when they untick the type's email and save (the script posts in the background)
    email_box.uncheck()
    page.click("#save-preferences")
    page.wait_for_function(
        "() => document.querySelector('#save-status').textContent === 'Saved'", timeout=10_000
    )
    assert not email_box.is_checked()
    assert page.url.endswith("/preferences/")  # no reload, no redirect
    stored = stack.api.get(f"/api/v1/recipients/{DEMO}/preferences/").json()
    assert stored["types"] == {key: {"email": False}}

    # and an event of the type is sent through the API
    event_id = stack.send(type=key, recipients=[DEMO], data={"actor": "Ana"})

    # then its email is suppressed by the preference, and in-app and push are delivered
    rows = wait_for_statuses(
        stack,
        event_id,
        {"email": {"suppressed"}, "inapp": {"delivered", "read"}, "push": {"sent", "delivered"}},
    )
    assert rows["email"]["reason"] == "preference: opted out" and rows["email"]["attempts"] == 0


def test_it_saves_without_javascript_and_says_so(stack: Stack, browser: Any) -> None:
    # given the preference center in a browser with JavaScript off
    key = social_type(stack)
    context = browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        log_in_to_preferences(page, stack)

        # when the type's push is unticked, quiet hours set, and the form submitted
        page.uncheck(f'input[type=checkbox][name="type:{key}:push"]')
        page.fill("#quiet-start", "23:00")
        page.fill("#quiet-end", "06:30")
        page.select_option("#digest-social", "weekly")
        page.click("#save-preferences")
        page.wait_for_url("**/preferences/")

        # then the page comes back saying so, showing what was stored
        page.wait_for_selector(".flash >> text=Saved", timeout=10_000)
        assert not page.locator(f'input[type=checkbox][name="type:{key}:push"]').is_checked()
        assert page.input_value("#quiet-start") == "23:00"
        stored = stack.api.get(f"/api/v1/recipients/{DEMO}/preferences/").json()
        assert stored["types"][key] == {"push": False}
        assert stored["quiet_hours"] == {"start": "23:00", "end": "06:30"}
        assert stored["digest"] == {"social": "weekly"}
    finally:
        context.close()
        # Leave the demo user as the other test expects: no quiet hours, no overrides.
        reset: dict[str, Any] = {
            "channels": {},
            "categories": {},
            "types": {},
            "quiet_hours": None,
            "digest": {},
        }
        assert stack.api.put(f"/api/v1/recipients/{DEMO}/preferences/", json=reset).status_code == 200
