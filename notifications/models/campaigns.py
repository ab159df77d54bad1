"""Campaigns: one message sent to an audience (a topic, or a saved segment of recipients)
at a throttled pace, possibly in A/B variants (notifications/services/campaigns.py)."""

from __future__ import annotations

from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q
from django.utils.timezone import now

from notifications.models.catalog import Channel, NotificationType
from notifications.models.recipients import Topic


class Segment(models.Model):
    """A saved audience: recipients matching ``filters`` (notifications/services/segments.py),
    counted live; a campaign sends to those who match when it starts."""

    name = models.CharField(max_length=200, unique=True)
    filters = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=now)
    updated_at = models.DateTimeField(default=now)

    def __str__(self) -> str:
        return self.name


class CampaignStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    SCHEDULED = "scheduled", "Scheduled"
    RUNNING = "running", "Running"
    PAUSED = "paused", "Paused"
    COMPLETED = "completed", "Completed"
    CANCELLED = "cancelled", "Cancelled"


class Campaign(models.Model):
    name = models.CharField(max_length=200)
    notification_type = models.ForeignKey(
        NotificationType, on_delete=models.PROTECT, related_name="campaigns"
    )
    audience_topic = models.ForeignKey(
        Topic, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    audience_segment = models.ForeignKey(Segment, null=True, blank=True, on_delete=models.PROTECT)
    data = models.JSONField(default=dict, blank=True)
    # The type's channels this campaign sends on (all of them when empty).
    channels = ArrayField(models.CharField(max_length=10, choices=Channel.choices), default=list, blank=True)
    throttle_per_second = models.PositiveIntegerField(default=100)
    send_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=CampaignStatus.choices, default=CampaignStatus.DRAFT)
    audience_count = models.PositiveIntegerField(default=0, help_text="Recipients when it started.")
    created_at = models.DateTimeField(default=now)
    started_at = models.DateTimeField(null=True, blank=True)
    paused_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(audience_topic__isnull=True) ^ Q(audience_segment__isnull=True),
                name="campaign_topic_xor_segment",
            )
        ]

    def __str__(self) -> str:
        return self.name


class CampaignVariant(models.Model):
    """One arm of a campaign: a share of the audience (``weight``, stable per recipient),
    its own data over the campaign's and optionally another template version. Its
    audience is snapshotted into ``topic`` when the campaign starts and sent as ``event``."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="variants")
    name = models.CharField(max_length=40)
    weight = models.PositiveIntegerField(default=100)
    data = models.JSONField(default=dict, blank=True)
    template_version = models.PositiveIntegerField(null=True, blank=True)
    topic = models.ForeignKey(Topic, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    event_id = models.UUIDField(null=True, blank=True)
    audience_count = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["campaign", "id"]
        constraints = [
            models.UniqueConstraint(fields=["campaign", "name"], name="campaign_variant_unique_name")
        ]

    def __str__(self) -> str:
        return f"{self.campaign_id}:{self.name}"
