"""Periodic backstops run by beat: due deliveries released, stale pending ones dispatched
again. Rows are claimed with SKIP LOCKED, so a second beat only wastes work."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from notifications.models import Delivery, DeliveryStatus
from notifications.services.aggregation import aggregation_close
from notifications.services.dispatch import deliveries_enqueue_on_commit

SWEEP_BATCH = 2000


def deliveries_release_due(*, limit: int = SWEEP_BATCH) -> int:
    """Move scheduled deliveries whose time has come (quiet hours over) to pending and
    dispatch them. Returns how many were released."""
    now = timezone.now()
    with transaction.atomic():
        rows = list(
            Delivery.objects.select_for_update(skip_locked=True)
            .filter(status=DeliveryStatus.SCHEDULED, due_at__lte=now)
            .order_by("due_at")
            .values_list("id", "channel")[:limit]
        )
        if not rows:
            return 0
        Delivery.objects.filter(id__in=[r[0] for r in rows]).update(
            status=DeliveryStatus.PENDING, due_at=None, updated_at=now
        )
        aggregation_close(leader_ids=[r[0] for r in rows], now=now)
        deliveries_enqueue_on_commit(rows)
    return len(rows)


def deliveries_redispatch_stale(*, limit: int = SWEEP_BATCH) -> int:
    """Dispatch again pending deliveries nobody has worked on for DELIVERY_STALE_SECONDS
    (their task was lost). The dispatch claims rows by compare-and-set, so a slow original
    task and this one never both send."""
    now = timezone.now()
    stale_before = now - timedelta(seconds=settings.DELIVERY_STALE_SECONDS)
    with transaction.atomic():
        rows = list(
            Delivery.objects.select_for_update(skip_locked=True)
            .filter(status=DeliveryStatus.PENDING, updated_at__lt=stale_before)
            .order_by("updated_at")
            .values_list("id", "channel")[:limit]
        )
        if not rows:
            return 0
        Delivery.objects.filter(id__in=[r[0] for r in rows]).update(updated_at=now)
        deliveries_enqueue_on_commit(rows)
    return len(rows)
