"""Presence: online, idle and offline per end user from their live connections, every
transition of DESIGN's timings (a socket makes its user online at once; a clean close
leaves them online through the grace, then offline; a client that vanishes without a close
goes offline when its registration expires), several devices, a reload inside the grace,
last seen kept without a database write per heartbeat, and the API for services."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from rest_framework.test import APIClient

from notifications.models import Recipient
from presence.models import LastSeen
from presence.services import last_seen_flush, presence_of, presence_sweep
from project.processes.waiting import wait_until
from realtime import redis_client, registry
from realtime.redis_client import redis_key, redis_sync
from tests.notifications.test_consumers import (
    FRAME_TIMEOUT,
    open_socket,
    recipient_create,
    run,
    token_for,
    token_socket,
)

pytestmark = pytest.mark.django_db(transaction=True)


def status_of(recipient: Recipient) -> str:
    return presence_of([recipient.id])[recipient.id].status


async def status_becomes(recipient: Recipient, wanted: str, timeout: float = 5.0) -> None:
    await sync_to_async(wait_until)(
        lambda: status_of(recipient) == wanted,
        timeout,
        interval=0.02,
        message=f"presence never became {wanted!r}",
    )


def lingering(recipient: Recipient) -> int:
    """The recipient's closed connections still inside their grace."""
    return int(redis_sync().zcount(registry._lingering_key(recipient.id), time.time(), "+inf"))


async def activity(socket: WebsocketCommunicator, state: str) -> None:
    """Report activity, then wait for the pong that follows it (frames are handled in order)."""
    await socket.send_json_to({"type": "activity", "state": state})
    await socket.send_json_to({"type": "ping"})
    assert await socket.receive_json_from(FRAME_TIMEOUT) == {"type": "pong"}


def test_an_open_socket_makes_its_user_online_and_activity_makes_them_idle_and_back() -> None:
    ada = recipient_create()
    assert status_of(ada) == "offline"

    async def scenario() -> None:
        socket = token_socket(token_for(ada))
        await open_socket(socket)
        assert await sync_to_async(status_of)(ada) == "online"
        await activity(socket, "idle")
        assert await sync_to_async(status_of)(ada) == "idle"
        await activity(socket, "active")
        assert await sync_to_async(status_of)(ada) == "online"
        await socket.disconnect()

    run(scenario)


def test_a_user_is_online_while_any_device_is_active_and_idle_when_all_are() -> None:
    ada = recipient_create()

    async def scenario() -> None:
        phone, laptop = token_socket(token_for(ada)), token_socket(token_for(ada))
        await open_socket(phone)
        await open_socket(laptop)
        await activity(phone, "idle")
        assert await sync_to_async(status_of)(ada) == "online"
        await activity(laptop, "idle")
        assert await sync_to_async(status_of)(ada) == "idle"
        await activity(phone, "active")
        assert await sync_to_async(status_of)(ada) == "online"
        await phone.disconnect()
        await laptop.disconnect()

    run(scenario)


def test_after_a_clean_close_the_user_stays_online_through_the_grace_then_goes_offline(settings: Any) -> None:
    settings.PRESENCE_GRACE_SECONDS = 1.0
    ada = recipient_create()

    async def scenario() -> None:
        socket = token_socket(token_for(ada))
        await open_socket(socket)
        await socket.disconnect()
        closed = time.monotonic()
        assert await sync_to_async(status_of)(ada) == "online"
        # The closed tab receives nothing more: dispatch does not publish for it meanwhile.
        assert await sync_to_async(registry.recipients_connected)([ada.id]) == set()
        await status_becomes(ada, "offline", timeout=5.0)
        assert time.monotonic() - closed >= 0.9

    run(scenario)


def test_a_tab_closed_while_idle_counts_as_idle_through_the_grace(settings: Any) -> None:
    settings.PRESENCE_GRACE_SECONDS = 1.0
    ada = recipient_create()

    async def scenario() -> None:
        socket = token_socket(token_for(ada))
        await open_socket(socket)
        await activity(socket, "idle")
        await socket.disconnect()
        assert await sync_to_async(status_of)(ada) == "idle"
        await status_becomes(ada, "offline", timeout=5.0)

    run(scenario)


def test_a_reload_inside_the_grace_does_not_flap_to_offline(settings: Any) -> None:
    settings.PRESENCE_GRACE_SECONDS = 2.0
    ada = recipient_create()

    async def scenario() -> None:
        before = token_socket(token_for(ada))
        await open_socket(before)
        await before.disconnect()
        seen = [await sync_to_async(status_of)(ada)]
        after = token_socket(token_for(ada))
        await open_socket(after)

        # Until the closed tab's grace runs out, and after it, when only the reloaded one
        # counts: online at every look.
        def look() -> bool:
            seen.append(status_of(ada))
            return lingering(ada) == 0

        await sync_to_async(wait_until)(look, 5.0, message="the closed tab's grace never ran out")
        seen.append(await sync_to_async(status_of)(ada))
        assert set(seen) == {"online"}
        await after.disconnect()

    run(scenario)


def test_a_client_that_vanishes_without_a_close_goes_offline_when_its_heartbeat_is_missed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Registrations live for one second here instead of 90: the socket stays open but
    # sends no heartbeat, as a client whose network or process died does.
    monkeypatch.setattr(registry, "CONNECTION_TTL_SECONDS", 1)
    ada = recipient_create()

    async def scenario() -> None:
        socket = token_socket(token_for(ada))
        await open_socket(socket)
        assert await sync_to_async(status_of)(ada) == "online"
        await status_becomes(ada, "offline", timeout=5.0)
        # A heartbeat brings the user back.
        await socket.send_json_to({"type": "ping"})
        assert await socket.receive_json_from(FRAME_TIMEOUT) == {"type": "pong"}
        assert await sync_to_async(status_of)(ada) == "online"
        await socket.disconnect()

    run(scenario)


def test_last_seen_is_kept_in_redis_and_flushed_to_the_database_in_one_go() -> None:
    ada, bo = recipient_create(), recipient_create()
    assert presence_of([ada.id])[ada.id].last_seen is None

    async def scenario() -> None:
        for person in (ada, bo):
            socket = token_socket(token_for(person))
            await open_socket(socket)
            await activity(socket, "idle")
            await socket.disconnect()

    run(scenario)
    assert not LastSeen.objects.filter(recipient_id__in=[ada.id, bo.id]).exists()  # no write per heartbeat
    live = presence_of([ada.id])[ada.id].last_seen
    assert live is not None

    assert last_seen_flush() >= 2
    assert set(
        LastSeen.objects.filter(recipient_id__in=[ada.id, bo.id]).values_list("recipient_id", flat=True)
    ) == {
        ada.id,
        bo.id,
    }
    # Once Redis forgets it, the database answers.
    redis_sync().delete(registry._seen_key(ada.id))
    assert presence_of([ada.id])[ada.id].last_seen == LastSeen.objects.get(recipient_id=ada.id).at
    assert abs((LastSeen.objects.get(recipient_id=ada.id).at - live).total_seconds()) < 0.001


# --- the API for services --------------------------------------------------------------------


def test_the_api_answers_each_external_id_with_status_and_last_seen(
    service_client: APIClient, settings: Any
) -> None:
    settings.PRESENCE_GRACE_SECONDS = 0
    ada, bo = recipient_create(), recipient_create()

    async def scenario() -> None:
        socket = token_socket(token_for(ada))
        await open_socket(socket)
        response = await sync_to_async(service_client.get)(
            "/api/v1/presence/", {"recipients": f"{ada.external_id},{bo.external_id}"}
        )
        assert response.status_code == 200, response.content
        body = response.json()
        assert set(body) == {ada.external_id, bo.external_id}
        assert body[ada.external_id]["status"] == "online" and body[ada.external_id]["last_seen"]
        assert body[bo.external_id] == {"status": "offline", "last_seen": None}
        await socket.disconnect()

    run(scenario)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (lambda known: {}, "required"),
        (lambda known: {"recipients": ""}, "required"),
        (lambda known: {"recipients": ",".join(f"u{n}" for n in range(501))}, "at most 500"),
        (lambda known: {"recipients": f"{known},nobody-here"}, "'nobody-here'"),
    ],
    ids=["missing", "empty", "too many", "unknown"],
)
def test_the_api_names_what_is_wrong_with_the_recipients_asked(
    service_client: APIClient, query: Callable[[str], dict[str, str]], message: str
) -> None:
    known = recipient_create().external_id
    response = service_client.get("/api/v1/presence/", query(known))
    assert response.status_code == 400
    assert message in response.json()["errors"]["recipients"][0]


def test_the_api_wants_a_service_key() -> None:
    assert APIClient().get("/api/v1/presence/", {"recipients": "a"}).status_code == 401


def test_the_api_says_presence_is_unavailable_when_redis_does_not_answer(
    service_client: APIClient, settings: Any
) -> None:
    known = recipient_create().external_id
    settings.REDIS_URL = "redis://127.0.0.1:9/0"  # nothing listens there
    redis_client.redis_sync.cache_clear()
    try:
        response = service_client.get("/api/v1/presence/", {"recipients": known})
    finally:
        redis_client.redis_sync.cache_clear()
    assert response.status_code == 503 and response["Retry-After"] == "5"
    assert "unavailable" in response.json()["errors"]["service"][0]


# --- watching presence over the inbox socket -----------------------------------------------


async def presence_frame(socket: WebsocketCommunicator, timeout: float = FRAME_TIMEOUT) -> dict[str, Any]:
    """The next presence frame (pongs between are skipped)."""
    while True:
        frame = await socket.receive_json_from(timeout)
        if frame["type"] == "presence":
            return frame["changes"]
        assert frame["type"] == "pong", frame


def test_a_watcher_gets_the_presence_now_then_batched_changes_of_whom_it_watches(settings: Any) -> None:
    settings.PRESENCE_GRACE_SECONDS = 0.3
    watcher, ada, bo = recipient_create(), recipient_create(), recipient_create()

    async def scenario() -> None:
        eyes = token_socket(token_for(watcher))
        await open_socket(eyes)
        await eyes.send_json_to(
            {"type": "presence.subscribe", "recipients": [ada.external_id, bo.external_id]}
        )
        now = await presence_frame(eyes)
        assert {key: value["status"] for key, value in now.items()} == {
            ada.external_id: "offline",
            bo.external_id: "offline",
        }

        # ada opens a tab, goes idle, comes back: each change reaches the watcher
        tab = token_socket(token_for(ada))
        await open_socket(tab)
        assert (await presence_frame(eyes))[ada.external_id]["status"] == "online"
        await activity(tab, "idle")
        assert (await presence_frame(eyes))[ada.external_id]["status"] == "idle"

        # she closes it: after the grace, the sweep announces her offline
        await tab.disconnect()

        def swept_offline() -> bool:
            presence_sweep()
            return redis_sync().get(redis_key(f"presence:announced:{ada.id}")) == b"offline"

        await sync_to_async(wait_until)(swept_offline, 5.0, message="the sweep never announced her offline")
        gone = await presence_frame(eyes)
        assert gone[ada.external_id]["status"] == "offline" and gone[ada.external_id]["last_seen"]
        await eyes.disconnect()

    run(scenario)


def test_nothing_is_sent_to_sockets_that_do_not_watch_and_unsubscribing_stops_the_changes() -> None:
    watcher, bystander, ada = recipient_create(), recipient_create(), recipient_create()

    async def scenario() -> None:
        eyes, other = token_socket(token_for(watcher)), token_socket(token_for(bystander))
        await open_socket(eyes)
        await open_socket(other)
        await eyes.send_json_to({"type": "presence.subscribe", "recipients": [ada.external_id]})
        await presence_frame(eyes)
        await eyes.send_json_to({"type": "presence.unsubscribe", "recipients": [ada.external_id]})

        tab = token_socket(token_for(ada))
        await open_socket(tab)
        for socket in (eyes, other):
            await socket.send_json_to({"type": "ping"})
            assert await socket.receive_json_from(FRAME_TIMEOUT) == {"type": "pong"}
            assert await socket.receive_nothing(timeout=0.5)
        for socket in (tab, eyes, other):
            await socket.disconnect()

    run(scenario)


@pytest.mark.parametrize(
    ("recipients", "message"),
    [
        ("ada", "non-empty list"),
        ([], "non-empty list"),
        ([7], "got 7"),
        (["nobody-here"], "'nobody-here'"),
        ([f"u{n}" for n in range(501)], "At most 500"),
    ],
    ids=["not a list", "empty", "not text", "unknown", "too many"],
)
def test_a_bad_subscription_gets_an_error_naming_recipients(recipients: Any, message: str) -> None:
    watcher = recipient_create()

    async def scenario() -> None:
        eyes = token_socket(token_for(watcher))
        await open_socket(eyes)
        await eyes.send_json_to({"type": "presence.subscribe", "recipients": recipients})
        frame = await eyes.receive_json_from(FRAME_TIMEOUT)
        assert frame["type"] == "error" and message in frame["errors"]["recipients"][0], frame
        await eyes.disconnect()

    run(scenario)
