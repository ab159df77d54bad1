"""The notification pipeline's tables.

High-volume tables (deliveries, attempts, inbox items) carry ``created_at`` so that they
can be partitioned by time later. Every uniqueness rule that makes a
pipeline step safe to re-run is a database constraint, not a Python check.
"""

from __future__ import annotations

import os
import time
import uuid

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q
from django.utils.timezone import now

# Defined with its transitions in notifications/states.py; importable from here too.
from notifications.states import DeliveryStatus as DeliveryStatus


def time_ordered_uuid() -> uuid.UUID:
    """A UUIDv7: random enough to be unguessable, ordered by creation so the primary-key
    index stays append-mostly under heavy ingest."""
    millis = time.time_ns() // 1_000_000
    raw = bytearray(millis.to_bytes(6, "big") + os.urandom(10))
    raw[6] = (raw[6] & 0x0F) | 0x70
    raw[8] = (raw[8] & 0x3F) | 0x80
    return uuid.UUID(bytes=bytes(raw))


class Channel(models.TextChoices):
    INAPP = "inapp", "In-app"
    EMAIL = "email", "Email"
    SMS = "sms", "SMS"
    PUSH = "push", "Push"
    WEBHOOK = "webhook", "Webhook"


class Category(models.TextChoices):
    CRITICAL = "critical", "Critical"
    TRANSACTIONAL = "transactional", "Transactional"
    SOCIAL = "social", "Social"
    MARKETING = "marketing", "Marketing"


# Fields each channel's template may define (the API's templates, README "The public contract").
TEMPLATE_FIELDS: dict[str, tuple[str, ...]] = {
    Channel.INAPP: ("title", "body", "url"),
    Channel.EMAIL: ("subject", "html", "text"),
    Channel.SMS: ("text",),
    Channel.PUSH: ("title", "body"),
    Channel.WEBHOOK: ("text",),
}

KEY_PATTERN = r"^[a-z0-9][a-z0-9_.:\-]{0,99}$"
KEY_VALIDATOR = RegexValidator(
    KEY_PATTERN,
    "Use lowercase letters, digits and . _ : - (at most 100 characters), starting with a letter or digit.",
)


class ApiKey(models.Model):
    """A producing service's credential. Only a SHA-256 of the secret is stored: keys are
    256-bit random values, so a fast hash is as strong as a slow one here."""

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True, help_text="Public part, shown to identify the key.")
    key_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class QuietHoursPolicy(models.TextChoices):
    DEFER = "defer", "Defer until quiet hours end"
    DROP = "drop", "Drop during quiet hours"


class NotificationType(models.Model):
    key = models.CharField(max_length=100, unique=True, validators=[KEY_VALIDATOR])
    name = models.CharField(max_length=200, blank=True)
    category = models.CharField(max_length=20, choices=Category.choices, default=Category.TRANSACTIONAL)
    channels = ArrayField(models.CharField(max_length=10, choices=Channel.choices), default=list)
    default_locale = models.CharField(max_length=20, default="en")
    aggregation_window_seconds = models.PositiveIntegerField(
        null=True, blank=True, help_text="Events for one recipient within the window become one delivery."
    )
    quiet_hours_policy = models.CharField(
        max_length=10, choices=QuietHoursPolicy.choices, default=QuietHoursPolicy.DEFER
    )
    # Channel fallback rules: [{"from": "push", "to": "sms", "after_seconds": 60}]: when the
    # "from" delivery has not reached the user (delivered, opened, read) within the delay,
    # or failed for good, the event is delivered on "to" as well.
    fallbacks = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(default=now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["key"]

    def __str__(self) -> str:
        return self.key

    @property
    def is_critical(self) -> bool:
        return self.category == Category.CRITICAL


class NotificationTemplate(models.Model):
    """The words of one channel of a type in one locale; ``content`` holds the channel's
    fields (``TEMPLATE_FIELDS``) written in the sandboxed template language."""

    notification_type = models.ForeignKey(
        NotificationType, on_delete=models.CASCADE, related_name="templates"
    )
    channel = models.CharField(max_length=10, choices=Channel.choices)
    locale = models.CharField(max_length=20, default="en")
    content = models.JSONField(default=dict)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["notification_type", "channel", "locale"], name="template_unique_type_channel_locale"
            )
        ]

    def __str__(self) -> str:
        return f"{self.notification_type_id}:{self.channel}:{self.locale}"


class Recipient(models.Model):
    external_id = models.CharField(max_length=200, unique=True)
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="recipient"
    )
    name = models.CharField(max_length=200, blank=True)
    email = models.EmailField(blank=True)
    phone = models.CharField(max_length=20, blank=True, help_text="E.164")
    locale = models.CharField(max_length=20, default="en")
    timezone = models.CharField(max_length=64, default="UTC")
    quiet_hours_start = models.TimeField(null=True, blank=True)
    quiet_hours_end = models.TimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=now)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return self.external_id


class InboxSequence(models.Model):
    """The last inbox sequence number handed out per recipient. A narrow row of its own so
    that bumping it during fan-out does not rewrite the wide recipient row."""

    recipient = models.OneToOneField(Recipient, primary_key=True, on_delete=models.CASCADE)
    last_seq = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.recipient_id}@{self.last_seq}"


class DevicePlatform(models.TextChoices):
    FCM = "fcm", "Firebase Cloud Messaging"
    APNS = "apns", "Apple Push Notification service"


class Device(models.Model):
    recipient = models.ForeignKey(Recipient, on_delete=models.CASCADE, related_name="devices")
    platform = models.CharField(max_length=10, choices=DevicePlatform.choices)
    token = models.CharField(max_length=512)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=now)
    last_seen_at = models.DateTimeField(default=now)
    deactivated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["platform", "token"], name="device_unique_platform_token")
        ]

    def __str__(self) -> str:
        return f"{self.platform}:{self.token[:12]}…"


class Topic(models.Model):
    key = models.CharField(max_length=100, unique=True, validators=[KEY_VALIDATOR])
    name = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=now)

    def __str__(self) -> str:
        return self.key


class Subscription(models.Model):
    topic = models.ForeignKey(Topic, on_delete=models.CASCADE, related_name="subscriptions")
    recipient = models.ForeignKey(Recipient, on_delete=models.CASCADE, related_name="subscriptions")
    created_at = models.DateTimeField(default=now)

    class Meta:
        # (topic, recipient) is also the keyset order fan-out pages by.
        constraints = [
            models.UniqueConstraint(fields=["topic", "recipient"], name="subscription_unique_topic_recipient")
        ]

    def __str__(self) -> str:
        return f"{self.topic_id}:{self.recipient_id}"


class Preference(models.Model):
    """One stored override. Scope: a type, or a category, or neither (all notifications);
    only what differs from the type's defaults is stored."""

    recipient = models.ForeignKey(Recipient, on_delete=models.CASCADE, related_name="preferences")
    notification_type = models.ForeignKey(NotificationType, null=True, blank=True, on_delete=models.CASCADE)
    category = models.CharField(max_length=20, choices=Category.choices, blank=True)
    channel = models.CharField(max_length=10, choices=Channel.choices)
    enabled = models.BooleanField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["recipient", "notification_type", "category", "channel"],
                name="preference_unique_scope",
                nulls_distinct=False,
            ),
            models.CheckConstraint(
                condition=Q(notification_type__isnull=True) | Q(category=""),
                name="preference_type_or_category",
            ),
        ]

    def __str__(self) -> str:
        scope = self.notification_type_id or self.category or "*"
        return f"{self.recipient_id}:{scope}:{self.channel}={'on' if self.enabled else 'off'}"


class EventStatus(models.TextChoices):
    ACCEPTED = "accepted", "Accepted"
    SCHEDULED = "scheduled", "Scheduled"
    PROCESSING = "processing", "Processing"
    COMPLETED = "completed", "Completed"


class Event(models.Model):
    id = models.UUIDField(primary_key=True, default=time_ordered_uuid, editable=False)
    notification_type = models.ForeignKey(NotificationType, on_delete=models.PROTECT, related_name="events")
    api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL)
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    request_fingerprint = models.CharField(max_length=64, help_text="SHA-256 of the canonical request body.")
    data = models.JSONField(default=dict, blank=True)
    # Explicit audiences are resolved to recipient ids at ingest, sorted, so fan-out pages
    # them by keyset like a topic's subscribers.
    recipient_ids = ArrayField(models.BigIntegerField(), null=True, blank=True)
    topic = models.ForeignKey(Topic, null=True, blank=True, on_delete=models.PROTECT)
    send_at = models.DateTimeField(null=True, blank=True)
    # The end user's IP that caused the event (an OTP request, say), for per-IP SMS limits.
    origin_ip = models.GenericIPAddressField(null=True, blank=True)
    status = models.CharField(max_length=20, choices=EventStatus.choices, default=EventStatus.ACCEPTED)
    planned_count = models.IntegerField(default=0, help_text="Recipients planned so far.")
    created_at = models.DateTimeField(default=now, db_index=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["api_key", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="event_unique_idempotency_key",
            ),
            models.CheckConstraint(
                condition=Q(recipient_ids__isnull=True) ^ Q(topic__isnull=True),
                name="event_recipients_xor_topic",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.notification_type_id} {self.id}"


class OutboxMessage(models.Model):
    """Written in the same transaction as its event: the promise that the event will be
    fanned out even if the broker is down when the API commits. ``cursor`` is the last
    recipient id planned, so a fan-out cut off mid-way resumes where it stopped."""

    event = models.OneToOneField(Event, on_delete=models.CASCADE, related_name="outbox")
    available_at = models.DateTimeField(default=now)
    leased_until = models.DateTimeField(null=True, blank=True)
    cursor = models.BigIntegerField(default=0)
    attempts = models.IntegerField(default=0)
    created_at = models.DateTimeField(default=now)
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(
                fields=["available_at"], condition=Q(processed_at__isnull=True), name="outbox_unprocessed_idx"
            )
        ]

    def __str__(self) -> str:
        return f"outbox {self.id} for {self.event_id}"


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
    # page, see the fillfactor migration). Work queues over deliveries live in their own
    # small tables instead (DispatchBatch, DeliverySchedule). The unique
    # (event, recipient, channel) index is the idempotency key and serves per-event reads.
    # No database-level foreign key to the event: every row inserted would take a KEY SHARE
    # lock on the one event row, and thousands of those from concurrent transactions turn
    # into MultiXact churn at commit. Deletion still cascades through the ORM.
    event = models.ForeignKey(
        Event, on_delete=models.CASCADE, related_name="deliveries", db_index=False, db_constraint=False
    )
    recipient = models.ForeignKey(
        Recipient, on_delete=models.CASCADE, related_name="deliveries", db_index=False
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
    """Pending deliveries of one channel handed to its queue, written in the transaction
    that made them pending: the outbox of dispatch. A batch whose task was lost (broker
    flushed, worker killed) is enqueued again by the sweep when its lease runs out; the
    dispatch claims each delivery by compare-and-set, so running a batch twice is harmless."""

    channel = models.CharField(max_length=10, choices=Channel.choices)
    delivery_ids = ArrayField(models.BigIntegerField())
    created_at = models.DateTimeField(default=now)
    leased_until = models.DateTimeField()
    done_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "dispatch batches"
        indexes = [
            models.Index(fields=["leased_until"], condition=Q(done_at__isnull=True), name="dispatch_open_idx")
        ]

    def __str__(self) -> str:
        return f"{self.channel} batch {self.id} ({len(self.delivery_ids)})"


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
    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attempt_log")
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


class InboxItem(models.Model):
    """What the end user sees. ``seq`` starts at 1 per recipient and grows by one per item;
    clients resume from it, so the socket may lose frames without losing notifications."""

    # (recipient, seq) is unique and serves every per-user read; no separate FK indexes.
    recipient = models.ForeignKey(
        Recipient, on_delete=models.CASCADE, related_name="inbox_items", db_index=False
    )
    seq = models.BigIntegerField()
    delivery = models.OneToOneField(Delivery, on_delete=models.CASCADE, related_name="inbox_item")
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
        ]

    def __str__(self) -> str:
        return f"{self.recipient_id}#{self.seq}"


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


class SuppressionKind(models.TextChoices):
    EMAIL = "email", "Email address"
    PHONE = "phone", "Phone number"


class SuppressionReason(models.TextChoices):
    HARD_BOUNCE = "hard_bounce", "Hard bounce"
    COMPLAINT = "complaint", "Spam complaint"
    SMS_STOP = "sms_stop", "Replied STOP"
    INVALID = "invalid", "Invalid destination"
    MANUAL = "manual", "Added by staff"


class Suppression(models.Model):
    """An address nothing is sent to, whatever the category: hard bounces, complaints and
    STOP replies protect the sender's reputation and the law. Addresses are stored
    normalised (lower-case email, E.164 phone)."""

    kind = models.CharField(max_length=10, choices=SuppressionKind.choices)
    address = models.CharField(max_length=320)
    reason = models.CharField(max_length=20, choices=SuppressionReason.choices)
    detail = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["kind", "address"], name="suppression_unique_address")]

    def __str__(self) -> str:
        return f"{self.kind}:{self.address} ({self.reason})"


class WebhookKind(models.TextChoices):
    SLACK = "slack", "Slack incoming webhook"
    TEAMS = "teams", "Microsoft Teams incoming webhook"
    GENERIC = "generic", "Signed HTTPS webhook"


class WebhookEndpoint(models.Model):
    recipient = models.ForeignKey(Recipient, on_delete=models.CASCADE, related_name="webhooks")
    kind = models.CharField(max_length=10, choices=WebhookKind.choices)
    url = models.URLField(max_length=2000)
    secret = models.CharField(max_length=100, blank=True, help_text="Signing secret of generic webhooks.")
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["recipient", "url"], name="webhook_unique_recipient_url")
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.url}"


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
