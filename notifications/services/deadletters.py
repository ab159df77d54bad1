"""Dead letters: deliveries whose retries ran out, and their replay by staff.

A replay gives the delivery a fresh retry budget (``retry_base``) and sends it again
through the normal path: claim, call, record. Replaying a letter that was replayed
already, or whose delivery is no longer dead, does nothing.
"""

from __future__ import annotations

from datetime import datetime

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from notifications.models import DeadLetter, Delivery
from notifications.selectors import DeadLetterFilter
from notifications.services.dispatch import deliveries_dispatch
from notifications.states import REPLAY

__all__ = ["DeadLetterFilter", "deadletters_replay"]

REPLAY_CHUNK = 1000


def _replay_chunk(delivery_ids: list[int], now: datetime) -> int:
    with transaction.atomic():
        letters = list(
            DeadLetter.objects.select_for_update(skip_locked=True)
            .filter(delivery_id__in=delivery_ids, replayed_at__isnull=True)
            .values_list("delivery_id", flat=True)
        )
        if not letters:
            return 0
        revived = list(
            Delivery.objects.filter(id__in=letters, status__in=REPLAY.sources).values_list("id", "channel")
        )
        ids = [row[0] for row in revived]
        Delivery.objects.filter(id__in=ids, status__in=REPLAY.sources).update(
            status=REPLAY.target,
            reason=REPLAY.name,
            retry_base=F("attempts"),
            claimed_until=None,
            due_at=None,
            updated_at=now,
        )
        DeadLetter.objects.filter(delivery_id__in=letters).update(
            replayed_at=now, replay_count=F("replay_count") + 1
        )
        deliveries_dispatch(revived, now=now)
    return len(revived)


def deadletters_replay(
    *, delivery_ids: list[int] | None = None, where: DeadLetterFilter | None = None, everything: bool = False
) -> int:
    """Replay open dead letters: the given ones, those matching ``where``, or all of them.
    Returns how many deliveries were sent on their way again."""
    if delivery_ids is None and where is None and not everything:
        raise ValueError("say which dead letters to replay: ids, a filter, or everything")
    now = timezone.now()
    if delivery_ids is not None:
        return sum(
            _replay_chunk(delivery_ids[i : i + REPLAY_CHUNK], now)
            for i in range(0, len(delivery_ids), REPLAY_CHUNK)
        )
    rows = DeadLetter.objects.filter(replayed_at__isnull=True, created_at__lte=now)
    if where is not None:
        rows = where.apply(rows)
    replayed = 0
    cursor = 0
    while True:
        chunk = list(
            rows.filter(delivery_id__gt=cursor)
            .order_by("delivery_id")
            .values_list("delivery_id", flat=True)[:REPLAY_CHUNK]
        )
        if not chunk:
            return replayed
        replayed += _replay_chunk(chunk, now)
        cursor = chunk[-1]
