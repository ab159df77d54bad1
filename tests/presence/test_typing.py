"""Typing indicators over the inbox socket (presence/typing.py): a watcher of a room sees
who types there, the indicator clears itself when the typer stops sending typing frames,
at once on "stopped" or when the typer's socket closes, and bad frames get an error
naming the field."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator

from tests.notifications.test_consumers import (
    FRAME_TIMEOUT,
    open_socket,
    recipient_create,
    run,
    token_for,
    token_socket,
)

pytestmark = pytest.mark.django_db(transaction=True)


def _room() -> str:
    return f"conversation/{uuid.uuid4()}"


async def _typing_frame(socket: WebsocketCommunicator, timeout: float = FRAME_TIMEOUT) -> dict[str, Any]:
    frame = await socket.receive_json_from(timeout=timeout)
    assert frame["type"] == "typing", frame
    return dict(frame)


async def _watch(socket: WebsocketCommunicator, room: str) -> dict[str, Any]:
    await socket.send_json_to({"type": "typing.subscribe", "room": room})
    return await _typing_frame(socket)


def test_a_watcher_sees_who_types_and_the_indicator_clears_itself(settings: Any) -> None:
    settings.TYPING_SECONDS = 0.6
    alice, bob = recipient_create(), recipient_create()
    room = _room()

    async def scenario() -> None:
        watcher, typer = token_socket(token_for(bob)), token_socket(token_for(alice))
        await open_socket(watcher)
        await open_socket(typer)
        assert await _watch(watcher, room) == {
            "type": "typing",
            "room": room,
            "recipients": [],
            "expires_in": 0.6,
        }

        await typer.send_json_to({"type": "typing", "room": room})
        started = time.monotonic()
        frame = await _typing_frame(watcher)
        assert frame["recipients"] == [alice.external_id]
        # typing again while the indicator shows changes nothing watchers see
        await typer.send_json_to({"type": "typing", "room": room})

        cleared = await _typing_frame(watcher)
        assert cleared["recipients"] == []
        assert 0.5 <= time.monotonic() - started < 3.0
        assert await watcher.receive_nothing(timeout=0.3)
        await watcher.disconnect()
        await typer.disconnect()

    run(scenario)


def test_the_indicator_clears_at_once_on_stopped_and_when_the_typer_leaves(settings: Any) -> None:
    settings.TYPING_SECONDS = 30
    alice, carol, bob = recipient_create(), recipient_create(), recipient_create()
    room = _room()

    async def scenario() -> None:
        watcher = token_socket(token_for(bob))
        typers = token_socket(token_for(alice)), token_socket(token_for(carol))
        for socket in (watcher, *typers):
            await open_socket(socket)
        await _watch(watcher, room)

        await typers[0].send_json_to({"type": "typing", "room": room})
        assert (await _typing_frame(watcher))["recipients"] == [alice.external_id]
        await typers[1].send_json_to({"type": "typing", "room": room})
        assert (await _typing_frame(watcher))["recipients"] == [alice.external_id, carol.external_id]

        await typers[0].send_json_to({"type": "typing", "room": room, "state": "stopped"})
        assert (await _typing_frame(watcher))["recipients"] == [carol.external_id]
        await typers[1].disconnect()
        assert (await _typing_frame(watcher))["recipients"] == []
        await typers[0].disconnect()
        await watcher.disconnect()

    run(scenario)


def test_a_socket_that_does_not_watch_a_room_gets_nothing_of_it(settings: Any) -> None:
    alice, bob = recipient_create(), recipient_create()
    room = _room()

    async def scenario() -> None:
        bystander, typer = token_socket(token_for(bob)), token_socket(token_for(alice))
        await open_socket(bystander)
        await open_socket(typer)
        await _watch(bystander, room)
        await bystander.send_json_to({"type": "typing.unsubscribe", "room": room})
        await typer.send_json_to({"type": "typing", "room": room})
        await typer.send_json_to({"type": "ping"})
        assert await typer.receive_json_from(timeout=FRAME_TIMEOUT) == {"type": "pong"}
        assert await bystander.receive_nothing(timeout=0.5)
        await bystander.disconnect()
        await typer.disconnect()

    run(scenario)


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        ({"type": "typing"}, "room"),
        ({"type": "typing", "room": ""}, "room"),
        ({"type": "typing", "room": "x" * 201}, "room"),
        ({"type": "typing", "room": 5}, "room"),
        ({"type": "typing", "room": "r", "state": "maybe"}, "state"),
        ({"type": "typing.subscribe", "room": ["r"]}, "room"),
    ],
)
def test_a_bad_typing_frame_gets_an_error_naming_the_field(frame: dict[str, Any], field: str) -> None:
    alice = recipient_create()

    async def scenario() -> None:
        socket = token_socket(token_for(alice))
        await open_socket(socket)
        await socket.send_to(text_data=json.dumps(frame))
        answer = await socket.receive_json_from(timeout=FRAME_TIMEOUT)
        assert answer["type"] == "error" and list(answer["errors"]) == [field], answer
        await socket.disconnect()

    run(scenario)


def test_a_socket_watches_a_bounded_number_of_rooms(settings: Any) -> None:
    settings.TYPING_WATCH_MAX = 2
    alice = recipient_create()

    async def scenario() -> None:
        socket = token_socket(token_for(alice))
        await open_socket(socket)
        await _watch(socket, _room())
        await _watch(socket, _room())
        await socket.send_json_to({"type": "typing.subscribe", "room": _room()})
        answer = await socket.receive_json_from(timeout=FRAME_TIMEOUT)
        assert answer["type"] == "error" and "at most 2" in answer["errors"]["room"][0]
        await socket.disconnect()

    run(scenario)
