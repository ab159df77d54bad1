"""The relay from stored events to the fan-out queue, and the sweep that backs it up."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from notifications.models import OutboxMessage
from notifications.services.queues import CAMPAIGN_QUEUE, EVENT_FANOUT, EVENTS_FANOUT_MANY, enqueue

log = logging.getLogger(__name__)

SWEEP_BATCH = 500


def _enqueue_fanout(outbox_id: int, countdown: float | None = None, queue: str | None = None) -> bool:
    return enqueue(EVENT_FANOUT, args=(outbox_id,), countdown=countdown, queue=queue)


def outbox_relay(*, outbox_id: int, countdown: float | None = None, queue: str | None = None) -> bool:
    """Enqueue the fan-out of one outbox row (``countdown`` seconds from now: a throttled
    campaign's next page; on ``queue`` rather than the fan-out queue: a campaign's); True
    when the broker took it. On failure the lease is dropped so that the next sweep picks
    the row up at once."""
    if _enqueue_fanout(outbox_id, countdown, queue):
        return True
    try:
        OutboxMessage.objects.filter(id=outbox_id, processed_at__isnull=True).update(leased_until=None)
    except Exception:  # noqa: BLE001 - the sweep still finds the row once its lease ends
        log.exception("could not release outbox lease", extra={"outbox_id": outbox_id})
    return False


def outbox_relay_each(*, outbox_ids: Sequence[int]) -> int:
    """``outbox_relay`` for each row; returns how many the broker took."""
    return sum(outbox_relay(outbox_id=outbox_id) for outbox_id in outbox_ids)


def outbox_relay_many(*, outbox_ids: Sequence[int]) -> bool:
    """Enqueue the fan-out of many outbox rows (a bulk request's events) as tasks of at
    most FANOUT_MANY_MAX rows, each fanning its small events out together. True when the
    broker took them all; otherwise the rows not enqueued have their lease dropped, so the
    next sweep takes them over at once."""
    ids = list(outbox_ids)
    size = settings.FANOUT_MANY_MAX
    for start in range(0, len(ids), size):
        if not enqueue(EVENTS_FANOUT_MANY, args=(ids[start : start + size],)):
            try:
                OutboxMessage.objects.filter(id__in=ids[start:], processed_at__isnull=True).update(
                    leased_until=None
                )
            except Exception:  # noqa: BLE001 - the sweep still finds them once their lease ends
                log.exception("could not release outbox leases", extra={"outbox_ids": ids[start:][:20]})
            return False
    return True


def outbox_sweep(*, limit: int = SWEEP_BATCH) -> int:
    """Enqueue due outbox rows nobody holds: scheduled sends that came due, and rows whose
    task was lost (broker flushed or down, worker killed). Returns how many were enqueued."""
    now = timezone.now()
    lease = timedelta(seconds=settings.OUTBOX_LEASE_SECONDS)
    with transaction.atomic():
        due = list(
            OutboxMessage.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(processed_at__isnull=True, available_at__lte=now)
            .exclude(leased_until__gt=now)
            .order_by("available_at")
            .values_list("id", "event__campaign_id")[:limit]
        )
        if not due:
            return 0
        rows = [outbox_id for outbox_id, _ in due]
        OutboxMessage.objects.filter(id__in=rows).update(leased_until=now + lease)
    enqueued = 0
    for outbox_id, campaign_id in due:
        if not _enqueue_fanout(outbox_id, queue=CAMPAIGN_QUEUE if campaign_id else None):
            break
        enqueued += 1
    if enqueued < len(rows):
        # The broker is down: leave the rest for the next sweep instead of waiting a lease.
        OutboxMessage.objects.filter(id__in=rows[enqueued:], processed_at__isnull=True).update(
            leased_until=None
        )
    if enqueued:
        log.info("outbox sweep enqueued %d fan-outs", enqueued)
    return enqueued
