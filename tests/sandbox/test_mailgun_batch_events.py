"""The sandbox's Mailgun as a large campaign meets it: batch sends personalised by recipient
variables (sent by django-anymail's real Mailgun backend), the events API a platform polls
for receipts instead of taking webhooks, domains that get no webhooks at all, and the
counters a million-recipient run is measured by.

The sandbox runs as a real process (``harness.sandbox``) and, where a config the test
settings cannot express is needed (a polled domain), in a thread of this process; every
call is real HTTP.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from harness.processes import wait_until
from harness.sandbox import SandboxControl, SandboxProcess
from sandbox.context import SandboxConfig, SandboxContext, config_from_settings
from sandbox.mailgun_api import MailgunApi, _PagePosition, _substitute, _Template
from sandbox.outbound import CallbackQueue
from sandbox.server import sandbox_serve
from sandbox.state import EventLog, LoggedEvent, SandboxState
from tests.sandbox.standin import PlatformStandIn, tracking_events

pytestmark = pytest.mark.xdist_group("sandbox")

DOMAIN = "mg.sandbox.test"
POLLED_DOMAIN = "news.polled.test"
TRACKING_PATH = "/anymail/mailgun/tracking/"


# --- Fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def control(sandbox: SandboxProcess, platform: PlatformStandIn) -> SandboxControl:
    # Callbacks of the previous test must land before the slate is wiped, not in this test.
    wait_until(lambda: sandbox.control.info()["pending_callbacks"] == 0, 10.0, message="callbacks pending")
    sandbox.control.reset()
    platform.clear()
    return sandbox.control


class ThreadSandbox:
    """The sandbox served by ``sandbox_serve`` on a loop in a thread of this process, for a
    ``SandboxConfig`` the test settings cannot give (a polled domain)."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.info: dict[str, Any] = {}
        self.error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_event: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self.stop_event = asyncio.Event()
            await sandbox_serve(self.config, stop=self.stop_event, ready=self.info.update)

        try:
            asyncio.run(main())
        except BaseException as error:  # reported to the waiting test, not lost in the thread
            self.error = error

    def _ready(self) -> bool:
        if self.error is not None:
            raise RuntimeError(f"the sandbox thread failed: {self.error!r}")
        return bool(self.info)

    def start(self) -> None:
        self.thread.start()
        wait_until(self._ready, 30.0, message="sandbox thread not ready")

    def stop(self) -> None:
        if self.loop is not None and self.stop_event is not None:
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(10.0)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.info['http_port']}"


@pytest.fixture(scope="module")
def polled_sandbox(
    tmp_path_factory: pytest.TempPathFactory, platform: PlatformStandIn
) -> Iterator[ThreadSandbox]:
    from django.conf import settings

    config = config_from_settings(
        settings,
        host="127.0.0.1",
        http_port=0,
        apns_port=0,
        smtp_port=0,
        directory=tmp_path_factory.mktemp("polled-sandbox"),
        platform_url=platform.url,
        callback_delay_ms=10,
        mailgun_polled_domains=(POLLED_DOMAIN,),
    )
    server = ThreadSandbox(config)
    server.start()
    yield server
    server.stop()


# --- Helpers -------------------------------------------------------------------------------------


def api_key() -> str:
    from django.conf import settings

    return str(settings.PROVIDERS["mailgun"]["api_key"])


def anymail_connection(http_url: str, domain: str = DOMAIN) -> Any:
    from django.core.mail import get_connection

    return get_connection(
        "anymail.backends.mailgun.EmailBackend",
        api_key=api_key(),
        api_url=f"{http_url}/mailgun/v3",
        sender_domain=domain,
    )


def batch_send(http_url: str, recipients: list[str], *, domain: str = DOMAIN, prefix: str = "k") -> Any:
    """A plain batch through anymail: each recipient's key and delivery id as metadata."""
    from anymail.message import AnymailMessage

    message = AnymailMessage(
        subject="News for %recipient.name%",
        body="Hello %recipient.name%",
        from_email=f"News <news@{domain}>",
        to=recipients,
        connection=anymail_connection(http_url, domain),
        merge_data={address: {"name": address.split("@")[0]} for address in recipients},
        merge_metadata={
            address: {"idempotency_key": f"{prefix}-{index}", "delivery_id": str(index)}
            for index, address in enumerate(recipients)
        },
    )
    message.send()
    return message.anymail_status


def events_client() -> httpx.Client:
    return httpx.Client(auth=("api", api_key()), timeout=10.0)


def events_get(client: httpx.Client, url: str, **params: Any) -> dict[str, Any]:
    response = client.get(url, params=params or None)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


def traverse(client: httpx.Client, url: str, **params: Any) -> tuple[list[dict[str, Any]], str, int]:
    """Every event from the first page on, following ``paging.next`` until a page is
    empty; returns them, the last ``next`` URL (the cursor to poll) and the pages read."""
    items: list[dict[str, Any]] = []
    page = events_get(client, url, **params)
    pages = 1
    while page["items"]:
        items.extend(page["items"])
        page = events_get(client, page["paging"]["next"])
        pages += 1
    return items, page["paging"]["next"], pages


def wait_for_events(
    client: httpx.Client, http_url: str, domain: str, count: int, timeout: float = 10.0
) -> list[dict[str, Any]]:
    """Poll the events API until ``domain`` has logged ``count`` events; return them in order."""
    url = f"{http_url}/mailgun/v3/{domain}/events"

    def enough() -> list[dict[str, Any]] | None:
        items, _, _ = traverse(client, url, ascending="yes", limit=300)
        return items if len(items) >= count else None

    return wait_until(enough, timeout, message=f"{count} events of {domain}")


# --- Batch sends ---------------------------------------------------------------------------------


def test_a_batch_from_anymail_is_one_personalised_message_per_recipient(
    sandbox: SandboxProcess, platform: PlatformStandIn, control: SandboxControl
) -> None:
    from anymail.message import AnymailMessage

    recipients = ["Ada <ada@example.com>", "bob@example.com", "cy@example.com"]
    addresses = ["ada@example.com", "bob@example.com", "cy@example.com"]
    message = AnymailMessage(
        # %recipient.nickname% is nobody's variable: it resolves to nothing.
        subject="%recipient.name%, your %recipient.item% shipped%recipient.nickname%",
        body="Dear %recipient.name%: %recipient.item% (%recipient.name%)",
        from_email=f"Shop <notify@{DOMAIN}>",
        to=recipients,
        connection=anymail_connection(sandbox.http_url),
        merge_data={
            address: {"name": name, "item": item}
            for address, name, item in zip(
                addresses, ["Ada", "Bob", "Cy"], ["a lamp", "a desk", "a pen"], strict=True
            )
        },
        merge_metadata={
            address: {"idempotency_key": f"batch-key-{index}", "delivery_id": str(100 + index)}
            for index, address in enumerate(addresses)
        },
        merge_headers={
            address: {"List-Unsubscribe": f"<https://example.test/u/{index}>"}
            for index, address in enumerate(addresses)
        },
        tags=["campaign"],
    )
    message.attach_alternative("<p>Hi %recipient.name%</p><p>%recipient.item%</p>", "text/html")

    message.send()

    records = control.messages("mailgun")
    assert [(record["status"], record["to"], record["key"]) for record in records] == [
        (200, address, f"batch-key-{index}") for index, address in enumerate(addresses)
    ]
    ada = records[0]["summary"]
    assert ada["subject"] == "Ada, your a lamp shipped"
    assert ada["text"] == "Dear Ada: a lamp (Ada)"
    assert ada["html"] == "<p>Hi Ada</p><p>a lamp</p>"
    assert ada["headers"] == {"List-Unsubscribe": "<https://example.test/u/0>"}
    assert ada["variables"] == {"idempotency_key": "batch-key-0", "delivery_id": "100"}
    assert ada["recipients"] == ["ada@example.com"]
    assert ada["batch"] is True
    cy = records[2]["summary"]
    assert (cy["subject"], cy["headers"]["List-Unsubscribe"]) == (
        "Cy, your a pen shipped",
        "<https://example.test/u/2>",
    )
    status = message.anymail_status
    assert status.status == {"queued"}
    events = tracking_events(platform, 3)
    assert sorted((event.recipient, event.metadata["idempotency_key"]) for event in events) == [
        (address, f"batch-key-{index}") for index, address in enumerate(addresses)
    ]
    bob = next(event for event in events if event.recipient == "bob@example.com")
    assert bob.event_type == "delivered"
    assert bob.metadata == {"idempotency_key": "batch-key-1", "delivery_id": "101"}
    assert bob.message_id == status.message_id
    assert bob.tags == ["campaign"]
    assert bob.esp_event["event-data"]["message"]["headers"]["subject"] == "Bob, your a desk shipped"


def test_a_batch_of_more_than_a_thousand_recipients_is_refused(
    sandbox: SandboxProcess, control: SandboxControl
) -> None:
    from anymail.exceptions import AnymailAPIError

    recipients = [f"person{index}@example.com" for index in range(1001)]

    with pytest.raises(AnymailAPIError) as caught:
        batch_send(sandbox.http_url, recipients)

    assert caught.value.status_code == 400
    assert "Too many recipients" in str(caught.value)
    [record] = control.messages("mailgun")
    assert record["status"] == 400
    assert control.info()["pending_callbacks"] == 0


def test_recipient_variables_that_are_not_an_object_are_refused(
    sandbox: SandboxProcess, control: SandboxControl
) -> None:
    response = httpx.post(
        f"{sandbox.http_url}/mailgun/v3/{DOMAIN}/messages",
        auth=("api", api_key()),
        data={
            "from": f"news@{DOMAIN}",
            "to": "ada@example.com",
            "subject": "Hi %recipient.name%",
            "text": "Hello",
            "recipient-variables": '["ada@example.com"]',
        },
    )

    assert response.status_code == 400
    assert "recipient-variables" in response.json()["message"]
    assert [record["status"] for record in control.messages("mailgun")] == [400]


def test_references_resolve_anywhere_in_a_value_and_a_missing_one_is_empty() -> None:
    variables = {"v:delivery_id": 7, "h:List-Unsubscribe": "<https://u>", "first.name": "Ada", "a-b_c": "x"}

    assert _substitute("%recipient.v:delivery_id%", variables) == "7"
    assert _substitute("<%recipient.h:List-Unsubscribe%>", variables) == "<<https://u>>"
    assert _substitute("%recipient.first.name%%recipient.a-b_c%!", variables) == "Adax!"
    assert _substitute("hi %recipient.nobody%.", variables) == "hi ."
    assert (
        _substitute("100% sure, no %recipient. reference", variables) == "100% sure, no %recipient. reference"
    )
    # Only the recorded prefix of a long body is built.
    body = _Template("%recipient.first.name% " * 1000)
    assert body.render(variables, 10) == "Ada Ada Ad"


def test_a_thousand_recipient_batch_costs_little_cpu(tmp_path: Path) -> None:
    """Parsing the references once and joining per recipient keeps a full batch well under
    100 ms of CPU; the bound here is loose, to catch a per-recipient pass over the batch."""
    state = SandboxState()
    context = SandboxContext(config=SandboxConfig(directory=tmp_path, platform_url="http://x"), state=state)
    api = MailgunApi(context, CallbackQueue(state=state, concurrency=1, max_pending=10_000))
    recipients = [f"person{index}@example.com" for index in range(1000)]
    recipient_variables = {
        address: {"name": f"P{index}", "v:idempotency_key": f"k{index}", "h:List-Unsubscribe": f"<u{index}>"}
        for index, address in enumerate(recipients)
    }
    html = "<p>Hello %recipient.name%</p>" * 2000
    summary = {
        "domain": DOMAIN,
        "from": f"news@{DOMAIN}",
        "subject": "Hi %recipient.name%",
        "recipients": recipients,
        "variables": {"idempotency_key": "%recipient.v:idempotency_key%"},
        "headers": {"List-Unsubscribe": "%recipient.h:List-Unsubscribe%"},
        "tags": [],
        "text": "",
        "html": "",
        "attachments": [],
        "message_id": f"m@{DOMAIN}",
    }

    started = time.process_time()
    api._send_batch(
        DOMAIN,
        recipients,
        recipient_variables,
        summary=summary,
        text="Hi %recipient.name%",
        html=html,
        received_at=time.time(),
    )
    spent = time.process_time() - started

    assert spent < 0.5, f"{spent * 1000:.0f} ms of CPU for 1000 recipients"
    assert state.counters["mailgun"].as_json()["keys"] == 1000
    last = state.records[-1]
    assert (last["key"], last["summary"]["subject"]) == ("k999", "Hi P999")
    assert len(last["summary"]["html"]) == 500


# --- The events API ------------------------------------------------------------------------------


def test_the_events_api_pages_ascending_and_its_next_link_is_a_cursor(
    sandbox: SandboxProcess, control: SandboxControl
) -> None:
    recipients = ["a@example.com", "b@example.com", "angry@complaint.sandbox.test", "d@example.com"]
    batch_send(sandbox.http_url, recipients, prefix="first")
    url = f"{sandbox.http_url}/mailgun/v3/{DOMAIN}/events"
    with events_client() as client:
        everything = wait_for_events(client, sandbox.http_url, DOMAIN, 5)

        items, cursor, pages = traverse(client, url, ascending="yes", limit=2)

        assert [item["id"] for item in items] == [item["id"] for item in everything]
        assert len({item["id"] for item in items}) == 5
        assert pages == 4  # 2 + 2 + 1, then the empty page
        assert [item["timestamp"] for item in items] == sorted(item["timestamp"] for item in items)
        assert sorted(item["event"] for item in items) == ["complained"] + ["delivered"] * 4
        assert {item["user-variables"]["idempotency_key"] for item in items} == {
            f"first-{index}" for index in range(4)
        }
        assert cursor.startswith(f"{sandbox.http_url}/mailgun/v3/{DOMAIN}/events/")

        # Nothing new: an empty page whose next link stays where it was.
        idle = events_get(client, cursor)
        assert idle["items"] == []
        assert idle["paging"]["next"] == cursor

        batch_send(sandbox.http_url, ["late@example.com"], prefix="second")

        def newer() -> dict[str, Any] | None:
            page = events_get(client, cursor)
            return page if page["items"] else None

        page = wait_until(newer, 10.0, message="the event sent after the traversal")
        assert [(item["recipient"], item["event"]) for item in page["items"]] == [
            ("late@example.com", "delivered")
        ]
        assert events_get(client, page["paging"]["next"])["items"] == []


def test_the_events_api_filters_by_event_and_begins_at_a_time(
    sandbox: SandboxProcess, control: SandboxControl
) -> None:
    recipients = ["a@example.com", "angry@complaint.sandbox.test", "gone@bounce.sandbox.test"]
    batch_send(sandbox.http_url, recipients)
    url = f"{sandbox.http_url}/mailgun/v3/{DOMAIN}/events"
    with events_client() as client:
        everything = wait_for_events(client, sandbox.http_url, DOMAIN, 4)

        delivered, _, _ = traverse(client, url, ascending="yes", limit=1, event="delivered")
        either, _, _ = traverse(client, url, ascending="yes", event="failed OR complained")
        newest_first = events_get(client, url)["items"]
        middle = everything[2]["timestamp"]
        since, _, _ = traverse(client, url, ascending="yes", begin=repr(middle))
        all_since_2015, _, _ = traverse(client, url, ascending="yes", begin="Thu, 01 Jan 2015 00:00:00 -0000")

    assert sorted(item["recipient"] for item in delivered) == [
        "a@example.com",
        "angry@complaint.sandbox.test",
    ]
    assert {item["event"] for item in delivered} == {"delivered"}
    assert sorted(item["event"] for item in either) == ["complained", "failed"]
    # Mailgun's default order is descending: newest first.
    assert [item["id"] for item in newest_first] == [item["id"] for item in reversed(everything)]
    assert [item["id"] for item in since] == [
        item["id"] for item in everything if item["timestamp"] >= middle
    ]
    assert len(all_since_2015) == 4


def test_the_events_api_refuses_bad_parameters_and_strangers(sandbox: SandboxProcess) -> None:
    url = f"{sandbox.http_url}/mailgun/v3/{DOMAIN}/events"
    with events_client() as client:
        for limit in ("0", "301", "many"):
            response = client.get(url, params={"limit": limit})
            assert response.status_code == 400, limit
            assert "limit" in response.json()["message"]
        assert client.get(url, params={"ascending": "maybe"}).status_code == 400
        assert "begin" in client.get(url, params={"begin": "not a date"}).json()["message"]
        assert client.get(f"{url}/not-a-token").status_code == 400
        assert client.get(url, params={"limit": "300"}).status_code == 200

    assert httpx.get(url, auth=("api", "wrong")).status_code == 401
    assert httpx.get(url).status_code == 401
    assert httpx.get(f"{url}/{_PagePosition(0, True, None, 10).token()}").status_code == 401


def test_page_tokens_survive_events_dropped_from_the_left() -> None:
    """The log keeps a global number of events; a token pointing before the oldest kept one
    starts at the oldest, and numbering goes on across a reset."""
    log = EventLog(max_events=5)
    for index in range(4):
        log.append("a.test", LoggedEvent(float(index), "delivered", f"a{index}@x", {}, None))
    for index in range(4):
        log.append("B.test", LoggedEvent(10.0 + index, "failed", f"b{index}@x", {}, None))
    domain_a, domain_b = log.domain("a.test"), log.domain("b.test")
    assert domain_a is not None and domain_b is not None

    assert len(log) == 5
    assert (domain_a.first_seq, domain_a.next_seq) == (3, 4)
    page, start, end = domain_a.after(0, 10)
    assert ([seq for seq, _ in page], start, end) == ([3], 3, 4)
    page, start, end = domain_b.after(2, 1)
    assert ([event.recipient for _, event in page], end) == (["b2@x"], 3)
    page, _, low = domain_b.before(4, 10)
    assert ([event.recipient for _, event in page], low) == (["b3@x", "b2@x", "b1@x", "b0@x"], 0)
    assert domain_b.seq_at(11.5) == 2

    log.clear()
    assert len(log) == 0
    assert domain_b.after(0, 10)[0] == []
    assert log.append("b.test", LoggedEvent(20.0, "delivered", "b4@x", {}, None))[1] == 4


# --- Domains without webhooks --------------------------------------------------------------------


def test_a_polled_domain_gets_no_webhooks_but_its_events_are_logged(
    polled_sandbox: ThreadSandbox, platform: PlatformStandIn
) -> None:
    platform.clear()
    polled = [f"reader{index}@example.com" for index in range(1000)]
    batch_send(polled_sandbox.http_url, polled, domain=POLLED_DOMAIN, prefix="news")
    batch_send(polled_sandbox.http_url, ["ada@example.com"], prefix="transactional")

    with events_client() as client:
        events = wait_for_events(client, polled_sandbox.http_url, POLLED_DOMAIN, 1000)
        url = f"{polled_sandbox.http_url}/mailgun/v3/{POLLED_DOMAIN}/events"
        items, _, pages = traverse(client, url, ascending="yes", limit=300)
    control = SandboxControl(polled_sandbox.http_url)
    try:
        wait_until(lambda: control.info()["pending_callbacks"] == 0, 10.0, message="callbacks pending")
        records = control.messages("mailgun")
    finally:
        control.close()

    assert pages == 5  # 300 + 300 + 300 + 100, then the empty page
    assert [item["id"] for item in items] == [item["id"] for item in events]
    assert sorted(item["recipient"] for item in items) == sorted(polled)
    assert {item["user-variables"]["idempotency_key"] for item in items} == {f"news-{i}" for i in range(1000)}
    # The other domain's receipt came as a webhook; none of the polled domain's did.
    [webhook] = platform.wait_for(1, lambda item: item.path == TRACKING_PATH)
    assert webhook.json()["event-data"]["recipient"] == "ada@example.com"
    assert len(records) == 1001
    assert sum(1 for record in records if record["to"] in set(polled)) == 1000


def test_polled_domains_come_from_mailgun_accounts_that_read_receipts_from_events() -> None:
    settings = SimpleNamespace(
        PROVIDER_SANDBOX_DIR="/tmp/sandbox",
        PUBLIC_URL="http://platform.test",
        PROVIDER_SANDBOX_HOST="127.0.0.1",
        PROVIDER_SANDBOX_HTTP_PORT=0,
        PROVIDER_SANDBOX_APNS_PORT=0,
        PROVIDER_SANDBOX_SMTP_PORT=0,
        PROVIDERS={
            "mailgun": {"kind": "mailgun", "api_key": "k", "sender_domain": "mg.example.test"},
            "mailgun-bulk": {
                "kind": "mailgun",
                "api_key": "k",
                "sender_domain": "News.Example.TEST",
                "receipts": "events",
            },
            "mailgun-hooks": {
                "kind": "mailgun",
                "sender_domain": "hooks.example.test",
                "receipts": "webhooks",
            },
            "smtp": {"kind": "smtp", "sender_domain": "smtp.example.test", "receipts": "events"},
        },
        ANYMAIL={},
    )

    assert config_from_settings(settings).mailgun_polled_domains == ("news.example.test",)


# --- Counters for big runs -----------------------------------------------------------------------


def test_the_counters_time_first_acceptances(sandbox: SandboxProcess, control: SandboxControl) -> None:
    assert control.stats()["providers"]["mailgun"]["first_accepted_at"] is None

    batch_send(sandbox.http_url, ["a@example.com", "b@example.com"], prefix="run")
    batch_send(sandbox.http_url, ["c@example.com"], prefix="later")
    first, _, last = control.messages("mailgun")
    batch_send(sandbox.http_url, ["a@example.com"], prefix="run")  # a duplicate of run-0

    counters = control.stats()["providers"]["mailgun"]
    assert counters["first_accepted_at"] == first["received_at"]
    assert counters["last_accepted_at"] == last["received_at"] > first["received_at"]
    assert (counters["keys"], counters["duplicates"], counters["accepted"]) == (3, 1, 4)
    assert json.loads(json.dumps(counters)) == counters
