"""Accepted events and the outbox rows that promise their fan-out."""

from __future__ import annotations

import os
import time
import uuid

from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q
from django.utils.timezone import now

from notifications.models.catalog import ApiKey, NotificationType
from notifications.models.recipients import Topic


def time_ordered_uuid() -> uuid.UUID:
    """A UUIDv7: random enough to be unguessable, ordered by creation so the primary-key
    index stays append-mostly under heavy ingest."""
    millis = time.time_ns() // 1_000_000
    raw = bytearray(millis.to_bytes(6, "big") + os.urandom(10))
    raw[6] = (raw[6] & 0x0F) | 0x70
    raw[8] = (raw[8] & 0x3F) | 0x80
    return uuid.UUID(bytes=bytes(raw))


class EventStatus(models.TextChoices):
    ACCEPTED = "accepted", "Accepted"
    SCHEDULED = "scheduled", "Scheduled"
    PROCESSING = "processing", "Processing"
    COMPLETED = "completed", "Completed"
    # Cancelled before any of it went out (services/cancellation.py).
    CANCELLED = "cancelled", "Cancelled"


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
    # "At this wall-clock time in each recipient's timezone" (ISO 8601 without offset, e.g.
    # 2026-12-01T09:00:00), or empty; send_at is then the first instant any timezone reaches
    # it (notifications/services/local_time.py).
    send_at_local = models.CharField(max_length=19, blank=True, default="", db_default="")
    # The end user's IP that caused the event (an OTP request, say), for per-IP SMS limits.
    origin_ip = models.GenericIPAddressField(null=True, blank=True)
    # A staff member's test of a template version not (yet) published: its deliveries
    # render that version instead of the published one.
    template_version = models.PositiveIntegerField(null=True, blank=True)
    # The campaign this event sends (one event per variant), whose status and throttle its
    # fan-out follows (notifications/services/campaigns.py).
    campaign = models.ForeignKey(
        "notifications.Campaign", null=True, blank=True, on_delete=models.SET_NULL, related_name="events"
    )
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


class ReminderStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    CANCELLED = "cancelled", "Cancelled"
    FINISHED = "finished", "Finished"


class Reminder(models.Model):
    """A recurring send: an event of ``notification_type`` at each occurrence of an RFC 5545
    rule (``rule``, from ``starts_at`` on), as wall-clock times in ``timezone``, or in each
    recipient's own when it is empty (notifications/services/reminders.py)."""

    id = models.UUIDField(primary_key=True, default=time_ordered_uuid, editable=False)
    api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL)
    notification_type = models.ForeignKey(
        NotificationType, on_delete=models.PROTECT, related_name="reminders"
    )
    # external_ids, as given; recipients deleted since are left out of each occurrence.
    recipients = models.JSONField(null=True, blank=True)
    topic = models.ForeignKey(Topic, null=True, blank=True, on_delete=models.PROTECT)
    data = models.JSONField(default=dict, blank=True)
    rule = models.CharField(max_length=500, help_text="RFC 5545 RRULE, e.g. FREQ=WEEKLY;BYDAY=MO")
    starts_at = models.CharField(max_length=19, help_text="Wall-clock time of the first occurrence")
    timezone = models.CharField(max_length=64, blank=True, help_text="Empty: each recipient's own")
    # The next occurrence (wall-clock time) and when its event is stored; empty once done.
    next_at = models.CharField(max_length=19, blank=True)
    due_at = models.DateTimeField(null=True, blank=True)
    sent = models.IntegerField(default=0)
    status = models.CharField(max_length=16, choices=ReminderStatus.choices, default=ReminderStatus.ACTIVE)
    created_at = models.DateTimeField(default=now)

    class Meta:
        indexes = [
            models.Index(fields=["due_at"], condition=Q(status="active"), name="reminder_due_idx"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(recipients__isnull=True) ^ Q(topic__isnull=True),
                name="reminder_recipients_xor_topic",
            )
        ]

    def __str__(self) -> str:
        return f"reminder {self.id} ({self.rule})"
