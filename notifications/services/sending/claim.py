"""Step 1 of a send: claim deliveries by compare-and-set before any provider call."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction

from notifications.models import Delivery
from notifications.states import SENDABLE


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    event_id: Any
    recipient_id: int
    channel: str
    attempts: int
    retry_base: int
    aggregate_count: int


def deliveries_claim(*, delivery_ids: list[int], now: datetime) -> tuple[datetime, list[Claimed]]:
    """Compare-and-set claim, committed before returning. Returns the claim token (the
    ``claimed_until`` written) and the rows this sender now owns; ``attempts`` counts this
    attempt, so each claim numbers its attempt rows uniquely."""
    token = now + timedelta(seconds=settings.SEND_CLAIM_SECONDS, microseconds=random.randrange(1000))
    with transaction.atomic(), connection.cursor() as db:
        db.execute("SET LOCAL enable_seqscan TO OFF")
        db.execute(
            f"""UPDATE {Delivery._meta.db_table}
                SET claimed_until = %s, attempts = attempts + 1, updated_at = %s
                WHERE id = ANY(%b) AND status = ANY(%b)
                  AND (due_at IS NULL OR due_at <= %s)
                  AND (claimed_until IS NULL OR claimed_until < %s)
                RETURNING id, event_id, recipient_id, channel, attempts, retry_base, aggregate_count""",
            [token, now, delivery_ids, list(SENDABLE), now, now],
        )
        rows = [Claimed(*row) for row in db.fetchall()]
    return token, rows


def claimed_elsewhere(delivery_ids: list[int], now: datetime) -> datetime | None:
    """The latest live claim another sender holds on sendable deliveries among
    ``delivery_ids`` (None when there is none). Such a sender may have died: its claim
    expiring is the only sign, so whoever runs the batch must look again after it."""
    with connection.cursor() as db:
        db.execute(
            f"""SELECT max(claimed_until) FROM {Delivery._meta.db_table}
                WHERE id = ANY(%b) AND status = ANY(%b) AND claimed_until >= %s""",
            [delivery_ids, list(SENDABLE), now],
        )
        row = db.fetchone()
    return row[0] if row else None
