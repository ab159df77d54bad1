"""Channel fallback: "push first, and SMS when the push has not reached the user within N
seconds". Rules live on the notification type (``fallbacks``); each delivery of a rule's
"from" channel gets a durable FallbackCheck row (services/deliveries.py), answered here
when it is due (or at once when the delivery fails for good).

A sweep leases a batch of due checks, decides outside any transaction which users the
source delivery has not reached (the presence question goes to Redis) and plans the
fallback deliveries, then deletes the checks and stores the deliveries in one
transaction. A sweep that dies in between leaves its checks to come due again when the
lease ends; the deliveries' unique key makes answering a check twice harmless. The number
of queries depends on how many types and channels a batch holds, never on its size.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from notifications.models import Delivery, FallbackCheck, InboxItem, NotificationType, Recipient
from notifications.services.deliveries import deliveries_store
from notifications.services.planning import PlannedDelivery, RecipientFacts, plan_page
from notifications.services.presence_hook import recipients_active_in_app
from notifications.states import REACHED

log = logging.getLogger(__name__)

CHECK_BATCH = 1000
# How long a sweep holds the checks it took: far more than answering a batch takes.
CHECK_LEASE = timedelta(seconds=60)


@dataclass(frozen=True)
class _Source:
    """A delivery whose fallback check came due."""

    id: int
    event_id: Any
    recipient_id: int
    status: str
    type_id: int
    to_channel: str


def _lease_due(now: datetime, limit: int) -> tuple[datetime, list[tuple[int, str]]]:
    """Take up to ``limit`` due checks by moving their due time to the end of a lease;
    returns the lease (it identifies this sweep's claim) and (delivery id, to channel)."""
    lease = now + CHECK_LEASE
    with connection.cursor() as db:
        db.execute(
            f"""UPDATE {FallbackCheck._meta.db_table} SET due_at = %s
                WHERE delivery_id IN (
                    SELECT delivery_id FROM {FallbackCheck._meta.db_table}
                    WHERE due_at <= %s ORDER BY due_at LIMIT %s FOR UPDATE SKIP LOCKED)
                RETURNING delivery_id, to_channel""",
            [lease, now, limit],
        )
        return lease, list(db.fetchall())


def _sources(checks: list[tuple[int, str]]) -> list[_Source]:
    to_channel = dict(checks)
    rows = Delivery.objects.filter(id__in=list(to_channel)).values_list(
        "id", "event_id", "recipient_id", "status", "event__notification_type_id"
    )
    return [_Source(*row, to_channel=to_channel[row[0]]) for row in rows]


def _reached(sources: Sequence[_Source]) -> set[int]:
    """Source deliveries whose user has the message by now: the delivery says so, the
    in-app copy of the same event was read, or the user is active in the app."""
    reached = {s.id for s in sources if s.status in REACHED}
    pending = [s for s in sources if s.id not in reached]
    if not pending:
        return reached
    read = set(
        InboxItem.objects.filter(
            event_id__in={s.event_id for s in pending},
            recipient_id__in={s.recipient_id for s in pending},
            read_at__isnull=False,
        ).values_list("event_id", "recipient_id")
    )
    active = recipients_active_in_app([s.recipient_id for s in pending])
    for s in pending:
        if (s.event_id, s.recipient_id) in read or s.recipient_id in active:
            reached.add(s.id)
    return reached


def _plan(
    wanted: Sequence[_Source], now: datetime
) -> list[tuple[NotificationType, list[_Source], list[PlannedDelivery]]]:
    """The fallback deliveries, planned like any other (preferences, quiet hours, caps),
    one group per (type, fallback channel): (type, the source of each row, rows)."""
    types = {t.id: t for t in NotificationType.objects.filter(id__in={s.type_id for s in wanted})}
    facts = {
        r[0]: RecipientFacts(*r)
        for r in Recipient.objects.filter(id__in={s.recipient_id for s in wanted}).values_list(
            "id", "timezone", "quiet_hours_start", "quiet_hours_end"
        )
    }
    groups: dict[tuple[int, str], list[_Source]] = defaultdict(list)
    for source in wanted:
        if source.recipient_id in facts and source.type_id in types:
            groups[(source.type_id, source.to_channel)].append(source)
    plans = []
    for (type_id, channel), members in groups.items():
        ntype = replace_channels(types[type_id], [channel])
        # One channel: plan_page returns one row per recipient, in the order given.
        planned = plan_page(
            notification_type=ntype, recipients=[facts[m.recipient_id] for m in members], now=now
        )
        plans.append((ntype, members, planned))
    return plans


def fallback_checks_due(*, limit: int = CHECK_BATCH) -> int:
    """Answer due checks: deliver on the fallback channel where the source has not reached
    the user. Returns how many fallback deliveries were created."""
    now = timezone.now()
    lease, checks = _lease_due(now, limit)
    if not checks:
        return 0
    sources = _sources(checks)
    reached = _reached(sources)
    plans = _plan([s for s in sources if s.id not in reached], now)
    created = 0
    with transaction.atomic():
        # Still ours only if no other sweep took them after our lease ran out.
        ours = FallbackCheck.objects.filter(delivery_id__in=[c[0] for c in checks], due_at=lease)
        taken = set(ours.select_for_update(skip_locked=True).values_list("delivery_id", flat=True))
        FallbackCheck.objects.filter(delivery_id__in=taken).delete()
        for ntype, members, planned in plans:
            keep = [i for i, member in enumerate(members) if member.id in taken]
            inserted = deliveries_store(
                notification_type=ntype,
                event_ids=[members[i].event_id for i in keep],
                planned=[planned[i] for i in keep],
                now=now,
            )
            created += len(inserted)
    if created:
        log.info("channel fallback created %d deliveries", created)
    return created


def replace_channels(notification_type: NotificationType, channels: list[str]) -> NotificationType:
    """An unsaved copy of the type that plans only ``channels``."""
    fields = {
        f.attname: getattr(notification_type, f.attname) for f in notification_type._meta.concrete_fields
    }
    return NotificationType(**{**fields, "channels": channels})
