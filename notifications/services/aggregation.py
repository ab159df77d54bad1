"""Aggregation windows: events of a high-volume type (likes) for one recipient within the
type's window become one delivery that knows how many it stands for, and who acted.

The first event's delivery leads a batch and is scheduled for the end of the window; the
deliveries of later events are recorded as suppressed "aggregated into <leader>" and counted
in the batch. Why no event is counted twice or lost, whatever runs at once:

- Open batches are locked (FOR UPDATE) while a page joins them, and the release locks them
  to close (services/scheduling.py), so an event joins a batch whose message has not gone
  yet (its count is read after the close) or starts the next batch, never neither. A batch
  whose window has ended but which is not yet released still takes events: they go out with
  it.
- Two pages that find no open batch for one recipient both plan a leader. Only one batch can
  be open per type, recipient and channel (a unique index), so the second insert meets the
  first's row: ``INSERT … ON CONFLICT DO UPDATE`` waits for the first page's commit and then
  counts the second event into it, and the second leader is turned into a member on the
  spot (suppressed, its schedule dropped). One message, both counted.
- Deliveries are unique per event, recipient and channel and a batch counts only the rows a
  page actually inserted, so a duplicate event (an idempotency key replayed) or a page
  stored again counts nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from django.db import connection
from psycopg.types.json import Jsonb

from notifications.models import (
    AggregationBatch,
    Delivery,
    DeliverySchedule,
    DeliveryStatus,
    NotificationType,
)
from notifications.services.planning import PlannedDelivery
from notifications.services.templating import aggregate_context
from notifications.states import AGGREGATED_LATE

AGGREGATING = "aggregating"
SAMPLE_LIMIT = 10


def aggregation_plan(
    *, notification_type: NotificationType, planned: Sequence[PlannedDelivery], now: datetime
) -> tuple[list[PlannedDelivery], dict[tuple[int, str], int]]:
    """Turn pending deliveries into batch leaders or batch members. Returns the new plan and
    {(recipient_id, channel): batch_id} for the members. Locks the open batches it joins."""
    window = notification_type.aggregation_window_seconds
    if not window:
        return list(planned), {}
    pending_ids = sorted({p.recipient_id for p in planned if p.status == DeliveryStatus.PENDING})
    if not pending_ids:
        return list(planned), {}
    with connection.cursor() as db:
        db.execute(
            f"""SELECT id, recipient_id, channel, leader_id FROM {AggregationBatch._meta.db_table}
                WHERE notification_type_id = %s AND recipient_id = ANY(%s) AND closed_at IS NULL
                ORDER BY id FOR UPDATE""",
            [notification_type.id, pending_ids],
        )
        open_batches = {(row[1], row[2]): (row[0], row[3]) for row in db.fetchall()}
    plan: list[PlannedDelivery] = []
    members: dict[tuple[int, str], int] = {}
    closes_at = now + timedelta(seconds=window)
    for item in planned:
        if item.status != DeliveryStatus.PENDING:
            plan.append(item)
            continue
        batch = open_batches.get((item.recipient_id, item.channel))
        if batch is None:
            plan.append(item._replace(status=DeliveryStatus.SCHEDULED, reason=AGGREGATING, due_at=closes_at))
        else:
            members[(item.recipient_id, item.channel)] = batch[0]
            plan.append(
                item._replace(status=DeliveryStatus.SUPPRESSED, reason=f"aggregated into delivery {batch[1]}")
            )
    return plan, members


def aggregation_record(
    *,
    notification_type: NotificationType,
    inserted: Sequence[tuple[Any, ...]],
    members: dict[tuple[int, str], int],
    data: dict[str, Any],
    now: datetime,
) -> None:
    """After the deliveries insert: open batches for the new leaders and count the members
    that were actually inserted (a re-run inserts nothing, so counts nothing)."""
    window = notification_type.aggregation_window_seconds or 0
    leaders = sorted((row[1], row[2], row[0]) for row in inserted if row[4] == AGGREGATING)
    joined = sorted({members[(row[1], row[2])] for row in inserted if (row[1], row[2]) in members})
    with connection.cursor() as db:
        if leaders:
            # A concurrent page may have opened the same batch first (it found none either):
            # then this event is counted into that one, and its leader becomes a member.
            # Rows in recipient order, so two pages wait on each other in one order.
            db.execute(
                f"""INSERT INTO {AggregationBatch._meta.db_table} AS b
                        (notification_type_id, recipient_id, channel, leader_id, count, samples, closes_at,
                         created_at)
                    SELECT %s, r, c, l, 1, %s, %s, %s
                    FROM unnest(%s::bigint[], %s::text[], %s::bigint[]) WITH ORDINALITY AS t(r, c, l, n)
                    ORDER BY n
                    ON CONFLICT (notification_type_id, recipient_id, channel) WHERE closed_at IS NULL
                    DO UPDATE SET count = b.count + 1,
                        samples = CASE WHEN jsonb_array_length(b.samples) < %s
                                       THEN b.samples || EXCLUDED.samples ELSE b.samples END
                    RETURNING recipient_id, channel, leader_id""",
                [
                    notification_type.id,
                    cast(Any, Jsonb([data])),
                    now + timedelta(seconds=window),
                    now,
                    [leader[0] for leader in leaders],
                    [leader[1] for leader in leaders],
                    [leader[2] for leader in leaders],
                    SAMPLE_LIMIT,
                ],
            )
            ours = {(recipient, channel): delivery for recipient, channel, delivery in leaders}
            _demote([(ours[(r, c)], leader) for r, c, leader in db.fetchall() if ours[(r, c)] != leader], now)
        if joined:
            db.execute(
                f"""UPDATE {AggregationBatch._meta.db_table}
                    SET count = count + 1,
                        samples = CASE WHEN jsonb_array_length(samples) < %s THEN samples || %s ELSE samples END
                    WHERE id = ANY(%s)""",
                [SAMPLE_LIMIT, cast(Any, Jsonb([data])), joined],
            )


def _demote(demoted: list[tuple[int, int]], now: datetime) -> None:
    """Leaders (delivery, into leader) whose batch another page opened first: members now."""
    if not demoted:
        return
    ids = [delivery for delivery, _ in demoted]
    with connection.cursor() as db:
        db.execute(
            f"""UPDATE {Delivery._meta.db_table} AS d
                SET status = %s, reason = 'aggregated into delivery ' || u.leader, due_at = NULL, updated_at = %s
                FROM unnest(%s::bigint[], %s::bigint[]) AS u(id, leader)
                WHERE d.id = u.id AND d.status = ANY(%s)""",
            [
                AGGREGATED_LATE.target,
                now,
                ids,
                [leader for _, leader in demoted],
                list(AGGREGATED_LATE.sources),
            ],
        )
        db.execute(f"DELETE FROM {DeliverySchedule._meta.db_table} WHERE delivery_id = ANY(%s)", [ids])


def aggregation_close(*, leader_ids: Sequence[int], now: datetime) -> None:
    """Close the batches of released leaders and copy their counts onto the deliveries."""
    if not leader_ids:
        return
    with connection.cursor() as db:
        db.execute(
            f"""WITH closed AS (
                    UPDATE {AggregationBatch._meta.db_table} SET closed_at = %s
                    WHERE leader_id = ANY(%s) AND closed_at IS NULL
                    RETURNING leader_id, count)
                UPDATE {Delivery._meta.db_table} d SET aggregate_count = closed.count
                FROM closed WHERE d.id = closed.leader_id""",
            [now, list(leader_ids)],
        )


def aggregation_context(*, delivery_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """{leader delivery id: the ``aggregate`` its templates see (templating.aggregate_context)}."""
    rows = AggregationBatch.objects.filter(leader_id__in=list(delivery_ids)).values(
        "leader_id", "count", "samples"
    )
    return {row["leader_id"]: aggregate_context(row["count"], row["samples"]) for row in rows}
