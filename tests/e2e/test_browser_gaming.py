"""The /play/ page in headless Chromium against real processes (web, beat's matchmaking,
a match server): two players find a match from their pages, one moves with the keyboard
and the other's page shows it, both see the round end with the standings and the
leaderboard; a reload while searching follows the same ticket, and one in the middle of
the match goes back into it. State reaches both pages over their WebRTC data channels.
Screenshots in /tmp/play-screenshots/."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Stack, debian_chromium, people_script, platform_stack

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("browser-gaming")]

TIMEOUT_MS = 30_000
SCREENSHOTS = Path("/tmp/play-screenshots")
PASSWORD = "a-long-test-password"
PEOPLE = {"ana": ("ana-arena", "Ana Arena"), "bob": ("bob-arena", "Bob Arena")}
MAKE_PEOPLE = people_script(PEOPLE, PASSWORD)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    env = {"GAMING_ARENA_ROUND_SECONDS": "12", "GAMING_FILL_SECONDS": "0.5"}
    with platform_stack(env, with_games=True) as running:
        running.manage("shell", "-c", MAKE_PEOPLE)
        yield running


def play_page(browser: Any, stack: Stack, username: str) -> Any:
    page = browser.new_context(viewport={"width": 1360, "height": 900}).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{stack.web_url}/accounts/login/?next=/play/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("[type=submit]")
    page.wait_for_url(f"{stack.web_url}/play/")
    page.locator("#board li").first.wait_for()
    return page


def positions(page: Any) -> dict[str, list[float]]:
    return dict(json.loads(page.locator("#play").get_attribute("data-positions") or "{}"))


def test_two_pages_play_each_other_and_each_sees_the_other_move(stack: Stack) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    with debian_chromium() as browser:
        ana, bob = play_page(browser, stack, "ana"), play_page(browser, stack, "bob")
        ana.screenshot(path=str(SCREENSHOTS / "idle.png"), full_page=True)
        ana.click("#find")
        ana.locator("#play[data-state=searching]").wait_for()
        # a reload while searching finds the same ticket again
        ana.reload()
        ana.locator("#play[data-state=searching]").wait_for()
        ana.locator("#cancel:not([hidden])").wait_for()
        bob.click("#find")
        for page in (ana, bob):
            page.locator("#play[data-state=playing][data-tick]").wait_for()
        assert ana.locator("#play").get_attribute("data-match") == bob.locator("#play").get_attribute(
            "data-match"
        )
        # state comes over each page's WebRTC data channel (the socket signalled it)
        for page in (ana, bob):
            page.locator("#play[data-transport=rtc]").wait_for()
        ana_id = PEOPLE["ana"][0]
        start = positions(bob)[ana_id]
        # ana walks towards the middle; bob's page shows her there
        ana.locator("#arena").focus()
        key = "KeyD" if start[0] < 600 else "KeyA"
        ana.keyboard.down(key)
        bob.wait_for_function(
            f"(() => {{ const p = JSON.parse(document.getElementById('play').dataset.positions || '{{}}');"
            f" return p[{ana_id!r}] && Math.abs(p[{ana_id!r}][0] - {start[0]}) > 60; }})()"
        )
        ana.keyboard.up(key)
        assert bob.locator("#play").get_attribute("data-transport") == "rtc"
        moved = positions(bob)[ana_id]
        assert moved[1] == start[1], "only along x"
        assert ana.locator("#score tr.me").count() == 1
        ana.screenshot(path=str(SCREENSHOTS / "playing-ana.png"), full_page=True)
        # bob reloads his page in the middle of the match: it takes him back into it
        bob.reload()
        bob.locator("#play[data-state=playing][data-tick]").wait_for()
        bob.locator("#play[data-transport=rtc]").wait_for()
        assert bob.locator("#play").get_attribute("data-match") == ana.locator("#play").get_attribute(
            "data-match"
        )
        bob.screenshot(path=str(SCREENSHOTS / "playing-bob.png"), full_page=True)
        # the round ends for both with the standings, and both are on the leaderboard
        for page in (ana, bob):
            page.locator("#over:not([hidden]) #standings li.me").wait_for()
            page.locator("#board li.me").wait_for()
        assert ana.locator("#standings li").count() == 2
        ana.screenshot(path=str(SCREENSHOTS / "over.png"), full_page=True)
