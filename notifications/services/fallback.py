"""Channel fallback: "push first, and SMS when the push has not reached the user within N
seconds". Rules live on the notification type (``fallbacks``); each delivery of a rule's
"from" channel gets a durable FallbackCheck row, answered by the sweep when it is due (or
at once when the delivery fails for good).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from notifications.models import (
    Delivery,
    DeliveryStatus,
    FallbackCheck,
    InboxItem,
    NotificationType,
    Recipient,
)
from notifications.services.presence_hook import recipients_active_in_app

log = logging.getLogger(__name__)

# The user has it: no fallback needed.
REACHED = {DeliveryStatus.DELIVERED, DeliveryStatus.READ, DeliveryStatus.OPENED, DeliveryStatus.CLICKED}
CHECK_BATCH = 1000


def fallback_rules(notification_type: NotificationType) -> dict[str, tuple[str, int]]:
    """{from channel: (to channel, after seconds)} of the type."""
    rules: dict[str, tuple[str, int]] = {}
    for rule in notification_type.fallbacks or []:
        if isinstance(rule, dict) and rule.get("from") and rule.get("to"):
            rules[str(rule["from"])] = (str(rule["to"]), int(rule.get("after_seconds", 0)))
    return rules


def fallback_checks_plan(
    *, notification_type: NotificationType, rows: Sequence[tuple[int, str, datetime | None]], now: datetime
) -> None:
    """Inside the transaction that created deliveries: a check for each (delivery id,
    channel, due_at or None) whose channel has a fallback rule."""
    rules = fallback_rules(notification_type)
    if not rules:
        return
    checks = [
        FallbackCheck(
            delivery_id=delivery_id,
            to_channel=rules[channel][0],
            due_at=(due or now) + timedelta(seconds=rules[channel][1]),
        )
        for delivery_id, channel, due in rows
        if channel in rules
    ]
    FallbackCheck.objects.bulk_create(checks, ignore_conflicts=True)


def _reached(rows: Sequence[Mapping[str, Any]]) -> set[int]:
    """Source deliveries whose user has the message by now: the delivery says so, the
    in-app copy of the same event was read, or the user is active in the app."""
    reached = {row["id"] for row in rows if row["status"] in REACHED}
    pending = [row for row in rows if row["id"] not in reached]
    if not pending:
        return reached
    read = set(
        InboxItem.objects.filter(
            event_id__in={row["event_id"] for row in pending},
            recipient_id__in={row["recipient_id"] for row in pending},
            read_at__isnull=False,
        ).values_list("event_id", "recipient_id")
    )
    active = recipients_active_in_app([row["recipient_id"] for row in pending])
    for row in pending:
        if (row["event_id"], row["recipient_id"]) in read or row["recipient_id"] in active:
            reached.add(row["id"])
    return reached


def fallback_checks_due(*, limit: int = CHECK_BATCH) -> int:
    """Answer due checks: deliver on the fallback channel where the source has not reached
    the user. Returns how many fallback deliveries were created."""
    from notifications.services.dispatch import deliveries_dispatch
    from notifications.services.fanout import deliveries_insert
    from notifications.services.planning import RecipientFacts, plan_page
    from notifications.services.scheduling import deliveries_schedule

    now = timezone.now()
    created = 0
    with transaction.atomic():
        checks = list(
            FallbackCheck.objects.select_for_update(skip_locked=True)
            .filter(due_at__lte=now)
            .order_by("due_at")
            .values_list("delivery_id", "to_channel")[:limit]
        )
        if not checks:
            return 0
        to_channel = dict(checks)
        FallbackCheck.objects.filter(delivery_id__in=list(to_channel)).delete()
        sources = list(
            Delivery.objects.filter(id__in=list(to_channel)).values(
                "id", "event_id", "recipient_id", "status", "event__notification_type_id"
            )
        )
        reached = _reached(sources)
        wanted = [row for row in sources if row["id"] not in reached]
        by_event: dict[tuple[Any, int, str], list[int]] = {}
        for row in wanted:
            by_event.setdefault(
                (row["event_id"], row["event__notification_type_id"], to_channel[row["id"]]), []
            ).append(row["recipient_id"])
        for (event_id, type_id, channel), recipient_ids in by_event.items():
            ntype = NotificationType.objects.get(id=type_id)
            facts = [
                RecipientFacts(*r)
                for r in Recipient.objects.filter(id__in=recipient_ids).values_list(
                    "id", "timezone", "quiet_hours_start", "quiet_hours_end"
                )
            ]
            # The fallback channel is planned like any other: preferences, quiet hours, caps.
            planned = plan_page(
                notification_type=replace_channels(ntype, [channel]), recipients=facts, now=now
            )
            inserted = deliveries_insert(event_id=event_id, planned=planned, now=now)
            deliveries_dispatch([(r[0], r[2]) for r in inserted if r[3] == DeliveryStatus.PENDING], now=now)
            due = {
                (p.recipient_id, p.channel): p.due_at for p in planned if p.status == DeliveryStatus.SCHEDULED
            }
            deliveries_schedule(
                [(r[0], due[(r[1], r[2])]) for r in inserted if r[3] == DeliveryStatus.SCHEDULED]
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
