"""The shared socket plumbing on its own (realtime/): a consumer built on it with no app
behind it authenticates, answers the heartbeat, names what is wrong with a bad frame,
registers its connection while it is open, and cuts off a client that cannot keep up."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from realtime.auth import CLOSE_FORBIDDEN_ORIGIN, CLOSE_TOO_SLOW, CLOSE_UNAUTHORIZED
from realtime.connection import FRAME, LiveConnection
from realtime.consumers import RealtimeConsumer
from realtime.redis_client import redis_sync
from realtime.registry import _key as connection_key
from realtime.tokens import end_user_token_issue

# No table is read, but Channels closes stale database connections around each message it
# dispatches, and that touches the database connection of its worker thread.
pytestmark = pytest.mark.django_db(transaction=True)

FRAME_TIMEOUT = 3.0
ECHO = "echo.message"


def _group(recipient_id: int) -> str:
    return f"echo.{recipient_id}"


class EchoConnection(LiveConnection):
    """A live connection of a made-up app: layer messages become frames; ``shout`` entries
    become two frames each."""

    def deliver(self, message: dict[str, Any]) -> None:
        if message.get("type") == ECHO:
            self.put((FRAME, {"type": "echo", "text": message["text"]}))

    async def expand(self, entry: tuple[Any, ...]) -> AsyncGenerator[dict[str, Any], None]:
        for _ in range(2):
            yield {"type": "shout", "text": entry[1]}


# The live connection of each recipient's last socket (the test owns both ends).
CONNECTIONS: dict[int, LiveConnection] = {}


class EchoConsumer(RealtimeConsumer):
    layer_messages = frozenset({ECHO})
    frame_types = ("shout",)
    users: dict[str, int] = {}

    async def user_to_recipient(self, user: Any) -> int | None:
        return self.users.get(user.username)

    def live_connection(self, recipient_id: int) -> LiveConnection:
        live = EchoConnection(
            recipient_id=recipient_id,
            layer=self.channel_layer,
            channel=self.channel_name,
            groups=[_group(recipient_id)],
        )
        CONNECTIONS[recipient_id] = live
        return live

    async def handle_frame(self, frame_type: Any, content: dict[str, Any]) -> bool:
        if frame_type != "shout":
            return False
        if not isinstance(content.get("text"), str):
            self.send_error("text", f"Expected a string, got {content.get('text')!r}.")
        elif self.live is not None:
            self.live.put(("shout", content["text"]))
        return True


class _User:
    is_authenticated = True

    def __init__(self, username: str) -> None:
        self.username = username


def _recipient_id() -> int:
    # Ids no parallel run shares: the registry and the groups live in one Redis.
    return random.randint(10**12, 2**62)


def _communicator(
    *, token: str | None = None, user: Any = None, origin: str | None = None
) -> WebsocketCommunicator:
    path = f"/ws/echo/?token={token}" if token is not None else "/ws/echo/"
    headers = [(b"origin", origin.encode())] if origin else []
    communicator = WebsocketCommunicator(EchoConsumer.as_asgi(), path, headers=headers)
    if user is not None:
        communicator.scope["user"] = user
    return communicator


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    async_to_sync(scenario)()


def test_a_token_socket_answers_pings_and_is_registered_while_open(settings: Any) -> None:
    settings.PRESENCE_GRACE_SECONDS = 0  # unregistered at once on close (tests/presence: the grace)
    recipient_id = _recipient_id()
    token, _ = end_user_token_issue(recipient_id=recipient_id)

    async def scenario() -> None:
        socket = _communicator(token=token)
        connected, _ = await socket.connect()
        assert connected
        await socket.send_json_to({"type": "ping"})
        assert await socket.receive_json_from(FRAME_TIMEOUT) == {"type": "pong"}
        assert redis_sync().zcard(connection_key(recipient_id)) == 1
        await socket.disconnect()
        assert redis_sync().zcard(connection_key(recipient_id)) == 0

    run(scenario)


def test_bad_frames_get_an_error_naming_the_field_and_the_socket_stays_open() -> None:
    token, _ = end_user_token_issue(recipient_id=_recipient_id())

    async def scenario() -> None:
        socket = _communicator(token=token)
        await socket.connect()
        await socket.send_to(text_data="not json")
        assert (await socket.receive_json_from(FRAME_TIMEOUT))["errors"] == {
            "frame": ["Expected a JSON object, got text that is not JSON."]
        }
        await socket.send_to(bytes_data=b"\x00")
        assert "frame" in (await socket.receive_json_from(FRAME_TIMEOUT))["errors"]
        await socket.send_json_to({"type": "dance"})
        assert (await socket.receive_json_from(FRAME_TIMEOUT))["errors"] == {
            "type": ["Unknown frame type 'dance'; expected one of 'ping', 'activity', 'shout'."]
        }
        await socket.send_json_to({"type": "activity", "state": "asleep"})
        assert (await socket.receive_json_from(FRAME_TIMEOUT))["errors"] == {
            "state": ["Expected 'active' or 'idle', got 'asleep'."]
        }
        await socket.send_json_to({"type": "shout", "text": 5})
        assert (await socket.receive_json_from(FRAME_TIMEOUT))["errors"] == {
            "text": ["Expected a string, got 5."]
        }
        await socket.send_json_to({"type": "shout", "text": "hi"})
        assert [await socket.receive_json_from(FRAME_TIMEOUT) for _ in range(2)] == [
            {"type": "shout", "text": "hi"}
        ] * 2
        await socket.disconnect()

    run(scenario)


@pytest.mark.parametrize(
    ("token", "user", "origin", "code"),
    [
        ("forged", None, None, CLOSE_UNAUTHORIZED),
        (None, None, None, CLOSE_UNAUTHORIZED),
        (None, _User("ada"), "https://evil.example", CLOSE_FORBIDDEN_ORIGIN),
        (None, _User("ada"), None, CLOSE_FORBIDDEN_ORIGIN),
        (None, _User("nobody"), "http://testserver", CLOSE_UNAUTHORIZED),
    ],
    ids=["forged token", "nothing", "foreign origin", "no origin", "user who is no recipient"],
)
def test_it_refuses_sockets_it_cannot_tie_to_an_end_user(
    token: Any, user: Any, origin: Any, code: int, settings: Any
) -> None:
    settings.SOCKET_ALLOWED_ORIGINS = ["http://testserver"]
    EchoConsumer.users = {"ada": _recipient_id()}

    async def scenario() -> None:
        connected, close_code = await _communicator(token=token, user=user, origin=origin).connect()
        assert (connected, close_code) == (False, code)

    run(scenario)


def test_a_session_socket_from_our_own_page_opens(settings: Any) -> None:
    settings.SOCKET_ALLOWED_ORIGINS = ["http://testserver"]
    EchoConsumer.users = {"ada": _recipient_id()}

    async def scenario() -> None:
        socket = _communicator(user=_User("ada"), origin="http://testserver")
        connected, _ = await socket.connect()
        assert connected
        await socket.disconnect()

    run(scenario)


def test_layer_messages_arrive_and_a_client_that_falls_behind_is_cut_off(settings: Any) -> None:
    settings.SOCKET_SEND_QUEUE_LIMIT = 3
    recipient_id = _recipient_id()
    token, _ = end_user_token_issue(recipient_id=recipient_id)
    layer = get_channel_layer()
    assert layer is not None

    async def scenario() -> None:
        socket = _communicator(token=token)
        await socket.connect()
        await layer.group_send(_group(recipient_id), {"type": ECHO, "text": "one"})
        assert await socket.receive_json_from(FRAME_TIMEOUT) == {"type": "echo", "text": "one"}

        # More arrives at once than the queue holds (the writer gets no turn in between),
        # as for a client that stopped reading.
        for n in range(10):
            CONNECTIONS[recipient_id].send({"type": "echo", "text": str(n)})
        output = []
        while True:
            message = await asyncio.wait_for(socket.output_queue.get(), FRAME_TIMEOUT)
            if message["type"] == "websocket.close":
                assert message["code"] == CLOSE_TOO_SLOW
                break
            output.append(message)
        assert len(output) <= 3

    run(scenario)
