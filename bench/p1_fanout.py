"""P1: in-app fan-out of one event to N topic subscribers, every row persisted.

Recipients and subscriptions are seeded with SQL (``generate_series``) straight into the
benchmark's own database; the notification type is created over HTTP; the clock starts
just before the event is POSTed to the topic and stops when the database holds an inbox
item for every recipient and every delivery is ``delivered``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from psycopg import sql

from bench.stack import Progress, Stack, bench_stack
from harness.processes import DEFAULT_WORKERS, WorkerSpec

TYPE_KEY = "bench.p1"
TOPIC_KEY = "bench-p1"
TARGET_PER_SECOND = 20_000


@dataclass(frozen=True)
class Layout:
    """A worker layout and the settings a P1 run uses."""

    name: str
    workers: tuple[WorkerSpec, ...] = DEFAULT_WORKERS
    env: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        workers = "; ".join(f"{w.name} -c{w.concurrency} on {','.join(w.queues)}" for w in self.workers)
        settings = ", ".join(f"{k}={v}" for k, v in sorted(self.env.items()))
        return f"{workers}" + (f"; {settings}" if settings else "")


DEFAULT_LAYOUT = Layout("default (page 2000)", env={"FANOUT_PAGE_SIZE": "2000"})
LAYOUTS: tuple[Layout, ...] = (
    DEFAULT_LAYOUT,
    Layout("page 1000", env={"FANOUT_PAGE_SIZE": "1000"}),
    Layout("page 5000", env={"FANOUT_PAGE_SIZE": "5000"}),
    Layout(
        "inapp -c3, page 2000",
        workers=(
            WorkerSpec("fanout", ("fanout", "periodic", "default")),
            WorkerSpec("inapp", ("inapp",), concurrency=3),
        ),
        env={"FANOUT_PAGE_SIZE": "2000"},
    ),
)


@dataclass
class P1Result:
    layout: str
    settings: str
    recipients: int
    # Seconds from just before the POST.
    accepted_s: float
    first_delivery_s: float
    last_delivery_s: float
    fanout_completed_s: float
    first_inbox_s: float
    last_inbox_s: float
    observed_complete_s: float
    deliveries: int
    distinct_delivery_recipients: int
    delivered: int
    inbox_items: int
    distinct_inbox_recipients: int
    seed_s: float
    # The baseline of the same run: a bare COPY of the very rows the fan-out wrote (its
    # deliveries and inbox items) into empty tables with the same columns and indexes:
    # temporary tables (the target's baseline) and, beside it, ordinary WAL-logged ones.
    copy_s: float = 0.0
    copy_logged_s: float = 0.0

    @property
    def copy_per_second(self) -> float:
        return self.recipients / self.copy_s if self.copy_s > 0 else 0.0

    @property
    def ratio_to_copy(self) -> float:
        """P1's rate as a fraction of the bare COPY's (the target is at least 0.5)."""
        return self.per_second / self.copy_per_second if self.copy_per_second else 0.0

    @property
    def copy_logged_per_second(self) -> float:
        return self.recipients / self.copy_logged_s if self.copy_logged_s > 0 else 0.0

    @property
    def ratio_to_logged_copy(self) -> float:
        """P1's rate as a fraction of a bare COPY into WAL-logged tables (for reading only)."""
        return self.per_second / self.copy_logged_per_second if self.copy_logged_per_second else 0.0

    @property
    def per_second(self) -> float:
        """Recipients per second, POST to the last inbox row (its creation timestamp)."""
        return self.recipients / self.last_inbox_s if self.last_inbox_s > 0 else 0.0

    @property
    def per_second_observed(self) -> float:
        """Recipients per second, POST to the poll that saw every row committed."""
        return self.recipients / self.observed_complete_s if self.observed_complete_s > 0 else 0.0

    @property
    def fanout_s(self) -> float:
        """Fan-out only: first to last delivery row created."""
        return self.last_delivery_s - self.first_delivery_s

    @property
    def inapp_s(self) -> float:
        """In-app only: first to last inbox row created."""
        return self.last_inbox_s - self.first_inbox_s

    @property
    def all_persisted(self) -> bool:
        n = self.recipients
        return (
            self.deliveries == n
            and self.distinct_delivery_recipients == n
            and self.delivered == n
            and self.inbox_items == n
            and self.distinct_inbox_recipients == n
        )

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            per_second=self.per_second,
            per_second_observed=self.per_second_observed,
            fanout_s=self.fanout_s,
            inapp_s=self.inapp_s,
            all_persisted=self.all_persisted,
            copy_per_second=self.copy_per_second,
            ratio_to_copy=self.ratio_to_copy,
            copy_logged_per_second=self.copy_logged_per_second,
            ratio_to_logged_copy=self.ratio_to_logged_copy,
        )
        return data

    def summary(self) -> str:
        return (
            f"P1 [{self.layout}] {self.recipients:,} recipients: {self.per_second:,.0f} recipients/s end to end "
            f"(POST -> last inbox row {self.last_inbox_s:.2f}s; all committed by {self.observed_complete_s:.2f}s "
            f"= {self.per_second_observed:,.0f}/s); fan-out {self.fanout_s:.2f}s "
            f"(event completed at {self.fanout_completed_s:.2f}s), in-app {self.inapp_s:.2f}s; "
            f"persisted: {'yes' if self.all_persisted else 'NO'}; bare COPY of the same rows "
            f"{self.copy_per_second:,.0f}/s (P1/COPY {self.ratio_to_copy:.2f}), into logged tables "
            f"{self.copy_logged_per_second:,.0f}/s (P1/logged COPY {self.ratio_to_logged_copy:.2f})"
        )


# A single COPY of 100,000 rows varied by a third from one run to the next on the same
# machine; the median of a few, each into fresh tables, is the steadier baseline.
COPY_REPEATS = 3


def _copy_once(connection: Any, blocks: dict[str, bytes], *, logged: bool) -> float:
    """Seconds to COPY each table's rows into a fresh copy of it (``connection`` commits
    each statement: autocommit)."""
    took = 0.0
    for table, data in blocks.items():
        copy_of = f"p1_copy_{table}"
        kind = "" if logged else "TEMP"
        connection.execute(f"CREATE {kind} TABLE {copy_of} (LIKE {table} INCLUDING ALL)")
        started = time.perf_counter()
        with connection.cursor() as cursor, cursor.copy(f"COPY {copy_of} FROM STDIN") as copy:
            copy.write(data)
        took += time.perf_counter() - started
        connection.execute(f"DROP TABLE {copy_of}")
    return took


def copy_baseline(connection: Any, event_id: str, *, logged: bool = False) -> float:
    """Seconds a bare COPY takes to write the event's delivery and inbox rows again, into
    empty tables LIKE the real ones (columns, defaults, indexes, constraints), each COPY
    committed: temporary tables (no WAL; the baseline the target is set against) or, with
    ``logged``, ordinary ones, WAL-logged as the real tables are (what writing the same rows
    durably costs). The median of COPY_REPEATS runs."""
    blocks: dict[str, bytes] = {}
    for table in ("notifications_delivery", "notifications_inboxitem"):
        data = bytearray()
        select = sql.SQL("COPY (SELECT * FROM {} WHERE event_id = {}) TO STDOUT").format(
            sql.Identifier(table), sql.Literal(event_id)
        )
        with connection.cursor() as cursor, cursor.copy(select) as copy:
            for block in copy:
                data += block
        blocks[table] = bytes(data)
    return statistics.median(_copy_once(connection, blocks, logged=logged) for _ in range(COPY_REPEATS))


def seed(stack: Stack, recipients: int) -> float:
    """Insert ``recipients`` recipients subscribed to TOPIC_KEY; returns the seconds taken."""
    started = time.monotonic()
    with stack.db_connect() as connection:
        connection.execute(
            """INSERT INTO notifications_recipient
                   (external_id, name, email, phone, locale, timezone, created_at, updated_at)
               SELECT 'p1-' || g, '', '', '', 'en', 'UTC', now(), now()
               FROM generate_series(1, %s) AS g""",
            [recipients],
        )
        topic_id = connection.execute(
            "INSERT INTO notifications_topic (key, name, created_at) VALUES (%s, 'P1', now()) RETURNING id",
            [TOPIC_KEY],
        ).fetchone()[0]
        connection.execute(
            """INSERT INTO notifications_subscription (topic_id, recipient_id, created_at)
               SELECT %s, id, now() FROM notifications_recipient WHERE external_id LIKE 'p1-%%'""",
            [topic_id],
        )
        connection.execute("ANALYZE")
    return time.monotonic() - started


def create_type(stack: Stack, key: str = TYPE_KEY) -> None:
    with stack.client() as client:
        response = client.post(
            "/api/v1/notification-types/",
            json={
                "key": key,
                "category": "transactional",
                "channels": ["inapp"],
                "templates": {
                    "inapp": {
                        "title": "Benchmark {{ data.n }}",
                        "body": "Event {{ data.n }} for everyone",
                        "url": "/bench/{{ data.n }}",
                    }
                },
            },
        )
        if response.status_code != 201:
            raise RuntimeError(f"creating the type failed: {response.status_code} {response.text}")


# The fan-out is done and no in-app batch is open: every inbox row is committed (a batch
# is closed in the transaction that writes its items). Cheap at any revision's schema.
SETTLED = """SELECT e.status = 'completed'
                    AND NOT EXISTS (SELECT 1 FROM notifications_dispatchbatch b WHERE b.done_at IS NULL)
             FROM notifications_event e WHERE e.id = %s"""
COUNT_EVERY_SECONDS = 1.0


def _epoch(value: datetime | None) -> float:
    return value.timestamp() if value is not None else 0.0


def run_on_stack(
    stack: Stack, *, recipients: int, layout: Layout, timeout: float = 1800.0, progress: bool = True
) -> P1Result:
    seed_s = seed(stack, recipients)
    create_type(stack)
    with stack.client() as client:
        posted_at = time.time()
        response = client.post(
            "/api/v1/events/", json={"type": TYPE_KEY, "topic": TOPIC_KEY, "data": {"n": 1}}
        )
        accepted_at = time.time()
    if response.status_code != 202:
        raise RuntimeError(f"POST /api/v1/events/ answered {response.status_code}: {response.text}")
    event_id = response.json()["id"]

    bar = Progress(f"P1 {layout.name}: inbox rows", recipients, enabled=progress)
    deadline = time.monotonic() + timeout
    inbox, counted_at = 0, 0.0
    with stack.db_connect() as connection:
        while True:
            # Counting the event's inbox rows scans the table (no index on the event), and
            # ten of those a second would compete for the CPU of the run being measured. So
            # the cheap question is asked often (is the fan-out done, with no in-app batch
            # left open?) and the rows are counted once a second for the bar, and when it is.
            settled = connection.execute(SETTLED, [event_id]).fetchone()[0]
            if settled or time.monotonic() - counted_at >= COUNT_EVERY_SECONDS:
                inbox = connection.execute(
                    "SELECT count(*) FROM notifications_inboxitem WHERE event_id = %s", [event_id]
                ).fetchone()[0]
                counted_at = time.monotonic()
                bar.update(inbox)
                if inbox >= recipients:
                    delivered = connection.execute(
                        "SELECT count(*) FROM notifications_delivery WHERE event_id = %s AND status = 'delivered'",
                        [event_id],
                    ).fetchone()[0]
                    if delivered >= recipients:
                        observed_at = time.time()
                        break
            if time.monotonic() > deadline:
                bar.finish(inbox)
                raise TimeoutError(
                    f"P1: {inbox:,} of {recipients:,} inbox rows after {timeout:.0f}s\n"
                    f"{stack.platform.log_tails(30)}"
                )
            stack.check_alive()
            time.sleep(0.05)
        bar.finish(inbox)

        d_total, d_distinct, d_delivered, d_first, d_last = connection.execute(
            """SELECT count(*), count(DISTINCT recipient_id), count(*) FILTER (WHERE status = 'delivered'),
                      min(created_at), max(created_at)
               FROM notifications_delivery WHERE event_id = %s""",
            [event_id],
        ).fetchone()
        i_total, i_distinct, i_first, i_last = connection.execute(
            """SELECT count(*), count(DISTINCT recipient_id), min(created_at), max(created_at)
               FROM notifications_inboxitem WHERE event_id = %s""",
            [event_id],
        ).fetchone()
        completed_at = connection.execute(
            "SELECT completed_at FROM notifications_event WHERE id = %s", [event_id]
        ).fetchone()[0]
        copy_s = copy_baseline(connection, event_id)
        copy_logged_s = copy_baseline(connection, event_id, logged=True)

    return P1Result(
        layout=layout.name,
        settings=layout.describe(),
        recipients=recipients,
        accepted_s=accepted_at - posted_at,
        first_delivery_s=_epoch(d_first) - posted_at,
        last_delivery_s=_epoch(d_last) - posted_at,
        fanout_completed_s=(_epoch(completed_at) - posted_at) if completed_at else float("nan"),
        first_inbox_s=_epoch(i_first) - posted_at,
        last_inbox_s=_epoch(i_last) - posted_at,
        observed_complete_s=observed_at - posted_at,
        deliveries=d_total,
        distinct_delivery_recipients=d_distinct,
        delivered=d_delivered,
        inbox_items=i_total,
        distinct_inbox_recipients=i_distinct,
        seed_s=seed_s,
        copy_s=copy_s,
        copy_logged_s=copy_logged_s,
    )


def run(
    *,
    template: str | None,
    recipients: int = 100_000,
    layout: Layout = DEFAULT_LAYOUT,
    timeout: float = 1800.0,
    progress: bool = True,
) -> P1Result:
    """One P1 run on a fresh stack (uvicorn web, the layout's workers, one beat)."""
    with bench_stack(template=template, workers=layout.workers, env=layout.env, label="p1") as stack:
        return run_on_stack(stack, recipients=recipients, layout=layout, timeout=timeout, progress=progress)


def run_layouts(
    *, template: str | None, recipients: int, layouts: Sequence[Layout] = LAYOUTS, progress: bool = True
) -> list[P1Result]:
    results = []
    for layout in layouts:
        result = run(template=template, recipients=recipients, layout=layout, progress=progress)
        print(result.summary(), flush=True)
        results.append(result)
    return results


def best(results: Sequence[P1Result]) -> P1Result:
    """The fastest run that persisted everything (else the fastest at all)."""
    complete = [r for r in results if r.all_persisted] or list(results)
    return max(complete, key=lambda r: r.per_second)
