"""Faults injected into a platform of the test's own (docs/architecture.md): every test
builds its own stack, with its own Redis and database, so a fault never leaks into
another test. Arrangement and final checks may read the temporary database directly."""

from __future__ import annotations

import signal
import time
from typing import Any

import httpx
import pytest

from harness.processes import assert_steady, wait_until
from tests.e2e.conftest import Stack, platform_stack

pytestmark = [pytest.mark.e2e, pytest.mark.fault, pytest.mark.xdist_group("e2e-faults")]

AUDIENCE = 100_000


def seed_topic_audience(stack: Stack, *, topic: str, size: int) -> None:
    """Insert ``size`` recipients subscribed to ``topic`` with SQL (arrangement only)."""
    with stack.db() as db:
        db.execute(
            """INSERT INTO notifications_recipient
                   (external_id, name, email, phone, locale, timezone, created_at, updated_at)
               SELECT 'bulk-' || g, '', '', '', 'en', 'UTC', now(), now() FROM generate_series(1, %s) AS g""",
            [size],
        )
        topic_id = db.execute(
            "INSERT INTO notifications_topic (key, name, created_at) VALUES (%s, '', now()) RETURNING id",
            [topic],
        ).fetchone()[0]  # type: ignore[index]
        db.execute(
            """INSERT INTO notifications_subscription (topic_id, recipient_id, created_at)
               SELECT %s, id, now() FROM notifications_recipient WHERE external_id LIKE 'bulk-%%'""",
            [topic_id],
        )
        db.execute("ANALYZE notifications_recipient; ANALYZE notifications_subscription")


def fanout_state(stack: Stack, event_id: str) -> dict[str, int]:
    """Counts that prove (or disprove) exactly-once in-app delivery of one event."""
    with stack.db() as db:
        deliveries, delivery_recipients, not_delivered = db.execute(
            """SELECT count(*), count(DISTINCT recipient_id), count(*) FILTER (WHERE status <> 'delivered')
               FROM notifications_delivery WHERE event_id = %s AND channel = 'inapp'""",
            [event_id],
        ).fetchone()  # type: ignore[misc]
        items, item_recipients, not_first = db.execute(
            """SELECT count(*), count(DISTINCT recipient_id), count(*) FILTER (WHERE seq <> 1)
               FROM notifications_inboxitem WHERE event_id = %s""",
            [event_id],
        ).fetchone()  # type: ignore[misc]
        duplicate_seqs = db.execute(
            """SELECT count(*) FROM (SELECT recipient_id, seq FROM notifications_inboxitem
               WHERE event_id = %s GROUP BY 1, 2 HAVING count(*) > 1) AS d""",
            [event_id],
        ).fetchone()[0]  # type: ignore[index]
    return {
        "deliveries": deliveries,
        "delivery_recipients": delivery_recipients,
        "not_delivered": not_delivered,
        "items": items,
        "item_recipients": item_recipients,
        "items_with_seq_other_than_1": not_first,
        "duplicate_seqs": duplicate_seqs,
    }


def test_it_delivers_exactly_once_after_kill_9_of_both_workers_mid_fanout() -> None:
    with platform_stack() as stack:
        # given 100,000 recipients subscribed to a topic and a type created over HTTP
        topic = "bulk-audience"
        seeded = time.monotonic()
        seed_topic_audience(stack, topic=topic, size=AUDIENCE)
        print(f"seeded {AUDIENCE} recipients in {time.monotonic() - seeded:.1f}s")
        stack.create_type("e2e.bulk", category="social")

        # when the event is fanned out and both workers are killed with SIGKILL midway
        started = time.monotonic()
        event_id = stack.send(type="e2e.bulk", topic=topic, data={"n": 1})

        def deliveries_so_far() -> int:
            with stack.db() as db:
                return int(
                    db.execute(
                        "SELECT count(*) FROM notifications_delivery WHERE event_id = %s", [event_id]
                    ).fetchone()[0]  # type: ignore[index]
                )

        at_kill = wait_until(
            lambda: (n := deliveries_so_far()) > 15_000 and n,
            120,
            interval=0.05,
            message="fan-out never passed 15,000 deliveries",
        )
        stack.processes.kill_worker("fanout", signal.SIGKILL)
        stack.processes.kill_worker("inapp", signal.SIGKILL)
        killed_at = time.monotonic()
        state_at_kill = fanout_state(stack, event_id)
        print(
            f"killed both workers {killed_at - started:.1f}s after the POST at {at_kill} deliveries: {state_at_kill}"
        )
        assert state_at_kill["deliveries"] < AUDIENCE, (
            "the fan-out finished before the kill; nothing was tested"
        )

        stack.processes.start_worker("fanout")
        stack.processes.start_worker("inapp")
        restarted_at = time.monotonic()

        # then every recipient ends with exactly one delivery and one inbox item
        def complete() -> dict[str, int] | None:
            state = fanout_state(stack, event_id)
            done = (
                state["items"] >= AUDIENCE and state["not_delivered"] == 0 and state["deliveries"] >= AUDIENCE
            )
            return state if done else None

        try:
            final = wait_until(
                complete, 180, interval=1.0, message="in-app fan-out did not complete after the kill"
            )
        except TimeoutError as error:
            raise AssertionError(f"{error}; state: {fanout_state(stack, event_id)}") from None
        finished = time.monotonic()
        timing = (
            f"POST -> kill {killed_at - started:.1f}s, restart -> complete {finished - restarted_at:.1f}s, "
            f"total {finished - started:.1f}s"
        )
        # and for two sweep leases afterwards nothing more appears (no late duplicates
        # from redelivered tasks)
        settled = assert_steady(
            lambda: fanout_state(stack, event_id), 2 * 5, message=f"state changed after completion ({timing})"
        )
        print(timing, settled)
        assert settled == final, f"state changed after completion: {final} -> {settled} ({timing})"
        assert final["deliveries"] == final["delivery_recipients"] == AUDIENCE, (final, timing)
        assert final["items"] == final["item_recipients"] == AUDIENCE, (final, timing)
        assert final["not_delivered"] == 0, (final, timing)
        assert final["duplicate_seqs"] == 0 and final["items_with_seq_other_than_1"] == 0, (final, timing)
        with stack.db() as db:
            sequences = db.execute(
                """SELECT count(*), min(s.last_seq), max(s.last_seq) FROM notifications_inboxsequence s
                   JOIN notifications_recipient r ON r.id = s.recipient_id WHERE r.external_id LIKE 'bulk-%%'"""
            ).fetchone()
        assert tuple(sequences) == (AUDIENCE, 1, 1), (sequences, timing)  # type: ignore[arg-type]
        summary = stack.api.get(f"/api/v1/events/{event_id}/").json()
        assert summary["deliveries"] == {"inapp": {"delivered": AUDIENCE}}, summary
        assert summary["status"] == "completed", summary
        exits = stack.processes.unexpected_exits()
        assert exits == [], "\n".join(
            [str(exits), *(stack.processes.log_tail(name, 60) for name, _ in exits)]
        )


def test_it_loses_no_accepted_event_while_redis_is_down() -> None:
    with platform_stack() as stack:
        # given a type and three recipients
        stack.create_type("e2e.redis-down")
        recipients = [stack.create_recipient("rd")[0] for _ in range(3)]
        accepted: list[str] = []
        statuses: dict[str, list[int]] = {"before": [], "down": [], "after": []}
        latencies: dict[str, list[float]] = {"before": [], "down": [], "after": []}
        problems: list[str] = []
        client = stack.client(timeout=httpx.Timeout(20.0))

        def post_for(seconds: float, phase: str) -> None:
            deadline = time.monotonic() + seconds
            n = 0
            while time.monotonic() < deadline:
                n += 1
                tick = time.monotonic()
                try:
                    response = client.post(
                        "/api/v1/events/",
                        json={
                            "type": "e2e.redis-down",
                            "recipients": recipients,
                            "data": {"phase": phase, "n": n},
                        },
                    )
                except httpx.HTTPError as exc:
                    problems.append(f"{phase} #{n}: {exc!r}")
                    continue
                statuses[phase].append(response.status_code)
                latencies[phase].append(time.monotonic() - tick)
                if response.status_code == 202:
                    accepted.append(response.json()["id"])
                elif response.status_code != 503:
                    problems.append(f"{phase} #{n}: {response.status_code} {response.text[:300]}")
                time.sleep(max(0.0, 1 / 3 - (time.monotonic() - tick)))

        # when events are posted before, during and after a Redis outage
        post_for(3, "before")
        stack.redis.stop()
        down_at = time.monotonic()
        health = client.get("/healthz")
        post_for(5, "down")
        health_late = client.get("/healthz")
        stack.redis.start()
        up_at = time.monotonic()
        post_for(3, "after")

        # then the API never failed with a 500, and /healthz said Redis was down
        print({phase: {code: codes.count(code) for code in set(codes)} for phase, codes in statuses.items()})
        print({phase: f"max {max(times, default=0):.2f}s" for phase, times in latencies.items()})
        assert problems == [], problems
        assert all(code == 202 for code in statuses["before"]), statuses
        assert statuses["down"], "nothing was posted while Redis was down"
        # A broker outage must not stall producers: the API stores and answers at once.
        assert max(latencies["down"]) < 2.0, latencies["down"]
        for answer in (health, health_late):
            assert answer.status_code == 503, answer.text
            assert answer.json()["redis"] != "ok", answer.json()

        # and every accepted event reaches all its recipients once Redis is back
        def missing() -> dict[str, int]:
            with stack.db() as db:
                rows = dict(
                    db.execute(
                        """SELECT event_id::text, count(*) FROM notifications_inboxitem
                           WHERE event_id = ANY(%s::uuid[]) GROUP BY event_id""",
                        [accepted],
                    ).fetchall()
                )
            return {event_id: rows.get(event_id, 0) for event_id in accepted if rows.get(event_id, 0) != 3}

        try:
            wait_until(lambda: not missing(), 120, interval=0.5, message="accepted events not delivered")
        except TimeoutError as error:
            still = missing()
            raise AssertionError(
                f"{error}: {len(still)} of {len(accepted)} accepted events lack inbox items, e.g. "
                f"{list(still.items())[:5]}; unexpected exits: {stack.processes.unexpected_exits()}"
            ) from None
        recovered = time.monotonic() - up_at
        print(
            f"{len(accepted)} accepted events delivered; outage {up_at - down_at:.1f}s; "
            f"all delivered {recovered:.1f}s after Redis came back"
        )
        with stack.db() as db:
            per_recipient: list[Any] = db.execute(
                """SELECT count(*), count(DISTINCT (recipient_id, event_id)), count(DISTINCT (recipient_id, seq))
                   FROM notifications_inboxitem WHERE event_id = ANY(%s::uuid[])""",
                [accepted],
            ).fetchone()  # type: ignore[assignment]
        assert per_recipient[0] == per_recipient[1] == per_recipient[2] == 3 * len(accepted), per_recipient
        exits = stack.processes.unexpected_exits()
        assert exits == [], "\n".join(
            [str(exits), *(stack.processes.log_tail(name, 60) for name, _ in exits)]
        )
        health_after = client.get("/healthz")
        assert health_after.status_code == 200, health_after.text
