"""Reads, scoped to the acting principal (docs/architecture.md, "Layers"): an end user sees only their own
inbox; another user's item is indistinguishable from a missing one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import Count, Prefetch, Q, QuerySet

from notifications.models import (
    DeadLetter,
    Delivery,
    DeliveryAttempt,
    Event,
    InboxItem,
    InboxSequence,
    Recipient,
    Suppression,
    WebhookEndpoint,
)

INBOX_PAGE_MAX = 200
# The columns of an inbox item that its payload (services/inbox.py) is built from.
ITEM_COLUMNS = (
    "id",
    "seq",
    "notification_type",
    "category",
    "title",
    "body",
    "url",
    "data",
    "read_at",
    "created_at",
    "accepted_at",
    "event_id",
    "archived_at",
    "snoozed_until",
)


def inbox_items(
    *,
    recipient_id: int,
    after: int | None = None,
    before: int | None = None,
    limit: int = 50,
    archived: bool = False,
) -> list[dict[str, Any]]:
    """Items of one recipient.

    With ``after``: every item with seq > after in seq order, the resume cursor that never
    skips or repeats an item. Without: what a person reads, newest first by when the event
    was accepted (``accepted_at``; seq follows the order fan-out workers committed in,
    which can differ by milliseconds); with ``before``, the items listed after the item
    whose seq is ``before`` (none if it is not the recipient's). The newest-first list
    leaves out archived items (``archived=True`` lists only them) and snoozed ones; the
    resume cursor gives every item, each saying whether it is archived or snoozed."""
    limit = max(1, min(limit, INBOX_PAGE_MAX))
    qs = InboxItem.objects.filter(recipient_id=recipient_id)
    if after is not None:
        return list(qs.filter(seq__gt=after).order_by("seq").values(*ITEM_COLUMNS)[:limit])
    if archived:
        qs = qs.filter(archived_at__isnull=False)
    else:
        qs = qs.filter(archived_at__isnull=True, snoozed_until__isnull=True)
    if before is not None:
        anchor = qs.filter(seq=before).values_list("accepted_at", flat=True).first()
        if anchor is None:
            return []
        qs = qs.filter(Q(accepted_at__lt=anchor) | Q(accepted_at=anchor, seq__lt=before))
    return list(qs.order_by("-accepted_at", "-seq").values(*ITEM_COLUMNS)[:limit])


def inbox_unread_count(*, recipient_id: int) -> int:
    """Unread items, not counting snoozed ones (archived items are read)."""
    return InboxItem.objects.filter(
        recipient_id=recipient_id, read_at__isnull=True, snoozed_until__isnull=True
    ).count()


def inbox_last_seq(*, recipient_id: int) -> int:
    return (
        InboxSequence.objects.filter(recipient_id=recipient_id).values_list("last_seq", flat=True).first()
        or 0
    )


def recipient_for_user(*, user: Any) -> Recipient | None:
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return Recipient.objects.filter(user=user).first()


def recipient_external_id(*, recipient_id: int) -> str:
    return str(Recipient.objects.values_list("external_id", flat=True).get(id=recipient_id))


def recipient_ids_by_external_id(*, external_ids: Sequence[str]) -> dict[str, int]:
    """{external_id: recipient id} for those of ``external_ids`` that exist."""
    return dict(Recipient.objects.filter(external_id__in=external_ids).values_list("external_id", "id"))


def event_delivery_summary(*, event: Event) -> dict[str, dict[str, int]]:
    """{channel: {status: count}} for one event (one GROUP BY)."""
    summary: dict[str, dict[str, int]] = {}
    rows = Delivery.objects.filter(event=event).values("channel", "status").annotate(n=Count("id")).order_by()
    for row in rows:
        summary.setdefault(row["channel"], {})[row["status"]] = row["n"]
    return summary


def event_deliveries(*, event: Event) -> QuerySet[Delivery]:
    return Delivery.objects.filter(event=event).select_related("recipient").order_by("id")


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters a staff member or a service means: by channel, type, part of the
    reason, and when they died."""

    channel: str = ""
    notification_type: str = ""
    reason_contains: str = ""
    created_after: datetime | None = None
    created_before: datetime | None = None

    def apply(self, rows: QuerySet[DeadLetter]) -> QuerySet[DeadLetter]:
        if self.channel:
            rows = rows.filter(channel=self.channel)
        if self.notification_type:
            rows = rows.filter(notification_type=self.notification_type)
        if self.reason_contains:
            rows = rows.filter(reason__icontains=self.reason_contains)
        if self.created_after:
            rows = rows.filter(created_at__gte=self.created_after)
        if self.created_before:
            rows = rows.filter(created_at__lt=self.created_before)
        return rows


def deadletters_open(where: DeadLetterFilter | None = None) -> QuerySet[DeadLetter]:
    """Dead letters not replayed yet, matching ``where``."""
    rows = DeadLetter.objects.filter(replayed_at__isnull=True)
    return where.apply(rows) if where else rows


def deadletters_open_list(*, where: DeadLetterFilter | None = None) -> QuerySet[DeadLetter]:
    """Open (not replayed) dead letters matching ``where``, with each delivery's recipient
    and attempt history (oldest first) loaded in two more queries per page, not per row."""
    attempts = DeliveryAttempt.objects.order_by("number", "created_at", "id")
    return (
        deadletters_open(where)
        .select_related("delivery__recipient")
        .prefetch_related(Prefetch("delivery__attempt_log", queryset=attempts))
    )


def suppressions_list(*, kind: str = "", address: str = "") -> QuerySet[Suppression]:
    """Suppressed addresses, optionally of one kind and one exact (normalised) address."""
    rows = Suppression.objects.all()
    if kind:
        rows = rows.filter(kind=kind)
    if address:
        rows = rows.filter(address=address)
    return rows


def suppression_get(*, kind: str, address: str) -> Suppression | None:
    return Suppression.objects.filter(kind=kind, address=address).first()


def webhook_endpoints(*, recipient: Recipient) -> QuerySet[WebhookEndpoint]:
    return WebhookEndpoint.objects.filter(recipient=recipient).order_by("id")
