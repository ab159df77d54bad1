"""Gaming: ratings per mode, matchmaking tickets, matches and their players.

Players are the notification platform's recipients (their ``external_id``), so a match
found or a rank change reaches them through the pipeline (gaming/services/notify.py).
"""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q
from django.utils.timezone import now

from notifications.models import Recipient


class Rating(models.Model):
    """A player's OpenSkill rating in one mode (Plackett-Luce: ``mu`` the skill, ``sigma``
    the uncertainty); ``ordinal`` (mu - 3 sigma) orders the leaderboard."""

    recipient = models.ForeignKey(Recipient, on_delete=models.CASCADE, related_name="game_ratings")
    mode = models.CharField(max_length=40)
    mu = models.FloatField()
    sigma = models.FloatField()
    ordinal = models.FloatField()
    matches = models.PositiveIntegerField(default=0)
    wins = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(default=now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["recipient", "mode"], name="gaming_rating_one_per_mode")
        ]
        indexes = [models.Index(fields=["mode", "-ordinal"], name="gaming_rating_board")]

    def __str__(self) -> str:
        return f"{self.recipient_id} {self.mode} {self.ordinal:.2f}"


class TicketStatus(models.TextChoices):
    SEARCHING = "searching"
    MATCHED = "matched"
    CANCELLED = "cancelled"


class Ticket(models.Model):
    """A request to play ``mode``, for one player or a party that plays together."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    mode = models.CharField(max_length=40)
    owner = models.ForeignKey(Recipient, on_delete=models.CASCADE, related_name="game_tickets")
    size = models.PositiveSmallIntegerField(default=1)
    rating = models.FloatField(help_text="the members' mean ordinal when the ticket was made")
    latencies = models.JSONField(default=dict, blank=True, help_text="measured round trip per region, ms")
    status = models.CharField(max_length=12, choices=TicketStatus.choices, default=TicketStatus.SEARCHING)
    match = models.ForeignKey(
        "Match", null=True, blank=True, on_delete=models.SET_NULL, related_name="tickets"
    )
    created_at = models.DateTimeField(default=now)
    matched_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(
                fields=["mode", "created_at"],
                condition=Q(status="searching"),
                name="gaming_ticket_searching",
            )
        ]

    def __str__(self) -> str:
        return f"{self.mode} ticket {self.id} ({self.status})"


class TicketMember(models.Model):
    """A player on a ticket. ``searching`` mirrors the ticket's status, so that the
    database itself keeps anyone from being on two open tickets at once."""

    ticket = models.ForeignKey(Ticket, on_delete=models.CASCADE, related_name="members")
    recipient = models.ForeignKey(Recipient, on_delete=models.CASCADE, related_name="+")
    searching = models.BooleanField(default=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["recipient"], condition=Q(searching=True), name="gaming_one_open_ticket_per_player"
            ),
            models.UniqueConstraint(fields=["ticket", "recipient"], name="gaming_ticket_member_once"),
        ]

    def __str__(self) -> str:
        return f"{self.recipient_id} on {self.ticket_id}"


class MatchStatus(models.TextChoices):
    ASSIGNED = "assigned"  # formed, waiting for its server to start it
    RUNNING = "running"
    FINISHED = "finished"
    ABORTED = "aborted"  # its server died: no rating changes


class Match(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    mode = models.CharField(max_length=40)
    region = models.CharField(max_length=40)
    server = models.CharField(max_length=100, blank=True, help_text="the match server process that holds it")
    seed = models.BigIntegerField()
    status = models.CharField(max_length=10, choices=MatchStatus.choices, default=MatchStatus.ASSIGNED)
    result = models.JSONField(null=True, blank=True)
    reason = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=now)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    ratings_applied_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["status", "server"], name="gaming_match_status")]
        verbose_name_plural = "matches"

    def __str__(self) -> str:
        return f"{self.mode} match {self.id} ({self.status})"


class MatchPlayer(models.Model):
    match = models.ForeignKey(Match, on_delete=models.CASCADE, related_name="players")
    recipient = models.ForeignKey(Recipient, on_delete=models.CASCADE, related_name="game_matches")
    ticket = models.ForeignKey(Ticket, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    mu_before = models.FloatField()
    sigma_before = models.FloatField()
    mu_after = models.FloatField(null=True, blank=True)
    sigma_after = models.FloatField(null=True, blank=True)
    rank = models.PositiveSmallIntegerField(null=True, blank=True)
    score = models.IntegerField(null=True, blank=True)
    forfeited = models.BooleanField(default=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["match", "recipient"], name="gaming_match_player_once")
        ]

    def __str__(self) -> str:
        return f"{self.recipient_id} in {self.match_id}"
