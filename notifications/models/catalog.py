"""Notification types, their templates, and the API keys of producing services."""

from __future__ import annotations

from django.conf import settings
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
    # The variables its templates use, as declared by the published template version
    # (notifications/services/template_variables.py): {name: {"type", "required",
    # "example", "description"}}. An event lacking a required one is refused at ingest.
    variables = models.JSONField(default=dict, blank=True, db_default={})
    # The number of the TemplateVersion whose templates are the NotificationTemplate rows.
    template_version = models.PositiveIntegerField(default=0, db_default=0)
    created_at = models.DateTimeField(default=now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["key"]

    def __str__(self) -> str:
        return self.key

    @property
    def is_critical(self) -> bool:
        return self.category == Category.CRITICAL

    @property
    def needs_approval(self) -> bool:
        """Whether publishing its templates takes a second staff member's approval."""
        return self.category in (Category.CRITICAL, Category.MARKETING)


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


class TemplateVersionStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    PENDING = "pending", "Awaiting approval"
    PUBLISHED = "published", "Published"
    RETIRED = "retired", "Retired"
    REJECTED = "rejected", "Rejected"


class TemplateVersion(models.Model):
    """One version of all of a type's templates, ``{locale: {channel: content}}``, with
    the variables they use. Exactly one is published per type (its templates are the
    NotificationTemplate rows deliveries render); earlier ones stay as history, retired.
    Who wrote, asked to publish, approved and published it is kept
    (notifications/services/template_versions.py)."""

    notification_type = models.ForeignKey(
        NotificationType, on_delete=models.CASCADE, related_name="template_versions"
    )
    number = models.PositiveIntegerField()
    status = models.CharField(
        max_length=10, choices=TemplateVersionStatus.choices, default=TemplateVersionStatus.DRAFT
    )
    templates = models.JSONField(default=dict, blank=True)
    variables = models.JSONField(default=dict, blank=True)
    note = models.CharField(max_length=200, blank=True, default="")
    based_on = models.PositiveIntegerField(null=True, blank=True, help_text="The version it was copied from.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=now)
    updated_at = models.DateTimeField(default=now)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    requested_at = models.DateTimeField(null=True, blank=True)
    approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    approved_at = models.DateTimeField(null=True, blank=True)
    rejected_reason = models.CharField(max_length=200, blank=True, default="")
    published_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    published_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["notification_type", "-number"]
        constraints = [
            models.UniqueConstraint(
                fields=["notification_type", "number"], name="template_version_unique_number"
            ),
            models.UniqueConstraint(
                fields=["notification_type"],
                condition=models.Q(status="published"),
                name="template_version_one_published",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.notification_type} v{self.number} ({self.status})"

    @property
    def editable(self) -> bool:
        return self.status in (TemplateVersionStatus.DRAFT, TemplateVersionStatus.REJECTED)
