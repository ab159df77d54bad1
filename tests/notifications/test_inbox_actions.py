"""What an end user does with inbox items beyond reading them: archive, snooze (and the
snooze running out), mark unread, and the long-poll fallback; other tabs and devices
follow each change live (``item`` and ``read_all`` frames, README "The public contract")."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from django.test import AsyncClient, Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from notifications import selectors
from notifications.models import InboxItem, InboxSequence
from notifications.services.inbox import inbox_item_archive, inbox_mark_all_read, inbox_snoozed_wake
from tests.notifications.test_consumers import (
    FRAME_TIMEOUT,
    connections_of,
    inbox_items_create,
    item_payload,
    live_notification,
    open_socket,
    recipient_create,
    run,
    token_for,
    token_socket,
)

pytestmark = pytest.mark.django_db(transaction=True)


def _as(token: str) -> Client:
    """A client acting as the end user the token names."""
    return Client(headers={"Authorization": f"Bearer {token}"})


def _listed(token: str, query: str = "") -> list[int]:
    return [item["seq"] for item in _as(token).get(f"/api/v1/inbox/{query}").json()["results"]]


def _unread(token: str) -> int:
    return int(_as(token).get("/api/v1/inbox/unread-count/").json()["count"])


def test_it_archives_an_item_out_of_the_list_and_brings_it_back() -> None:
    alice = recipient_create()
    first, second = inbox_items_create(alice, [1, 2])
    token = token_for(alice)

    archived = _as(token).post(f"/api/v1/inbox/{first.id}/archive/")

    assert archived.status_code == 200
    assert archived.json()["archived"] is True and archived.json()["read"] is True
    assert _listed(token) == [2]
    assert _listed(token, "?archived=true") == [1]
    assert _unread(token) == 1
    # the resume cursor still gives every item, each saying what it is
    resumed = _as(token).get("/api/v1/inbox/?after=0").json()["results"]
    assert [(i["seq"], i["archived"]) for i in resumed] == [(1, True), (2, False)]

    back = _as(token).post(f"/api/v1/inbox/{first.id}/unarchive/")
    assert back.status_code == 200 and back.json()["archived"] is False
    assert sorted(_listed(token)) == [1, 2]
    assert _as(token).get("/api/v1/inbox/?archived=maybe").json() == {
        "errors": {"archived": ["must be true or false, got 'maybe'"]}
    }


def test_it_marks_an_item_unread_again() -> None:
    alice = recipient_create()
    (item,) = inbox_items_create(alice, [1], read={1})
    token = token_for(alice)

    answer = _as(token).post(f"/api/v1/inbox/{item.id}/unread/")

    assert answer.status_code == 200 and answer.json()["read"] is False
    assert _unread(token) == 1


def test_it_never_lets_a_user_archive_snooze_or_unread_anothers_item() -> None:
    alice, bob = recipient_create(), recipient_create()
    (item,) = inbox_items_create(alice, [1])
    as_bob = _as(token_for(bob))
    until = (timezone.now() + timedelta(hours=1)).isoformat()

    for path in ("archive", "unarchive", "unread"):
        assert as_bob.post(f"/api/v1/inbox/{item.id}/{path}/").status_code == 404
    snooze = as_bob.post(
        f"/api/v1/inbox/{item.id}/snooze/", {"until": until}, content_type="application/json"
    )
    assert snooze.status_code == 404
    item.refresh_from_db()
    assert item.archived_at is None and item.snoozed_until is None


def test_it_hides_a_snoozed_item_until_its_time_and_refuses_a_bad_time_naming_it() -> None:
    alice = recipient_create()
    first, _second = inbox_items_create(alice, [1, 2])
    token = token_for(alice)

    def snooze(until: Any) -> Any:
        return _as(token).post(
            f"/api/v1/inbox/{first.id}/snooze/", {"until": until}, content_type="application/json"
        )

    past = snooze((timezone.now() - timedelta(minutes=1)).isoformat())
    assert past.status_code == 400 and list(past.json()["errors"]) == ["until"]
    assert snooze((timezone.now() + timedelta(days=400)).isoformat()).status_code == 400
    assert list(snooze("tomorrow").json()["errors"]) == ["until"]
    first.refresh_from_db()
    assert first.snoozed_until is None  # refused: nothing changed

    answer = snooze((timezone.now() + timedelta(hours=1)).isoformat())

    assert answer.status_code == 200 and answer.json()["snoozed_until"]
    assert _listed(token) == [2]
    assert _unread(token) == 1  # a snoozed item is not counted
    assert _as(token).post("/api/v1/inbox/read-all/").json()["marked_read"] == 1
    first.refresh_from_db()
    assert first.read_at is None  # read-all leaves the snoozed item for later

    ended = _as(token).delete(f"/api/v1/inbox/{first.id}/snooze/")
    assert ended.status_code == 200 and ended.json()["snoozed_until"] is None
    assert sorted(_listed(token)) == [1, 2]


def test_it_refuses_to_snooze_an_archived_item() -> None:
    alice = recipient_create()
    (item,) = inbox_items_create(alice, [1])
    token = token_for(alice)
    inbox_item_archive(recipient_id=alice.id, item_id=item.id)

    answer = _as(token).post(
        f"/api/v1/inbox/{item.id}/snooze/",
        {"until": (timezone.now() + timedelta(hours=1)).isoformat()},
        content_type="application/json",
    )

    assert answer.status_code == 400 and list(answer.json()["errors"]) == ["item"]


def test_a_snoozed_item_comes_back_on_top_and_unread_when_its_time_comes() -> None:
    alice = recipient_create()
    first, _second, _third = inbox_items_create(alice, [1, 2, 3], read={1})
    due = timezone.now()  # after every item was accepted
    InboxItem.objects.filter(id=first.id).update(snoozed_until=due)
    later = timezone.now() + timedelta(hours=1)
    InboxItem.objects.filter(recipient=alice, seq=2).update(snoozed_until=later)

    assert inbox_snoozed_wake() == 1
    assert inbox_snoozed_wake() == 0  # once

    woke = InboxItem.objects.get(id=first.id)
    assert woke.snoozed_until is None and woke.read_at is None and woke.accepted_at == due
    assert [row["seq"] for row in selectors.inbox_items(recipient_id=alice.id)] == [1, 3]
    assert selectors.inbox_unread_count(recipient_id=alice.id) == 2


def test_other_tabs_follow_archive_snooze_wake_and_read_all_live() -> None:
    alice = recipient_create()
    first, second = inbox_items_create(alice, [1, 2])
    token = token_for(alice)

    async def scenario() -> None:
        other_tab = token_socket(token)
        assert (await open_socket(other_tab))["count"] == 2

        await sync_to_async(inbox_item_archive)(recipient_id=alice.id, item_id=first.id)
        frame = await other_tab.receive_json_from(timeout=FRAME_TIMEOUT)
        assert frame["type"] == "item" and frame["item"]["id"] == first.id and frame["item"]["archived"]
        assert await other_tab.receive_json_from(timeout=FRAME_TIMEOUT) == {
            "type": "unread_count",
            "count": 1,
        }

        await sync_to_async(InboxItem.objects.filter(id=second.id).update)(snoozed_until=timezone.now())
        assert await sync_to_async(inbox_snoozed_wake)() == 1
        frame = await other_tab.receive_json_from(timeout=FRAME_TIMEOUT)
        assert frame["type"] == "item" and frame["item"]["id"] == second.id
        assert frame["item"]["snoozed_until"] is None and not frame["item"]["read"]
        assert await other_tab.receive_json_from(timeout=FRAME_TIMEOUT) == {
            "type": "unread_count",
            "count": 1,
        }

        await sync_to_async(inbox_mark_all_read)(recipient_id=alice.id)
        frame = await other_tab.receive_json_from(timeout=FRAME_TIMEOUT)
        assert frame["type"] == "read_all" and frame["up_to_seq"] == 2 and frame["read_at"]
        assert await other_tab.receive_json_from(timeout=FRAME_TIMEOUT) == {
            "type": "unread_count",
            "count": 0,
        }
        await other_tab.disconnect()

    run(scenario)


# --- long-polling ---------------------------------------------------------------------------


async def _poll(token: str, query: dict[str, str]) -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    response = await AsyncClient().get(
        "/api/v1/inbox/poll/", query, headers={"Authorization": f"Bearer {token}"}
    )
    content = (
        b"".join([chunk async for chunk in response.streaming_content])  # type: ignore[attr-defined]
        if response.streaming
        else response.content
    )
    return response.status_code, json.loads(content), time.monotonic() - started


def test_the_long_poll_answers_at_once_when_items_exist() -> None:
    alice = recipient_create()
    inbox_items_create(alice, [1, 2, 3])
    token = token_for(alice)

    async def scenario() -> None:
        status, body, _ = await _poll(token, {"after": "1"})
        assert status == 200
        assert [item["seq"] for item in body["results"]] == [2, 3] and body["last_seq"] == 3

    run(scenario)


def test_the_long_poll_holds_until_an_item_arrives(settings: Any) -> None:
    settings.INBOX_POLL_SECONDS = 20
    alice = recipient_create()
    inbox_items_create(alice, [1])
    token = token_for(alice)

    async def scenario() -> None:
        waiting = asyncio.create_task(_poll(token, {"after": "1"}))
        # the poll is waiting (it has nothing to answer yet): its live connection registered
        deadline = time.monotonic() + 10
        while await connections_of(alice) == 0:
            assert time.monotonic() < deadline, "the poll never started waiting"
            assert not waiting.done(), waiting.result()
            await asyncio.sleep(0.02)
        assert not waiting.done()
        await sync_to_async(inbox_items_create)(alice, [2])
        await sync_to_async(live_notification)(alice, 2)
        status, body, took = await asyncio.wait_for(waiting, timeout=10)
        assert status == 200 and [item["seq"] for item in body["results"]] == [2]
        assert body["results"][0] == await sync_to_async(item_payload)(alice, 2)
        assert body["last_seq"] == 2 and took < 10

    run(scenario)


def test_the_long_poll_answers_empty_when_nothing_arrives(settings: Any) -> None:
    settings.INBOX_POLL_SECONDS = 0.5
    alice = recipient_create()
    inbox_items_create(alice, [1])
    token = token_for(alice)

    async def scenario() -> None:
        status, body, took = await _poll(token, {"after": "1"})
        assert status == 200 and body == {"results": [], "last_seq": 1, "unread_count": 1}
        assert 0.4 <= took < 5

    run(scenario)


@pytest.mark.parametrize(
    ("query", "field"), [({}, "after"), ({"after": "-1"}, "after"), ({"after": "1", "limit": "0"}, "limit")]
)
def test_the_long_poll_refuses_a_bad_cursor_naming_it(query: dict[str, str], field: str) -> None:
    alice = recipient_create()
    token = token_for(alice)

    async def scenario() -> None:
        status, body, _ = await _poll(token, query)
        assert status == 400 and list(body["errors"]) == [field]

    run(scenario)


def test_the_long_poll_refuses_a_forged_token() -> None:
    async def scenario() -> None:
        status, body, _ = await _poll("forged", {"after": "0"})
        assert status == 401 and list(body["errors"]) == ["authorization"]

    run(scenario)


def test_the_long_poll_of_a_new_user_reports_seq_zero(settings: Any) -> None:
    settings.INBOX_POLL_SECONDS = 0.1
    alice = recipient_create()
    token = token_for(alice)
    assert not InboxSequence.objects.filter(recipient=alice).exists()

    async def scenario() -> None:
        status, body, _ = await _poll(token, {"after": "0"})
        assert status == 200 and body == {"results": [], "last_seq": 0, "unread_count": 0}

    run(scenario)


def test_waking_many_snoozed_items_costs_a_few_queries_whatever_their_number() -> None:
    people = [recipient_create() for _ in range(3)]
    for person in people:
        inbox_items_create(person, list(range(1, 11)))
    InboxItem.objects.filter(recipient__in=people).update(snoozed_until=timezone.now())

    with CaptureQueriesContext(connection) as queries:
        assert inbox_snoozed_wake() == 30

    # BEGIN, the UPDATE, COMMIT; after it the items and the unread counts
    assert len(queries) <= 5, [q["sql"][:80] for q in queries]
