"""The delivery state machine: every status a delivery can have and every move between
them, in one table.

A delivery is inserted in one of ``INITIAL`` (the planner's verdict) and moves only along
``TRANSITIONS``. Each move the pipeline makes is a named ``Move`` below; services change
a status only through a compare-and-set on the move's ``sources`` (``WHERE status =
ANY(sources)``), in the ORM or in SQL, so a late or repeated step can never move a
delivery backwards. docs/architecture.md shows the table; tests/notifications/
test_states.py walks all of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import models


class DeliveryStatus(models.TextChoices):
    # In progress.
    PENDING = "pending", "Pending"
    SCHEDULED = "scheduled", "Scheduled"
    RETRYING = "retrying", "Retrying"
    # Reached the user, as far as we know.
    SENT = "sent", "Sent"
    DELIVERED = "delivered", "Delivered"
    READ = "read", "Read"
    # Provider tracking (email opens and clicks, bounces reported after acceptance).
    OPENED = "opened", "Opened"
    CLICKED = "clicked", "Clicked"
    BOUNCED = "bounced", "Bounced"
    # Settled without reaching the user.
    SUPPRESSED = "suppressed", "Suppressed"
    FAILED = "failed", "Failed"
    DEAD = "dead", "Dead"


S = DeliveryStatus

# What the planner may insert: sent now, due later, not sent (preference, quiet hours,
# rate cap, aggregated into another), or impossible (no transport for the channel).
INITIAL: frozenset[str] = frozenset({S.PENDING, S.SCHEDULED, S.SUPPRESSED, S.FAILED})

# Settled for good: nothing moves a delivery out of these, except a dead-letter replay.
FINAL: frozenset[str] = frozenset({S.READ, S.CLICKED, S.BOUNCED, S.SUPPRESSED, S.FAILED, S.DEAD})

# The deliveries a sender may claim and call a provider for.
SENDABLE: tuple[str, ...] = (S.PENDING, S.RETRYING)

# Deliveries whose user has the message: a channel fallback need not chase them.
REACHED: frozenset[str] = frozenset({S.DELIVERED, S.READ, S.OPENED, S.CLICKED})


@dataclass(frozen=True)
class Move:
    """One step of the pipeline: from any of ``sources`` to ``target``."""

    name: str
    sources: tuple[str, ...]
    target: str

    def __post_init__(self) -> None:
        for source in self.sources:
            if not allowed(source, self.target):
                raise ValueError(f"{self.name}: {source} -> {self.target} is not in TRANSITIONS")


def allowed(source: str, target: str) -> bool:
    """Whether a delivery in ``source`` may move to ``target``."""
    return target in TRANSITIONS.get(source, frozenset())


# The whole table: status -> the statuses it may move to.
TRANSITIONS: dict[str, frozenset[str]] = {
    S.SCHEDULED: frozenset({S.PENDING, S.SUPPRESSED}),
    S.PENDING: frozenset({S.SCHEDULED, S.DELIVERED, S.SENT, S.RETRYING, S.SUPPRESSED, S.FAILED, S.DEAD}),
    S.RETRYING: frozenset({S.DELIVERED, S.SENT, S.RETRYING, S.SUPPRESSED, S.FAILED, S.DEAD}),
    S.SENT: frozenset({S.DELIVERED, S.OPENED, S.CLICKED, S.BOUNCED, S.FAILED, S.RETRYING}),
    S.DELIVERED: frozenset({S.READ, S.OPENED, S.CLICKED, S.BOUNCED, S.FAILED}),
    S.OPENED: frozenset({S.CLICKED}),
    S.DEAD: frozenset({S.PENDING}),
    S.READ: frozenset(),
    S.CLICKED: frozenset(),
    S.BOUNCED: frozenset(),
    S.SUPPRESSED: frozenset(),
    S.FAILED: frozenset(),
}

# --- The moves the pipeline makes ----------------------------------------------------------

# Scheduling (services/scheduling.py): a due time passed.
RELEASE = Move("due time reached", (S.SCHEDULED,), S.PENDING)
# Aggregation (services/aggregation.py): a leader whose batch a concurrent page opened
# first is counted into that batch instead.
AGGREGATED_LATE = Move("counted into a batch opened at the same time", (S.SCHEDULED,), S.SUPPRESSED)
# Campaigns (services/campaigns.py): a pause holds what is not yet sent (a resume releases
# it, as RELEASE), a cancel suppresses it.
CAMPAIGN_HELD = Move("held: campaign paused", (S.PENDING,), S.SCHEDULED)
CAMPAIGN_CANCELLED = Move("campaign cancelled", (S.PENDING, S.SCHEDULED, S.RETRYING), S.SUPPRESSED)
# In-app dispatch (services/inbox.py): the inbox item is written. Rows are claimed as
# delivered by the statement that locks them; one whose template cannot be rendered is
# failed in that same transaction, so nobody ever sees it delivered.
INAPP_WRITTEN = Move("in-app item written", (S.PENDING,), S.DELIVERED)
INAPP_UNRENDERABLE = Move("in-app template failed", (S.DELIVERED,), S.FAILED)
# Reading (services/inbox.py).
READ = Move("read in the inbox", (S.DELIVERED,), S.READ)
# Provider sends (services/sending/record.py): one outcome per claimed delivery.
SEND_ACCEPTED = Move("provider accepted", SENDABLE, S.SENT)
SEND_ARRIVED = Move("receiver answered 2xx", SENDABLE, S.DELIVERED)
SEND_RETRY = Move("transient error, retry later", SENDABLE, S.RETRYING)
SEND_FAILED = Move("permanent error", SENDABLE, S.FAILED)
SEND_SUPPRESSED = Move("not sent: suppression list or abuse limit", SENDABLE, S.SUPPRESSED)
SEND_DEAD = Move("retries exhausted", SENDABLE, S.DEAD)
NO_PROVIDER = Move("no provider configured for the channel", SENDABLE, S.FAILED)
# Provider receipts (services/feedback.py): forward only.
RECEIPT_DELIVERED = Move("receipt: delivered", (S.SENT,), S.DELIVERED)
RECEIPT_OPENED = Move("receipt: opened", (S.SENT, S.DELIVERED), S.OPENED)
RECEIPT_CLICKED = Move("receipt: clicked", (S.SENT, S.DELIVERED, S.OPENED), S.CLICKED)
RECEIPT_BOUNCED = Move("receipt: bounced", (S.SENT, S.DELIVERED), S.BOUNCED)
RECEIPT_FAILED = Move("receipt: failed", (S.SENT, S.DELIVERED), S.FAILED)
RECEIPT_DEFERRED = Move("receipt: soft bounce, send again", (S.SENT,), S.RETRYING)
# Staff (services/deadletters.py).
REPLAY = Move("replayed from the dead-letter list", (S.DEAD,), S.PENDING)

# The provider outcome for each target status (services/sending/record.py).
SEND_OUTCOMES: dict[str, Move] = {
    move.target: move
    for move in (SEND_ACCEPTED, SEND_ARRIVED, SEND_RETRY, SEND_FAILED, SEND_SUPPRESSED, SEND_DEAD)
}

# Receipts by the tracking kind providers report (services/feedback.py).
RECEIPTS: dict[str, Move] = {
    "delivered": RECEIPT_DELIVERED,
    "opened": RECEIPT_OPENED,
    "clicked": RECEIPT_CLICKED,
    "bounced": RECEIPT_BOUNCED,
    "failed": RECEIPT_FAILED,
}

MOVES: tuple[Move, ...] = (
    RELEASE,
    AGGREGATED_LATE,
    CAMPAIGN_HELD,
    CAMPAIGN_CANCELLED,
    INAPP_WRITTEN,
    INAPP_UNRENDERABLE,
    READ,
    *SEND_OUTCOMES.values(),
    NO_PROVIDER,
    *RECEIPTS.values(),
    RECEIPT_DEFERRED,
    REPLAY,
)
