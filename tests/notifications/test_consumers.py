"""The inbox websocket (README, "The public contract"): auth, frames, resume, ordering, slow clients.

Async test bodies run through ``async_to_sync`` (no pytest-asyncio). Recipients get random
ids as well as the per-run Redis namespace: channel-layer groups and the connection
registry are keyed by recipient id, and parallel test databases hand out the same ids.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Collection
from typing import Any
from urllib.parse import urlencode

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from notifications.models import Delivery, DeliveryStatus, Event, InboxItem, InboxSequence, Recipient
from notifications.services.inbox import inbox_item_payload
from notifications.services.realtime import (
    NOTIFICATIONS_MESSAGE,
    app_frames_publish,
    realtime_publish,
    realtime_publish_entries,
)
from project.asgi import application
from realtime.redis_client import redis_sync
from realtime.registry import _key as connection_key
from realtime.tokens import end_user_token_issue
from tests.notifications.factories import NotificationTypeFactory, RecipientFactory
from tests.realtime.test_hub import hub_subscription_kill

pytestmark = pytest.mark.django_db(transaction=True)

FRAME_TIMEOUT = 3.0


# --- arrange helpers (shared with test_sse.py) ---------------------------------------------


def recipient_create(**kwargs: Any) -> Recipient:
    """A recipient whose id no parallel test run will also use (see module docstring)."""
    return RecipientFactory(id=random.randint(10**12, 2**62), external_id=f"user-{uuid.uuid4()}", **kwargs)


def inbox_items_create(
    recipient: Recipient, seqs: list[int], *, read: Collection[int] = frozenset()
) -> list[InboxItem]:
    """Stored inbox items with the given seqs, as in-app dispatch would write them."""
    notification_type = NotificationTypeFactory()
    # One event per item: a recipient has at most one delivery per event and channel.
    events = [
        Event.objects.create(
            notification_type=notification_type,
            recipient_ids=[recipient.id],
            request_fingerprint="x",
            data={"seq": seq},
        )
        for seq in seqs
    ]
    now = timezone.now()
    deliveries = Delivery.objects.bulk_create(
        Delivery(
            event=event,
            recipient=recipient,
            channel="inapp",
            status=DeliveryStatus.DELIVERED,
        )
        for event in events
    )
    items = InboxItem.objects.bulk_create(
        InboxItem(
            recipient=recipient,
            seq=seq,
            delivery=delivery,
            event=delivery.event,
            notification_type=notification_type.key,
            category=notification_type.category,
            title=f"Item {seq}",
            body=f"body {seq}",
            data={"seq": seq},
            read_at=now if seq in read else None,
        )
        for seq, delivery in zip(seqs, deliveries, strict=True)
    )
    InboxSequence.objects.update_or_create(recipient=recipient, defaults={"last_seq": max(seqs)})
    return items


def item_payload(recipient: Recipient, seq: int) -> dict[str, Any]:
    return inbox_item_payload(InboxItem.objects.get(recipient=recipient, seq=seq))


def live_notification(recipient: Recipient, seq: int, item: dict[str, Any] | None = None) -> None:
    """Publish a live frame the way in-app dispatch does after commit (services/inbox.py
    _push_frames), without an unread count."""
    payload = item if item is not None else item_payload(recipient, seq)
    shared = {key: value for key, value in payload.items() if key not in ("id", "seq")}
    message = {
        "type": NOTIFICATIONS_MESSAGE,
        "item": shared,
        "rows": {str(recipient.id): [[payload["id"], seq]]},
        "unread": {},
    }
    realtime_publish_entries([([recipient.id], message)])


def token_for(recipient: Recipient, **kwargs: Any) -> str:
    token, _ = end_user_token_issue(recipient_id=recipient.id, **kwargs)
    return token


def run(test: Callable[[], Awaitable[None]]) -> None:
    async_to_sync(test)()


# --- socket helpers -------------------------------------------------------------------------


def token_socket(token: str, app: Any = application) -> WebsocketCommunicator:
    return WebsocketCommunicator(app, "/ws/inbox/?" + urlencode({"token": token}))


async def open_socket(communicator: WebsocketCommunicator) -> dict[str, Any]:
    """Connect, assert the socket was accepted, and return its first frame (unread_count)."""
    connected, code = await communicator.connect(timeout=FRAME_TIMEOUT)
    assert connected, f"socket refused with close code {code}"
    first = await communicator.receive_json_from(timeout=FRAME_TIMEOUT)
    assert first["type"] == "unread_count"
    return first


async def receive_seqs(communicator: WebsocketCommunicator, count: int) -> list[int]:
    seqs = []
    for _ in range(count):
        frame = await communicator.receive_json_from(timeout=FRAME_TIMEOUT)
        assert frame["type"] == "notification", frame
        assert frame["item"]["seq"] == frame["seq"]
        seqs.append(frame["seq"])
    return seqs


async def connections_of(recipient: Recipient) -> int:
    return int(redis_sync().zcard(connection_key(recipient.id)))


# --- tests ----------------------------------------------------------------------------------


def test_it_sends_the_unread_count_on_connect_to_a_token_socket() -> None:
    recipient = recipient_create()
    inbox_items_create(recipient, [1, 2, 3], read={2})

    async def scenario() -> None:
        communicator = token_socket(token_for(recipient))
        first = await open_socket(communicator)
        assert first == {"type": "unread_count", "count": 2}
        await communicator.disconnect()

    run(scenario)


def test_it_answers_ping_with_pong() -> None:
    recipient = recipient_create()

    async def scenario() -> None:
        communicator = token_socket(token_for(recipient))
        await open_socket(communicator)
        await communicator.send_json_to({"type": "ping"})
        assert await communicator.receive_json_from(timeout=FRAME_TIMEOUT) == {"type": "pong"}
        await communicator.disconnect()

    run(scenario)


def test_it_resumes_with_exactly_the_missed_items_in_order() -> None:
    recipient = recipient_create()
    inbox_items_create(recipient, [1, 2, 3, 4, 5])

    async def scenario() -> None:
        communicator = token_socket(token_for(recipient))
        await open_socket(communicator)
        await communicator.send_json_to({"type": "resume", "after": 2})
        frames = [await communicator.receive_json_from(timeout=FRAME_TIMEOUT) for _ in range(3)]
        assert [f["seq"] for f in frames] == [3, 4, 5]
        assert frames[0] == {
            "type": "notification",
            "seq": 3,
            "item": await sync_to_async(item_payload)(recipient, 3),
        }
        assert await communicator.receive_nothing(timeout=0.3)
        await communicator.disconnect()

    run(scenario)


def test_it_sends_what_was_committed_while_the_process_hub_was_not_subscribed() -> None:
    """Frames published while the hub's subscription was down are lost; when it is back,
    each socket reads from the database what came after the last item it sent."""
    recipient = recipient_create()
    inbox_items_create(recipient, [1])

    async def scenario() -> None:
        communicator = token_socket(token_for(recipient))
        await open_socket(communicator)
        await communicator.send_json_to({"type": "resume", "after": 0})
        assert await receive_seqs(communicator, 1) == [1]
        # Committed, and its frame never published (as if published during the outage).
        await sync_to_async(inbox_items_create)(recipient, [2, 3])
        assert hub_subscription_kill() == 1
        assert await receive_seqs(communicator, 2) == [2, 3]
        assert await communicator.receive_nothing(timeout=0.3)
        await communicator.disconnect()

    run(scenario)


def test_a_live_item_that_overtakes_the_resume_frame_comes_once_after_the_items_before_it() -> None:
    recipient = recipient_create()
    inbox_items_create(recipient, [1, 2, 3])

    async def scenario() -> None:
        communicator = token_socket(token_for(recipient))
        await open_socket(communicator)
        # Item 3 is published between the socket's opening and the client's resume frame.
        await sync_to_async(live_notification)(recipient, 3)
        await communicator.send_json_to({"type": "resume", "after": 0})
        assert await receive_seqs(communicator, 3) == [1, 2, 3]
        assert await communicator.receive_nothing(timeout=0.5)
        await communicator.disconnect()

    run(scenario)


def test_it_resumes_across_more_than_one_database_page() -> None:
    recipient = recipient_create()
    inbox_items_create(recipient, list(range(1, 451)))

    async def scenario() -> None:
        communicator = token_socket(token_for(recipient))
        await open_socket(communicator)
        await communicator.send_json_to({"type": "resume", "after": 10})
        assert await receive_seqs(communicator, 440) == list(range(11, 451))
        assert await communicator.receive_nothing(timeout=0.3)
        await communicator.disconnect()

    run(scenario)


def test_it_fills_a_gap_before_a_live_item_from_the_database_in_order() -> None:
    recipient = recipient_create()
    inbox_items_create(recipient, [1, 2])

    async def scenario() -> None:
        communicator = token_socket(token_for(recipient))
        await open_socket(communicator)
        await communicator.send_json_to({"type": "resume", "after": 0})
        assert await receive_seqs(communicator, 2) == [1, 2]

        # Items 3 and 4 were committed but their live frames were lost (pub/sub is
        # at-most-once); only 5's frame arrives.
        await sync_to_async(inbox_items_create)(recipient, [3, 4, 5])
        await sync_to_async(live_notification)(recipient, 5)

        assert await receive_seqs(communicator, 3) == [3, 4, 5]
        assert await communicator.receive_nothing(timeout=0.3)
        await communicator.disconnect()

    run(scenario)


def test_it_does_not_send_a_live_item_twice() -> None:
    recipient = recipient_create()
    inbox_items_create(recipient, [1, 2, 3])

    async def scenario() -> None:
        communicator = token_socket(token_for(recipient))
        await open_socket(communicator)
        await communicator.send_json_to({"type": "resume", "after": 0})
        assert await receive_seqs(communicator, 3) == [1, 2, 3]

        # 3 was already sent by the resume; 4 arrives twice.
        await sync_to_async(inbox_items_create)(recipient, [4])
        await sync_to_async(live_notification)(recipient, 3)
        await sync_to_async(live_notification)(recipient, 4)
        await sync_to_async(live_notification)(recipient, 4)

        assert await receive_seqs(communicator, 1) == [4]
        assert await communicator.receive_nothing(timeout=0.3)
        await communicator.disconnect()

    run(scenario)


def test_it_passes_live_items_and_unread_counts_on_without_a_resume() -> None:
    recipient = recipient_create()
    inbox_items_create(recipient, [1, 2, 3])

    async def scenario() -> None:
        communicator = token_socket(token_for(recipient))
        await open_socket(communicator)
        await sync_to_async(live_notification)(recipient, 3)
        realtime_publish([(recipient.id, {"type": "inbox.unread", "count": 7})])

        assert await receive_seqs(communicator, 1) == [3]
        assert await communicator.receive_json_from(timeout=FRAME_TIMEOUT) == {
            "type": "unread_count",
            "count": 7,
        }
        await communicator.disconnect()

    run(scenario)


def test_it_passes_another_apps_frame_on_as_it_is() -> None:
    recipient = recipient_create()

    async def scenario() -> None:
        communicator = token_socket(token_for(recipient))
        await open_socket(communicator)
        frame = {"type": "match.found", "match": "m-1", "socket": "/ws/matches/m-1/"}
        app_frames_publish([([recipient.id], frame)])
        assert await communicator.receive_json_from(timeout=FRAME_TIMEOUT) == frame
        await communicator.disconnect()

    run(scenario)


def test_it_passes_live_frames_on_without_a_thread_hop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Channels hops to a thread to close stale database connections before each message
    it dispatches; the inbox's live frames skip it (they come from the process's hub,
    realtime/hub.py, straight to the live connection), the socket's own events keep it."""
    import channels.consumer

    hops: list[str] = []
    close_old = channels.consumer.aclose_old_connections

    async def counted() -> None:
        hops.append("close_old_connections")
        await close_old()

    monkeypatch.setattr(channels.consumer, "aclose_old_connections", counted)
    recipient = recipient_create()
    inbox_items_create(recipient, [1, 2, 3])

    async def scenario() -> None:
        communicator = token_socket(token_for(recipient))
        await open_socket(communicator)
        before = len(hops)
        await sync_to_async(live_notification)(recipient, 3)
        realtime_publish([(recipient.id, {"type": "inbox.unread", "count": 7})])

        assert await receive_seqs(communicator, 1) == [3]
        assert (await communicator.receive_json_from(timeout=FRAME_TIMEOUT))["count"] == 7
        assert len(hops) == before
        await communicator.send_json_to({"type": "ping"})  # the socket's own events keep it
        assert (await communicator.receive_json_from(timeout=FRAME_TIMEOUT))["type"] == "pong"
        assert len(hops) == before + 1
        await communicator.disconnect()

    run(scenario)


def test_it_refuses_a_forged_token() -> None:
    recipient = recipient_create()
    token = token_for(recipient)
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")

    async def scenario() -> None:
        communicator = token_socket(forged)
        assert await communicator.connect(timeout=FRAME_TIMEOUT) == (False, 4401)
        await communicator.disconnect()

    run(scenario)


def test_it_refuses_an_expired_token() -> None:
    recipient = recipient_create()
    expired = token_for(recipient, ttl_seconds=-60)

    async def scenario() -> None:
        communicator = token_socket(expired)
        assert await communicator.connect(timeout=FRAME_TIMEOUT) == (False, 4401)
        await communicator.disconnect()

    run(scenario)


def test_it_refuses_a_socket_without_credentials() -> None:
    async def scenario() -> None:
        communicator = WebsocketCommunicator(
            application, "/ws/inbox/", headers=[(b"origin", b"http://127.0.0.1:8000")]
        )
        assert await communicator.connect(timeout=FRAME_TIMEOUT) == (False, 4401)
        await communicator.disconnect()

    run(scenario)


def _session_cookie(recipient: Recipient | None) -> bytes:
    user = get_user_model().objects.create_user(username=f"u-{uuid.uuid4().hex[:12]}", password="x" * 12)
    if recipient is not None:
        recipient.user = user
        recipient.save(update_fields=["user"])
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


def cookie_socket(cookie: bytes, origin: str | None) -> WebsocketCommunicator:
    headers = [(b"cookie", cookie)]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    return WebsocketCommunicator(application, "/ws/inbox/", headers=headers)


@pytest.mark.parametrize("origin", ["https://evil.example", None])
def test_it_refuses_a_cookie_socket_from_a_foreign_or_missing_origin(origin: str | None) -> None:
    cookie = _session_cookie(recipient_create())

    async def scenario() -> None:
        communicator = cookie_socket(cookie, origin)
        assert await communicator.connect(timeout=FRAME_TIMEOUT) == (False, 4403)
        await communicator.disconnect()

    run(scenario)


def test_it_accepts_a_cookie_socket_from_an_allowed_origin() -> None:
    recipient = recipient_create()
    inbox_items_create(recipient, [1])
    cookie = _session_cookie(recipient)

    async def scenario() -> None:
        communicator = cookie_socket(cookie, settings.SOCKET_ALLOWED_ORIGINS[0])
        assert await open_socket(communicator) == {"type": "unread_count", "count": 1}
        await communicator.send_json_to({"type": "resume", "after": 0})
        assert await receive_seqs(communicator, 1) == [1]
        await communicator.disconnect()

    run(scenario)


def test_it_refuses_a_cookie_socket_of_a_user_without_an_inbox() -> None:
    cookie = _session_cookie(None)

    async def scenario() -> None:
        communicator = cookie_socket(cookie, settings.SOCKET_ALLOWED_ORIGINS[0])
        assert await communicator.connect(timeout=FRAME_TIMEOUT) == (False, 4401)
        await communicator.disconnect()

    run(scenario)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("not json", "frame"),
        ("[1, 2]", "frame"),
        (json.dumps({"type": "subscribe"}), "type"),
        (json.dumps({"after": 1}), "type"),
        (json.dumps({"type": "resume"}), "after"),
        (json.dumps({"type": "resume", "after": -1}), "after"),
        (json.dumps({"type": "resume", "after": "5"}), "after"),
        (json.dumps({"type": "resume", "after": True}), "after"),
    ],
)
def test_it_answers_a_bad_client_frame_with_an_error_naming_the_field(text: str, field: str) -> None:
    recipient = recipient_create()

    async def scenario() -> None:
        communicator = token_socket(token_for(recipient))
        await open_socket(communicator)
        await communicator.send_to(text_data=text)
        frame = await communicator.receive_json_from(timeout=FRAME_TIMEOUT)
        assert frame["type"] == "error"
        assert list(frame["errors"]) == [field]
        assert isinstance(frame["errors"][field][0], str) and frame["errors"][field][0]
        # The socket stays usable.
        await communicator.send_json_to({"type": "ping"})
        assert await communicator.receive_json_from(timeout=FRAME_TIMEOUT) == {"type": "pong"}
        await communicator.disconnect()

    run(scenario)


def slow_network(delay: float) -> Any:
    """The ASGI app seen through a client whose every data frame takes ``delay`` to send."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        async def slow_send(message: dict[str, Any]) -> None:
            if message["type"] == "websocket.send":
                await asyncio.sleep(delay)
            await send(message)

        await application(scope, receive, slow_send)

    return app


async def close_code(communicator: WebsocketCommunicator, deadline_seconds: float = 5.0) -> int:
    """Skip data frames until the server closes the socket; return its close code."""
    deadline = time.monotonic() + deadline_seconds
    while True:
        message = await communicator.receive_output(timeout=max(0.01, deadline - time.monotonic()))
        if message["type"] == "websocket.close":
            return int(message["code"])


def test_it_closes_a_client_whose_send_queue_is_full_with_4008(settings: Any) -> None:
    settings.SOCKET_SEND_QUEUE_LIMIT = 2
    settings.SOCKET_SEND_TIMEOUT_SECONDS = 30.0
    recipient = recipient_create()
    inbox_items_create(recipient, list(range(1, 11)))
    payloads = {seq: item_payload(recipient, seq) for seq in range(1, 11)}

    async def scenario() -> None:
        communicator = token_socket(token_for(recipient), app=slow_network(delay=1.0))
        connected, _ = await communicator.connect(timeout=FRAME_TIMEOUT)
        assert connected
        for seq in range(1, 11):
            live_notification(recipient, seq, payloads[seq])
        assert await close_code(communicator) == 4008
        await communicator.disconnect()

    run(scenario)


def test_it_closes_a_client_slower_than_the_send_timeout_with_4008(settings: Any) -> None:
    settings.SOCKET_SEND_TIMEOUT_SECONDS = 0.2
    recipient = recipient_create()

    async def scenario() -> None:
        communicator = token_socket(token_for(recipient), app=slow_network(delay=5.0))
        connected, _ = await communicator.connect(timeout=FRAME_TIMEOUT)
        assert connected
        # The first frame (unread_count) already cannot be sent in time.
        assert await close_code(communicator, deadline_seconds=3.0) == 4008
        await communicator.disconnect()

    run(scenario)


def test_it_registers_the_connection_while_open_and_removes_it_on_close(settings: Any) -> None:
    settings.PRESENCE_GRACE_SECONDS = 0  # unregistered at once on close (tests/presence: the grace)
    recipient = recipient_create()

    async def scenario() -> None:
        assert await connections_of(recipient) == 0
        first = token_socket(token_for(recipient))
        second = token_socket(token_for(recipient))
        await open_socket(first)
        await open_socket(second)
        assert await connections_of(recipient) == 2

        await first.disconnect()
        assert await connections_of(recipient) == 1
        await second.disconnect()
        assert await connections_of(recipient) == 0

    run(scenario)
