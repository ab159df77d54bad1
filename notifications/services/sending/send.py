"""A send from end to end: claim, prepare, call, record a chunk; run a dispatch batch
chunk by chunk (the package docstring, __init__.py, tells the order and why)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from notifications.models import DispatchBatch
from notifications.services.dispatch import dispatch_lease
from notifications.services.metrics import metrics_increment
from notifications.services.provider_health import provider_gate
from notifications.services.sending.call import jobs_run
from notifications.services.sending.claim import claimed_elsewhere, deliveries_claim
from notifications.services.sending.prepare import jobs_prepare
from notifications.services.sending.record import jobs_record

log = logging.getLogger(__name__)


def deliveries_send(*, delivery_ids: list[int]) -> tuple[int, datetime | None]:
    """Claim, send and record one chunk. Returns how many deliveries this call settled
    (any outcome) and, when some are claimed by another sender, until when: the caller
    must try those again after that (the other sender may be dead). Deliveries not due
    yet are skipped: their schedule row releases them."""
    if not delivery_ids:
        return 0, None
    now = timezone.now()
    token, claimed = deliveries_claim(delivery_ids=delivery_ids, now=now)
    busy_until = claimed_elsewhere(delivery_ids, now) if len(claimed) < len(delivery_ids) else None
    if not claimed:
        return 0, busy_until
    jobs = jobs_prepare(claimed)
    jobs_run(jobs)
    provider_gate().flush()
    counts = jobs_record(jobs, token)
    metrics_increment(counts)
    for job in jobs:
        if job.results or job.verdict:
            log.debug(
                "delivery settled",
                extra={"event_id": str(job.claimed.event_id), "delivery_ids": [job.claimed.id]},
            )
    return len(claimed), busy_until


def provider_dispatch_batch(*, batch_id: int, channel: str, chunk: int | None = None) -> int:
    """Send an open dispatch batch in chunks, renewing its lease as it goes; marks it done
    at the end, unless some of its deliveries are claimed by a sender that may have died:
    then the batch stays open until that claim expires and the sweep runs it again.
    Running a batch twice, or at once on two workers, sends nothing twice: each chunk is
    claimed delivery by delivery. ``chunk``: deliveries claimed and sent at a time
    (SEND_CHUNK by default; a campaign's email, a provider batch's worth)."""
    with transaction.atomic():
        ids = (
            DispatchBatch.objects.select_for_update(skip_locked=True)
            .filter(id=batch_id, channel=channel, done_at__isnull=True)
            .values_list("delivery_ids", flat=True)
            .first()
        )
        if ids is None:
            return 0
        DispatchBatch.objects.filter(id=batch_id).update(leased_until=timezone.now() + dispatch_lease())
    settled = 0
    recheck_at: datetime | None = None
    size = chunk or settings.SEND_CHUNK
    for start in range(0, len(ids), size):
        count, busy_until = deliveries_send(delivery_ids=list(ids[start : start + size]))
        settled += count
        if busy_until is not None:
            recheck_at = max(recheck_at or busy_until, busy_until)
        DispatchBatch.objects.filter(id=batch_id, done_at__isnull=True).update(
            leased_until=timezone.now() + dispatch_lease()
        )
    if recheck_at is not None:
        DispatchBatch.objects.filter(id=batch_id, done_at__isnull=True).update(
            leased_until=recheck_at + timedelta(seconds=1)
        )
    else:
        DispatchBatch.objects.filter(id=batch_id).update(done_at=timezone.now())
    return settled
