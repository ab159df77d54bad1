"""The notification pipeline from the outside (docs/architecture.md): a real web
server, Celery workers and beat; the test speaks only HTTP and websockets."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from harness.processes import wait_until
from tests.e2e.conftest import Stack, debian_chromium, log_in_as_demo
from tests.e2e.inbox_client import InboxSocket

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e-pipeline")]

ORDER = "e2e.order.shipped"
LIKED = "e2e.post.liked"


@pytest.fixture(scope="module")
def types(stack: Stack) -> dict[str, dict[str, Any]]:
    """Two notification types created through the API."""
    return {
        ORDER: stack.create_type(ORDER, category="transactional"),
        LIKED: stack.create_type(LIKED, category="social"),
    }


def event_summary(stack: Stack, event_id: str) -> dict[str, Any]:
    response = stack.api.get(f"/api/v1/events/{event_id}/")
    assert response.status_code == 200, response.text
    return dict(response.json())


def wait_delivered(stack: Stack, event_id: str, count: int, timeout: float = 30.0) -> dict[str, Any]:
    """Poll the event until ``count`` in-app deliveries reached the user; return its summary."""

    def delivered() -> dict[str, Any] | None:
        summary = event_summary(stack, event_id)
        inapp = summary["deliveries"].get("inapp", {})
        reached = inapp.get("delivered", 0) + inapp.get("read", 0)
        return summary if reached >= count else None

    return wait_until(delivered, timeout, interval=0.1, message=f"event {event_id}: {count} deliveries")


def inbox(stack: Stack, token: str, after: int | None = None) -> dict[str, Any]:
    params = {"after": after} if after is not None else {}
    response = stack.end_user(token).get("/api/v1/inbox/", params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


def wait_inbox_seq(stack: Stack, token: str, last_seq: int, timeout: float = 30.0) -> dict[str, Any]:
    return wait_until(
        lambda: (page := inbox(stack, token)) and page["last_seq"] >= last_seq and page,
        timeout,
        interval=0.1,
        message=f"inbox never reached seq {last_seq}",
    )


# --- live frames and resume --------------------------------------------------------------------


def test_it_pushes_one_frame_per_event_with_seq_increasing_by_one(
    stack: Stack, types: dict[str, Any]
) -> None:
    # given two recipients, both subscribed to a topic, and alice's socket open
    alice, alice_token = stack.create_recipient("alice")
    bob, _ = stack.create_recipient("bob")
    topic = f"e2e-topic-{uuid.uuid4().hex[:8]}"
    response = stack.api.post(f"/api/v1/topics/{topic}/subscribers/", json={"recipients": [alice, bob]})
    assert response.status_code == 200, response.text
    assert response.json()["subscribers"] == 2

    with InboxSocket.open(stack.ws_url, token=alice_token) as socket:
        first = socket.frame(10)
        assert first == {"type": "unread_count", "count": 0}

        # when events reach her explicitly and through the topic, one after the other
        # (separate events fan out concurrently; waiting for each frame fixes their order)
        bodies = [
            {"type": ORDER, "recipients": [alice], "data": {"title": "one", "n": 1}},
            {"type": LIKED, "recipients": [alice, bob], "data": {"title": "two", "n": 2}},
            {"type": ORDER, "topic": topic, "data": {"title": "three", "n": 3}},
        ]
        sent, frames = [], []
        for body in bodies:
            sent.append(stack.send(**body))
            frames.extend(socket.notifications(1, timeout=20))
            assert frames[-1]["item"]["event_id"] == sent[-1]

        # then each frame carries the item and a seq one higher than the last
        assert [f["seq"] for f in frames] == [1, 2, 3]
        assert [f["item"]["seq"] for f in frames] == [1, 2, 3]
        assert [f["item"]["title"] for f in frames] == ["one", "two", "three"]
        assert [f["item"]["type"] for f in frames] == [ORDER, LIKED, ORDER]
        assert frames[2]["item"]["body"] == "n=3"
        assert all(f["item"]["read"] is False for f in frames)
        # and unread_count frames follow the items
        socket.wait_unread_count(3)

    # bob got the explicit event and the topic event in his inbox
    bob_page = wait_inbox_seq(stack, stack.token(bob), 2)
    assert sorted(item["seq"] for item in bob_page["results"]) == [1, 2]
    assert sorted(item["event_id"] for item in bob_page["results"]) == sorted(sent[1:])


def test_it_resumes_exactly_the_missed_items_in_order(stack: Stack, types: dict[str, Any]) -> None:
    # given a user who received two items live
    user, token = stack.create_recipient("resumer")
    with InboxSocket.open(stack.ws_url, token=token) as socket:
        socket.frame_of_type("unread_count")
        for n in (1, 2):
            stack.send(type=ORDER, recipients=[user], data={"n": n})
            socket.notifications(1, timeout=20)
        last_seq = max(f["seq"] for f in socket.frames if f["type"] == "notification")
        assert last_seq == 2

    # when three events are sent while the socket is closed
    missed = [stack.send(type=ORDER, recipients=[user], data={"n": n}) for n in (3, 4, 5)]
    wait_inbox_seq(stack, token, 5)

    # then resuming after the last seq gives exactly those, in order, once
    with InboxSocket.open(stack.ws_url, token=token) as socket:
        socket.send({"type": "resume", "after": last_seq})
        frames = socket.notifications(3, timeout=10)
        assert [f["seq"] for f in frames] == [3, 4, 5]
        # Seq is the order of delivery; three events in flight at once may be delivered in
        # any order, so only the set of events is fixed.
        assert sorted(f["item"]["event_id"] for f in frames) == sorted(missed)
        assert [f["item"]["seq"] for f in frames] == [3, 4, 5]
        assert socket.notifications_within(1.5) == [], "duplicates after the resume"
        # and a live item after the resume continues the sequence
        stack.send(type=ORDER, recipients=[user], data={"n": 6})
        live = socket.notifications(1, timeout=20)
        assert live[0]["seq"] == 6
        socket.send({"type": "ping"})
        assert socket.frame_of_type("pong", timeout=5) == {"type": "pong"}


def test_it_resumes_while_items_are_still_arriving_without_duplicates(
    stack: Stack, types: dict[str, Any]
) -> None:
    # given a user whose events are being delivered right now
    user, token = stack.create_recipient("racer")
    sent = [stack.send(type=LIKED, recipients=[user], data={"n": n}) for n in range(1, 6)]

    # when the client connects and resumes from 0 at once
    with InboxSocket.open(stack.ws_url, token=token) as socket:
        socket.send({"type": "resume", "after": 0})
        frames = socket.notifications(5, timeout=20)
        frames += socket.notifications_within(1.5)

    # then every item came exactly once, in seq order
    assert [f["seq"] for f in frames] == [1, 2, 3, 4, 5]
    assert sorted(f["item"]["event_id"] for f in frames) == sorted(sent)


# --- idempotency --------------------------------------------------------------------------------


def test_it_accepts_a_repeated_idempotency_key_once(stack: Stack, types: dict[str, Any]) -> None:
    # given two recipients and an event sent with an idempotency key
    first, first_token = stack.create_recipient("idem-a")
    second, _ = stack.create_recipient("idem-b")
    key = f"order-{uuid.uuid4().hex}"
    body = {"type": ORDER, "recipients": [first, second], "data": {"n": 7}, "idempotency_key": key}
    accepted = stack.post_event(**body)
    assert accepted.status_code == 202, accepted.text
    event_id = accepted.json()["id"]

    # when the same body is sent again (before and after delivery)
    again = stack.post_event(**body)
    summary = wait_delivered(stack, event_id, 2)
    once_more = stack.post_event(**body)

    # then it answers 200 with the same id, and each recipient has exactly one delivery
    assert again.status_code == 200, again.text
    assert again.json() == {"id": event_id, "status": "accepted"}
    assert once_more.status_code == 200 and once_more.json()["id"] == event_id
    summary = event_summary(stack, event_id)
    assert summary["deliveries"] == {"inapp": {"delivered": 2}}, summary
    items = [item for item in inbox(stack, first_token)["results"] if item["event_id"] == event_id]
    assert len(items) == 1, items

    # and a different body under the same key is a conflict
    conflict = stack.post_event(**{**body, "data": {"n": 8}})
    assert conflict.status_code == 409, conflict.text
    assert "idempotency_key" in conflict.json()["errors"]
    header_conflict = stack.api.post(
        "/api/v1/events/",
        json={k: v for k, v in body.items() if k != "idempotency_key"} | {"data": {"n": 9}},
        headers={"Idempotency-Key": key},
    )
    assert header_conflict.status_code == 409, header_conflict.text


# --- validation and auth ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "mentions"),
    [
        ({"recipients": ["{user}"]}, "type", None),
        ({"type": ORDER, "recipients": ["{user}"], "topic": "news"}, "recipients", "not both"),
        ({"type": "no.such-type", "recipients": ["{user}"]}, "type", "no.such-type"),
        ({"type": ORDER, "recipients": "{user}"}, "recipients", None),
        ({"type": ORDER, "recipients": ["{user}"], "data": ["not", "an", "object"]}, "data", None),
        ({"type": ORDER, "recipients": ["{user}"], "send_at": "next tuesday"}, "send_at", None),
        ({"type": ORDER, "recipients": ["{user}", "nobody-{uuid}"]}, "recipients", "nobody-"),
        ({"type": ORDER, "topic": "no-such-topic-{uuid}"}, "topic", "no-such-topic-"),
    ],
    ids=[
        "missing-type",
        "recipients-and-topic",
        "unknown-type",
        "recipients-not-a-list",
        "data-not-an-object",
        "bad-send-at",
        "unknown-recipient",
        "unknown-topic",
    ],
)
def test_it_rejects_a_bad_event_naming_the_field(
    stack: Stack, types: dict[str, Any], body: dict[str, Any], field: str, mentions: str | None
) -> None:
    # given a real recipient
    user, token = stack.create_recipient("validated")
    filled = json.loads(json.dumps(body).replace("{user}", user).replace("{uuid}", uuid.uuid4().hex[:6]))

    with stack.db() as db:
        events_before = db.execute("SELECT count(*) FROM notifications_event").fetchall()

    # when the bad body is posted
    response = stack.api.post("/api/v1/events/", json=filled)

    # then it is a 400 naming the field, and nothing was stored for the user
    assert response.status_code == 400, response.text
    errors = response.json()["errors"]
    assert field in errors, errors
    assert (
        isinstance(errors[field], list) and errors[field] and all(isinstance(m, str) for m in errors[field])
    )
    if mentions:
        assert any(mentions in message for message in errors[field]), errors
    # Validation is synchronous: a rejected request has stored no event (so nothing can
    # ever be fanned out) and the user's inbox is empty.
    with stack.db() as db:
        assert db.execute("SELECT count(*) FROM notifications_event").fetchall() == events_before
    assert inbox(stack, token)["last_seq"] == 0


def test_it_rejects_a_body_that_is_not_json_object(stack: Stack, types: dict[str, Any]) -> None:
    response = stack.api.post(
        "/api/v1/events/", content=b"[1, 2]", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert "errors" in response.json()
    broken = stack.api.post(
        "/api/v1/events/", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert broken.status_code == 400, broken.text
    assert "errors" in broken.json()


@pytest.mark.parametrize(
    "authorization",
    [None, "Api-Key nk_000000000000_not-the-secret", "Api-Key garbage", "Bearer something"],
    ids=["no-header", "unknown-key", "malformed-key", "wrong-scheme"],
)
def test_it_answers_401_without_a_valid_api_key(
    stack: Stack, types: dict[str, Any], authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    with httpx.Client(base_url=stack.web_url, timeout=10) as client:
        response = client.post("/api/v1/events/", json={"type": ORDER, "recipients": ["x"]}, headers=headers)
        listing = client.get("/api/v1/notification-types/", headers=headers)
    assert response.status_code == 401, response.text
    assert "errors" in response.json()
    assert listing.status_code == 401, listing.text


def test_it_answers_401_with_a_wrong_key_for_a_real_prefix(stack: Stack, types: dict[str, Any]) -> None:
    scheme, prefix, secret = stack.api_key.split("_", 2)
    forged = f"{scheme}_{prefix}_{secret[:-1]}{'A' if secret[-1] != 'A' else 'B'}"
    response = stack.client(api_key=forged).post("/api/v1/events/", json={"type": ORDER, "recipients": ["x"]})
    assert response.status_code == 401, response.text


# --- end-user isolation and socket auth ---------------------------------------------------------


def test_it_hides_another_users_inbox_item(stack: Stack, types: dict[str, Any]) -> None:
    # given an item in A's inbox
    owner, owner_token = stack.create_recipient("owner")
    _, outsider_token = stack.create_recipient("outsider")
    event_id = stack.send(type=ORDER, recipients=[owner], data={"n": 1})
    wait_delivered(stack, event_id, 1)
    item = inbox(stack, owner_token)["results"][0]

    # when B tries to mark it read, then it is a 404 and the item stays unread
    response = stack.end_user(outsider_token).post(f"/api/v1/inbox/{item['id']}/read/")
    assert response.status_code == 404, response.text
    assert inbox(stack, outsider_token)["results"] == []
    assert inbox(stack, owner_token)["results"][0]["read"] is False

    # and the owner can
    mine = stack.end_user(owner_token).post(f"/api/v1/inbox/{item['id']}/read/")
    assert mine.status_code == 200, mine.text
    assert mine.json()["read"] is True
    count = stack.end_user(owner_token).get("/api/v1/inbox/unread-count/")
    assert count.json() == {"count": 0}
    assert event_summary(stack, event_id)["deliveries"] == {"inapp": {"read": 1}}


def test_it_answers_401_to_the_inbox_api_without_a_token(stack: Stack) -> None:
    with httpx.Client(base_url=stack.web_url, timeout=10) as client:
        assert client.get("/api/v1/inbox/").status_code in (401, 403)
        assert client.get("/api/v1/inbox/", params={"token": "abc"}).status_code == 401


@pytest.fixture(scope="module")
def demo_session(stack: Stack) -> str:
    """Seed the demo user (linked to recipient demo-user) and log in; returns the sessionid."""
    # A "demo" key first, so seed_demo creates none and leaves var/demo-api-key alone.
    stack.manage("create_api_key", "demo")
    stack.manage("seed_demo", "--subscribers", "1")
    with httpx.Client(base_url=stack.web_url, timeout=15) as browser:
        form = browser.get("/accounts/login/")
        assert form.status_code == 200, form.text
        csrf = browser.cookies["csrftoken"]
        response = browser.post(
            "/accounts/login/",
            data={
                "username": "demo",
                "password": "demo-password",
                "csrfmiddlewaretoken": csrf,
                "next": "/inbox/",
            },
            headers={"Referer": f"{stack.web_url}/accounts/login/"},
        )
        assert response.status_code == 302, response.text
        session = browser.cookies.get("sessionid")
        assert session, "login set no sessionid cookie"
        page = browser.get("/inbox/")
        assert page.status_code == 200
    return session


def test_it_refuses_a_cookie_socket_from_a_foreign_origin(stack: Stack, demo_session: str) -> None:
    cookie = {"Cookie": f"sessionid={demo_session}"}

    # when the socket comes from another site with the user's cookie, then the handshake fails
    with pytest.raises(InvalidStatus) as refused:
        InboxSocket.open(stack.ws_url, origin="http://evil.example", additional_headers=cookie)
    assert refused.value.response.status_code == 403

    # and without an Origin at all too
    with pytest.raises(InvalidStatus):
        InboxSocket.open(stack.ws_url, additional_headers=cookie)

    # but from our own origin the same cookie opens the inbox
    with InboxSocket.open(stack.ws_url, origin=stack.web_url, additional_headers=cookie) as socket:
        assert socket.frame(10)["type"] == "unread_count"
        socket.send({"type": "ping"})
        assert socket.frame_of_type("pong", 5) == {"type": "pong"}


@pytest.mark.parametrize("forgery", ["abc", "one-char-changed", "other-salt-shape"])
def test_it_refuses_a_socket_with_a_forged_token(stack: Stack, forgery: str) -> None:
    user, token = stack.create_recipient("forged")
    if forgery == "abc":
        bad = "abc"
    elif forgery == "one-char-changed":
        # A character in the middle of the signature, so the change cannot fall in base64 padding bits.
        position = token.rfind(":") + 10
        bad = token[:position] + ("A" if token[position] != "A" else "B") + token[position + 1 :]
    else:
        bad = token.split(":", 1)[0] + ":x:y"
    assert bad != token
    with pytest.raises(InvalidStatus) as refused:
        InboxSocket.open(stack.ws_url, token=bad)
    assert refused.value.response.status_code == 403
    # the genuine token is accepted
    with InboxSocket.open(stack.ws_url, token=token) as socket:
        assert socket.frame(10) == {"type": "unread_count", "count": 0}


# --- deliveries, SSE, observability, scheduling -------------------------------------------------


def test_it_lists_an_events_deliveries(stack: Stack, types: dict[str, Any]) -> None:
    first, _ = stack.create_recipient("listed")
    second, _ = stack.create_recipient("listed")
    event_id = stack.send(type=LIKED, recipients=[first, second], data={"n": 1})
    wait_delivered(stack, event_id, 2)

    response = stack.api.get(f"/api/v1/events/{event_id}/deliveries/")

    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert sorted(r["recipient"] for r in results) == sorted([first, second])
    for row in results:
        assert {"recipient", "channel", "status", "reason", "attempts"} <= set(row), row
        assert (row["channel"], row["status"], row["reason"], row["attempts"]) == (
            "inapp",
            "delivered",
            "",
            1,
        )
    summary = event_summary(stack, event_id)
    assert summary["type"] == LIKED and summary["id"] == event_id
    assert stack.api.get("/api/v1/events/not-a-uuid/deliveries/").status_code == 404


def read_sse(response: httpx.Response, until_seq: int, timeout: float) -> list[dict[str, Any]]:
    """Parse server-sent events from ``response`` until the notification ``until_seq``."""
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    for line in response.iter_lines():
        if time.monotonic() > deadline:
            break
        if line == "":
            if current:
                events.append(current)
                if current.get("event") == "notification" and current["data"]["seq"] >= until_seq:
                    return events
            current = {}
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            current[name] = json.loads(value) if name == "data" else value
    raise AssertionError(f"the stream ended or timed out before seq {until_seq}; got {events}")


def test_it_resumes_the_sse_stream_from_last_event_id(stack: Stack, types: dict[str, Any]) -> None:
    # given three items in the inbox
    user, token = stack.create_recipient("sse")
    sent = [stack.send(type=ORDER, recipients=[user], data={"n": n}) for n in (1, 2, 3)]
    wait_inbox_seq(stack, token, 3)

    # when the SSE stream is opened with Last-Event-ID: 1
    timeout = httpx.Timeout(10.0, read=5.0)
    with httpx.Client(base_url=stack.web_url, timeout=timeout) as client:
        with client.stream(
            "GET", "/sse/inbox/", params={"token": token}, headers={"Last-Event-ID": "1"}
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = read_sse(response, until_seq=3, timeout=10)

    # then it sends the unread count and the items after 1, with id = seq
    notifications = [e for e in events if e.get("event") == "notification"]
    assert [e["id"] for e in notifications] == ["2", "3"]
    # Concurrent fan-outs may store the three events in any order: seq follows storage.
    stored = stack.end_user(token).get("/api/v1/inbox/", params={"after": 0}).json()["results"]
    by_seq = {item["seq"]: item["event_id"] for item in stored}
    assert sorted(by_seq.values()) == sorted(sent)
    assert [e["data"]["item"]["event_id"] for e in notifications] == [by_seq[2], by_seq[3]]
    assert any(e.get("event") == "unread_count" for e in events)

    # and a forged token is a 401
    with httpx.Client(base_url=stack.web_url, timeout=10) as client:
        assert client.get("/sse/inbox/", params={"token": "abc"}).status_code == 401


def test_it_reports_health_metrics_and_schema(stack: Stack, types: dict[str, Any]) -> None:
    with httpx.Client(base_url=stack.web_url, timeout=15) as client:
        health = client.get("/healthz")
        metrics = client.get("/metrics")
        schema = client.get("/api/schema/", headers={"Accept": "application/json"})
        docs = client.get("/api/docs/")

    assert health.status_code == 200, health.text
    assert {k: health.json()[k] for k in ("database", "redis", "broker")} == {
        "database": "ok",
        "redis": "ok",
        "broker": "ok",
    }
    assert metrics.status_code == 200
    assert "notifications_events_accepted" in metrics.text
    assert schema.status_code == 200, schema.text[:500]
    document = schema.text
    assert "openapi" in document and "/api/v1/events/" in document
    assert docs.status_code == 200


def test_it_delivers_a_scheduled_event_only_after_send_at(stack: Stack, types: dict[str, Any]) -> None:
    # given a connected user and an event due in 4 seconds
    user, token = stack.create_recipient("scheduled")
    with InboxSocket.open(stack.ws_url, token=token) as socket:
        socket.frame_of_type("unread_count")
        send_at = datetime.now(UTC) + timedelta(seconds=4)
        event_id = stack.send(type=ORDER, recipients=[user], data={"n": 1}, send_at=send_at.isoformat())
        assert event_summary(stack, event_id)["status"] == "scheduled"

        # then nothing arrives before send_at, and the frame arrives soon after it
        early = socket.notifications_within(max(0.0, (send_at - datetime.now(UTC)).total_seconds() - 0.3))
        assert early == [], early
        frame = socket.notifications(1, timeout=20)[0]
        arrived = datetime.now(UTC)

    assert frame["item"]["event_id"] == event_id
    assert arrived >= send_at, (arrived, send_at)
    lateness = (arrived - send_at).total_seconds()
    print(f"scheduled frame arrived {lateness:.2f}s after send_at")
    assert lateness < 10, f"arrived {lateness:.1f}s after send_at"


def test_it_shows_a_new_notification_live_in_the_browser_inbox(
    stack: Stack, demo_session: str, types: dict[str, dict[str, Any]]
) -> None:
    """The /inbox/ page in headless Chromium: log in, keep the page open, send an event
    through the API, see it appear without a reload, mark it read."""
    title = f"Order LIVE-{uuid.uuid4().hex[:6]} shipped"
    with debian_chromium() as browser:
        page = browser.new_page()
        log_in_as_demo(page, f"{stack.web_url}/inbox/")
        page.wait_for_selector("text=Live", timeout=10_000)
        unread_before = int(page.inner_text("#unread-badge") or "0")

        # when an event for the demo user is accepted by the API
        assert (
            stack.post_event(type=ORDER, recipients=["demo-user"], data={"title": title}).status_code == 202
        )

        # then it appears on the open page, at the top (newest first by acceptance, the
        # order the API lists in), and the unread badge goes up by one
        item = page.wait_for_selector(f"text={title}", timeout=10_000)
        assert item is not None
        shown = page.eval_on_selector_all("#inbox-items .item-title", "els => els.map(e => e.textContent)")
        listed = stack.end_user(stack.token("demo-user")).get("/api/v1/inbox/").json()["results"]
        assert shown[0] == title
        assert shown[: len(listed)] == [entry["title"] for entry in listed][: len(shown)]
        page.wait_for_function(
            "n => Number((document.querySelector('#unread-badge') || {}).textContent) === n",
            arg=unread_before + 1,
            timeout=10_000,
        )
        # and clicking it marks it read through the API
        item.click()
        page.wait_for_function(
            "n => Number((document.querySelector('#unread-badge') || {}).textContent || 0) === n",
            arg=unread_before,
            timeout=10_000,
        )
        as_demo = stack.end_user(stack.token("demo-user"))
        wait_until(
            lambda: as_demo.get("/api/v1/inbox/unread-count/").json()["count"] == unread_before,
            timeout=10,
            message="the click did not mark the item read on the server",
        )
