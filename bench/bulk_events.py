"""Bulk ingest: events accepted and delivered in-app through POST /api/v1/events/bulk/.

R recipients, each event to one of them (round-robin), sent as bulk requests of ``batch``
events with ``concurrency`` requests in flight. Two rates are measured from the first
request: accepted (every request answered) and delivered (every event's inbox item stored).
The baseline, in the same run and on the same database: a bare ``COPY`` of the same number
of rows into a table shaped like the inbox items (its defaults and indexes too), nothing
of ours in the way.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from bench.provider_sends import create_type
from bench.stack import Progress, Stack, bench_stack, cpu_sample, cpu_seconds, wait_for

TYPE_KEY = "bench.bulk"
TARGET_PER_SECOND = 5000.0


# Cheap at any revision's schema: the unprocessed outbox rows have a partial index.
SETTLED = """SELECT NOT EXISTS (SELECT 1 FROM notifications_outboxmessage WHERE processed_at IS NULL)
                    AND NOT EXISTS (SELECT 1 FROM notifications_dispatchbatch WHERE done_at IS NULL)"""
COUNT_EVERY_SECONDS = 1.0


@dataclass
class BulkResult:
    events: int
    batch: int
    concurrency: int
    recipients: int
    accepted: int
    refused: int
    accept_seconds: float
    deliver_seconds: float
    accepted_per_second: float
    delivered_per_second: float
    inbox_items: int
    copy_rows_per_second: float
    ratio_to_copy: float
    cpu_seconds: dict[str, float]

    @property
    def meets_target(self) -> bool:
        return (
            self.refused == 0
            and self.inbox_items == self.events
            and self.delivered_per_second >= TARGET_PER_SECOND
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "meets_target": self.meets_target}

    def summary(self) -> str:
        return (
            f"Bulk events: {self.events:,} in requests of {self.batch:,} ({self.concurrency} in flight): "
            f"accepted {self.accepted_per_second:,.0f}/s, delivered in-app {self.delivered_per_second:,.0f}/s "
            f"({self.inbox_items:,} inbox items, {self.refused} refused); bare COPY of as many rows "
            f"{self.copy_rows_per_second:,.0f}/s (delivered/COPY {self.ratio_to_copy:.2f})"
        )


def prepare(stack: Stack, recipients: int) -> list[str]:
    with stack.client() as client:
        create_type(
            client,
            key=TYPE_KEY,
            channel="inapp",
            template={"title": "Bulk {{ data.i }}", "body": "bulk probe", "url": ""},
        )
        ids = [f"bulk-{index}" for index in range(recipients)]
        for start in range(0, recipients, 1000):
            response = client.post(
                "/api/v1/recipients/bulk/",
                json={"recipients": [{"external_id": eid} for eid in ids[start : start + 1000]]},
            )
            response.raise_for_status()
    return ids


def copy_baseline(stack: Stack, rows: int) -> float:
    """Rows per second of a bare COPY of ``rows`` inbox-shaped rows into a temporary table."""
    with stack.db_connect() as connection:
        connection.execute(
            "CREATE TEMP TABLE bulk_copy_baseline (LIKE notifications_inboxitem INCLUDING ALL)"
        )
        columns = (
            "recipient_id, delivery_id, event_id, seq, notification_type, category, title, body, url, data,"
            " created_at, accepted_at"
        )
        started = time.perf_counter()
        with connection.cursor() as cursor:
            with cursor.copy(f"COPY bulk_copy_baseline ({columns}) FROM STDIN") as copy:
                now = "2026-01-01 00:00:00+00"
                for index in range(rows):
                    copy.write_row(
                        (
                            index % 1000 + 1,
                            index + 1,
                            uuid.uuid4(),
                            index + 1,
                            TYPE_KEY,
                            "transactional",
                            f"Bulk {index}",
                            "bulk probe",
                            "",
                            "{}",
                            now,
                            now,
                        )
                    )
        took = time.perf_counter() - started
        connection.execute("DROP TABLE bulk_copy_baseline")
    return rows / took


async def _send(
    stack: Stack, ids: list[str], events: int, batch: int, concurrency: int, bar: Progress
) -> tuple[int, int]:
    accepted = refused = 0
    bodies = [
        {
            "events": [
                {"type": TYPE_KEY, "recipients": [ids[i % len(ids)]], "data": {"i": i}}
                for i in range(start, min(start + batch, events))
            ]
        }
        for start in range(0, events, batch)
    ]
    gate = asyncio.Semaphore(concurrency)
    async with stack.async_client(connections=concurrency, timeout=120.0) as client:

        async def one(body: dict[str, Any]) -> None:
            nonlocal accepted, refused
            async with gate:
                response = await client.post("/api/v1/events/bulk/", json=body)
                response.raise_for_status()
                for result in response.json()["results"]:
                    if result["status"] == "accepted":
                        accepted += 1
                    else:
                        refused += 1
                bar.update(accepted + refused)

        await asyncio.gather(*(one(body) for body in bodies))
    return accepted, refused


def measure(
    stack: Stack, *, events: int, batch: int, concurrency: int, recipients: int, progress: bool
) -> BulkResult:
    ids = prepare(stack, recipients)
    copy_rate = copy_baseline(stack, events)
    bar = Progress("Bulk events: accepted", events, enabled=progress)
    before = cpu_sample()
    started = time.perf_counter()
    accepted, refused = asyncio.run(_send(stack, ids, events, batch, concurrency, bar))
    accept_seconds = time.perf_counter() - started
    bar.finish(accepted + refused)

    with stack.db_connect() as connection:
        counted_at = 0.0

        def delivered() -> bool:
            # Counting the inbox rows scans the table, and fifty of those a second would
            # compete for the CPU of the run being measured. So the cheap question is asked
            # often (is every event's outbox row processed, with no dispatch batch open? an
            # event's in-app item is written in the transaction that processes its row),
            # and the rows are counted when it says yes, or once a second at most.
            nonlocal counted_at
            settled = connection.execute(SETTLED).fetchone()[0]
            if not settled and time.perf_counter() - counted_at < COUNT_EVERY_SECONDS:
                return False
            counted_at = time.perf_counter()
            count = connection.execute("SELECT count(*) FROM notifications_inboxitem").fetchone()[0]
            return count >= accepted

        wait_for(delivered, 300, "the bulk events were not all delivered in-app", interval=0.02)
        deliver_seconds = time.perf_counter() - started
        after = cpu_sample()
        items = connection.execute("SELECT count(*) FROM notifications_inboxitem").fetchone()[0]
    delivered_rate = accepted / deliver_seconds if deliver_seconds else 0.0
    return BulkResult(
        events=events,
        batch=batch,
        concurrency=concurrency,
        recipients=recipients,
        accepted=accepted,
        refused=refused,
        accept_seconds=round(accept_seconds, 3),
        deliver_seconds=round(deliver_seconds, 3),
        accepted_per_second=round(accepted / accept_seconds, 1) if accept_seconds else 0.0,
        delivered_per_second=round(delivered_rate, 1),
        inbox_items=items,
        copy_rows_per_second=round(copy_rate, 1),
        ratio_to_copy=round(delivered_rate / copy_rate, 3) if copy_rate else 0.0,
        cpu_seconds={name: round(value, 2) for name, value in cpu_seconds(stack, before, after).items()},
    )


def run(
    *,
    template: str | None,
    events: int = 50_000,
    batch: int = 1000,
    concurrency: int = 2,
    recipients: int = 5000,
    progress: bool = True,
) -> BulkResult:
    with bench_stack(template=template, label="bulk") as stack:
        result = measure(
            stack,
            events=events,
            batch=batch,
            concurrency=concurrency,
            recipients=recipients,
            progress=progress,
        )
        stack.check_alive()
        return result
