"""PostgreSQL fails under a running platform: while it is down the API answers 503 rather
than accept what it cannot keep and /healthz names the database; once it is back the
platform recovers without being restarted, and nothing from the outage is half-stored.

The platform runs on a PostgreSQL of the test's own (harness/postgres.py), never on the
machine's shared server, which other tests use: stopping it is the fault."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from harness.postgres import PrivatePostgres
from harness.processes import wait_until
from tests.e2e.conftest import Stack, platform_stack

pytestmark = [pytest.mark.e2e, pytest.mark.fault, pytest.mark.xdist_group("e2e-faults")]

TYPE = "e2e.db-down"


@pytest.fixture
def stack_on_private_postgres(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Stack, PrivatePostgres]]:
    """A whole platform (web, workers, beat, private Redis) whose database is migrated on a
    private PostgreSQL; both are stopped on exit, also when the test fails."""
    with PrivatePostgres() as postgres:
        # platform_stack creates its temporary database on the server DATABASE_URL names
        # (harness.processes.TemporaryDatabase) and points every process at that database.
        monkeypatch.setenv("DATABASE_URL", postgres.url)
        with platform_stack() as stack:
            yield stack, postgres


def stored_state(stack: Stack) -> list[dict[str, Any]]:
    """Every event, oldest first, with what was stored for it, read straight from the
    database: a half-stored event shows as one without its outbox row, and a refused one
    that was stored anyway as one event too many."""
    with stack.db() as db:
        rows = db.execute(
            """SELECT e.data, e.idempotency_key,
                      EXISTS (SELECT 1 FROM notifications_outboxmessage o WHERE o.event_id = e.id),
                      (SELECT count(*) FROM notifications_delivery d WHERE d.event_id = e.id),
                      (SELECT count(*) FROM notifications_inboxitem i WHERE i.event_id = e.id)
               FROM notifications_event e ORDER BY e.created_at"""
        ).fetchall()
    return [
        {
            "data": data,
            "idempotency_key": key,
            "outbox": outbox,
            "deliveries": deliveries,
            "inbox_items": items,
        }
        for data, key, outbox, deliveries, items in rows
    ]


def inbox_titles(stack: Stack, token: str, *, after_outage: bool = False) -> list[str]:
    """The titles in the inbox. ``after_outage``: a 503 counts as nothing yet (a web
    process's pool hands out each connection the outage killed once, see below)."""
    response = stack.end_user(token).get("/api/v1/inbox/")
    if after_outage and response.status_code == 503:
        return []
    assert response.status_code == 200, response.text
    return [str(item["title"]) for item in response.json()["results"]]


def test_it_answers_503_while_postgres_is_down_and_recovers_by_itself(
    stack_on_private_postgres: tuple[Stack, PrivatePostgres],
) -> None:
    stack, postgres = stack_on_private_postgres
    # given a type, a recipient, and an event delivered to their inbox before the outage
    stack.create_type(TYPE)
    recipient, token = stack.create_recipient("db-down")
    stack.send(type=TYPE, recipients=[recipient], data={"title": "before"})
    wait_until(
        lambda: "before" in inbox_titles(stack, token), 30, interval=0.2, message="'before' not delivered"
    )
    client = stack.client(timeout=httpx.Timeout(30.0))
    refused_body = {
        "type": TYPE,
        "recipients": [recipient],
        "data": {"title": "during"},
        "idempotency_key": f"db-down-{uuid.uuid4().hex}",
    }

    # when PostgreSQL stops at once (no checkpoint, every connection cut) under the running
    # platform, and an event is posted
    postgres.stop("immediate")
    during = client.post("/api/v1/events/", json=refused_body)
    health = client.get("/healthz")
    print(
        f"PostgreSQL down: POST answered {during.status_code} in {during.elapsed.total_seconds():.1f}s, "
        f"/healthz {health.status_code} in {health.elapsed.total_seconds():.1f}s"
    )

    # then the event is refused with 503 and Retry-After, in the API's error shape
    assert during.status_code == 503, during.text
    assert during.headers.get("Retry-After") == "5", dict(during.headers)
    assert list(during.json()) == ["errors"] and list(during.json()["errors"]) == ["service"], during.json()
    assert "nothing was stored" in during.json()["errors"]["service"][0], during.json()
    # and /healthz names the database as what is down, and only the database
    assert health.status_code == 503, health.text
    assert health.json()["database"].startswith("down:"), health.json()
    assert health.json()["redis"] == "ok" and health.json()["broker"] == "ok", health.json()

    # when PostgreSQL comes back; nothing is done to the platform's processes
    postgres.start()
    back_at = time.monotonic()
    attempts: list[int] = []

    def retry() -> httpx.Response | None:
        # The client sends the refused request again, same idempotency key, until it is no
        # longer told to retry. Each web process can answer 503 a few more times after the
        # database is back: its pool hands out connections the outage killed once each.
        response = client.post("/api/v1/events/", json=refused_body)
        attempts.append(response.status_code)
        return None if response.status_code == 503 else response

    retried = wait_until(retry, 45, interval=0.5, message="the API still answers 503 with PostgreSQL back")
    print(
        f"answers to the retried event once PostgreSQL was back: {attempts} ({time.monotonic() - back_at:.1f}s)"
    )

    # then the retry is accepted as a new event (202, not a 200 replay: no attempt stored
    # anything under its idempotency key) and reaches the recipient's inbox
    assert retried.status_code == 202, retried.text
    wait_until(
        lambda: "during" in inbox_titles(stack, token, after_outage=True),
        30,
        interval=0.2,
        message="retry not delivered",
    )
    # and /healthz says the database is up again
    wait_until(
        lambda: client.get("/healthz").status_code == 200, 30, interval=0.5, message="/healthz still 503"
    )
    # and nothing is left half-stored from the outage: two events, each with its outbox
    # row, one delivery and one inbox item
    state = stored_state(stack)
    expected = {"outbox": True, "deliveries": 1, "inbox_items": 1}
    assert state == [
        {"data": {"title": "before"}, "idempotency_key": None, **expected},
        {"data": {"title": "during"}, "idempotency_key": refused_body["idempotency_key"], **expected},
    ], state
    assert stack.processes.unexpected_exits() == [], stack.processes.unexpected_exits()
