"""The SSE fallback of the inbox socket (README, "The public contract"): ``id:`` is the seq and
``Last-Event-ID`` resumes. Requests go through the real ASGI application with a small
driver that can disconnect mid-stream, as a browser closing the tab does."""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import aclosing
from typing import Any
from urllib.parse import urlencode

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from notifications.views import sse_inbox_stream
from project.asgi import application
from tests.asgi_scope import http_get_scope
from tests.notifications.test_consumers import (
    connections_of,
    inbox_items_create,
    item_payload,
    live_notification,
    recipient_create,
    run,
    token_for,
)

pytestmark = pytest.mark.django_db(transaction=True)

EVENT_TIMEOUT = 3.0


def parse_event(chunk: str) -> dict[str, Any]:
    """One SSE block as {"id": ..., "event": ..., "data": parsed JSON} (comments as "comment")."""
    event: dict[str, Any] = {}
    for line in chunk.strip("\n").split("\n"):
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "":
            event["comment"] = value
        elif name == "data":
            event["data"] = json.loads(value)
        else:
            event[name] = value
    return event


class SseClient:
    """Drives one GET through the ASGI app and yields its events until disconnect()."""

    def __init__(self, path: str, query: dict[str, str], headers: dict[str, str] | None = None) -> None:
        self.scope = http_get_scope(path, query_string=urlencode(query).encode(), headers=headers)
        self.sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.gone = asyncio.Event()
        self.buffer = ""
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> dict[str, Any]:
        """Send the request; return the response start message (status, headers)."""
        requested = False

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await self.gone.wait()
            return {"type": "http.disconnect"}

        self.task = asyncio.create_task(application(self.scope, receive, self.send))
        start = await asyncio.wait_for(self.sent.get(), EVENT_TIMEOUT)
        assert start["type"] == "http.response.start"
        return start

    async def send(self, message: dict[str, Any]) -> None:
        """The ASGI send of the server: the message reaches this client."""
        await self.sent.put(message)

    async def event(self) -> dict[str, Any]:
        while "\n\n" not in self.buffer:
            message = await asyncio.wait_for(self.sent.get(), EVENT_TIMEOUT)
            assert message["type"] == "http.response.body"
            self.buffer += message.get("body", b"").decode()
        chunk, self.buffer = self.buffer.split("\n\n", 1)
        return parse_event(chunk)

    async def body(self) -> bytes:
        parts = []
        while True:
            message = await asyncio.wait_for(self.sent.get(), EVENT_TIMEOUT)
            parts.append(message.get("body", b""))
            if not message.get("more_body"):
                return b"".join(parts)

    async def disconnect(self) -> None:
        self.gone.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, EVENT_TIMEOUT)


async def notification_seqs(client: SseClient, count: int) -> list[int]:
    seqs = []
    for _ in range(count):
        event = await client.event()
        assert event["event"] == "notification", event
        assert event["id"] == str(event["data"]["seq"]) == str(event["data"]["item"]["seq"])
        assert event["data"]["type"] == "notification"
        seqs.append(event["data"]["seq"])
    return seqs


def test_it_resumes_from_last_event_id_and_streams_live_items(settings: Any) -> None:
    settings.PRESENCE_GRACE_SECONDS = 0  # unregistered at once on close (tests/presence: the grace)
    recipient = recipient_create()
    inbox_items_create(recipient, [1, 2, 3, 4], read={1})
    token = token_for(recipient)

    async def scenario() -> None:
        client = SseClient("/sse/inbox/", {"token": token}, {"Last-Event-ID": "2"})
        start = await client.start()
        assert start["status"] == 200
        headers = {name.decode().lower(): value.decode() for name, value in start["headers"]}
        assert headers["content-type"].startswith("text/event-stream")
        assert headers["cache-control"] == "no-cache"
        assert headers["x-accel-buffering"] == "no"

        assert (await client.event()) == {"retry": "3000"}
        unread = await client.event()
        assert unread["event"] == "unread_count" and unread["data"] == {"type": "unread_count", "count": 3}
        assert await notification_seqs(client, 2) == [3, 4]

        await sync_to_async(inbox_items_create)(recipient, [5, 6])
        await sync_to_async(live_notification)(recipient, 6)  # 5's frame was lost
        assert await notification_seqs(client, 2) == [5, 6]

        assert await connections_of(recipient) == 1
        await client.disconnect()
        assert await connections_of(recipient) == 0

    run(scenario)


def test_it_resumes_from_the_after_parameter() -> None:
    recipient = recipient_create()
    inbox_items_create(recipient, [1, 2, 3])
    token = token_for(recipient)

    async def scenario() -> None:
        client = SseClient("/sse/inbox/", {"token": token, "after": "1"})
        await client.start()
        await client.event()  # retry
        await client.event()  # unread_count
        assert await notification_seqs(client, 2) == [2, 3]
        await client.disconnect()

    run(scenario)


@pytest.mark.parametrize("token", ["", "not-a-token"])
def test_it_refuses_a_missing_or_bad_token_with_401(token: str) -> None:
    async def scenario() -> None:
        response = await AsyncClient().get("/sse/inbox/", {"token": token} if token else {})
        assert response.status_code == 401
        body = json.loads(response.content)
        assert list(body) == ["errors"] and list(body["errors"]) == ["token"]
        assert body["errors"]["token"][0]

    run(scenario)


def test_it_refuses_an_expired_token_with_401() -> None:
    recipient = recipient_create()
    token = token_for(recipient, ttl_seconds=-60)

    async def scenario() -> None:
        response = await AsyncClient().get("/sse/inbox/", {"token": token})
        assert response.status_code == 401
        assert "expired" in json.loads(response.content)["errors"]["token"][0]

    run(scenario)


def test_it_rejects_a_last_event_id_that_is_not_a_seq() -> None:
    recipient = recipient_create()
    token = token_for(recipient)

    async def scenario() -> None:
        response = await AsyncClient().get("/sse/inbox/", {"token": token}, headers={"Last-Event-ID": "abc"})
        assert response.status_code == 400
        assert list(json.loads(response.content)["errors"]) == ["Last-Event-ID"]

    run(scenario)


def test_it_sends_keepalive_comments_and_cleans_up_when_the_stream_is_closed(settings: Any) -> None:
    settings.PRESENCE_GRACE_SECONDS = 0  # unregistered at once on close (tests/presence: the grace)
    recipient = recipient_create()
    inbox_items_create(recipient, [1])

    async def scenario() -> None:
        async with aclosing(
            sse_inbox_stream(recipient_id=recipient.id, after=None, keepalive_seconds=0.05)
        ) as stream:
            assert await anext(stream) == "retry: 3000\n\n"
            assert parse_event(await anext(stream))["data"] == {"type": "unread_count", "count": 1}
            assert await asyncio.wait_for(anext(stream), EVENT_TIMEOUT) == ": keepalive\n\n"
            assert await connections_of(recipient) == 1

            # Without a resume the live item is passed on as is; a duplicate is dropped.
            await sync_to_async(live_notification)(recipient, 1)
            await sync_to_async(live_notification)(recipient, 1)
            # Keepalives keep coming every 0.05 s, so this reads whatever arrives in 1 s.
            deadline = time.monotonic() + 1.0
            chunks = []
            while time.monotonic() < deadline:
                chunks.append(await asyncio.wait_for(anext(stream), EVENT_TIMEOUT))
            events = [parse_event(chunk) for chunk in chunks if not chunk.startswith(":")]
            assert [e["id"] for e in events] == ["1"]
        assert await connections_of(recipient) == 0

    run(scenario)


class StallingSseClient(SseClient):
    """A reader that stops reading after ``read`` body messages until ``release`` is set,
    as a browser on a stalled network does: the server's writes block."""

    def __init__(self, path: str, query: dict[str, str], *, read: int) -> None:
        super().__init__(path, query)
        self.release = asyncio.Event()
        self.bodies = 0
        self.read = read

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            self.bodies += 1
            if self.bodies > self.read:
                await self.release.wait()
        await super().send(message)


def test_it_cuts_off_an_sse_reader_that_falls_behind_instead_of_buffering_for_it(
    settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # given a stream whose reader stalls after the first two events
    settings.SOCKET_SEND_QUEUE_LIMIT = 5
    settings.PRESENCE_GRACE_SECONDS = 0
    recipient = recipient_create()
    inbox_items_create(recipient, list(range(1, 101)))
    token = token_for(recipient)
    payloads = [item_payload(recipient, seq) for seq in range(1, 101)]

    async def scenario() -> None:
        client = StallingSseClient("/sse/inbox/", {"token": token}, read=2)
        await client.start()
        assert (await client.event()) == {"retry": "3000"}
        assert (await client.event())["event"] == "unread_count"

        # when 100 live items arrive while it does not read
        for seq, payload in enumerate(payloads, start=1):
            await sync_to_async(live_notification)(recipient, seq, payload)
        deadline = time.monotonic() + EVENT_TIMEOUT
        while "cutting off a slow live connection" not in caplog.text:
            assert time.monotonic() < deadline, "the slow SSE reader was never cut off"
            await asyncio.sleep(0.02)

        # then once it reads again it gets what was in flight, not the backlog, and the
        # stream ends (its EventSource reconnects with Last-Event-ID and resumes)
        client.release.set()
        events = []
        while True:
            message = await asyncio.wait_for(client.sent.get(), EVENT_TIMEOUT)
            client.buffer += message.get("body", b"").decode()
            if not message.get("more_body"):
                break
        events = [parse_event(chunk) for chunk in client.buffer.split("\n\n") if chunk.strip()]
        notifications = [e for e in events if e.get("event") == "notification"]
        assert len(notifications) <= settings.SOCKET_SEND_QUEUE_LIMIT, len(notifications)
        await client.disconnect()
        assert await connections_of(recipient) == 0

    with caplog.at_level("INFO", logger="realtime.connection"):
        run(scenario)
