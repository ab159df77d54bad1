"""Provider faults against real processes (docs/architecture.md): a 60 s provider outage in
the middle of a burst. Each test builds its own stack and sandbox; arrangement and final
checks may read the temporary database directly."""

from __future__ import annotations

import time
from typing import Any

import pytest

from harness.processes import wait_until
from tests.e2e.conftest import Stack, platform_stack

pytestmark = [pytest.mark.e2e, pytest.mark.fault, pytest.mark.xdist_group("e2e-provider-faults")]

OUTAGE_SECONDS = 60
AUDIENCE = 1_000

FAULT_ENV = {
    "SWEEP_INTERVAL_SECONDS": "1",
    "DELIVERY_STALE_SECONDS": "5",
    "SEND_CLAIM_SECONDS": "15",
    "SEND_BACKOFF_BASE_SECONDS": "1",
    "SEND_BACKOFF_CAP_SECONDS": "20",
    "SEND_MAX_ATTEMPTS": "8",
    "BREAKER_MIN_CALLS": "5",
    "BREAKER_OPEN_SECONDS": "5",
    "RATE_CAP_EMAIL": "off",
    "RATE_CAP_PUSH": "off",
}


def seed_audience(stack: Stack, *, topic: str, size: int) -> None:
    """``size`` recipients with an email address and an FCM token, on ``topic`` (SQL)."""
    with stack.db() as db:
        db.execute(
            """INSERT INTO notifications_recipient
                   (external_id, name, email, phone, locale, timezone, created_at, updated_at)
               SELECT 'out-' || g, '', 'out-' || g || '@example.com', '', 'en', 'UTC', now(), now()
               FROM generate_series(1, %s) AS g""",
            [size],
        )
        db.execute(
            """INSERT INTO notifications_device (recipient_id, platform, token, active, created_at, last_seen_at)
               SELECT id, 'fcm', 'tok-' || external_id, true, now(), now()
               FROM notifications_recipient WHERE external_id LIKE 'out-%%'"""
        )
        topic_id = db.execute(
            "INSERT INTO notifications_topic (key, name, created_at) VALUES (%s, '', now()) RETURNING id",
            [topic],
        ).fetchone()[0]  # type: ignore[index]
        db.execute(
            """INSERT INTO notifications_subscription (topic_id, recipient_id, created_at)
               SELECT %s, id, now() FROM notifications_recipient WHERE external_id LIKE 'out-%%'""",
            [topic_id],
        )


def status_counts(stack: Stack, event_id: str) -> dict[tuple[str, str], int]:
    with stack.db() as db:
        rows = db.execute(
            "SELECT channel, status, count(*) FROM notifications_delivery WHERE event_id = %s GROUP BY 1, 2",
            [event_id],
        ).fetchall()
    return {(channel, status): count for channel, status, count in rows}


def test_it_rides_out_a_60_second_provider_outage_without_a_retry_storm() -> None:
    with platform_stack(FAULT_ENV, with_sandbox=True) as stack:
        assert stack.sandbox is not None
        control = stack.sandbox.control
        seed_audience(stack, topic="outage", size=AUDIENCE)
        response = stack.api.post(
            "/api/v1/notification-types/",
            json={
                "key": "outage.notice",
                "category": "transactional",
                "channels": ["email", "push"],
                "templates": {
                    "email": {"subject": "Notice {{ data.n }}", "text": "Notice {{ data.n }}"},
                    "push": {"title": "Notice", "body": "Notice {{ data.n }}"},
                },
            },
        )
        assert response.status_code == 201, response.text
        # Mailgun (primary email provider) and FCM (the only Android push provider) go down.
        control.set_fault("mailgun", status=503, rate=1.0, seconds=OUTAGE_SECONDS)
        control.set_fault("fcm", status=503, rate=1.0, seconds=OUTAGE_SECONDS)
        outage_started = time.time()

        event_id = stack.send(type="outage.notice", topic="outage", data={"n": 1})

        # Failover is visible: every email goes out through SMTP while Mailgun is down.
        wait_until(
            lambda: status_counts(stack, event_id).get(("email", "sent"), 0) == AUDIENCE,
            OUTAGE_SECONDS - 10,
            interval=0.5,
            message="emails did not fail over to SMTP during the outage",
        )
        assert len(control.messages("smtp")) == AUDIENCE

        def settled() -> dict[tuple[str, str], int] | None:
            counts = status_counts(stack, event_id)
            in_flight = sum(n for (_, status), n in counts.items() if status in ("pending", "retrying"))
            return counts if in_flight == 0 and sum(counts.values()) == 2 * AUDIENCE else None

        counts = wait_until(settled, OUTAGE_SECONDS + 90, interval=1.0, message="deliveries never settled")

        # Everything reached the user or was dead-lettered; nothing is left in flight.
        assert counts.get(("push", "sent"), 0) + counts.get(("push", "dead"), 0) == AUDIENCE, counts
        dead = counts.get(("push", "dead"), 0) + counts.get(("email", "dead"), 0)
        listed = stack.api.get("/api/v1/dead-letters/", params={"limit": 1000})
        assert listed.status_code == 200, listed.text
        assert len(listed.json()["results"]) == dead

        # No hot retry loop: while the breakers were open, each provider saw a handful of
        # probes, not one call per delivery per retry.
        during = [m for m in control.messages("fcm") if m["received_at"] < outage_started + OUTAGE_SECONDS]
        failed_calls = [m for m in during if int(m["status"]) >= 500]
        assert len(failed_calls) <= 60, f"{len(failed_calls)} calls to FCM during the outage"
        mailgun_during = [
            m for m in control.messages("mailgun") if m["received_at"] < outage_started + OUTAGE_SECONDS
        ]
        assert len(mailgun_during) <= 60, f"{len(mailgun_during)} calls to Mailgun during the outage"
        stats: dict[str, Any] = control.stats()["providers"]
        assert stats["fcm"]["duplicates"] == 0
        print(
            f"outage: {len(failed_calls)} failed FCM calls and {len(mailgun_during)} Mailgun calls during "
            f"{OUTAGE_SECONDS} s; SMTP took {len(control.messages('smtp'))} emails; push dead {dead}; "
            f"statuses {counts}"
        )


def test_it_loses_no_send_when_the_send_worker_is_killed_during_10000_pushes() -> None:
    from bench.kill_sends import KILL_ENV, run_kill_scenario

    with platform_stack(KILL_ENV, with_sandbox=True) as stack:
        result = run_kill_scenario(stack, sends=10_000, kill_after=2_500)

    # Every push was accepted once at least, every delivery ended sent; a duplicate can
    # only come from a chunk in flight at the kill (reported in docs/benchmarks.md).
    assert result.lost == 0 and result.sent == 10_000 and result.unique_keys == 10_000, result.summary()
    assert result.duplicates <= result.duplicate_bound, result.summary()
    print(result.summary())
