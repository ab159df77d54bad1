"""The viewer's page /live/{key}/ in headless Chromium against real processes (web, workers,
the stream ingest: nginx-rtmp and the ffmpeg ladder): ffmpeg publishes a test pattern; a
signed-in viewer's page goes LIVE, its video plays (currentTime advances), its quality menu
lists the ladder and a rendition picked from it is the one played; another signed-in
viewer's message appears in the first page as text (HTML in it shown, not run), a refused
one is named beside the input, a deleted one disappears, both are counted as viewers, and
a follow sticks; a visitor without an account watches and reads the chat; when the
publisher stops, the page goes Offline. An unknown key is a 404 page.
Screenshots in /tmp/live-screenshots/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Stack, debian_chromium, people_script, platform_stack
from tests.e2e.test_streaming_e2e import Publisher

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("browser-streaming")]

TIMEOUT_MS = 30_000
# From the publish to a playing picture: nginx, the ladder's first segments, hls.js.
LIVE_TIMEOUT_MS = 60_000
GRACE = 3.0
SCREENSHOTS = Path("/tmp/live-screenshots")
PASSWORD = "a-long-test-password"
PEOPLE = {"vic": ("vic-viewer", "Vic Viewer"), "cat": ("cat-chatter", "Cat Chatter")}
MAKE_PEOPLE = people_script(PEOPLE, PASSWORD)
KEY = "browser-pattern"
HOSTILE = "<b>bold</b> & <img src=x onerror=\"document.title='owned'\"> hello"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with platform_stack({"STREAMING_GRACE_SECONDS": str(GRACE)}, with_streaming=True) as running:
        running.manage("shell", "-c", MAKE_PEOPLE)
        yield running


def signed_in_page(browser: Any, stack: Stack, username: str, path: str) -> Any:
    page = browser.new_context(viewport={"width": 1440, "height": 900}).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{stack.web_url}/accounts/login/?next={path}")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("[type=submit]")
    page.wait_for_url(f"{stack.web_url}{path}")
    return page


def wait_until_playing(page: Any) -> None:
    """Until the video's currentTime has advanced by a second since it first moved."""
    page.wait_for_function("document.getElementById('video').currentTime > 0.5", timeout=LIVE_TIMEOUT_MS)
    start = page.evaluate("document.getElementById('video').currentTime")
    page.wait_for_function(
        f"document.getElementById('video').currentTime > {start + 1.0}", timeout=TIMEOUT_MS
    )


def chat_texts(page: Any) -> list[str]:
    return list(page.locator("#chat-messages .chat-message .chat-text").all_text_contents())


def delete_message_as_owner(stack: Stack, *, owner: str, text: str) -> None:
    stack.manage(
        "shell",
        "-c",
        f"""
from notifications.models import Recipient
from streaming.models import ChatMessage, Stream
from streaming.services.chat import chat_delete
stream = Stream.objects.get(key={KEY!r})
message = ChatMessage.objects.get(stream=stream, text={text!r})
chat_delete(stream=stream, moderator=Recipient.objects.get(external_id={owner!r}), message_id=message.id)
""",
    )


def test_a_viewer_watches_picks_a_quality_and_sees_another_viewers_chat(stack: Stack) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    # given a stream, and a test pattern published to it
    owner, _ = stack.create_recipient("creator")
    created = stack.api.post(
        "/api/v1/streams/", json={"key": KEY, "title": "Test pattern in a browser", "owner": owner}
    )
    assert created.status_code == 201, created.text
    publisher = Publisher(stack, created.json()["stream_key"])
    path = f"/live/{KEY}/"
    try:
        with debian_chromium() as browser:
            # when a signed-in viewer opens the page, it goes live and plays
            vic = signed_in_page(browser, stack, "vic", path)
            vic.locator("#badge[data-status=live]").wait_for(timeout=LIVE_TIMEOUT_MS)
            assert vic.locator("#badge").text_content() == "LIVE"
            wait_until_playing(vic)
            assert vic.locator("#cover").is_hidden()
            # hls.js transmuxes in its worker, off the page's main thread
            assert any(worker.url.endswith("/streaming/vendor/hls.worker.js") for worker in vic.workers)

            # the quality menu offers Auto and the ladder, and a pick is what plays
            vic.locator("#quality:enabled").wait_for()
            options = vic.locator("#quality option")
            assert [options.nth(i).get_attribute("data-rendition") for i in range(options.count())] == [
                "auto",
                "source",
                "480p",
                "360p",
            ]
            assert options.all_text_contents()[1:] == ["720p (source)", "480p", "360p"]
            vic.select_option("#quality", label="360p")
            vic.wait_for_function("document.getElementById('video').videoHeight === 360")
            assert vic.locator("#live").get_attribute("data-level") == "360p"
            vic.select_option("#quality", value="-1")
            vic.wait_for_function("document.getElementById('quality').options[0].text.startsWith('Auto (')")
            vic.locator("#chat-input:enabled").wait_for()

            # another signed-in viewer writes; the first page shows it as text, not as HTML
            cat = signed_in_page(browser, stack, "cat", path)
            cat.locator("#chat-input:enabled").wait_for()
            for page in (vic, cat):
                page.locator("#viewers[data-count='2']").wait_for()
            cat.fill("#chat-input", HOSTILE)
            cat.click("#chat-send")
            vic.locator("#chat-messages .chat-message", has_text="hello").wait_for()
            assert chat_texts(vic) == [HOSTILE]
            assert vic.locator("#chat-messages .chat-author").all_text_contents() == ["Cat Chatter"]
            assert vic.locator("#chat-messages b, #chat-messages img").count() == 0
            assert vic.title() != "owned"
            vic.fill("#chat-input", "Looks great from here")
            vic.press("#chat-input", "Enter")
            cat.locator("#chat-messages .chat-message", has_text="Looks great from here").wait_for()

            # a refused message is named beside the input, and its text is kept to fix it
            cat.fill("#chat-input", "more at example.com")
            cat.click("#chat-send")
            cat.locator("#chat-error:visible").wait_for()
            assert cat.locator("#chat-error").get_attribute("data-field") == "text"
            assert "Links are not allowed" in cat.locator("#chat-error").inner_text()
            assert cat.input_value("#chat-input") == "more at example.com"

            # the second viewer follows the creator, and it sticks
            cat.click("#follow[aria-pressed=false]")
            cat.locator("#follow[aria-pressed=true]").wait_for()
            assert cat.locator("#follow").inner_text() == "Following"
            cat.screenshot(path=str(SCREENSHOTS / "live-cat.png"), full_page=True)
            vic.screenshot(path=str(SCREENSHOTS / "live-vic.png"), full_page=True)

            # a visitor without an account watches and reads the chat, but cannot post
            visitor = browser.new_context(viewport={"width": 1440, "height": 900}).new_page()
            visitor.set_default_timeout(TIMEOUT_MS)
            visitor.goto(f"{stack.web_url}{path}")
            visitor.locator("#badge[data-status=live]").wait_for()
            wait_until_playing(visitor)
            visitor.locator("#chat-messages .chat-message", has_text="Looks great from here").wait_for()
            assert visitor.locator("#chat-form").count() == 0
            assert "Log in" in visitor.locator(".chat-note").inner_text()
            visitor.locator("#chat-state[data-state=live]").wait_for()
            assert visitor.locator("#chat-state").inner_text() == "Read only"
            visitor.screenshot(path=str(SCREENSHOTS / "live-visitor.png"), full_page=True)
            visitor.set_viewport_size({"width": 420, "height": 900})
            visitor.screenshot(path=str(SCREENSHOTS / "live-visitor-narrow.png"), full_page=True)

            # the owner deletes a message: it disappears from every page
            delete_message_as_owner(stack, owner=owner, text=HOSTILE)
            for page in (vic, cat, visitor):
                page.locator("#chat-messages .chat-message", has_text="hello").wait_for(state="detached")
            assert chat_texts(vic) == ["Looks great from here"]

            cat.reload()
            cat.locator("#follow[aria-pressed=true]").wait_for()

            # when the publisher stops, the pages go offline
            publisher.stop()
            for page in (vic, visitor):
                page.locator("#badge[data-status=offline]").wait_for(timeout=LIVE_TIMEOUT_MS)
                page.locator("#cover:visible", has_text="is offline").wait_for()
            assert vic.locator("#badge").text_content() == "Offline"
            vic.screenshot(path=str(SCREENSHOTS / "offline-vic.png"), full_page=True)
    finally:
        publisher.stop()

    with stack.db() as db:
        follows = db.execute(
            "SELECT f.external_id, c.external_id FROM streaming_follow s "
            "JOIN notifications_recipient f ON f.id = s.follower_id "
            "JOIN notifications_recipient c ON c.id = s.creator_id"
        ).fetchall()
    assert follows == [(PEOPLE["cat"][0], owner)]


def test_an_unknown_key_is_a_404_page(stack: Stack) -> None:
    response = httpx.get(f"{stack.web_url}/live/no-such-stream/", timeout=10)

    assert response.status_code == 404
    assert "text/html" in response.headers["content-type"]
    assert "Stream not found" in response.text and "no-such-stream" in response.text
    assert 'id="live-config"' not in response.text
    SCREENSHOTS.mkdir(exist_ok=True)
    with debian_chromium() as browser:
        page = browser.new_page(viewport={"width": 1440, "height": 700})
        page.goto(f"{stack.web_url}/live/no-such-stream/")
        page.screenshot(path=str(SCREENSHOTS / "not-found.png"), full_page=True)
