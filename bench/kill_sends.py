"""kill -9 of the send worker during 10,000 pushes: nothing lost, duplicates counted.

N offline recipients with one FCM device each are subscribed to a topic; one push event
is POSTed to it. When the sandbox has accepted ``kill_after`` FCM requests, the send
worker's whole process group (the Celery parent and its pool processes) is killed with
SIGKILL and started again; the scenario ends when every delivery of the event is
settled (none pending or retrying).

Where duplicates come from: a sender claims a chunk of SEND_CHUNK deliveries with a
compare-and-set that commits before any provider call, calls the provider for each, and
records the outcomes in one transaction after the chunk's calls. A kill between a
provider's acceptance and that commit leaves deliveries claimed but not recorded; when
the claim expires (SEND_CLAIM_SECONDS) the dispatch sweep sends them again, and the
sandbox sees their keys twice. So duplicates <= chunks in flight (one per pool process)
x SEND_CHUNK, and nothing is lost.

``run_kill_scenario`` works on any running stack with a sandbox (the benchmark's, or an
end-to-end test's); ``run`` starts one with short leases so recovery is quick.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import httpx
import psycopg

from bench.provider_sends import (
    IN_PROGRESS,
    UNPACED_ENV,
    create_type,
    delivery_statuses,
    post_event,
    seed_audience,
)
from bench.stack import Progress, bench_stack
from harness.processes import PlatformProcesses, TemporaryDatabase
from harness.sandbox import SandboxProcess

SEND_WORKER = "send"
# Short leases: a dead sender's claims expire after 10 s, lost dispatch batches are swept
# again after 5 s, and the sweep runs every second.
KILL_ENV: dict[str, str] = {
    **UNPACED_ENV,
    "DELIVERY_STALE_SECONDS": "5",
    "SEND_CLAIM_SECONDS": "10",
    "SWEEP_INTERVAL_SECONDS": "1",
}
DEFAULT_SEND_CHUNK = 50


class SandboxStack(Protocol):
    """What the scenario needs of a stack: the bench ``Stack`` and the end-to-end tests'
    ``Stack`` both have it."""

    @property
    def web_url(self) -> str: ...

    @property
    def api_key(self) -> str: ...

    @property
    def database(self) -> TemporaryDatabase: ...

    @property
    def processes(self) -> PlatformProcesses: ...

    @property
    def sandbox(self) -> SandboxProcess | None: ...


@dataclass
class KillResult:
    sends: int
    kill_after: int
    accepted_at_kill: int  # FCM requests the sandbox had accepted right after the kill
    claimed_at_kill: int  # deliveries claimed by the dead sender and not recorded
    deliveries: int
    sent: int  # deliveries that ended sent (or delivered)
    lost: int  # recipients whose push the sandbox never accepted
    unique_keys: int  # distinct idempotency keys the sandbox accepted
    duplicates: int  # acceptances of a key it had already accepted
    requests: int  # FCM requests it received
    duplicate_bound: int  # pool processes x SEND_CHUNK: chunks that can be in flight
    kill_s: float  # POST -> kill
    restart_s: float  # kill -> restarted worker ready
    orphans_settled_s: float  # kill -> every delivery the dead sender had claimed is settled
    recover_s: float  # restarted worker ready -> every delivery settled
    total_s: float  # POST -> every delivery settled
    statuses: dict[str, int]
    settings: str

    @property
    def ok(self) -> bool:
        """Every push accepted, every delivery sent, duplicates within the bound."""
        return (
            self.lost == 0
            and self.sent == self.sends
            and self.unique_keys == self.sends
            and self.duplicates <= self.duplicate_bound
        )

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data

    def summary(self) -> str:
        return (
            f"kill -9 during {self.sends:,} sends (killed at {self.accepted_at_kill:,} accepted, "
            f"{self.claimed_at_kill} claimed in flight): sent {self.sent:,}, lost {self.lost}, "
            f"duplicates {self.duplicates} (bound {self.duplicate_bound}), unique keys {self.unique_keys:,}; "
            f"restart {self.restart_s:.1f}s, the dead sender's deliveries settled {self.orphans_settled_s:.1f}s "
            f"after the kill, all settled {self.recover_s:.1f}s after restart "
            f"({self.total_s:.1f}s from the POST)"
        )


def _live_claims(database_url: str, event_id: str) -> list[int]:
    """Ids of the event's deliveries that a sender has claimed and not recorded yet."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        rows = connection.execute(
            """SELECT id FROM notifications_delivery
               WHERE event_id = %s AND status = ANY(%s) AND claimed_until > now()""",
            [event_id, list(IN_PROGRESS)],
        ).fetchall()
    return [int(row[0]) for row in rows]


def _unsettled(database_url: str, delivery_ids: list[int]) -> int:
    with psycopg.connect(database_url, autocommit=True) as connection:
        row = connection.execute(
            "SELECT count(*) FROM notifications_delivery WHERE id = ANY(%s) AND status = ANY(%s)",
            [delivery_ids, list(IN_PROGRESS)],
        ).fetchone()
    return int(row[0]) if row else 0


def _check_alive(stack: SandboxStack) -> None:
    exited = stack.processes.unexpected_exits()
    if exited:
        raise RuntimeError(f"processes exited during the scenario: {exited}\n{stack.processes.log_tails(30)}")


def run_kill_scenario(
    stack: SandboxStack,
    *,
    sends: int = 10_000,
    kill_after: int = 2_500,
    timeout: float = 600.0,
    progress: bool = False,
) -> KillResult:
    """Seed ``sends`` recipients with one FCM device each on a new topic, POST one push
    event, kill -9 the send worker once the sandbox accepted ``kill_after`` pushes, restart
    it, and wait until every delivery is settled. Resets the sandbox first. The stack
    should run with short leases (KILL_ENV) or recovery waits for the default ones."""
    sandbox = stack.sandbox
    if sandbox is None:
        raise ValueError("the stack has no provider sandbox")
    if not 0 < kill_after < sends:
        raise ValueError(f"kill_after must be between 0 and sends ({sends}), not {kill_after}")
    control = sandbox.control
    database_url = stack.database.url
    tag = uuid.uuid4().hex[:6]
    prefix = f"kill{tag}-"
    type_key = f"bench.kill.{tag}"
    (topic,) = seed_audience(database_url, prefix=prefix, count=sends, device="fcm")
    with httpx.Client(
        base_url=stack.web_url, headers={"Authorization": f"Api-Key {stack.api_key}"}, timeout=30.0
    ) as client:
        create_type(client, key=type_key, channel="push")
        control.reset()
        posted_at = time.monotonic()
        event_id = post_event(client, {"type": type_key, "topic": topic, "data": {"n": 1}})

    bar = Progress("kill -9: pushes accepted before the kill", kill_after, enabled=progress)
    deadline = time.monotonic() + timeout
    while True:
        accepted = int(control.stats()["providers"]["fcm"]["accepted"])
        bar.update(accepted)
        if accepted >= kill_after:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"only {accepted:,} pushes accepted after {timeout:.0f}s\n{stack.processes.log_tails(30)}"
            )
        _check_alive(stack)
        time.sleep(0.01)
    stack.processes.kill_worker(SEND_WORKER)
    killed_at = time.monotonic()
    bar.finish(accepted)
    accepted_at_kill = int(control.stats()["providers"]["fcm"]["accepted"])
    orphans = _live_claims(database_url, event_id)
    orphans_settled_at: float | None = None if orphans else killed_at

    stack.processes.restart_worker(SEND_WORKER)
    ready_at = time.monotonic()

    settled_bar = Progress("kill -9: deliveries settled after the restart", sends, enabled=progress)
    while True:
        statuses = delivery_statuses(database_url, [event_id])
        total = sum(statuses.values())
        settled = total - sum(statuses[s] for s in IN_PROGRESS)
        settled_bar.update(settled)
        if orphans_settled_at is None and not _unsettled(database_url, orphans):
            orphans_settled_at = time.monotonic()
        if total >= sends and settled == total:
            settled_at = time.monotonic()
            orphans_settled_at = orphans_settled_at or settled_at
            break
        if time.monotonic() > deadline:
            settled_bar.finish(settled)
            raise TimeoutError(
                f"{settled:,} of {sends:,} deliveries settled after {timeout:.0f}s ({dict(statuses)})\n"
                f"{stack.processes.log_tails(30)}"
            )
        _check_alive(stack)
        time.sleep(0.1)
    settled_bar.finish(settled)

    counters = control.stats()["providers"]["fcm"]
    spec = stack.processes.worker_specs[SEND_WORKER]
    chunk = int(stack.processes.env.get("SEND_CHUNK") or DEFAULT_SEND_CHUNK)
    settings = ", ".join(
        f"{name}={stack.processes.env[name]}"
        for name in ("DELIVERY_STALE_SECONDS", "SEND_CLAIM_SECONDS", "SWEEP_INTERVAL_SECONDS", "SEND_CHUNK")
        if name in stack.processes.env
    )
    unique_keys = int(counters["keys"])
    return KillResult(
        sends=sends,
        kill_after=kill_after,
        accepted_at_kill=accepted_at_kill,
        claimed_at_kill=len(orphans),
        deliveries=sum(statuses.values()),
        sent=statuses["sent"] + statuses["delivered"],
        lost=sends - unique_keys,
        unique_keys=unique_keys,
        duplicates=int(counters["duplicates"]),
        requests=int(counters["requests"]),
        duplicate_bound=spec.concurrency * chunk,
        kill_s=killed_at - posted_at,
        restart_s=ready_at - killed_at,
        orphans_settled_s=orphans_settled_at - killed_at,
        recover_s=settled_at - ready_at,
        total_s=settled_at - posted_at,
        statuses=dict(statuses),
        settings=f"{SEND_WORKER} -c{spec.concurrency}" + (f"; {settings}" if settings else ""),
    )


def run(
    *,
    template: str | None,
    sends: int = 10_000,
    kill_after: int = 2_500,
    timeout: float = 600.0,
    progress: bool = True,
) -> KillResult:
    """The scenario on a fresh stack with the provider sandbox and short leases (KILL_ENV)."""
    with bench_stack(template=template, env=KILL_ENV, label="kill-sends", sandbox=True) as stack:
        result = run_kill_scenario(
            stack, sends=sends, kill_after=kill_after, timeout=timeout, progress=progress
        )
        stack.check_alive()
        return result
