"""The collaborative editor page /docs/{key}/ in headless Chromium (Debian's, driven by
Playwright) against a whole platform: two people typing at once into a plain-text
(CodeMirror) and a rich (Tiptap) document converge and see each other's cursor; a
viewer's editor is read-only; edits made offline arrive on reconnect; a comment keeps
to its text while others edit and its @mention reaches the mentioned member's inbox; a
saved version is compared with the current text and restored under another open page."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from project.processes.waiting import wait_until
from tests.e2e.conftest import Stack, debian_chromium, log_in_as_demo, people_script, platform_stack
from tests.e2e.test_collab_e2e import yjs_clients

pytestmark = pytest.mark.xdist_group("browser-documents")

TIMEOUT_MS = 15_000
SCREENSHOTS = Path("/tmp/doc-screenshots")
KINDS = ["text", "rich"]
# The editable surface of each kind of document.
SURFACE = {"text": ".cm-content", "rich": ".ProseMirror"}
REMOTE_CURSOR = {"text": ".cm-ySelectionInfo", "rich": ".collaboration-cursor__label"}

# More people besides seed_demo's demo user (recipient demo-user, "Demo User"). cy is in
# one test only, so that no connection of an earlier test keeps her online.
PEOPLE = {"ana": ("ana-lima", "Ana Lima"), "bob": ("bob-stone", "Bob Stone"), "cy": ("cy-park", "Cy Park")}
PASSWORD = "a-long-test-password"
MAKE_PEOPLE = people_script(PEOPLE, PASSWORD)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with platform_stack() as running:
        running.manage("create_api_key", "demo")  # so seed_demo leaves var/demo-api-key alone
        running.manage("seed_demo", "--subscribers", "1")
        running.manage("shell", "-c", MAKE_PEOPLE)
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with debian_chromium() as launched:
        yield launched


def _context(browser: Any, stack: Stack, username: str) -> Any:
    ctx = browser.new_context(viewport={"width": 1280, "height": 860})
    page = ctx.new_page()
    if username == "demo":
        log_in_as_demo(page, f"{stack.web_url}/inbox/")
    else:
        page.goto(f"{stack.web_url}/accounts/login/?next=/inbox/")
        page.fill("input[name=username]", username)
        page.fill("input[name=password]", PASSWORD)
        page.click("[type=submit]")
        page.wait_for_url(f"{stack.web_url}/inbox/")
    page.close()
    return ctx


@pytest.fixture
def demo(browser: Any, stack: Stack) -> Iterator[Any]:
    """A browser context logged in as demo (recipient demo-user): each document's owner."""
    ctx = _context(browser, stack, "demo")
    yield ctx
    ctx.close()


@pytest.fixture
def ana(browser: Any, stack: Stack) -> Iterator[Any]:
    """Logged in as ana (ana-lima): an editor of each document."""
    ctx = _context(browser, stack, "ana")
    yield ctx
    ctx.close()


@pytest.fixture
def bob(browser: Any, stack: Stack) -> Iterator[Any]:
    """Logged in as bob (bob-stone): a viewer of each document."""
    ctx = _context(browser, stack, "bob")
    yield ctx
    ctx.close()


def _document(stack: Stack, kind: str, title: str, *, more: tuple[str, ...] = ()) -> str:
    """A new document of demo-user (owner), ana-lima (editor), bob-stone (viewer) and the
    ``more`` recipients (editors)."""
    key = f"{kind}-{uuid.uuid4().hex[:8]}"
    members = [
        {"recipient": "demo-user", "role": "owner"},
        {"recipient": "ana-lima", "role": "editor"},
        {"recipient": "bob-stone", "role": "viewer"},
        *({"recipient": external_id, "role": "editor"} for external_id in more),
    ]
    response = stack.api.post(
        "/api/v1/documents/", json={"key": key, "title": title, "kind": kind, "members": members}
    )
    assert response.status_code == 201, response.text
    return key


def _open(ctx: Any, stack: Stack, key: str) -> Any:
    page = ctx.new_page()
    page.goto(f"{stack.web_url}/docs/{key}/")
    _wait_synced(page)
    return page


def _wait_synced(page: Any) -> None:
    page.wait_for_selector("#doc-status[data-state=synced]", timeout=TIMEOUT_MS)


def _text(page: Any) -> str:
    return str(page.evaluate("window.documentPage.text()"))


def _wait_text(page: Any, expected: str) -> None:
    page.wait_for_function("t => window.documentPage.text() === t", arg=expected, timeout=TIMEOUT_MS)


def _wait_contains(page: Any, part: str) -> None:
    page.wait_for_function("t => window.documentPage.text().includes(t)", arg=part, timeout=TIMEOUT_MS)


def _server_text(stack: Stack, key: str) -> str:
    response = stack.api.get(f"/api/v1/documents/{key}/content/")
    assert response.status_code == 200, response.text
    return str(response.json()["text"])


def _wait_server_text(stack: Stack, key: str, expected: str) -> None:
    wait_until(
        lambda: _server_text(stack, key) == expected,
        15,
        message=f"the server's text of {key} never became {expected!r} (last {_server_text(stack, key)!r})",
    )


def _type_lines(page: Any, kind: str, lines: list[str]) -> None:
    page.click(SURFACE[kind])
    for number, line in enumerate(lines):
        if number:
            page.keyboard.press("Enter")
        page.keyboard.type(line)


def _select(page: Any, kind: str, start: int, length: int) -> None:
    """Select ``length`` characters from the ``start``-th of the first line."""
    page.click(SURFACE[kind])
    page.keyboard.press("Control+Home")
    for _ in range(start):
        page.keyboard.press("ArrowRight")
    for _ in range(length):
        page.keyboard.press("Shift+ArrowRight")


def _click_line_start(page: Any, kind: str) -> None:
    """Put the caret at the start of the first line with the mouse. (Not Ctrl+Home right
    after the click that focuses the editor: ProseMirror takes a caret at the document's
    start within 200 ms of focusing for the browser's own reset, and puts it back.)"""
    line = ".cm-line" if kind == "text" else "p"
    page.locator(f"{SURFACE[kind]} {line}").first.click(position={"x": 1, "y": 4})


def _screenshot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


@pytest.mark.parametrize("kind", KINDS)
def test_two_people_typing_at_once_converge_and_see_each_others_cursor(
    demo: Any, ana: Any, stack: Stack, kind: str
) -> None:
    key = _document(stack, kind, "Typing at once")
    mine, theirs = _open(demo, stack, key), _open(ana, stack, key)
    _type_lines(mine, kind, ["Demo:", "Ana:"])
    _wait_text(theirs, "Demo:\nAna:")

    # demo types at the end of the first line while ana types at the end of the second,
    # each without waiting for the other's keystrokes to arrive
    mine.click(SURFACE[kind])
    mine.keyboard.press("Control+Home")
    mine.keyboard.press("End")
    theirs.click(SURFACE[kind])
    theirs.keyboard.press("Control+End")
    for n in range(12):
        mine.keyboard.type(f" d{n}")
        theirs.keyboard.type(f" a{n}")

    expected = (
        "Demo:" + "".join(f" d{n}" for n in range(12)) + "\nAna:" + "".join(f" a{n}" for n in range(12))
    )
    _wait_text(mine, expected)
    _wait_text(theirs, expected)
    _wait_server_text(stack, key, expected)

    # each sees the other's cursor, named
    mine.locator(REMOTE_CURSOR[kind], has_text="Ana Lima").wait_for(timeout=TIMEOUT_MS)
    theirs.locator(REMOTE_CURSOR[kind], has_text="Demo User").wait_for(timeout=TIMEOUT_MS)
    # and both are listed as here, with the same colours on both pages
    for page in (mine, theirs):
        page.locator("#doc-here .here-user[data-user=ana-lima]").wait_for(timeout=TIMEOUT_MS)
        page.locator("#doc-here .here-user[data-user=demo-user]").wait_for(timeout=TIMEOUT_MS)
    colour = "el => el.querySelector('.dot').style.background"
    assert mine.eval_on_selector("#doc-here [data-user=ana-lima]", colour) == theirs.eval_on_selector(
        "#doc-here [data-user=ana-lima]", colour
    )
    _screenshot(mine, f"typing-{kind}-demo")
    _screenshot(theirs, f"typing-{kind}-ana")


@pytest.mark.parametrize("kind", KINDS)
def test_a_viewers_page_is_read_only_and_follows_the_editors(
    demo: Any, bob: Any, stack: Stack, kind: str
) -> None:
    key = _document(stack, kind, "Read only")
    editor = _open(demo, stack, key)
    _type_lines(editor, kind, ["Written by the owner."])
    viewer = _open(bob, stack, key)
    _wait_text(viewer, "Written by the owner.")

    assert viewer.inner_text("#doc-role") == "Viewer · read-only"
    assert viewer.is_visible("#doc-readonly")
    assert viewer.get_attribute(SURFACE[kind], "contenteditable") == "false"
    assert viewer.locator("#format-tools").count() == 0
    assert viewer.locator("#version-form").count() == 0
    viewer.click(SURFACE[kind])
    viewer.keyboard.type("viewer was here")
    viewer.keyboard.press("Enter")

    # the owner's next edit still reaches the viewer; the viewer's typing reached nobody
    editor.keyboard.type(" And more.")
    _wait_text(viewer, "Written by the owner. And more.")
    _wait_text(editor, "Written by the owner. And more.")
    _wait_server_text(stack, key, "Written by the owner. And more.")
    _screenshot(viewer, f"viewer-{kind}")


def test_edits_made_offline_are_sent_when_the_page_reconnects(demo: Any, ana: Any, stack: Stack) -> None:
    key = _document(stack, "text", "Offline")
    offline, online = _open(demo, stack, key), _open(ana, stack, key)
    _type_lines(offline, "text", ["Before."])
    _wait_text(online, "Before.")

    offline.evaluate("window.documentPage.provider.disconnect()")
    offline.wait_for_selector("#doc-status[data-state=offline]", timeout=TIMEOUT_MS)
    assert offline.is_visible("#doc-offline")
    assert "your edits will be sent when you reconnect" in offline.inner_text("#doc-offline")
    offline.keyboard.type(" Written offline.")
    online.click(SURFACE["text"])
    online.keyboard.press("Control+Home")
    online.keyboard.type("Meanwhile. ")
    _wait_text(online, "Meanwhile. Before.")
    _screenshot(offline, "offline-text")

    offline.evaluate("window.documentPage.provider.connect()")
    _wait_synced(offline)
    for page in (offline, online):
        _wait_text(page, "Meanwhile. Before. Written offline.")
    assert offline.is_hidden("#doc-offline")
    _wait_server_text(stack, key, "Meanwhile. Before. Written offline.")


@pytest.mark.parametrize("kind", KINDS)
def test_a_comment_keeps_to_its_text_and_its_mention_reaches_the_members_inbox(
    demo: Any, ana: Any, stack: Stack, kind: str
) -> None:
    title = f"Launch plan {uuid.uuid4().hex[:6]}"
    key = _document(stack, kind, title)
    author, mentioned = _open(demo, stack, key), _open(ana, stack, key)
    _type_lines(author, kind, ["The launch is in March."])
    _wait_text(mentioned, "The launch is in March.")

    # select "March" and comment on it, mentioning ana through the member list
    _select(author, kind, start=17, length=5)
    author.click("#comment-selection")
    assert author.inner_text("#comment-quote") == "March"
    author.click("#comment-body")
    author.keyboard.type("Is this still right, @an")
    author.locator("#panel-comments .mention-menu li[data-member=ana-lima]").wait_for(timeout=TIMEOUT_MS)
    _screenshot(author, f"comment-mention-menu-{kind}")
    author.keyboard.press("Enter")
    author.keyboard.type("?")
    assert author.input_value("#comment-body") == "Is this still right, @ana-lima ?"
    author.click("#comment-submit")

    thread = author.locator("#comment-threads .thread", has_text="Is this still right")
    thread.wait_for(timeout=TIMEOUT_MS)
    assert thread.locator(".mention").inner_text() == "@ana-lima"
    author.locator(".comment-span", has_text="March").wait_for(timeout=TIMEOUT_MS)

    # ana sees the thread (the list refreshes) and edits before the span: it stays on "March"
    other_thread = mentioned.locator("#comment-threads .thread", has_text="Is this still right")
    other_thread.wait_for(timeout=TIMEOUT_MS)
    _click_line_start(mentioned, kind)
    mentioned.keyboard.type("Update: ")
    _wait_text(author, "Update: The launch is in March.")
    for page in (author, mentioned):
        page.wait_for_function(
            "() => [...document.querySelectorAll('.comment-span')].map(e => e.textContent).join('') === 'March'",
            timeout=TIMEOUT_MS,
        )

    # ana replies; demo sees the reply
    other_thread.locator("textarea").fill("Yes, still March.")
    other_thread.get_by_role("button", name="Reply").click()
    thread.locator(".comment.reply", has_text="Yes, still March.").wait_for(timeout=TIMEOUT_MS)
    _screenshot(author, f"comment-thread-{kind}")

    # the mention reached ana's inbox
    inbox = ana.new_page()
    inbox.goto(f"{stack.web_url}/inbox/")
    inbox.locator("#inbox-items .item", has_text=f"Demo User mentioned you in {title}").wait_for(
        timeout=TIMEOUT_MS
    )
    _screenshot(inbox, f"comment-mention-inbox-{kind}")

    # resolving hides the thread and its highlight, on both pages
    thread.get_by_role("button", name="Resolve").click()
    for page in (author, mentioned):
        page.locator("#comment-threads .thread", has_text="Is this still right").wait_for(
            state="detached", timeout=TIMEOUT_MS
        )
        page.locator(".comment-span").first.wait_for(state="detached", timeout=TIMEOUT_MS)


@pytest.mark.parametrize("kind", KINDS)
def test_a_saved_version_is_compared_and_restored_under_another_open_page(
    demo: Any, ana: Any, stack: Stack, kind: str
) -> None:
    key = _document(stack, kind, "Versions")
    owner, other = _open(demo, stack, key), _open(ana, stack, key)
    _type_lines(owner, kind, ["First draft of the plan."])
    _wait_text(other, "First draft of the plan.")

    owner.click("#tab-versions")
    owner.fill("#version-name", "Draft one")
    owner.click("#version-save")
    saved = owner.locator("#version-list .version", has_text="Draft one")
    saved.wait_for(timeout=TIMEOUT_MS)

    other.click(SURFACE[kind])
    other.keyboard.press("Control+End")
    other.keyboard.type(" Second thoughts added.")
    _wait_text(owner, "First draft of the plan. Second thoughts added.")
    _wait_server_text(stack, key, "First draft of the plan. Second thoughts added.")

    # the difference from the saved version to now: the new words, as an insertion
    owner.select_option("#diff-from", saved.get_attribute("data-number"))
    owner.select_option("#diff-to", "current")
    owner.click("#diff-show")
    owner.locator("#version-view:not(.hidden)").wait_for(timeout=TIMEOUT_MS)
    inserted = "".join(owner.eval_on_selector_all("#version-text ins", "els => els.map(e => e.textContent)"))
    assert inserted.strip() == "Second thoughts added."
    assert owner.locator("#version-text del").count() == 0
    _screenshot(owner, f"version-diff-{kind}")

    # restore, confirmed in the dialog: the other page's text goes back
    saved.get_by_role("button", name="Restore").click()
    owner.locator("#restore-dialog[open]").wait_for(timeout=TIMEOUT_MS)
    _screenshot(owner, f"version-restore-dialog-{kind}")
    owner.click("#restore-confirm")
    _wait_text(other, "First draft of the plan.")
    _wait_text(owner, "First draft of the plan.")
    _wait_server_text(stack, key, "First draft of the plan.")
    # what was there before the restore is kept as a version of its own
    owner.locator("#version-list .version", has_text="Before restoring").wait_for(timeout=TIMEOUT_MS)
    _screenshot(owner, f"version-restored-{kind}")

    # and the other page keeps editing on top of the restored text
    other.click(SURFACE[kind])
    other.keyboard.press("Control+End")
    other.keyboard.type(" Final.")
    _wait_text(owner, "First draft of the plan. Final.")


def test_the_people_panel_shows_who_is_here_online_or_offline(
    demo: Any, bob: Any, browser: Any, stack: Stack
) -> None:
    key = _document(stack, "rich", "People", more=("cy-park",))
    page = _open(demo, stack, key)
    _open(bob, stack, key)  # bob has the document open
    cy = _context(browser, stack, "cy")
    inbox = cy.new_page()  # cy has only her inbox open
    inbox.goto(f"{stack.web_url}/inbox/")
    inbox.wait_for_selector("#socket-status[data-state=live]", timeout=TIMEOUT_MS)

    page.click("#tab-people")

    def presence(member: str) -> Any:
        return page.locator(f"#people-list .person[data-member={member}] .presence")

    presence("bob-stone").filter(has_text="here now").wait_for(timeout=TIMEOUT_MS)
    presence("cy-park").filter(has_text="online").wait_for(timeout=TIMEOUT_MS)
    _screenshot(page, "people-online")
    # cy closes her inbox: she goes offline on the page (after presence's grace period)
    inbox.close()
    presence("cy-park").filter(has_text="offline").wait_for(timeout=40_000)
    cy.close()


def test_the_documents_page_lists_them_and_its_form_creates_one(demo: Any, stack: Stack) -> None:
    listed = _document(stack, "text", "Listed on the documents page")
    page = demo.new_page()
    page.goto(f"{stack.web_url}/docs/")
    assert page.locator(".docs-table").get_by_text("Listed on the documents page").is_visible()
    page.fill("#new-key", "Not A Key")
    page.click(".docs-new [type=submit]")
    page.locator("#new-key-error").wait_for(timeout=TIMEOUT_MS)
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "documents-list.png"), full_page=True)
    created = f"made-{uuid.uuid4().hex[:6]}"
    page.fill("#new-key", created)
    page.fill("#new-title-input", "Made from the form")
    page.check("input[name=kind][value=text]")
    page.click(".docs-new [type=submit]")
    page.wait_for_url(f"{stack.web_url}/docs/{created}/", timeout=TIMEOUT_MS)
    _wait_synced(page)
    assert page.locator("#doc-role").inner_text().startswith("Owner")
    page.goto(f"{stack.web_url}/docs/")
    assert page.locator(".docs-table").get_by_text("Made from the form").is_visible()
    assert listed
    page.close()


def test_the_page_and_two_node_yjs_clients_edit_one_document_at_once_and_converge(
    demo: Any, stack: Stack
) -> None:
    """The page's editor and two stock y-websocket clients in Node.js (tests/e2e/yjs_client.mjs)
    type into one plain-text document at the same time."""
    (one_id, one_token), (two_id, two_token) = (
        stack.create_recipient("node-one"),
        stack.create_recipient("node-two"),
    )
    key = _document(stack, "text", "Page and Node clients", more=(one_id, two_id))
    page = _open(demo, stack, key)
    # the page types at the end of the first line, the Node clients append to the end of the
    # second: at one shared position a remote append would land between the page's keystrokes
    _type_lines(page, "text", ["Page:", "Node:"])
    _wait_server_text(stack, key, "Page:\nNode:")
    specs = [("node-one", stack.ws_url, key, one_token), ("node-two", stack.ws_url, key, two_token)]
    with yjs_clients(*specs) as (one, two):
        one.wait_synced()
        two.wait_synced()
        page.click(SURFACE["text"])
        page.keyboard.press("Control+Home")
        page.keyboard.press("End")
        for n in range(10):
            page.keyboard.type(f" p{n}")
            one.append(f" o{n}")
            two.append(f" t{n}")

        def agreed() -> str | None:
            texts = {_text(page), one.text(), two.text(), _server_text(stack, key)}
            return texts.pop() if len(texts) == 1 else None

        final = wait_until(
            agreed, 20, interval=0.2, message="the page, the Node clients and the server differ"
        )
    first, second = final.split("\n")
    assert first == "Page:" + "".join(f" p{n}" for n in range(10))
    assert second.startswith("Node:")
    # each client's appends arrive whole and in its own order, interleaved with the other's
    for name in ("o", "t"):
        mine = [part for part in second.split() if part.startswith(name)]
        assert mine == [f"{name}{n}" for n in range(10)]
    page.close()
