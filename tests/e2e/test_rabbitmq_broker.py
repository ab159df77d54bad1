"""The pipeline with RabbitMQ as the Celery broker (docs/architecture.md, "Past one
machine"): ``CELERY_BROKER_URL=amqp://...`` makes every queue a durable quorum queue, and a
countdown retry waits in RabbitMQ (Celery's native delayed delivery), not in a worker.

RabbitMQ is a service of this machine: when it cannot be reached the tests fail, naming
what to start, instead of skipping. Each run gets a vhost of its own, deleted afterwards,
so parallel runs and CI never share a queue.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from socket import create_connection
from typing import Any
from urllib.parse import urlsplit

import pytest

from harness.processes import wait_until
from project.settings.base import WORK_QUEUES
from tests.e2e.conftest import Stack, platform_stack
from tests.e2e.inbox_client import InboxSocket

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e-rabbitmq")]

# The machine's RabbitMQ (user, password, host and port; the vhost is the test's own).
RABBITMQ_URL = os.environ.get("E2E_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")
FANOUT_TASK = "notifications.tasks.event_fanout_task"
TYPE = "e2e.rabbitmq.shipped"


def rabbitmqctl(*args: str) -> str:
    """Run ``rabbitmqctl -q <args>`` and return its output; fail the test when it fails."""
    completed = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60, check=False
    )
    if completed.returncode != 0:
        pytest.fail(
            f"rabbitmqctl {' '.join(args)} failed ({completed.returncode}): {completed.stderr or completed.stdout}",
            pytrace=False,
        )
    return completed.stdout


def rabbitmq_reachable(url: str) -> str:
    """Why RabbitMQ cannot be used here, or "" when it can."""
    parts = urlsplit(url)
    if shutil.which("rabbitmqctl") is None:
        return "rabbitmqctl is not installed (apt-get install rabbitmq-server)"
    try:
        with create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), timeout=2):
            return ""
    except OSError as exc:
        return f"nothing answers on {parts.hostname}:{parts.port or 5672} ({exc}); start it: rabbitmq-server -detached"


@pytest.fixture(scope="module")
def broker_url() -> Iterator[str]:
    """An amqp:// URL on a vhost created for this module and deleted after it."""
    problem = rabbitmq_reachable(RABBITMQ_URL)
    if problem:
        pytest.fail(f"RabbitMQ is required by this machine's test suite: {problem}", pytrace=False)
    vhost = f"notif-e2e-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    user = urlsplit(RABBITMQ_URL).username or "guest"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        yield f"{RABBITMQ_URL.rstrip('/')}/{vhost}"
    finally:
        rabbitmqctl("delete_vhost", vhost)


@pytest.fixture(scope="module")
def stack(broker_url: str) -> Iterator[Stack]:
    env = {
        "CELERY_BROKER_URL": broker_url,
        # Every in-app page goes through the inapp queue (no inline shortcut), so each
        # queue class of the pipeline passes through RabbitMQ.
        "INAPP_INLINE_MAX": "0",
        # Every event is fanned out by a fan-out task, not by the web process that took it.
        "FANOUT_NEARBY": "0",
        # A worker's record of each task it receives (with its ETA) is a JSON line.
        "LOG_FORMAT": "json",
        # No second fan-out task from the outbox sweep while the retried one waits.
        "OUTBOX_LEASE_SECONDS": "120",
    }
    with platform_stack(env, with_sandbox=True) as running:
        running.create_type(
            TYPE,
            channels=["inapp", "push"],
            templates={
                "inapp": {"title": "Order {{ data.n }}", "body": "n={{ data.n }}", "url": "/o/{{ data.n }}"},
                "push": {"title": "Order", "body": "Order {{ data.n }} shipped"},
            },
        )
        yield running


def vhost_of(stack: Stack) -> str:
    return urlsplit(stack.env["CELERY_BROKER_URL"]).path.lstrip("/")


def json_records(log: str) -> Iterator[dict[str, Any]]:
    """The JSON log records in a process's log (Celery's banner and the like are not)."""
    for line in log.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            yield record


def fanout_receipts(stack: Stack, outbox_id: int) -> list[dict[str, Any]]:
    """Every delivery of a fan-out task message for ``outbox_id`` to the fan-out worker, as
    its main process logged it: {"task_id", "received": datetime, "eta": datetime | None}."""
    receipts = []
    for record in json_records(stack.processes.worker("fanout").log_text()):
        data = record.get("data")
        if (
            isinstance(data, dict)
            and data.get("name") == FANOUT_TASK
            and "received" in str(record.get("msg"))
            and str(data.get("args")).strip("(,)") == str(outbox_id)
        ):
            eta = data.get("eta")
            receipts.append(
                {
                    "task_id": data["id"],
                    "received": datetime.fromisoformat(record["ts"]),
                    "eta": datetime.fromisoformat(eta) if eta else None,
                }
            )
    return receipts


def test_it_declares_every_queue_as_a_durable_quorum_queue_on_its_own_vhost(stack: Stack) -> None:
    # given the platform running with an amqp:// broker URL
    health = stack.api.get("/healthz")
    assert health.status_code == 200 and health.json()["broker"] == "ok", health.text

    # then RabbitMQ holds every work queue as a durable quorum queue
    listed = rabbitmqctl("list_queues", "-p", vhost_of(stack), "name", "type", "durable")
    queues = {
        name: (kind, durable)
        for name, kind, durable in (line.split("\t") for line in listed.strip().splitlines()[1:])
    }
    assert {name: queues.get(name) for name in WORK_QUEUES} == {
        name: ("quorum", "true") for name in WORK_QUEUES
    }, listed
    # and the delay levels of Celery's native delayed delivery are there, as quorum queues
    delayed = {name: kind for name, (kind, _) in queues.items() if name.startswith("celery_delayed_")}
    assert len(delayed) == 28 and set(delayed.values()) == {"quorum"}, delayed
    # and each work queue is bound to the delayed-delivery exchange, whichever worker consumes it
    bindings = rabbitmqctl("list_bindings", "-p", vhost_of(stack), "source_name", "destination_name")
    routed_back = {
        line.split("\t")[1] for line in bindings.splitlines() if line.startswith("celery_delayed_delivery\t")
    }
    assert routed_back == set(WORK_QUEUES), bindings
    # and no worker failed to set up delayed delivery for any queue
    for worker in stack.processes.worker_specs:
        failures = [
            record["msg"]
            for record in json_records(stack.processes.worker(worker).log_text())
            if record.get("logger") == "celery.worker.consumer.delayed_delivery"
            and record.get("level") in ("WARNING", "ERROR", "CRITICAL")
        ]
        assert failures == [], f"worker {worker}: {failures}"


def test_it_runs_the_pipeline_through_rabbitmq_to_the_socket_and_the_push_provider(stack: Stack) -> None:
    # given a user with a push device and a socket open, and a topic with a second user
    assert stack.sandbox is not None
    user, token = stack.create_recipient("rabbit")
    other, _ = stack.create_recipient("rabbit-other")
    response = stack.api.post(
        f"/api/v1/recipients/{user}/devices/", json={"platform": "fcm", "token": f"fcm-{user}"}
    )
    assert response.status_code in (200, 201), response.text
    topic = f"rabbit-{uuid.uuid4().hex[:8]}"
    response = stack.api.post(f"/api/v1/topics/{topic}/subscribers/", json={"recipients": [user, other]})
    assert response.status_code == 200, response.text

    with InboxSocket.open(stack.ws_url, token=token) as socket:
        assert socket.frame(10) == {"type": "unread_count", "count": 0}

        # when events are accepted, one for the user and one for the topic
        first = stack.send(type=TYPE, recipients=[user], data={"n": 1})
        first_frame = socket.notifications(1, timeout=30)[0]
        second = stack.send(type=TYPE, topic=topic, data={"n": 2})
        second_frame = socket.notifications(1, timeout=30)[0]

    # then each reached the socket in order, through the fanout and inapp queues
    assert (first_frame["seq"], first_frame["item"]["event_id"]) == (1, first)
    assert (second_frame["seq"], second_frame["item"]["event_id"]) == (2, second)
    assert second_frame["item"]["title"] == "Order 2"
    # and the inbox items are stored, the topic's other member has hers
    items = stack.end_user(token).get("/api/v1/inbox/", params={"after": 0}).json()["results"]
    assert [(item["seq"], item["event_id"]) for item in items] == [(1, first), (2, second)]
    other_items = stack.end_user(stack.token(other)).get("/api/v1/inbox/").json()["results"]
    assert [item["event_id"] for item in other_items] == [second]

    # and each push went to the provider through the push queue and was accepted
    pushes = stack.sandbox.control.wait_for_messages(
        "fcm", 2, timeout=30, where=lambda record: f"fcm-{user}" in json.dumps(record)
    )
    assert len(pushes) == 2, pushes

    def push_statuses() -> list[str] | None:
        statuses = []
        for event_id in (first, second):
            rows = stack.api.get(f"/api/v1/events/{event_id}/deliveries/").json()["results"]
            statuses += [
                row["status"] for row in rows if (row["channel"], row["recipient"]) == ("push", user)
            ]
        return statuses if statuses == ["sent", "sent"] else None

    wait_until(push_statuses, 30, interval=0.2, message="the pushes were not recorded as sent")


def test_it_retries_a_failed_fanout_after_a_delay_held_by_rabbitmq(stack: Stack) -> None:
    # given a recipient, and the deliveries table locked against writes (reads go on), so
    # that a fan-out blocks when it stores the deliveries
    user, token = stack.create_recipient("retried")
    with stack.db() as locker, stack.db() as observer:
        locker.execute("BEGIN")
        locker.execute("LOCK TABLE notifications_delivery IN SHARE MODE")

        event_id = stack.send(type=TYPE, recipients=[user], data={"n": 3})
        (outbox_id,) = observer.execute(
            "SELECT id FROM notifications_outboxmessage WHERE event_id = %s", [event_id]
        ).fetchone()  # type: ignore[misc]

        # backends already cut: pg_terminate_backend only signals, so a cut backend can stay
        # listed as waiting for a moment and must not be counted as a second cut
        cut: set[int] = set()

        def blocked_fanouts() -> list[int]:
            rows = observer.execute(
                """SELECT pid FROM pg_stat_activity
                   WHERE datname = current_database() AND wait_event_type = 'Lock'
                     AND query ILIKE %s""",
                ["%insert into%notifications_delivery%"],
            ).fetchall()
            return [int(pid) for (pid,) in rows if int(pid) not in cut]

        def delayed_retry() -> dict[str, Any] | None:
            return next((r for r in fanout_receipts(stack, outbox_id) if r["eta"] is not None), None)

        # when the fan-out's database connection is cut while it waits (a transient
        # OperationalError, which the task retries with a jittered backoff of 0 to 2^n
        # seconds), until a retry with a countdown has come back from the broker
        cuts = 0
        while (retry := delayed_retry()) is None:
            assert cuts < 6, (
                f"no retry with a countdown after {cuts} cuts: {fanout_receipts(stack, outbox_id)}"
            )
            waiting = wait_until(blocked_fanouts, 40, interval=0.05, message="the fan-out never blocked")
            if (retry := delayed_retry()) is not None:
                break
            for pid in waiting:
                observer.execute("SELECT pg_terminate_backend(%s)", [pid])
                cut.add(pid)
            cuts += 1
        locker.execute("COMMIT")

    # then the retried fan-out completes and the user gets the item
    def delivered() -> bool:
        rows = stack.api.get(f"/api/v1/events/{event_id}/deliveries/").json()["results"]
        return any(row["channel"] == "inapp" and row["status"] == "delivered" for row in rows)

    wait_until(delivered, 30, interval=0.2, message="the retried fan-out did not deliver")
    items = stack.end_user(token).get("/api/v1/inbox/").json()["results"]
    assert [item["event_id"] for item in items] == [event_id]

    # and the retry was the same task, delivered again by RabbitMQ only once its countdown
    # was over: the worker did not receive it early and hold it (the broker's delay queues
    # did), which on quorum queues would block a worker process until the ETA
    receipts = fanout_receipts(stack, outbox_id)
    assert len({r["task_id"] for r in receipts}) == 1, receipts
    assert len(receipts) == cuts + 1 and receipts[-1] == retry, receipts
    assert retry["received"] >= retry["eta"] - timedelta(seconds=0.5), retry
    print(f"{cuts} cut(s); the retry came back {retry['received'] - receipts[-2]['received']} later")


def test_it_refuses_to_start_with_a_broker_url_it_does_not_know() -> None:
    # given a misspelt scheme, which would otherwise be taken for a Redis URL
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "CELERY_BROKER_URL": "ampq://guest@h/v",
    }

    # when the settings are loaded
    loaded = subprocess.run(
        [sys.executable, "-c", "import project.settings"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    # then start-up stops, naming the variable and the scheme
    assert loaded.returncode != 0
    assert "ImproperlyConfigured: CELERY_BROKER_URL must be a redis:// or amqp:// URL" in loaded.stderr
    assert "'ampq'" in loaded.stderr
