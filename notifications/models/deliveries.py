"""Deliveries (one per event, recipient and channel) and the small tables that queue,
schedule, batch, record and watch them (docs/architecture.md, "The six durable work
queues").

High-volume tables carry ``created_at`` so that they can be partitioned by time later.
Every uniqueness rule that makes a pipeline step safe to re-run is a database
constraint, not a Python check.
"""

from __future__ import annotations

import uuid

from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q
from django.utils.timezone import now

from notifications.models.catalog import Channel, NotificationType
from notifications.models.events import Event
from notifications.models.recipients import Recipient
from notifications.states import DeliveryStatus

DELIVERY_KEY_NAMESPACE = uuid.UUID("6f1c1d0e-8a4b-4f7e-9d55-3c1f0a7b2e10")


def delivery_idempotency_key(event_id: uuid.UUID | str, recipient_id: int, channel: str) -> uuid.UUID:
    """Deterministic key of the one delivery an (event, recipient, channel) may have, derived
    from the unique triple the database enforces; providers receive it as their
    idempotency key."""
    return uuid.uuid5(DELIVERY_KEY_NAMESPACE, f"{event_id}:{recipient_id}:{channel}")


def target_idempotency_key(delivery_key: uuid.UUID | str, target: str) -> uuid.UUID:
    """Key of one provider call of a delivery that fans out to several targets (each of a
    user's devices, each webhook endpoint): stable across retries, distinct per target."""
    return uuid.uuid5(DELIVERY_KEY_NAMESPACE, f"{delivery_key}:{target}")


class Delivery(models.Model):
    # No index may mention status, attempts, due_at, sent_at or updated_at: then a status
    # change is a HOT update (no index entries written; the table keeps free space on each
    # page, see the fillfactor migrations). Work queues over deliveries live in their own
    # small tables instead (DispatchBatch, DeliverySchedule). The unique
    # (event, recipient, channel) index is the idempotency key and serves per-event reads.
    # No database-level foreign key to the event: every row inserted would take a KEY SHARE
    # lock on the one event row, and thousands of those from concurrent transactions turn
    # into MultiXact churn at commit. Deletion still cascades through the ORM.
    # Nor to the recipient: the check locked the recipient row of every row inserted (a
    # sixth of a large in-app page's write, docs/benchmarks.md, P1). Instead every insert of
    # deliveries selects their recipients in the same statement, and recipients are deleted
    # only by services/recipients.py's recipients_delete, which first waits out every
    # transaction inserting deliveries and holds new ones back until it commits: no row
    # outlives its recipient.
    event = models.ForeignKey(
        Event, on_delete=models.CASCADE, related_name="deliveries", db_index=False, db_constraint=False
    )
    recipient = models.ForeignKey(
        Recipient, on_delete=models.CASCADE, related_name="deliveries", db_index=False, db_constraint=False
    )
    channel = models.CharField(max_length=10, choices=Channel.choices)
    status = models.CharField(max_length=20, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    reason = models.CharField(max_length=200, blank=True)
    attempts = models.SmallIntegerField(default=0)
    due_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=now)
    updated_at = models.DateTimeField(default=now)
    sent_at = models.DateTimeField(null=True, blank=True)
    aggregate_count = models.IntegerField(
        default=1, db_default=1, help_text="How many events this delivery stands for."
    )
    # A sender's compare-and-set claim: while in the future, nobody else sends this delivery.
    # Its exact value identifies the claim, so a sender whose claim expired and was taken
    # over cannot overwrite the new owner's result.
    claimed_until = models.DateTimeField(null=True, blank=True)
    # Attempts made before the last dead-letter replay: the retry budget counts from here.
    retry_base = models.SmallIntegerField(default=0, db_default=0)
    provider = models.CharField(max_length=50, blank=True, db_default="", default="")
    # The number of the type's TemplateVersion the last send attempt rendered.
    template_version = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "deliveries"
        constraints = [
            models.UniqueConstraint(
                fields=["event", "recipient", "channel"], name="delivery_unique_event_recipient_channel"
            )
        ]
        indexes = [
            models.Index(fields=["recipient", "created_at"], name="delivery_recipient_created"),
        ]

    def __str__(self) -> str:
        return f"delivery {self.id} {self.channel} {self.status}"

    @property
    def idempotency_key(self) -> uuid.UUID:
        return delivery_idempotency_key(self.event_id, self.recipient_id, self.channel)


class DispatchBatch(models.Model):
    """Deliveries of one channel handed to its queue, written in the transaction that
    planned them: the outbox of dispatch. A batch whose task was lost (broker flushed,
    worker killed) is enqueued again by the sweep when its lease runs out.

    Either pending deliveries (``delivery_ids``; the dispatch claims each by
    compare-and-set), or, for a large in-app page of one event, the recipients planned for
    it (``planned_event`` and ``planned_recipients``): their delivery rows do not exist yet
    and the in-app dispatch inserts them delivered, with their inbox items, in the
    transaction that closes the batch (services/deliveries.py). Either way running a batch
    twice is harmless."""

    channel = models.CharField(max_length=10, choices=Channel.choices)
    delivery_ids = ArrayField(models.BigIntegerField(), default=list, blank=True)
    planned_event = models.UUIDField(null=True, blank=True)
    planned_recipients = ArrayField(models.BigIntegerField(), default=list, blank=True)
    created_at = models.DateTimeField(default=now)
    leased_until = models.DateTimeField()
    done_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "dispatch batches"
        indexes = [
            models.Index(fields=["leased_until"], condition=Q(done_at__isnull=True), name="dispatch_open_idx")
        ]

    def __str__(self) -> str:
        return f"{self.channel} batch {self.id} ({self.size})"

    @property
    def size(self) -> int:
        return len(self.delivery_ids) + len(self.planned_recipients)


class DeliverySchedule(models.Model):
    """The durable due time of a scheduled delivery (quiet hours, aggregation window; later
    retries), released by the sweep: never a broker ETA."""

    delivery = models.OneToOneField(
        Delivery, primary_key=True, on_delete=models.CASCADE, related_name="schedule"
    )
    due_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return f"{self.delivery_id} due {self.due_at:%Y-%m-%d %H:%M:%S}"


class AggregationBatch(models.Model):
    """Events of an aggregated type for one recipient and channel within the type's window.
    The first event's delivery (the leader) waits until ``closes_at``; later ones are
    suppressed into it and counted here, so one message says "Ana and 41 others…"."""

    notification_type = models.ForeignKey(NotificationType, on_delete=models.CASCADE)
    recipient = models.ForeignKey(Recipient, on_delete=models.CASCADE)
    channel = models.CharField(max_length=10, choices=Channel.choices)
    leader = models.OneToOneField(Delivery, on_delete=models.CASCADE, related_name="batch")
    count = models.IntegerField(default=1)
    samples = models.JSONField(
        default=list, blank=True, help_text="The data of the first events, at most 10."
    )
    closes_at = models.DateTimeField()
    closed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["notification_type", "recipient", "channel"],
                condition=Q(closed_at__isnull=True),
                name="batch_one_open_per_recipient_channel",
            )
        ]

    def __str__(self) -> str:
        return f"batch {self.id}: {self.count} for {self.recipient_id}"


class AttemptOutcome(models.TextChoices):
    SUCCESS = "success", "Success"
    TRANSIENT = "transient", "Transient error"
    RATE_LIMITED = "rate_limited", "Rate limited"
    PERMANENT = "permanent", "Permanent error"


class DeliveryAttempt(models.Model):
    # No index of its own: the unique constraint's index starts with the delivery.
    delivery = models.ForeignKey(
        Delivery, on_delete=models.CASCADE, related_name="attempt_log", db_index=False
    )
    number = models.SmallIntegerField()
    outcome = models.CharField(max_length=20, choices=AttemptOutcome.choices)
    error = models.TextField(blank=True)
    provider = models.CharField(max_length=50, blank=True)
    provider_message_id = models.CharField(max_length=200, blank=True)
    latency_ms = models.IntegerField(null=True, blank=True)
    # The device token, address or URL called (a push delivery calls each device).
    target = models.CharField(max_length=512, blank=True, default="")
    detail = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["delivery", "number", "target", "provider"],
                name="attempt_unique_delivery_number_target",
            )
        ]

    def __str__(self) -> str:
        return f"attempt {self.number} of {self.delivery_id}: {self.outcome}"


class DeadLetter(models.Model):
    """A delivery whose retries ran out: listed for staff, replayable. The queue of dead
    letters is this small table, not an index on the delivery status (HOT updates)."""

    delivery = models.OneToOneField(
        Delivery, primary_key=True, on_delete=models.CASCADE, related_name="dead_letter"
    )
    channel = models.CharField(max_length=10, choices=Channel.choices)
    notification_type = models.CharField(max_length=100)
    reason = models.CharField(max_length=200)
    attempts = models.SmallIntegerField()
    created_at = models.DateTimeField(default=now)
    replayed_at = models.DateTimeField(null=True, blank=True)
    replay_count = models.SmallIntegerField(default=0)

    class Meta:
        indexes = [
            models.Index(
                fields=["created_at"], condition=Q(replayed_at__isnull=True), name="deadletter_open_idx"
            )
        ]

    def __str__(self) -> str:
        return f"dead {self.channel} delivery {self.delivery_id}"


class FallbackCheck(models.Model):
    """A durable question for later: "has this delivery reached the user?" When it has not
    by ``due_at`` (or failed for good before), the event is delivered on ``to_channel``."""

    delivery = models.OneToOneField(
        Delivery, primary_key=True, on_delete=models.CASCADE, related_name="fallback_check"
    )
    to_channel = models.CharField(max_length=10, choices=Channel.choices)
    due_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return f"{self.delivery_id} -> {self.to_channel} at {self.due_at:%H:%M:%S}"


class DeliveryEvent(models.Model):
    """What a provider told us after accepting: delivered, opened, clicked, bounced,
    complained, deferred. Kept as history; the delivery's status follows it forward only."""

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="tracking")
    kind = models.CharField(max_length=20)
    provider = models.CharField(max_length=50)
    occurred_at = models.DateTimeField(default=now)
    detail = models.JSONField(default=dict, blank=True)

    def __str__(self) -> str:
        return f"{self.delivery_id} {self.kind}"


class ProviderCursor(models.Model):
    """Where reading a provider's event log (Mailgun's events API) got to: the address of
    the next page, which also brings the events logged since (notifications/services/
    receipts_poll.py). Moved in the transaction that stores the page's receipts."""

    provider = models.CharField(max_length=50, unique=True)
    next_url = models.TextField(blank=True, default="")
    events = models.BigIntegerField(default=0)
    polled_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.provider}: {self.events} events"
