"""Presence: what outlives Redis. Live state (connections, activity, the last-seen moments
of the last week) is in Redis (realtime/registry.py); the database keeps each user's last
seen moment, written in bulk by presence/services.py's last_seen_flush."""

from __future__ import annotations

from django.db import models


class LastSeen(models.Model):
    """When an end user was last seen connected. Keyed by recipient id alone: presence
    never imports the notification app (docs/architecture.md, Layers)."""

    recipient_id = models.BigIntegerField(primary_key=True)
    at = models.DateTimeField()

    class Meta:
        verbose_name_plural = "last seen"

    def __str__(self) -> str:
        return f"{self.recipient_id} last seen {self.at:%Y-%m-%d %H:%M:%S}"
