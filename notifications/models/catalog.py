"""Notification types, their templates, and the API keys of producing services."""

from __future__ import annotations

from django.contrib.postgres.fields import ArrayField
from django.core.validators import RegexValidator
from django.db import models
from django.utils.timezone import now


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
    # For a user online in the app (presence/services.py), who sees the in-app copy: "send"
    # the email, SMS and push as usual, "skip" them, or "delay:<seconds>" them.
    when_active = models.CharField(
        max_length=20,
        default="send",
        db_default="send",
        blank=True,
        help_text="For a user online in the app: send, skip, or delay:<seconds> email, SMS and push.",
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
