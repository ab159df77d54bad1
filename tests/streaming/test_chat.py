"""A stream's chat socket (streaming/consumers.py, streaming/services/chat.py) against the
real ASGI application, PostgreSQL and Redis: what one viewer does, a second viewer's socket
sees (messages as written, refusals that reach nobody else, deletions, mutes, bans, slow
mode), hostile frames are answered and leave the socket open, and the viewer count counts
a viewer with two tabs once.

Async bodies run through ``async_to_sync`` (no pytest-asyncio), as in the inbox tests.
The arrange helpers here are shared with test_chat_services.py and test_chat_api.py.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from notifications.models import Recipient
from project.asgi import application
from project.processes.waiting import wait_until
from realtime.tokens import end_user_token_issue
from streaming.consumers import ChatConnection
from streaming.models import ChatMessage, Moderator, Stream
from streaming.services.chat import (
    chat_ban,
    chat_delete,
    chat_mute,
    chat_slow_mode,
    chat_unban,
    chat_viewers_count,
)
from tests.notifications.factories import RecipientFactory

pytestmark = pytest.mark.django_db(transaction=True)

FRAME_TIMEOUT = 5.0
# How long a socket is watched to show that a frame did NOT come.
QUIET_SECONDS = 0.4
MESSAGE_KEYS = {"type", "id", "author", "name", "text", "ts"}


# --- arrange --------------------------------------------------------------------------------------


def recipient_create(name: str = "Viewer") -> Recipient:
    return RecipientFactory(external_id=f"viewer-{uuid.uuid4().hex[:12]}", name=name)


def stream_create(*, owner: Recipient | None = None, **fields: Any) -> Stream:
    return Stream.objects.create(
        key=f"chat-{uuid.uuid4().hex[:12]}",
        title="Test stream",
        owner=owner or recipient_create("Owner"),
        **fields,
    )


def moderator_create(stream: Stream) -> Recipient:
    moderator = recipient_create("Moderator")
    Moderator.objects.create(stream=stream, recipient=moderator)
    return moderator


def messages_create(stream: Stream, author: Recipient, count: int) -> list[ChatMessage]:
    start = timezone.now() - timedelta(minutes=10)
    return [
        ChatMessage.objects.create(
            stream=stream, author=author, text=f"old {n}", created_at=start + timedelta(seconds=n)
        )
        for n in range(count)
    ]


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    async_to_sync(scenario)()


# --- sockets --------------------------------------------------------------------------------------


def chat_socket(
    stream: Stream, viewer: Recipient | None = None, *, token: str | None = None
) -> WebsocketCommunicator:
    """A socket on the stream's chat: as ``viewer`` (their token), with ``token`` as given, or
    with no credentials at all."""
    if viewer is not None:
        token, _ = end_user_token_issue(recipient_id=viewer.id)
    query = "?" + urlencode({"token": token}) if token is not None else ""
    return WebsocketCommunicator(application, f"/ws/streams/{stream.key}/chat/{query}")


async def open_chat(socket: WebsocketCommunicator) -> dict[str, Any]:
    """Connect, assert the socket opened, and return its history frame (the viewer count
    that follows it is read too)."""
    connected, code = await socket.connect(timeout=FRAME_TIMEOUT)
    assert connected, f"chat socket refused with close code {code}"
    history = await socket.receive_json_from(timeout=FRAME_TIMEOUT)
    assert history["type"] == "history", history
    viewers = await socket.receive_json_from(timeout=FRAME_TIMEOUT)
    assert viewers["type"] == "viewers", viewers
    return dict(history)


async def next_frame(socket: WebsocketCommunicator) -> dict[str, Any]:
    """The next frame that is not a viewer count (those come whenever someone joins)."""
    while True:
        frame = await socket.receive_json_from(timeout=FRAME_TIMEOUT)
        if frame["type"] != "viewers":
            return dict(frame)


async def assert_quiet(socket: WebsocketCommunicator) -> None:
    """Nothing but viewer counts arrives for QUIET_SECONDS."""
    while not await socket.receive_nothing(timeout=QUIET_SECONDS):
        frame = await socket.receive_json_from(timeout=FRAME_TIMEOUT)
        assert frame["type"] == "viewers", f"unexpected frame {frame}"


async def post(socket: WebsocketCommunicator, text: Any) -> None:
    await socket.send_json_to({"type": "message", "text": text})


async def error_of(socket: WebsocketCommunicator) -> dict[str, Any]:
    frame = await next_frame(socket)
    assert frame["type"] == "error", frame
    assert set(frame) == {"type", "field", "message"}, frame
    assert frame["message"], frame
    return frame


async def still_open(socket: WebsocketCommunicator) -> None:
    await socket.send_json_to({"type": "ping"})
    assert await next_frame(socket) == {"type": "pong"}


def as_moment(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


# --- messages -------------------------------------------------------------------------------------


def test_a_second_viewer_gets_the_message_with_its_html_as_literal_text() -> None:
    stream = stream_create()
    alice, bob = recipient_create("Alice"), recipient_create()
    hostile = '<script>alert("x")</script> <b>bold</b> &amp; <img src=x onerror=alert(1)>'

    async def scenario() -> None:
        poster, viewer = chat_socket(stream, alice), chat_socket(stream, bob)
        await open_chat(poster)
        await open_chat(viewer)

        await post(poster, hostile)

        seen = await next_frame(viewer)
        assert set(seen) == MESSAGE_KEYS
        assert seen["type"] == "message"
        assert seen["text"] == hostile
        assert (seen["author"], seen["name"]) == (alice.external_id, "Alice")
        assert abs(as_moment(seen["ts"]) - timezone.now()) < timedelta(seconds=30)
        assert await next_frame(poster) == seen  # the poster's own socket hears it the same way
        stored = await sync_to_async(ChatMessage.objects.get)(id=seen["id"])
        assert stored.text == hostile
        for socket in (poster, viewer):
            await socket.disconnect()

    run(scenario)


def test_a_message_is_stored_without_control_characters_and_trimmed() -> None:
    stream = stream_create()
    alice, bob = recipient_create(), recipient_create()

    async def scenario() -> None:
        poster, viewer = chat_socket(stream, alice), chat_socket(stream, bob)
        await open_chat(poster)
        await open_chat(viewer)

        await post(poster, "  \x1b[31mred\x07\r\nline two\x00\t \n")

        assert (await next_frame(viewer))["text"] == "[31mred\nline two"
        for socket in (poster, viewer):
            await socket.disconnect()

    run(scenario)


def test_a_socket_opens_with_the_last_fifty_messages_not_deleted_oldest_first() -> None:
    stream = stream_create(slow_mode_seconds=7)
    author = recipient_create("Author")
    old = messages_create(stream, author, 55)
    ChatMessage.objects.filter(id=old[-1].id).update(deleted_at=timezone.now())
    viewer = recipient_create()

    async def scenario() -> None:
        socket = chat_socket(stream, viewer)
        history = await open_chat(socket)

        assert set(history) == {"type", "messages", "slow_mode_seconds", "moderator"}
        assert (history["slow_mode_seconds"], history["moderator"]) == (7, False)
        messages = history["messages"]
        assert [m["id"] for m in messages] == [m.id for m in old[4:54]]
        assert messages[0] == {
            "id": old[4].id,
            "author": author.external_id,
            "name": "Author",
            "text": "old 4",
            "ts": old[4].created_at.isoformat().replace("+00:00", "Z"),
        }
        await socket.disconnect()

    run(scenario)


def test_a_message_the_history_holds_is_not_sent_again_when_its_broadcast_comes_late() -> None:
    async def scenario() -> None:
        sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def send(frame: dict[str, Any]) -> None:
            await sent.put(frame)

        connection = ChatConnection(recipient_id=0, layer=None, channel="chat-test", groups=[])
        connection.send_with(send, failed=lambda exc: None)
        viewers = {"type": "viewers", "count": 1}
        # Arrived while the history was read: held.
        connection.deliver({"type": "chat.frame", "frames": [{"type": "message", "id": 1}, viewers]})

        connection.release(history_ids=frozenset({1, 2}))
        # Published after its commit, which the history's read already saw.
        connection.deliver({"type": "chat.frame", "frames": [{"type": "message", "id": 2}]})
        connection.deliver({"type": "chat.frame", "frames": [{"type": "message", "id": 3}]})

        frames = [await asyncio.wait_for(sent.get(), FRAME_TIMEOUT) for _ in range(2)]
        assert frames == [viewers, {"type": "message", "id": 3}]
        assert sent.empty()
        connection._forget_history()
        await connection.close()

    run(scenario)


def test_the_history_tells_the_owner_and_a_moderator_that_they_moderate() -> None:
    stream = stream_create()
    moderator = moderator_create(stream)

    async def scenario() -> None:
        for viewer in (stream.owner, moderator):
            socket = chat_socket(stream, viewer)
            assert (await open_chat(socket))["moderator"] is True
            await socket.disconnect()

    run(scenario)


# --- who may open the socket ----------------------------------------------------------------------


def test_a_reader_without_a_token_sees_the_chat_but_cannot_post() -> None:
    stream = stream_create()
    alice = recipient_create()
    messages_create(stream, alice, 2)

    async def scenario() -> None:
        reader, poster = chat_socket(stream), chat_socket(stream, alice)
        history = await open_chat(reader)
        assert [m["text"] for m in history["messages"]] == ["old 0", "old 1"]
        await open_chat(poster)

        await post(reader, "hello from nobody")
        assert (await error_of(reader))["field"] == "token"
        await post(poster, "hello from alice")
        assert (await next_frame(reader))["text"] == "hello from alice"
        assert (await next_frame(poster))["text"] == "hello from alice"
        await assert_quiet(poster)
        for socket in (reader, poster):
            await socket.disconnect()

    run(scenario)


def test_an_unknown_stream_is_closed_with_4404_and_a_bad_token_with_4401() -> None:
    stream = stream_create()

    async def scenario() -> None:
        missing = WebsocketCommunicator(application, "/ws/streams/no-such-stream/chat/")
        assert await missing.connect(timeout=FRAME_TIMEOUT) == (False, 4404)
        forged = chat_socket(stream, token="forged")
        assert await forged.connect(timeout=FRAME_TIMEOUT) == (False, 4401)

    run(scenario)


def session_cookie(recipient: Recipient | None) -> bytes:
    """The session cookie of a signed-in user, linked to ``recipient`` when one is given."""
    user = get_user_model().objects.create_user(username=f"u-{uuid.uuid4().hex[:12]}", password="x" * 12)
    if recipient is not None:
        recipient.user = user
        recipient.save(update_fields=["user"])
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


def cookie_chat_socket(stream: Stream, cookie: bytes, origin: str) -> WebsocketCommunicator:
    headers = [(b"cookie", cookie), (b"origin", origin.encode())]
    return WebsocketCommunicator(application, f"/ws/streams/{stream.key}/chat/", headers=headers)


def test_a_signed_in_session_from_our_own_pages_posts_and_one_from_elsewhere_is_refused() -> None:
    stream = stream_create()
    alice = recipient_create()
    cookie = session_cookie(alice)
    without_inbox = session_cookie(None)

    async def scenario() -> None:
        foreign = cookie_chat_socket(stream, cookie, "https://evil.example")
        assert await foreign.connect(timeout=FRAME_TIMEOUT) == (False, 4403)

        own = cookie_chat_socket(stream, cookie, settings.SOCKET_ALLOWED_ORIGINS[0])
        await open_chat(own)
        await post(own, "from the page")
        frame = await next_frame(own)
        assert (frame["type"], frame["author"]) == ("message", alice.external_id)

        # Signed in without an inbox: nobody to post as, so a reader like any visitor.
        reader = cookie_chat_socket(stream, without_inbox, settings.SOCKET_ALLOWED_ORIGINS[0])
        await open_chat(reader)
        await post(reader, "me too")
        assert (await error_of(reader))["field"] == "token"
        for socket in (own, reader):
            await socket.disconnect()

    run(scenario)


# --- rate and slow mode ---------------------------------------------------------------------------


def test_the_fourth_message_within_the_rate_window_is_refused_and_nobody_sees_it(settings: Any) -> None:
    # Three per ten seconds rather than the default three per two: the same rule, and four
    # frames sent at once stay inside the window even on a loaded machine (the two-second
    # window itself is measured with explicit moments in test_chat_services.py).
    settings.STREAMING_CHAT_RATE = "3/10"
    stream = stream_create()
    alice, bob = recipient_create(), recipient_create()

    async def scenario() -> None:
        poster, viewer = chat_socket(stream, alice), chat_socket(stream, bob)
        await open_chat(poster)
        await open_chat(viewer)

        for n in range(4):
            await post(poster, f"message {n}")

        assert [(await next_frame(viewer))["text"] for _ in range(3)] == [
            "message 0",
            "message 1",
            "message 2",
        ]
        await assert_quiet(viewer)
        frames = [await next_frame(poster) for _ in range(4)]
        refused = [f for f in frames if f["type"] == "error"]
        assert len(refused) == 1
        assert refused[0]["field"] == "rate"
        assert "At most 3 messages every 10 s" in refused[0]["message"]
        assert await sync_to_async(ChatMessage.objects.filter(stream=stream).count)() == 3
        for socket in (poster, viewer):
            await socket.disconnect()

    run(scenario)


def test_slow_mode_reaches_every_viewer_and_holds_a_viewer_to_one_message_but_not_the_owner() -> None:
    stream = stream_create()
    alice, bob = recipient_create(), recipient_create()

    async def scenario() -> None:
        poster, viewer, owner = (
            chat_socket(stream, alice),
            chat_socket(stream, bob),
            chat_socket(stream, stream.owner),
        )
        for socket in (poster, viewer, owner):
            await open_chat(socket)

        await sync_to_async(chat_slow_mode)(stream=stream, moderator=stream.owner, seconds=30)
        expected = {"type": "moderation", "action": "slow_mode", "seconds": 30}
        assert await next_frame(viewer) == expected
        assert await next_frame(poster) == expected

        await post(poster, "first")
        assert (await next_frame(viewer))["text"] == "first"
        assert (await next_frame(poster))["text"] == "first"
        await post(poster, "second, too soon")
        refused = await error_of(poster)
        assert refused["field"] == "slow_mode"
        assert "one message every 30 s" in refused["message"]
        for text in ("owner one", "owner two"):
            await post(owner, text)
            assert (await next_frame(viewer))["text"] == text
        await assert_quiet(viewer)
        for socket in (poster, viewer, owner):
            await socket.disconnect()

    run(scenario)


# --- moderation -----------------------------------------------------------------------------------


def test_a_deleted_message_is_taken_off_every_viewers_chat() -> None:
    stream = stream_create()
    moderator = moderator_create(stream)
    alice, bob, carol = recipient_create(), recipient_create(), recipient_create()

    async def scenario() -> None:
        poster, viewer = chat_socket(stream, alice), chat_socket(stream, bob)
        await open_chat(poster)
        await open_chat(viewer)
        await post(poster, "something rude")
        message_id = (await next_frame(viewer))["id"]

        await sync_to_async(chat_delete)(stream=stream, moderator=moderator, message_id=message_id)

        assert await next_frame(viewer) == {"type": "deleted", "id": message_id}
        late = chat_socket(stream, carol)
        assert message_id not in [m["id"] for m in (await open_chat(late))["messages"]]
        for socket in (poster, viewer, late):
            await socket.disconnect()

    run(scenario)


def test_a_muted_viewer_is_refused_until_the_mute_ends_and_everyone_is_told() -> None:
    stream = stream_create()
    alice, bob = recipient_create(), recipient_create()

    async def scenario() -> None:
        poster, viewer = chat_socket(stream, alice), chat_socket(stream, bob)
        await open_chat(poster)
        await open_chat(viewer)

        before = timezone.now()
        await sync_to_async(chat_mute)(stream=stream, moderator=stream.owner, target=alice, minutes=10)

        told = await next_frame(viewer)
        assert set(told) == {"type", "action", "target", "until", "minutes"}
        assert (told["type"], told["action"], told["target"], told["minutes"]) == (
            "moderation",
            "mute",
            alice.external_id,
            10,
        )
        assert timedelta(minutes=10) <= as_moment(told["until"]) - before < timedelta(minutes=10, seconds=30)
        assert await next_frame(poster) == told
        await post(poster, "can I talk?")
        refused = await error_of(poster)
        assert refused["field"] == "muted"
        assert told["until"] in refused["message"]
        await assert_quiet(viewer)
        for socket in (poster, viewer):
            await socket.disconnect()

    run(scenario)


def test_a_banned_viewer_is_refused_and_everyone_sees_the_ban_and_its_lifting() -> None:
    stream = stream_create()
    moderator = moderator_create(stream)
    alice, bob = recipient_create(), recipient_create()

    async def scenario() -> None:
        poster, viewer = chat_socket(stream, alice), chat_socket(stream, bob)
        await open_chat(poster)
        await open_chat(viewer)

        await sync_to_async(chat_ban)(stream=stream, moderator=moderator, target=alice)
        banned = {"type": "moderation", "action": "ban", "target": alice.external_id}
        assert await next_frame(viewer) == banned
        assert await next_frame(poster) == banned
        await post(poster, "let me in")
        assert (await error_of(poster))["field"] == "banned"
        await assert_quiet(viewer)

        await sync_to_async(chat_unban)(stream=stream, moderator=moderator, target=alice)
        assert await next_frame(viewer) == {
            "type": "moderation",
            "action": "unban",
            "target": alice.external_id,
        }
        await next_frame(poster)
        await post(poster, "thanks")
        assert (await next_frame(viewer))["text"] == "thanks"
        for socket in (poster, viewer):
            await socket.disconnect()

    run(scenario)


# --- hostile frames -------------------------------------------------------------------------------


# (what it is, the raw frame, the field its error names)
HOSTILE_FRAMES = [
    ("a frame over 10 KB", json.dumps({"type": "message", "text": "x" * 11_000}), "frame"),
    (
        "10 KB of two-byte text",
        json.dumps({"type": "message", "text": "é" * 5_200}, ensure_ascii=False),
        "frame",
    ),
    ("malformed JSON", '{"type": "message", "text": "unclosed', "frame"),
    ("not an object", "[1, 2]", "frame"),
    ("JSON nested too deeply", "[" * 5_000 + "]" * 5_000, "frame"),
    ("an unknown type", json.dumps({"type": "shout", "text": "hi"}), "type"),
    ("no type", json.dumps({"text": "hi"}), "type"),
    ("no text", json.dumps({"type": "message"}), "text"),
    ("a number as text", json.dumps({"type": "message", "text": 5}), "text"),
    ("null as text", json.dumps({"type": "message", "text": None}), "text"),
    ("a list as text", json.dumps({"type": "message", "text": ["a"]}), "text"),
    ("blank text", json.dumps({"type": "message", "text": " \n\t "}), "text"),
    ("501 characters", json.dumps({"type": "message", "text": "y" * 501}), "text"),
    ("an unpaired surrogate", '{"type": "message", "text": "\\ud800"}', "text"),
]


def test_each_hostile_frame_is_answered_with_an_error_naming_the_field_and_the_socket_stays_open() -> None:
    stream = stream_create()
    alice, bob = recipient_create(), recipient_create()

    async def scenario() -> None:
        poster, viewer = chat_socket(stream, alice), chat_socket(stream, bob)
        await open_chat(poster)
        await open_chat(viewer)

        for what, raw, field in HOSTILE_FRAMES:
            await poster.send_to(text_data=raw)
            assert (await error_of(poster))["field"] == field, what

        await still_open(poster)
        await post(poster, "still here")
        assert (await next_frame(viewer))["text"] == "still here"
        assert await sync_to_async(ChatMessage.objects.filter(stream=stream).count)() == 1
        for socket in (poster, viewer):
            await socket.disconnect()

    run(scenario)


def test_a_binary_frame_is_answered_with_an_error() -> None:
    stream = stream_create()
    viewer = recipient_create()

    async def scenario() -> None:
        socket = chat_socket(stream, viewer)
        await open_chat(socket)
        await socket.send_to(bytes_data=b"\x00\x01")
        assert (await error_of(socket))["field"] == "frame"
        await still_open(socket)
        await socket.disconnect()

    run(scenario)


# --- viewers --------------------------------------------------------------------------------------


async def viewers_until(socket: WebsocketCommunicator, count: int) -> None:
    """Read viewer counts until one says ``count`` (coalesced counts may come between)."""
    while True:
        frame = await socket.receive_json_from(timeout=FRAME_TIMEOUT)
        if frame["type"] == "viewers":
            assert set(frame) == {"type", "count"}
            if frame["count"] == count:
                return


def test_a_viewer_with_two_tabs_counts_once(settings: Any) -> None:
    settings.STREAMING_CHAT_VIEWERS_EVERY_SECONDS = 0.05
    stream = stream_create()
    alice, bob = recipient_create(), recipient_create()

    def counted(expected: int) -> bool:
        return chat_viewers_count(stream_id=stream.id) == expected

    async def scenario() -> None:
        watcher = chat_socket(stream, alice)
        await open_chat(watcher)
        tabs = [chat_socket(stream, bob), chat_socket(stream, bob)]
        for tab in tabs:
            await open_chat(tab)

        await viewers_until(watcher, 2)
        assert await sync_to_async(chat_viewers_count)(stream_id=stream.id) == 2

        await tabs[0].disconnect()
        # Bob still has a tab open: still two viewers, and no count of one is announced.
        assert await sync_to_async(chat_viewers_count)(stream_id=stream.id) == 2
        while not await watcher.receive_nothing(timeout=QUIET_SECONDS):
            frame = await watcher.receive_json_from(timeout=FRAME_TIMEOUT)
            assert frame == {"type": "viewers", "count": 2}, frame

        await tabs[1].disconnect()
        await viewers_until(watcher, 1)
        await sync_to_async(wait_until)(lambda: counted(1), FRAME_TIMEOUT, message="one viewer left")
        await watcher.disconnect()
        await sync_to_async(wait_until)(lambda: counted(0), FRAME_TIMEOUT, message="no viewer left")

    run(scenario)


def test_each_reader_without_a_token_counts_as_a_viewer(settings: Any) -> None:
    settings.STREAMING_CHAT_VIEWERS_EVERY_SECONDS = 0.05
    stream = stream_create()

    async def scenario() -> None:
        readers = [chat_socket(stream), chat_socket(stream)]
        for reader in readers:
            await open_chat(reader)
        await viewers_until(readers[0], 2)
        for reader in readers:
            await reader.disconnect()

    run(scenario)
