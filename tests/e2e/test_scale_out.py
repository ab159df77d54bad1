"""Past one machine, on one machine (docs/architecture.md, "Past one machine"): two ASGI
web processes and two Celery fan-out workers of the same queues, with the in-app worker and
one beat, on one private Redis and one temporary database.

A socket lives on one web process; frames reach it through the Redis channel layer,
whichever process accepted the event and whichever worker wrote the item, and a client
that comes back on any web process resumes from the database by seq.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from harness.processes import PlatformProcesses, WorkerSpec, wait_until
from tests.e2e.conftest import Stack, another_web, platform_stack
from tests.e2e.inbox_client import InboxSocket

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e-scale-out")]

TYPE = "e2e.scale.posted"
FANOUT_TASK = "notifications.tasks.event_fanout_task"
FANOUT_QUEUES = ("fanout", "periodic", "default")
FANOUT_WORKERS = ("fanout-a", "fanout-b")
# One pool process each: a worker busy with a page cannot take the next one, so the pages
# of one event go to both workers in turn instead of queueing behind each other.
WORKERS = (
    *(WorkerSpec(name, FANOUT_QUEUES, concurrency=1) for name in FANOUT_WORKERS),
    WorkerSpec("inapp", ("inapp",), concurrency=1),
)
# Two recipients per page, and every page its own task (the fan-out re-enqueues itself after
# each page), so one event's pages are spread over both fan-out workers.
SCALE_ENV = {
    "FANOUT_PAGE_SIZE": "2",
    "FANOUT_SLICE_SECONDS": "0",
    # JSON log lines: a worker's record of a task it received carries the task's arguments.
    "LOG_FORMAT": "json",
}


@pytest.fixture(scope="module")
def platform() -> Iterator[tuple[Stack, PlatformProcesses]]:
    """The stack (web process A, both fan-out workers, in-app worker, beat) and web
    process B."""
    with platform_stack(SCALE_ENV, workers=WORKERS) as stack, another_web(stack) as web_b:
        stack.create_type(TYPE)
        yield stack, web_b


# --- reading what the processes did ---------------------------------------------------------------


class SseStream:
    """An open ``/sse/inbox/`` response read one server-sent event at a time."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.iter_lines()

    def next_event(self, timeout: float) -> dict[str, Any]:
        """The next event as {"event": ..., "id": ..., "data": <parsed JSON>}; keep-alive
        comments and a bare ``retry:`` are skipped. AssertionError when none is complete
        within ``timeout``."""
        deadline = time.monotonic() + timeout
        current: dict[str, Any] = {}
        for line in self._lines:
            if line == "" and "event" in current:
                return current
            if line == "":
                current = {}
            if line and not line.startswith(":"):
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                current[name] = json.loads(value) if name == "data" else value
            if time.monotonic() > deadline:
                break
        raise AssertionError(f"no complete server-sent event within {timeout}s (partial: {current})")

    def notifications(self, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        """The next ``count`` notification events (other events are skipped)."""
        deadline = time.monotonic() + timeout
        found: list[dict[str, Any]] = []
        while len(found) < count:
            event = self.next_event(max(0.1, deadline - time.monotonic()))
            if event.get("event") == "notification":
                found.append(event)
        return found


@contextlib.contextmanager
def sse_stream(web_url: str, token: str, *, last_event_id: int | None = None) -> Iterator[SseStream]:
    """The SSE inbox of the user ``token`` names, on the web process at ``web_url``."""
    headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
    timeout = httpx.Timeout(10.0, read=20.0)
    with httpx.Client(base_url=web_url, timeout=timeout) as client:
        with client.stream("GET", "/sse/inbox/", params={"token": token}, headers=headers) as response:
            assert response.status_code == 200, response.read()
            yield SseStream(response)


def fanout_tasks(stack: Stack) -> dict[int, list[tuple[str, str]]]:
    """For each outbox row, the fan-out tasks the fan-out workers received, as (time,
    worker) in the order received.

    Read from each worker's main process, which logs every task it takes from the broker
    with its arguments. Each task of a fan-out stores one page and enqueues the next one
    (FANOUT_SLICE_SECONDS=0), so a fan-out's tasks are received in page order."""
    tasks: dict[int, list[tuple[str, str]]] = {}
    for worker in FANOUT_WORKERS:
        for line in stack.processes.worker(worker).log_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                data = record.get("data") if isinstance(record, dict) else None
                if isinstance(data, dict) and data.get("name") == FANOUT_TASK and "received" in record["msg"]:
                    outbox_id = int(str(data["args"]).strip("(,)"))
                    tasks.setdefault(outbox_id, []).append((str(record["ts"]), worker))
    return {outbox_id: sorted(received) for outbox_id, received in tasks.items()}


def outbox_ids(stack: Stack, event_ids: list[str]) -> dict[str, int]:
    with stack.db() as db:
        rows = db.execute(
            "SELECT event_id::text, id FROM notifications_outboxmessage WHERE event_id::text = ANY(%s)",
            [event_ids],
        ).fetchall()
    return {str(event_id): int(outbox_id) for event_id, outbox_id in rows}


def inbox_rows(stack: Stack, external_id: str, *, after: int) -> list[tuple[int, str]]:
    """(seq, event id) of the user's inbox items after ``after``, in seq order, as stored."""
    with stack.db() as db:
        rows = db.execute(
            """SELECT i.seq, i.event_id::text FROM notifications_inboxitem i
               JOIN notifications_recipient r ON r.id = i.recipient_id
               WHERE r.external_id = %s AND i.seq > %s ORDER BY i.seq""",
            [external_id, after],
        ).fetchall()
    return [(int(seq), str(event_id)) for seq, event_id in rows]


# --- tests -----------------------------------------------------------------------------------------


def test_it_pushes_an_event_accepted_by_one_web_process_to_sockets_held_by_the_other(
    platform: tuple[Stack, PlatformProcesses],
) -> None:
    stack, web_b = platform
    assert stack.web_url != web_b.web_url
    user, token = stack.create_recipient("crossing")

    # given a websocket and an SSE stream of the user, both on web process B
    with InboxSocket.open(web_b.ws_url, token=token) as socket, sse_stream(web_b.web_url, token) as stream:
        assert socket.frame(10) == {"type": "unread_count", "count": 0}
        assert stream.next_event(10)["event"] == "unread_count"

        # when an event for the user is posted to web process A
        event_id = stack.send(type=TYPE, recipients=[user], data={"n": 1})

        # then the item arrives on both, with seq 1
        frame = socket.notifications(1, timeout=20)[0]
        pushed = stream.notifications(1, timeout=20)[0]
    assert (frame["seq"], frame["item"]["event_id"]) == (1, event_id)
    assert (pushed["id"], pushed["data"]["item"]["event_id"]) == ("1", event_id)

    # and the other way round: accepted by B, pushed to a socket held by A
    with InboxSocket.open(stack.ws_url, token=token) as socket:
        socket.frame_of_type("unread_count")
        with httpx.Client(base_url=web_b.web_url, timeout=15) as api_b:
            response = api_b.post(
                "/api/v1/events/",
                json={"type": TYPE, "recipients": [user], "data": {"n": 2}},
                headers={"Authorization": f"Api-Key {stack.api_key}"},
            )
        assert response.status_code == 202, response.text
        frame = socket.notifications(1, timeout=20)[0]
    assert (frame["seq"], frame["item"]["event_id"]) == (2, response.json()["id"])


def test_it_resumes_on_either_web_process_exactly_what_both_fanout_workers_wrote_meanwhile(
    platform: tuple[Stack, PlatformProcesses],
) -> None:
    stack, web_b = platform
    # given a topic whose fan-out takes three pages, three tasks (2 + 2 + 1 recipients), the
    # user last: the user's item is written by the task of the last page
    crowd = [stack.create_recipient("crowd")[0] for _ in range(4)]
    user, token = stack.create_recipient("away")
    topic = f"scale-{uuid.uuid4().hex[:8]}"
    response = stack.api.post(f"/api/v1/topics/{topic}/subscribers/", json={"recipients": [*crowd, user]})
    assert response.status_code == 200, response.text

    # and a socket on web process B that got the first item live
    with InboxSocket.open(web_b.ws_url, token=token) as socket:
        socket.frame_of_type("unread_count")
        stack.send(type=TYPE, topic=topic, data={"n": 0})
        last_seen = socket.notifications(1, timeout=20)[0]["seq"]
    assert last_seen == 1

    # when, while it is away, events are posted to web process A one by one until each
    # fan-out worker has written at least two of the user's items
    missed: list[str] = []

    def item_writers() -> dict[str, str]:
        """Missed event -> the worker whose task stored its last page (the user's item)."""
        tasks = fanout_tasks(stack)
        writers = {}
        for event_id, outbox_id in outbox_ids(stack, missed).items():
            received = tasks.get(outbox_id, [])
            # One task per page and no other: then the last one stored the user's page.
            assert len(received) <= 3, f"event {event_id}: more fan-out tasks than pages: {received}"
            if len(received) == 3:
                writers[event_id] = received[-1][1]
        return writers

    def written_by(worker: str) -> int:
        return list(item_writers().values()).count(worker)

    while min(written_by(worker) for worker in FANOUT_WORKERS) < 2:
        assert len(missed) < 12, f"a fan-out worker wrote none of the items: {item_writers()}"
        missed.append(stack.send(type=TYPE, topic=topic, data={"n": len(missed) + 1}))
        wait_until(
            lambda: len(inbox_rows(stack, user, after=last_seen)) == len(missed),
            20,
            interval=0.1,
            message=f"the item of {missed[-1]} was not written",
        )
    # and then a burst, fanned out concurrently by both workers
    missed += [stack.send(type=TYPE, topic=topic, data={"n": 100 + n}) for n in range(4)]
    wait_until(
        lambda: len(inbox_rows(stack, user, after=last_seen)) >= len(missed),
        30,
        interval=0.1,
        message="the missed items were not all written",
    )

    # then both workers did the work: each wrote some of the user's items, and the pages
    # of every fan-out were split between them in turn
    def all_writers() -> dict[str, str] | None:
        found = item_writers()
        return found if len(found) == len(missed) else None

    writers = wait_until(all_writers, 10, message="not every fan-out task is in the workers' logs")
    assert set(writers.values()) == set(FANOUT_WORKERS), writers
    tasks = fanout_tasks(stack)
    split = [
        outbox_id
        for outbox_id in outbox_ids(stack, missed).values()
        if {worker for _, worker in tasks[outbox_id]} == set(FANOUT_WORKERS)
    ]
    assert split, f"no fan-out had pages on both workers: {tasks}"
    print(
        f"{len(missed)} missed items; written by {sorted(Counter(writers.values()).items())}; "
        f"{len(split)} of the fan-outs had pages on both workers"
    )

    # and the database holds the items after last_seen: one per missed event, seq gap-free
    stored = inbox_rows(stack, user, after=last_seen)
    assert [seq for seq, _ in stored] == list(range(last_seen + 1, last_seen + len(missed) + 1))
    assert sorted(event for _, event in stored) == sorted(missed)

    # when the client comes back on web process A and resumes after the last seq it saw
    with InboxSocket.open(stack.ws_url, token=token) as socket:
        socket.frame_of_type("unread_count")
        socket.send({"type": "resume", "after": last_seen})
        frames = socket.notifications(len(missed), timeout=20)
        extra = socket.notifications_within(1.5)

    # then it gets every missed item once, in seq order, as stored
    assert [(f["seq"], f["item"]["event_id"]) for f in frames] == stored
    assert [f["item"]["seq"] for f in frames] == [seq for seq, _ in stored]
    assert extra == [], "duplicates after the resume"

    # and an SSE stream on web process B resuming from the same seq gets the same items
    with sse_stream(web_b.web_url, token, last_event_id=last_seen) as stream:
        events = stream.notifications(len(missed), timeout=20)
    assert [(int(e["id"]), e["data"]["item"]["event_id"]) for e in events] == stored


def _socket_fds(pid: int) -> int:
    fd_dir = f"/proc/{pid}/fd"
    count = 0
    for name in os.listdir(fd_dir):
        with contextlib.suppress(OSError):
            count += os.readlink(f"{fd_dir}/{name}").startswith("socket:")
    return count


def test_web_processes_sharing_one_port_each_hold_sockets_and_every_socket_gets_its_frame(
    platform: tuple[Stack, PlatformProcesses],
) -> None:
    # given one web server of two processes sharing a port (make run's default), and
    # twelve users who open their inbox on that port
    stack, _ = platform
    with another_web(stack, web_processes=2) as shared:
        pids = [shared.processes[name].pid for name in shared.web_names]
        assert len(pids) == 2 and all(pids)
        before = {pid: _socket_fds(pid) for pid in pids if pid}
        users = [stack.create_recipient("shared") for _ in range(12)]
        sockets = [InboxSocket.open(shared.ws_url, token=token) for _, token in users]
        try:
            for socket in sockets:
                assert socket.frame(10) == {"type": "unread_count", "count": 0}
            # then the kernel spread the connections: each process holds some of them
            grown = {pid: _socket_fds(pid) - before[pid] for pid in before}
            assert all(count > 0 for count in grown.values()), grown

            # and events posted through the shared port reach every socket, whichever
            # process accepted the event and whichever holds the socket
            with httpx.Client(
                base_url=shared.web_url, headers={"Authorization": f"Api-Key {stack.api_key}"}
            ) as api:
                sent = []
                for user, _ in users:
                    response = api.post(
                        "/api/v1/events/", json={"type": TYPE, "recipients": [user], "data": {}}
                    )
                    assert response.status_code == 202, response.text
                    sent.append(response.json()["id"])
            received = [socket.notifications(1, timeout=30)[0]["item"]["event_id"] for socket in sockets]
            assert received == sent
        finally:
            for socket in sockets:
                socket.close()
