"""Live streaming: streams and their live sessions, followers, the chat and its moderation.

A stream's owner and viewers are the notification platform's recipients (their
``external_id``), so "went live" reaches followers through the pipeline
(streaming/services/notify.py). ``key`` is public (the page ``/live/{key}/`` and the HLS
path); ``stream_key`` is the publisher's secret, checked by nginx-rtmp's ``on_publish``
callback (streaming/services/ingest.py) and rotated from the admin.
"""

from __future__ import annotations

import secrets
import uuid

from django.db import models
from django.db.models import Q
from django.utils.timezone import now

from notifications.models import Recipient


def new_stream_key() -> str:
    return "sk_" + secrets.token_urlsafe(24)


class StreamStatus(models.TextChoices):
    OFFLINE = "offline"
    LIVE = "live"


class Stream(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    key = models.SlugField(max_length=64, unique=True, help_text="public: /live/{key}/ and the HLS path")
    title = models.CharField(max_length=200)
    owner = models.ForeignKey(Recipient, on_delete=models.CASCADE, related_name="streams")
    stream_key = models.CharField(max_length=64, unique=True, default=new_stream_key, editable=False)
    status = models.CharField(max_length=8, choices=StreamStatus.choices, default=StreamStatus.OFFLINE)
    record = models.BooleanField(default=False, help_text="keep the segments as a recording when it ends")
    # chat settings
    links_allowed = models.BooleanField(default=False)
    slow_mode_seconds = models.PositiveIntegerField(default=0, help_text="0: off")
    blocked_words = models.TextField(blank=True, default="", help_text="one word or phrase per line")
    created_at = models.DateTimeField(default=now)
    key_rotated_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.key} ({self.status})"


class LiveSession(models.Model):
    """One time on air: from the first publish until the publisher has been gone longer
    than the grace period. A publisher who drops and comes back within it continues the
    same session (and its followers are not told again)."""

    stream = models.ForeignKey(Stream, on_delete=models.CASCADE, related_name="sessions")
    started_at = models.DateTimeField(default=now)
    ended_at = models.DateTimeField(null=True, blank=True)
    publishes = models.PositiveIntegerField(default=1, help_text="publisher connections in this session")
    notified_at = models.DateTimeField(null=True, blank=True, help_text="followers told it went live")
    end_reason = models.CharField(max_length=200, blank=True, default="")
    recording = models.CharField(max_length=300, blank=True, default="", help_text="kept HLS, if recorded")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["stream"], condition=Q(ended_at__isnull=True), name="streaming_one_open_session"
            )
        ]

    def __str__(self) -> str:
        return f"{self.stream_id} {self.started_at:%Y-%m-%d %H:%M}"


class Follow(models.Model):
    follower = models.ForeignKey(Recipient, on_delete=models.CASCADE, related_name="follows")
    creator = models.ForeignKey(Recipient, on_delete=models.CASCADE, related_name="followers")
    created_at = models.DateTimeField(default=now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["follower", "creator"], name="streaming_follow_once")]

    def __str__(self) -> str:
        return f"{self.follower_id} follows {self.creator_id}"


class Moderator(models.Model):
    """Someone the owner named to moderate the chat (the owner always may)."""

    stream = models.ForeignKey(Stream, on_delete=models.CASCADE, related_name="moderators")
    recipient = models.ForeignKey(Recipient, on_delete=models.CASCADE, related_name="moderating")
    created_at = models.DateTimeField(default=now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["stream", "recipient"], name="streaming_moderator_once")
        ]

    def __str__(self) -> str:
        return f"{self.recipient_id} moderates {self.stream_id}"


class ChatMessage(models.Model):
    stream = models.ForeignKey(Stream, on_delete=models.CASCADE, related_name="messages")
    author = models.ForeignKey(Recipient, on_delete=models.CASCADE, related_name="stream_messages")
    text = models.CharField(max_length=500)
    created_at = models.DateTimeField(default=now)
    deleted_at = models.DateTimeField(null=True, blank=True)
    deleted_by = models.ForeignKey(
        Recipient, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        indexes = [models.Index(fields=["stream", "-id"], name="streaming_chat_recent")]

    def __str__(self) -> str:
        return self.text[:60]


class SanctionKind(models.TextChoices):
    MUTE = "mute"
    BAN = "ban"


class Sanction(models.Model):
    """A viewer muted until ``until`` or banned (``until`` empty) from a stream's chat."""

    stream = models.ForeignKey(Stream, on_delete=models.CASCADE, related_name="sanctions")
    recipient = models.ForeignKey(Recipient, on_delete=models.CASCADE, related_name="stream_sanctions")
    kind = models.CharField(max_length=4, choices=SanctionKind.choices)
    until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=now)
    lifted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["stream", "recipient"], name="streaming_sanction_lookup")]

    def __str__(self) -> str:
        return f"{self.kind} {self.recipient_id} on {self.stream_id}"


class ModerationAction(models.Model):
    """The log: who did what to whom, when."""

    stream = models.ForeignKey(Stream, on_delete=models.CASCADE, related_name="moderation_log")
    moderator = models.ForeignKey(Recipient, null=True, on_delete=models.SET_NULL, related_name="+")
    action = models.CharField(max_length=20)
    target = models.ForeignKey(Recipient, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    message = models.ForeignKey(
        ChatMessage, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=now)

    def __str__(self) -> str:
        return f"{self.action} on {self.stream_id}"
