"""The people notified, their devices, topics, preferences, webhook endpoints, and the
addresses nothing is sent to."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils.timezone import now

from notifications.models.catalog import KEY_VALIDATOR, Category, Channel, NotificationType


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

    # No database-level foreign key: the row is bumped only in the transaction that writes
    # the recipient's inbox items, which are tied to their deliveries and those to the
    # recipient (notifications/models/inbox.py). Deletion cascades through the ORM.
    recipient = models.OneToOneField(
        Recipient, primary_key=True, on_delete=models.CASCADE, db_constraint=False
    )
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
    # No index of its own: the unique constraint's (topic, recipient) index serves every
    # lookup by topic and is the one a fan-out's keyset pages must use (with a topic-only
    # index, fresh statistics of a just-filled topic made the planner read the whole topic
    # for each page of 2,000).
    topic = models.ForeignKey(Topic, on_delete=models.CASCADE, related_name="subscriptions", db_index=False)
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


class DigestFrequency(models.TextChoices):
    OFF = "off", "Off: each notification as it happens"
    DAILY = "daily", "Daily digest"
    WEEKLY = "weekly", "Weekly digest"


class DigestSetting(models.Model):
    """How often a recipient wants one category's notifications gathered into a digest.
    Like Preference, only what the recipient chose is stored; no row means "off". Critical
    notifications are never gathered (services/recipients.py refuses the category)."""

    recipient = models.ForeignKey(Recipient, on_delete=models.CASCADE, related_name="digest_settings")
    category = models.CharField(max_length=20, choices=Category.choices)
    frequency = models.CharField(max_length=10, choices=DigestFrequency.choices)
    # When the next digest is due (the recipient's DIGEST_LOCAL_TIME, in their timezone);
    # None until the digests sweep computes it (notifications/services/digests.py).
    next_at = models.DateTimeField(null=True, blank=True, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["recipient", "category"], name="digest_setting_unique_category")
        ]

    def __str__(self) -> str:
        return f"{self.recipient_id}:{self.category}={self.frequency}"


class DigestRun(models.Model):
    """One digest of one category for one recipient, for the period ending ``period_end``:
    the row is the claim (unique per period), so two sweeps never send one twice. It names
    the digest event sent (none when nothing was left unread)."""

    recipient = models.ForeignKey(Recipient, on_delete=models.CASCADE, related_name="digest_runs")
    category = models.CharField(max_length=20, choices=Category.choices)
    frequency = models.CharField(max_length=10, choices=DigestFrequency.choices)
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    item_count = models.PositiveIntegerField(default=0)
    event_id = models.UUIDField(null=True, blank=True)
    created_at = models.DateTimeField(default=now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["recipient", "category", "period_end"], name="digest_run_unique_period"
            )
        ]
        indexes = [models.Index(fields=["recipient", "category", "-period_end"], name="digest_run_latest")]

    def __str__(self) -> str:
        return f"{self.frequency} {self.category} digest of {self.recipient_id} to {self.period_end:%Y-%m-%d %H:%M}"


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
