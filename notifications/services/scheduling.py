"""Durable due times: deliveries deferred by quiet hours, an aggregation window or a retry
backoff wait in DeliverySchedule rows and are released by the sweep (beat), never by broker ETAs. Rows are
claimed with SKIP LOCKED, so a second beat only wastes work."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from django.db import connection, transaction
from django.utils import timezone

from notifications.models import Delivery, DeliverySchedule
from notifications.services.aggregation import aggregation_close
from notifications.services.dispatch import deliveries_dispatch
from notifications.states import RELEASE, DeliveryStatus

SWEEP_BATCH = 2000


def deliveries_schedule(rows: Sequence[tuple[int, datetime | None]]) -> None:
    """Inside a transaction: record the due time of scheduled (delivery_id, due_at) pairs."""
    rows = [(delivery_id, due_at) for delivery_id, due_at in rows if due_at is not None]
    if not rows:
        return
    with connection.cursor() as db:
        db.execute(
            f"""INSERT INTO {DeliverySchedule._meta.db_table} (delivery_id, due_at)
                SELECT d, t FROM unnest(%b::bigint[], %b::timestamptz[]) AS u(d, t)
                ON CONFLICT (delivery_id) DO UPDATE SET due_at = EXCLUDED.due_at""",
            [[r[0] for r in rows], [r[1] for r in rows]],
        )


def deliveries_release_due(*, limit: int = SWEEP_BATCH) -> int:
    """Release deliveries whose time has come (scheduled ones become pending, retrying ones
    stay retrying: their due time was a backoff) and dispatch them. Returns how many were
    released."""
    now = timezone.now()
    with transaction.atomic():
        due = list(
            DeliverySchedule.objects.select_for_update(skip_locked=True)
            .filter(due_at__lte=now)
            .order_by("due_at")
            .values_list("delivery_id", flat=True)[:limit]
        )
        if not due:
            return 0
        DeliverySchedule.objects.filter(delivery_id__in=due).delete()
        with connection.cursor() as db:
            # Primary-key lookups, whatever the statistics say (see inbox.inapp_dispatch).
            db.execute("SET LOCAL enable_seqscan TO OFF")
            db.execute(
                f"""UPDATE {Delivery._meta.db_table}
                    SET status = CASE WHEN status = ANY(%b) THEN %s ELSE status END,
                        due_at = NULL, updated_at = %s
                    WHERE id = ANY(%b) AND status = ANY(%b)
                    RETURNING id, channel""",
                [
                    list(RELEASE.sources),
                    RELEASE.target,
                    now,
                    due,
                    [*RELEASE.sources, DeliveryStatus.RETRYING],
                ],
            )
            released = [(row[0], row[1]) for row in db.fetchall()]
        aggregation_close(leader_ids=[row[0] for row in released], now=now)
        deliveries_dispatch(released, now=now)
    return len(released)
