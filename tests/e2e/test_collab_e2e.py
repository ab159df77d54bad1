"""Collaborative documents end to end, with real Yjs clients: Node.js processes running
the stock ``y-websocket`` ``WebsocketProvider`` (``yjs`` and ``ws`` from npm, pinned in
package-lock.json) against the platform's real web processes, two of them, on one private
Redis and one temporary database.

Each client is tests/e2e/yjs_client.mjs, driven over its stdin/stdout one JSON line each
way; it edits the text document's ``Y.Text`` named ``content``. Nothing here speaks the
protocol itself: what the clients see is what any Yjs editor would see. Node and the npm
packages come from scripts/ensure_node_modules.sh (``make test`` runs it).
"""

from __future__ import annotations

import contextlib
import json
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.processes import REPO_ROOT, PlatformProcesses, wait_until
from tests.e2e.conftest import Stack, another_web, platform_stack

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e-collab")]

CLIENT_SCRIPT = REPO_ROOT / "tests" / "e2e" / "yjs_client.mjs"
CONVERGE_S = 20.0
BASE = "The quick brown fox jumps."
# y-protocols drops a peer's awareness state 30 s after its last update (outdatedTimeout)
# even when nobody tells it the peer left; the server clears a departed socket's states for
# every peer at once (collaboration/consumers.py), so this bound is only the backstop.
AWARENESS_CLEARED_S = 35.0
# The server forgets a client not heard of for this long (COLLAB_AWARENESS_TIMEOUT_SECONDS;
# 30 s by default, as y-protocols'), shortened so that a silent client is cleared quickly.
AWARENESS_TIMEOUT_S = 4.0


class YjsClient:
    """One Node.js Yjs client process on one document (tests/e2e/yjs_client.mjs)."""

    def __init__(self, ws_url: str, key: str, token: str, *, name: str) -> None:
        node = shutil.which("node")
        if node is None or not (REPO_ROOT / "node_modules" / "y-websocket").is_dir():
            raise RuntimeError(
                "node and the npm packages of package-lock.json are needed: run scripts/ensure_node_modules.sh"
            )
        self.name = name
        self.stderr = tempfile.NamedTemporaryFile(prefix=f"yjs-{name}-", suffix=".log", delete=False)  # noqa: SIM115
        options = {"url": f"{ws_url}/ws/docs", "room": key, "token": token, "maxBackoffTime": 500}
        self.process = subprocess.Popen(
            [node, str(CLIENT_SCRIPT), json.dumps(options)],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            bufsize=1,
        )
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True, name=f"yjs-{name}").start()
        self.next_id = 0
        ready = self._next(10.0)
        assert ready.get("event") == "ready", ready
        self.client_id = int(ready["clientID"])

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with contextlib.suppress(ValueError):
                self.lines.put(json.loads(line))
        self.lines.put(None)

    def _next(self, timeout: float) -> dict[str, Any]:
        try:
            message = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"Yjs client {self.name}: no answer within {timeout}s{self._log()}"
            ) from None
        if message is None:
            raise AssertionError(f"Yjs client {self.name} exited ({self.process.poll()}){self._log()}")
        return message

    def _log(self) -> str:
        text = Path(self.stderr.name).read_text(errors="replace").strip()
        return f"; its stderr:\n{text[-2000:]}" if text else ""

    def call(self, cmd: str, timeout: float = 10.0, **args: Any) -> dict[str, Any]:
        self.next_id += 1
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"id": self.next_id, "cmd": cmd, **args}) + "\n")
        self.process.stdin.flush()
        answer = self._next(timeout)
        assert answer.get("id") == self.next_id, answer
        assert "error" not in answer, f"{self.name} {cmd} {args}: {answer['error']}"
        return answer

    # -- what a person at an editor does --

    def insert(self, index: int, text: str) -> None:
        self.call("insert", index=index, text=text)

    def append(self, text: str) -> None:
        """Type at the end of the text as the client holds it at that moment."""
        self.call("insert", end=True, text=text)

    def delete(self, index: int, length: int) -> None:
        self.call("delete", index=index, length=length)

    def delete_after(self, marker: str, length: int) -> None:
        """Delete right after ``marker`` where the client holds it at that moment."""
        self.call("delete", after=marker, length=length)

    def text(self) -> str:
        return str(self.call("text")["text"])

    def status(self) -> dict[str, Any]:
        return self.call("status")

    def set_awareness(self, state: dict[str, Any] | None) -> None:
        self.call("awareness", state=state)

    def peers(self) -> dict[int, Any]:
        return {int(client): state for client, state in self.call("peers")["states"].items()}

    def wait_status(
        self, condition: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        """The client's status once ``condition`` holds for it; AssertionError naming ``what``
        and the last status seen otherwise."""
        seen: dict[str, Any] = {}

        def holds() -> dict[str, Any] | None:
            nonlocal seen
            seen = self.status()
            return seen if condition(seen) else None

        try:
            return wait_until(holds, timeout, interval=0.1, message=what)
        except TimeoutError:
            raise AssertionError(f"Yjs client {self.name}: {what} within {timeout}s; status {seen}") from None

    def wait_synced(self, timeout: float = CONVERGE_S) -> dict[str, Any]:
        return self.wait_status(lambda status: bool(status["synced"]), timeout, "never synced")

    # -- ending --

    def pause(self) -> None:
        """SIGSTOP: the process stays, its socket stays open, and nothing more comes from it
        (a laptop lid closed, a network gone without a reset)."""
        self.process.send_signal(signal.SIGSTOP)

    def kill(self) -> None:
        """SIGKILL: the process vanishes without a word (no awareness goodbye)."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(Exception):
                self.call("exit", timeout=5.0)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()
        Path(self.stderr.name).unlink(missing_ok=True)


@contextlib.contextmanager
def yjs_clients(*specs: tuple[str, str, str, str]) -> Iterator[list[YjsClient]]:
    """Clients for (name, ws_url, key, token) each, ended on exit also when the body fails."""
    with contextlib.ExitStack() as stack:
        clients = []
        for name, ws_url, key, token in specs:
            client = YjsClient(ws_url, key, token, name=name)
            stack.callback(client.close)
            clients.append(client)
        yield clients


@pytest.fixture(scope="module")
def platform() -> Iterator[tuple[Stack, PlatformProcesses]]:
    """The stack (web process 1, workers, beat) and a second web process of it."""
    env = {"COLLAB_AWARENESS_TIMEOUT_SECONDS": str(AWARENESS_TIMEOUT_S)}
    with platform_stack(env) as stack, another_web(stack) as web_2:
        yield stack, web_2


def create_document(stack: Stack, members: dict[str, str]) -> str:
    """A new text document with ``members`` ({external_id: role}), over the service API;
    returns its key."""
    key = f"e2e-doc-{uuid.uuid4().hex[:10]}"
    response = stack.api.post(
        "/api/v1/documents/",
        json={
            "key": key,
            "title": "End-to-end",
            "kind": "text",
            "members": [{"recipient": recipient, "role": role} for recipient, role in members.items()],
        },
    )
    assert response.status_code == 201, response.text
    return key


def server_text(stack: Stack, key: str) -> str:
    """The document's text as the server stores it (GET .../content/)."""
    response = stack.api.get(f"/api/v1/documents/{key}/content/")
    assert response.status_code == 200, response.text
    return str(response.json()["text"])


def converged(clients: list[YjsClient], stack: Stack | None = None, key: str = "") -> str | None:
    """The text every client (and, given ``stack``, the server) holds, once they agree."""
    texts = {client.text() for client in clients}
    if stack is not None:
        texts.add(server_text(stack, key))
    return texts.pop() if len(texts) == 1 else None


def wait_converged(clients: list[YjsClient], stack: Stack, key: str, timeout: float = CONVERGE_S) -> str:
    def agreed() -> str | None:
        return converged(clients, stack, key)

    try:
        return wait_until(agreed, timeout, interval=0.1, message="clients and server did not converge")
    except TimeoutError:
        seen = {client.name: client.text() for client in clients}
        raise AssertionError(
            f"not converged within {timeout}s: {seen}, server {server_text(stack, key)!r}"
        ) from None


def members(stack: Stack, **roles: str) -> tuple[dict[str, str], dict[str, str]]:
    """Fresh recipients named by role label: ({label: token}, {external_id: role})."""
    tokens, by_id = {}, {}
    for label, role in roles.items():
        external_id, token = stack.create_recipient(label)
        tokens[label] = token
        if role != "none":
            by_id[external_id] = role
    return tokens, by_id


# --- tests -----------------------------------------------------------------------------------------


def test_it_converges_two_node_yjs_clients_typing_at_once_and_stores_the_same_text(
    platform: tuple[Stack, PlatformProcesses],
) -> None:
    stack, _ = platform
    tokens, roles = members(stack, ann="owner", bob="editor")
    key = create_document(stack, roles)

    with yjs_clients(
        ("ann", stack.ws_url, key, tokens["ann"]), ("bob", stack.ws_url, key, tokens["bob"])
    ) as (ann, bob):
        ann.wait_synced()
        bob.wait_synced()
        # given a line both see
        ann.insert(0, BASE)
        wait_converged([ann, bob], stack, key)

        # when both type into it at once, neither waiting for the other's edits: Ann at the
        # end, Bob at the start, and now and then both delete the word after "The "
        for number in range(10):
            ann.append(f"a{number}")
            bob.insert(0, f"b{number}")
            if number % 3 == 2:
                for client in (ann, bob):
                    client.delete_after("The ", 1)

        # then both and the server hold one text, with every character typed where it was
        # typed; a character both deleted at once is gone once
        text = wait_converged([ann, bob], stack, key)
    removed = len(BASE) + 40 - len(text)
    assert 3 <= removed <= 6, text
    prefix = "".join(f"b{n}" for n in reversed(range(10)))
    suffix = "".join(f"a{n}" for n in range(10))
    assert text == prefix + "The " + BASE[len("The ") + removed :] + suffix


def test_it_refuses_a_viewers_edit_and_tells_the_viewer(platform: tuple[Stack, PlatformProcesses]) -> None:
    stack, _ = platform
    tokens, roles = members(stack, owner="owner", viewer="viewer")
    key = create_document(stack, roles)

    with yjs_clients(
        ("owner", stack.ws_url, key, tokens["owner"]), ("viewer", stack.ws_url, key, tokens["viewer"])
    ) as (owner, viewer):
        owner.wait_synced()
        viewer.wait_synced()
        owner.insert(0, "Agenda")
        wait_converged([owner, viewer], stack, key)

        # when the viewer types
        viewer.insert(0, "VIEWER WAS HERE ")

        # then it is told its edit is refused (y-protocols' permission denied), and stays connected
        denied = viewer.wait_status(lambda status: bool(status["denied"]), 10, "never told")["denied"]
        assert "viewers cannot edit" in denied[0], denied
        assert viewer.status()["connected"]
        # and the owner's next edit reaches the viewer, the viewer's never reaches anyone
        owner.append(": budget")
        wait_until(lambda: "budget" in viewer.text(), 10, message="viewer stopped receiving edits")
        assert owner.text() == "Agenda: budget"
        assert server_text(stack, key) == "Agenda: budget"


def test_it_refuses_a_non_member_before_the_socket_opens(platform: tuple[Stack, PlatformProcesses]) -> None:
    stack, _ = platform
    tokens, roles = members(stack, owner="owner", outsider="none")
    key = create_document(stack, roles)

    with yjs_clients(
        ("owner", stack.ws_url, key, tokens["owner"]), ("outsider", stack.ws_url, key, tokens["outsider"])
    ) as (owner, outsider):
        owner.wait_synced()
        owner.insert(0, "members only")

        # the outsider's provider tries again and again, and is refused each time before the
        # upgrade: HTTP 403 instead of 101, so its socket never opens
        status = outsider.wait_status(
            lambda status: len(status["errors"]) >= 2, 15, "attempts to connect were not refused twice"
        )
        assert status["opened"] == 0 and not status["connected"] and not status["synced"], status
        assert all("403" in error for error in status["errors"]), status["errors"]
        assert outsider.text() == ""
        assert {close["code"] for close in status["closes"]} == {1006}, status["closes"]


def test_it_relays_edits_and_awareness_between_clients_on_two_web_processes(
    platform: tuple[Stack, PlatformProcesses],
) -> None:
    stack, web_2 = platform
    tokens, roles = members(stack, ann="editor", bob="editor")
    key = create_document(stack, roles)

    # client A on web process 1, client B on web process 2
    with yjs_clients(
        ("ann@web1", stack.ws_url, key, tokens["ann"]), ("bob@web2", web_2.ws_url, key, tokens["bob"])
    ) as (ann, bob):
        ann.wait_synced()
        bob.wait_synced()

        ann.insert(0, "from web 1")
        wait_until(lambda: bob.text() == "from web 1", 10, message=f"B never got A's edit: {bob.text()!r}")
        bob.append(", and from web 2")
        wait_until(
            lambda: ann.text() == "from web 1, and from web 2",
            10,
            message=f"A never got B's edit: {ann.text()!r}",
        )
        ann.set_awareness({"user": {"name": "Ann", "color": "#d33"}})
        wait_until(
            lambda: bob.peers().get(ann.client_id) == {"user": {"name": "Ann", "color": "#d33"}},
            10,
            message=f"B never saw A's awareness: {bob.peers()}",
        )
        assert wait_converged([ann, bob], stack, key) == "from web 1, and from web 2"


def test_it_loses_nothing_when_every_web_process_restarts_mid_session(
    platform: tuple[Stack, PlatformProcesses],
) -> None:
    stack, web_2 = platform
    tokens, roles = members(stack, ann="editor", bob="editor")
    key = create_document(stack, roles)

    with yjs_clients(
        ("ann@web1", stack.ws_url, key, tokens["ann"]), ("bob@web2", web_2.ws_url, key, tokens["bob"])
    ) as (ann, bob):
        ann.wait_synced()
        bob.wait_synced()
        ann.insert(0, "before. ")
        bob.insert(0, "BEFORE. ")
        before = wait_converged([ann, bob], stack, key)

        # when every web process dies at once
        webs = [stack.processes, web_2]
        for web in webs:
            web.processes["web"].kill()
        for client in (ann, bob):
            client.wait_status(lambda status: not status["connected"], 10, "did not notice its server died")
        # and both keep typing while offline
        for number in range(5):
            ann.insert(0, f"<a{number}>")
            bob.append(f"<b{number}>")
        assert ann.text() != bob.text()

        # and the web processes come back
        for web in webs:
            web.start_web()

        # then both reconnect on their own, and everything typed, online and offline, is
        # everywhere, the server included
        for client in (ann, bob):
            client.wait_status(
                lambda status: status["opened"] >= 2 and status["synced"], CONVERGE_S, "no resync"
            )
        text = wait_converged([ann, bob], stack, key)
    for number in range(5):
        assert f"<a{number}>" in text and f"<b{number}>" in text, text
    assert "before. " in text and "BEFORE. " in text, text
    assert len(text) == len(before) + 5 * 8, text


def test_it_clears_the_awareness_of_a_client_that_vanishes(platform: tuple[Stack, PlatformProcesses]) -> None:
    stack, web_2 = platform
    tokens, roles = members(stack, ann="editor", bob="viewer")
    key = create_document(stack, roles)

    with yjs_clients(
        ("ann@web2", web_2.ws_url, key, tokens["ann"]), ("bob@web1", stack.ws_url, key, tokens["bob"])
    ) as (ann, bob):
        ann.wait_synced()
        bob.wait_synced()
        cursor = {"user": {"name": "Ann", "color": "#36c"}, "cursor": {"index": 0}}
        ann.set_awareness(cursor)
        wait_until(
            lambda: bob.peers().get(ann.client_id) == cursor, 10, message=f"B never saw A: {bob.peers()}"
        )

        # when A's process is killed: no goodbye, its socket just drops
        ann.kill()
        started = time.monotonic()

        # then B no longer shows A, well within the awareness timeout
        wait_until(
            lambda: ann.client_id not in bob.peers(),
            AWARENESS_CLEARED_S,
            interval=0.2,
            message=f"A's awareness state was never cleared: {bob.peers()}",
        )
    assert time.monotonic() - started < AWARENESS_CLEARED_S


def test_it_clears_the_awareness_of_a_client_whose_socket_goes_silent(
    platform: tuple[Stack, PlatformProcesses],
) -> None:
    stack, web_2 = platform
    tokens, roles = members(stack, ann="editor", bob="editor")
    key = create_document(stack, roles)

    with yjs_clients(
        ("ann@web2", web_2.ws_url, key, tokens["ann"]), ("bob@web1", stack.ws_url, key, tokens["bob"])
    ) as (ann, bob):
        ann.wait_synced()
        bob.wait_synced()
        ann.set_awareness({"user": {"name": "Ann", "color": "#393"}})
        wait_until(lambda: ann.client_id in bob.peers(), 10, message=f"B never saw A: {bob.peers()}")

        # when A's process stops: its socket stays open and says nothing, so no close tells
        # the server A left
        ann.pause()
        started = time.monotonic()
        try:
            # then the server forgets A once its state is older than the timeout and tells B,
            # before y-protocols' own 30 s would have dropped it in B
            wait_until(
                lambda: ann.client_id not in bob.peers(),
                AWARENESS_TIMEOUT_S * 3,
                interval=0.2,
                message=f"A's awareness state outlived the server's timeout: {bob.peers()}",
            )
            elapsed = time.monotonic() - started
        finally:
            ann.kill()
    assert elapsed < 30.0, elapsed
