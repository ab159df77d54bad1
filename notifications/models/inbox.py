"""What the end user sees: inbox items, in seq order per user."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils.timezone import now

from notifications.models.catalog import Category
from notifications.models.deliveries import Delivery
from notifications.models.events import Event
from notifications.models.recipients import Recipient


class InboxItem(models.Model):
    """What the end user sees. ``seq`` starts at 1 per recipient and grows by one per item;
    clients resume from it, so the socket may lose frames without losing notifications."""

    # (recipient, seq) is unique and serves every per-user read; no separate FK indexes.
    # No database-level foreign key to the recipient either: an item's recipient is its
    # delivery's, whose own key to the recipient stands for both (an item cannot outlive
    # its delivery, below). Each such key costs every inserted row a lookup and a KEY SHARE
    # lock on the recipient row (docs/benchmarks.md, P1). Deletion cascades through the ORM.
    # The key to the delivery is not checked by the database either: an item is written
    # only in the transaction that inserts its delivery or claims it (its row locked), so
    # the delivery exists; the check locked that row once more per item, and was a third of
    # a large page's in-app write (docs/benchmarks.md, P1).
    recipient = models.ForeignKey(
        Recipient, on_delete=models.CASCADE, related_name="inbox_items", db_index=False, db_constraint=False
    )
    seq = models.BigIntegerField()
    delivery = models.OneToOneField(
        Delivery, on_delete=models.CASCADE, related_name="inbox_item", db_constraint=False
    )
    event = models.ForeignKey(
        Event, on_delete=models.CASCADE, related_name="inbox_items", db_index=False, db_constraint=False
    )
    notification_type = models.CharField(max_length=100)
    category = models.CharField(max_length=20, choices=Category.choices)
    title = models.TextField(blank=True)
    body = models.TextField(blank=True)
    url = models.CharField(max_length=2000, blank=True)
    data = models.JSONField(default=dict, blank=True)
    read_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=now)
    # When the event was accepted (a scheduled send: when it came due). The inbox lists
    # newest first by this, not by seq: seq is handed out in the order fan-out workers
    # commit, which can differ from the order the producer sent in.
    accepted_at = models.DateTimeField(default=now)
    # Archived items leave the inbox list (the API's ``archived=true`` lists them) and
    # count as read. A snoozed item is hidden until ``snoozed_until`` and then comes back
    # as new: services/inbox.py inbox_snoozed_wake re-publishes it and pushes a frame.
    archived_at = models.DateTimeField(null=True, blank=True)
    snoozed_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["recipient", "seq"], name="inbox_unique_recipient_seq")
        ]
        indexes = [
            models.Index(fields=["recipient"], condition=Q(read_at__isnull=True), name="inbox_unread_idx"),
            models.Index(
                "recipient",
                models.F("accepted_at").desc(),
                models.F("seq").desc(),
                name="inbox_recipient_listed",
            ),
            models.Index(
                fields=["snoozed_until"], condition=Q(snoozed_until__isnull=False), name="inbox_snoozed_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.recipient_id}#{self.seq}"
