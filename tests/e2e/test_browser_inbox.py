"""The /inbox/ page and the embeddable inbox client in headless Chromium (Debian's, driven
by Playwright) against a whole platform: live arrival and the badge, read state across
tabs, archive and snooze (and the snooze running out), a web server killed and restarted
under an open page, the fallbacks to SSE and long-polling when websockets and then SSE
are blocked, and the client embedded in another origin's page with a token."""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from project.processes.waiting import wait_until
from tests.e2e.conftest import Stack, another_web, debian_chromium, log_in_as_demo, platform_stack

pytestmark = pytest.mark.xdist_group("browser-inbox")

ORDER = "browser.order"
TIMEOUT_MS = 15_000
SCREENSHOTS = Path("/tmp/inbox-screenshots")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    env = {"INBOX_SNOOZE_WAKE_SECONDS": "1", "INBOX_POLL_SECONDS": "10"}
    with platform_stack(env) as running:
        running.create_type(ORDER, category="transactional")
        running.manage("create_api_key", "demo")  # so seed_demo leaves var/demo-api-key alone
        running.manage("seed_demo", "--subscribers", "1")
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with debian_chromium() as launched:
        yield launched


@pytest.fixture
def context(browser: Any, stack: Stack) -> Iterator[Any]:
    """A logged-in browser context (the demo user, linked to recipient demo-user)."""
    ctx = browser.new_context(viewport={"width": 1000, "height": 900})
    try:
        page = ctx.new_page()
        log_in_as_demo(page, f"{stack.web_url}/inbox/")
        page.close()
        yield ctx
    finally:
        ctx.close()


def _inbox(ctx: Any, stack: Stack, query: str = "") -> Any:
    page = ctx.new_page()
    page.goto(f"{stack.web_url}/inbox/{query}")
    _wait_live(page)
    return page


def _wait_live(page: Any, transport: str | None = None) -> None:
    selector = "#socket-status[data-state=live]"
    if transport:
        selector = f"#socket-status[data-transport={transport}]"
    page.wait_for_selector(selector, timeout=TIMEOUT_MS)


def _title(tag: str) -> str:
    return f"Order {tag}-{uuid.uuid4().hex[:6]} shipped"


def _send(stack: Stack, title: str, api: httpx.Client | None = None) -> None:
    response = (api or stack.api).post(
        "/api/v1/events/", json={"type": ORDER, "recipients": ["demo-user"], "data": {"title": title}}
    )
    assert response.status_code == 202, response.text


def _badge(page: Any) -> int:
    return int(page.inner_text("#unread-badge") or "0")


def _wait_badge(page: Any, count: int) -> None:
    page.wait_for_function(
        "n => Number(document.querySelector('#unread-badge').textContent || 0) === n",
        arg=count,
        timeout=TIMEOUT_MS,
    )


def _titles(page: Any) -> list[str]:
    return list(page.eval_on_selector_all("#inbox-items .item-title", "els => els.map(e => e.textContent)"))


def _item(page: Any, title: str) -> Any:
    return page.locator("#inbox-items .item", has_text=title)


def _server_unread(stack: Stack) -> int:
    return int(stack.end_user(stack.token("demo-user")).get("/api/v1/inbox/unread-count/").json()["count"])


def _screenshot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_a_live_notification_arrives_and_read_state_follows_in_a_second_tab(
    context: Any, stack: Stack
) -> None:
    first, second = _inbox(context, stack), _inbox(context, stack)
    before = _badge(first)
    title = _title("LIVE")

    _send(stack, title)

    for page in (first, second):
        _item(page, title).wait_for(timeout=TIMEOUT_MS)
        _wait_badge(page, before + 1)
        assert _titles(page)[0] == title
    # the new item is announced to screen readers
    first.wait_for_function(
        "t => document.querySelector('#inbox-announcer').textContent.includes(t)",
        arg=title,
        timeout=TIMEOUT_MS,
    )
    _screenshot(first, "inbox-live")

    # marking it read in one tab updates the other at once
    _item(first, title).get_by_role("button", name=f"Mark read: {title}").click()
    second.wait_for_function(
        "t => [...document.querySelectorAll('#inbox-items .item')].some("
        "li => li.textContent.includes(t) && !li.classList.contains('unread'))",
        arg=title,
        timeout=TIMEOUT_MS,
    )
    _wait_badge(second, before)
    assert _server_unread(stack) == before

    # and "mark all read" in the second reaches the first
    _send(stack, _title("ALL"))
    _wait_badge(first, before + 1)
    second.click("#mark-all-read")
    _wait_badge(first, 0)
    assert first.locator("#inbox-items .item.unread").count() == 0


def test_archive_and_snooze_in_one_tab_show_in_the_other_and_a_snooze_comes_back(
    context: Any, stack: Stack
) -> None:
    first, second = _inbox(context, stack), _inbox(context, stack)
    archived, snoozed = _title("ARCH"), _title("SNOOZE")
    _send(stack, archived)
    _send(stack, snoozed)
    for page in (first, second):
        _item(page, snoozed).wait_for(timeout=TIMEOUT_MS)
        _item(page, archived).wait_for(timeout=TIMEOUT_MS)

    # archive: gone from both lists, listed under Archived
    _item(first, archived).get_by_role("button", name=f"Archive: {archived}").click()
    _item(second, archived).wait_for(state="detached", timeout=TIMEOUT_MS)
    _item(first, archived).wait_for(state="detached", timeout=TIMEOUT_MS)
    second.click("#tab-archived")
    _item(second, archived).wait_for(timeout=TIMEOUT_MS)
    _screenshot(second, "inbox-archived")
    _item(second, archived).get_by_role("button", name=f"Move back to inbox: {archived}").click()
    _item(second, archived).wait_for(state="detached", timeout=TIMEOUT_MS)
    _item(first, archived).wait_for(timeout=TIMEOUT_MS)  # back in the first tab's inbox
    second.click("#tab-inbox")

    # snooze from the menu: hidden everywhere, with its time stored on the server
    _item(first, snoozed).get_by_role("button", name=f"Snooze: {snoozed}").click()
    _screenshot(first, "inbox-snooze-menu")
    _item(first, snoozed).get_by_role("button", name="For an hour").click()
    _item(second, snoozed).wait_for(state="detached", timeout=TIMEOUT_MS)
    items = stack.end_user(stack.token("demo-user")).get("/api/v1/inbox/?after=0&limit=200").json()["results"]
    (stored,) = [item for item in items if item["title"] == snoozed]
    until = datetime.fromisoformat(stored["snoozed_until"])
    assert timedelta(minutes=55) < until - datetime.now(UTC) < timedelta(minutes=65)

    # a snooze that runs out brings the item back on top of both tabs, unread
    as_demo = stack.end_user(stack.token("demo-user"))
    soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    assert as_demo.post(f"/api/v1/inbox/{stored['id']}/snooze/", json={"until": soon}).status_code == 200
    for page in (first, second):
        _item(page, snoozed).wait_for(timeout=TIMEOUT_MS)
        page.wait_for_function(
            "t => document.querySelector('#inbox-items .item').textContent.includes(t)",
            arg=snoozed,
            timeout=TIMEOUT_MS,
        )
        assert "unread" in (_item(page, snoozed).get_attribute("class") or "")


def test_the_page_recovers_from_a_web_server_restart_without_missing_or_doubling(
    context: Any, stack: Stack
) -> None:
    page = _inbox(context, stack)
    token = stack.token("demo-user")
    titles = [_title(f"RESTART{n}") for n in range(9)]
    _send(stack, titles[0])
    _item(page, titles[0]).wait_for(timeout=TIMEOUT_MS)

    with another_web(stack) as other:
        # the page's server dies; events keep being accepted by another web process
        api = httpx.Client(
            base_url=other.web_url, headers={"Authorization": f"Api-Key {stack.api_key}"}, timeout=15
        )
        try:
            stack.processes.processes["web"].kill()
            page.wait_for_selector("#socket-status[data-state=reconnecting]", timeout=TIMEOUT_MS)
            for title in titles[1:5]:
                _send(stack, title, api)
            as_demo = httpx.Client(
                base_url=other.web_url,
                headers={"Authorization": f"Bearer {token}"},
                timeout=15,
            )

            def delivered_while_down() -> bool:
                listed = as_demo.get("/api/v1/inbox/?limit=50").json()["results"]
                return sum(1 for item in listed if item["title"] in titles[1:5]) == 4

            wait_until(
                delivered_while_down, 20, message="events sent while the page's server was down not delivered"
            )
            as_demo.close()
            # ...and comes back on the same port
            stack.processes.start_web()
        finally:
            api.close()
    _wait_live(page)
    for title in titles[5:]:
        _send(stack, title)
    for title in titles:
        _item(page, title).wait_for(timeout=TIMEOUT_MS)
    shown = [title for title in _titles(page) if title in titles]
    assert shown == list(reversed(titles)), shown  # each once, newest first


@pytest.mark.parametrize(
    ("blocked", "transport"),
    [(("websocket",), "sse"), (("websocket", "sse"), "poll")],
    ids=["to-sse", "to-poll"],
)
def test_the_page_falls_back_when_websockets_then_sse_are_blocked(
    context: Any, stack: Stack, blocked: tuple[str, ...], transport: str
) -> None:
    page = context.new_page()
    if "websocket" in blocked:
        page.route_web_socket("**/ws/inbox/**", lambda socket: socket.close())
    if "sse" in blocked:
        page.route("**/sse/inbox/**", lambda route: route.abort())
    page.goto(f"{stack.web_url}/inbox/")
    _wait_live(page, transport)
    before = _badge(page)
    title = _title(transport.upper())

    _send(stack, title)

    _item(page, title).wait_for(timeout=TIMEOUT_MS)
    _wait_badge(page, before + 1)
    assert _titles(page).count(title) == 1
    _screenshot(page, f"inbox-{transport}")


EMBED_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Another product</title></head>
<body><h1>Another product</h1><p>Unread: <span id="badge">?</span></p><ol id="items"></ol>
<script type="module">
const params = new URLSearchParams(location.search);
const platform = params.get("platform");
const { InboxClient } = await import(`${platform}/static/notifications/inbox-client.js`);
const client = new InboxClient({ baseUrl: platform, token: params.get("token") });
client.addEventListener("unread", (e) => { document.getElementById("badge").textContent = e.detail.count; });
client.addEventListener("notification", (e) => {
  const li = document.createElement("li");
  li.textContent = e.detail.item.title;
  li.dataset.id = e.detail.item.id;
  document.getElementById("items").append(li);
});
client.addEventListener("status", (e) => { document.body.dataset.status = `${e.detail.state}:${e.detail.transport}`; });
client.start();
window.inboxClient = client;
const page = await client.list();
document.body.dataset.listed = String(page.results.length);
</script></body></html>
"""


@contextlib.contextmanager
def _other_origin(directory: Path) -> Iterator[str]:
    (directory / "embed.html").write_text(EMBED_PAGE)
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_the_client_embedded_in_another_origin_works_with_a_token(
    browser: Any, stack: Stack, tmp_path: Path, transport: str
) -> None:
    external_id, token = stack.create_recipient("embed")
    ctx = browser.new_context()
    try:
        with _other_origin(tmp_path) as origin:
            page = ctx.new_page()
            if transport == "sse":
                page.route_web_socket("**/ws/inbox/**", lambda socket: socket.close())
            page.goto(f"{origin}/embed.html?platform={stack.web_url}&token={token}")
            page.wait_for_selector(f"body[data-status='live:{transport}']", timeout=TIMEOUT_MS)
            page.wait_for_selector(
                "body[data-listed='0']", timeout=TIMEOUT_MS
            )  # the API answered across origins
            title = _title("EMBED")

            response = stack.api.post(
                "/api/v1/events/", json={"type": ORDER, "recipients": [external_id], "data": {"title": title}}
            )
            assert response.status_code == 202, response.text

            page.wait_for_selector(f"#items li:has-text('{title}')", timeout=TIMEOUT_MS)
            page.wait_for_function(
                "() => document.getElementById('badge').textContent === '1'", timeout=TIMEOUT_MS
            )
            # a write across origins: mark it read through the client
            item_id = page.get_attribute("#items li", "data-id")
            page.evaluate("id => window.inboxClient.markRead(id)", item_id)
            page.wait_for_function(
                "() => document.getElementById('badge').textContent === '0'", timeout=TIMEOUT_MS
            )
    finally:
        ctx.close()


def test_infinite_scroll_loads_older_items_once_each_and_the_keyboard_reaches_everything(
    context: Any, stack: Stack
) -> None:
    titles = [_title(f"SCROLL{n:02d}") for n in range(60)]
    events = [{"type": ORDER, "recipients": ["demo-user"], "data": {"title": title}} for title in titles]
    response = stack.api.post("/api/v1/events/bulk/", json={"events": events})
    assert response.status_code == 200, response.text
    as_demo = stack.end_user(stack.token("demo-user"))

    def all_delivered() -> bool:
        listed = as_demo.get("/api/v1/inbox/?limit=200").json()["results"]
        return len({item["title"] for item in listed} & set(titles)) == len(titles)

    wait_until(all_delivered, 30, message="the bulk events did not reach the inbox")
    total = len(as_demo.get("/api/v1/inbox/?limit=200").json()["results"])

    page = _inbox(context, stack)
    assert page.locator("#inbox-items .item").count() == 50  # the first page, server-rendered

    # scrolling to the end loads the older pages, each item once, newest first
    def everything_shown() -> bool:
        page.mouse.wheel(0, 20_000)
        return bool(page.locator("#inbox-items .item").count() >= total)

    wait_until(everything_shown, 20, message="scrolling did not load the older items")
    shown = page.eval_on_selector_all("#inbox-items .item", "els => els.map(e => Number(e.dataset.id))")
    assert len(shown) == len(set(shown)) == total
    accepted = page.eval_on_selector_all(
        "#inbox-items .item", "els => els.map(e => Date.parse(e.dataset.accepted))"
    )
    assert accepted == sorted(accepted, reverse=True)
    assert page.locator("#load-older").is_hidden()

    # the keyboard: Tab reaches the first item, Enter opens it (marks it read)
    page.evaluate("window.scrollTo(0, 0)")
    page.focus("#mark-all-read")
    page.keyboard.press("Tab")  # the Inbox tab
    page.keyboard.press("Tab")  # the Archived tab
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.closest('.item')?.dataset.id")
    first = page.eval_on_selector("#inbox-items .item", "el => el.dataset.id")
    assert focused == first
    first_title = page.inner_text("#inbox-items .item .item-title")
    # Opening an item marks it read and then follows its link (the type's "/x/<n>").
    page.route("**/x/*", lambda route: route.fulfill(body="<title>Order</title>", content_type="text/html"))
    page.keyboard.press("Enter")
    page.wait_for_url("**/x/*", timeout=TIMEOUT_MS)
    (listed,) = [
        item
        for item in as_demo.get("/api/v1/inbox/?limit=5").json()["results"]
        if item["title"] == first_title
    ]
    assert listed["read"] is True


def test_the_page_is_light_and_quick_on_a_slow_phone(browser: Any, context: Any, stack: Stack) -> None:
    """A mid-range phone on a slow network, as Chromium's devtools emulate it: the CPU six
    times slower and "slow 4G" (150 ms, 1.6 Mbit/s down). The page with its 50 items must
    be usable (live, items shown) within 4 s and weigh under 100 KB (bodies as sent,
    uncompressed here: the tests serve static files without collectstatic)."""
    title = _title("PHONE")
    _send(stack, title)
    as_demo = stack.end_user(stack.token("demo-user"))
    wait_until(
        lambda: any(item["title"] == title for item in as_demo.get("/api/v1/inbox/").json()["results"]),
        20,
        message="the event did not reach the inbox",
    )
    page = context.new_page()
    page.set_viewport_size({"width": 390, "height": 844})
    cdp = context.new_cdp_session(page)
    cdp.send("Emulation.setCPUThrottlingRate", {"rate": 6})
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 150, "downloadThroughput": 200_000, "uploadThroughput": 93_750},
    )
    started = time.monotonic()
    page.goto(f"{stack.web_url}/inbox/")
    _wait_live(page)
    ready = time.monotonic() - started
    transferred = page.evaluate(
        "() => performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))"
        ".map(entry => Math.max(entry.transferSize, entry.encodedBodySize))"
    )

    print(
        f"slow phone: live after {ready:.2f}s, {sum(transferred) / 1024:.1f} KiB in {len(transferred)} requests"
    )
    _item(page, title).wait_for(timeout=TIMEOUT_MS)
    assert ready < 4.0, ready
    assert 0 < sum(transferred) < 100 * 1024, transferred
    _screenshot(page, "inbox-phone")
