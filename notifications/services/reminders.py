"""Recurring reminders: an event at each occurrence of an RFC 5545 recurrence rule.

The rule is read by python-dateutil's ``rrulestr`` (never by hand), over wall-clock times:
"every Monday at 09:00" stays 09:00 across daylight saving changes. The wall times are in
the reminder's ``timezone``, or, when it is empty, in each recipient's own (each occurrence
is then an event with ``send_at_local``, notifications/services/local_time.py, whose rules
for skipped and repeated times apply).

Due reminders are claimed with SKIP LOCKED by the sweep (beat), so two beat processes never
take the same one, and each occurrence is stored with the idempotency key
``reminder:<id>:<wall time>``: should an occurrence be stored twice anyway, the second is a
replay of the first, never a second send. An occurrence whose time passed while nothing
ran (the platform was down for days) is sent once, and the reminder moves on to the first
occurrence still ahead, rather than sending every one it missed.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dateutil.rrule import rrule, rrulestr
from django.db import transaction
from django.utils import timezone

from notifications.models import Recipient, Reminder, ReminderStatus, Topic
from notifications.services.ingest import IdempotencyConflict, IngestError, event_ingest
from notifications.services.local_time import wall_time_earliest, wall_time_instant
from notifications.services.lookups import notification_type_by_key

log = logging.getLogger(__name__)

RULE_MAX = 500
# The most often a reminder may recur.
ALLOWED_FREQUENCIES = ("HOURLY", "DAILY", "WEEKLY", "MONTHLY", "YEARLY")
_FREQ = re.compile(r"(?:^|;)FREQ=([A-Z]+)(?:;|$)")
_INTERVAL = re.compile(r"(?:^|;)INTERVAL=([^;]*)(?:;|$)")
SWEEP_BATCH = 200


class ReminderError(Exception):
    """A reminder that cannot be made; ``errors`` names the fields."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__(errors)
        self.errors = errors


def _rule(rule: str, starts_at: datetime) -> rrule:
    """The recurrence of ``rule`` (an RRULE, with or without the ``RRULE:`` prefix) from
    ``starts_at``; raises ReminderError naming ``rule``."""
    text = rule.strip()
    if text.upper().startswith("RRULE:"):
        text = text[len("RRULE:") :]
    if not text or len(text) > RULE_MAX:
        raise ReminderError(
            {"rule": [f"an RFC 5545 RRULE of 1 to {RULE_MAX} characters, e.g. FREQ=WEEKLY;BYDAY=MO"]}
        )
    if any(part in text.upper() for part in ("DTSTART", "\n", "RDATE", "EXDATE")):
        raise ReminderError({"rule": ["only the RRULE itself: the first occurrence is starts_at"]})
    try:
        parsed = rrulestr(text, dtstart=starts_at)
    except (ValueError, TypeError) as exc:
        raise ReminderError({"rule": [f"not an RFC 5545 RRULE: {exc}"]}) from None
    if not isinstance(parsed, rrule):
        raise ReminderError({"rule": ["one RRULE, not a set of them"]})
    frequency = _FREQ.search(text.upper())
    interval = _INTERVAL.search(text.upper())
    if interval is not None and not (interval.group(1).isdigit() and int(interval.group(1)) >= 1):
        # dateutil takes INTERVAL=0 and then repeats one occurrence for ever.
        raise ReminderError(
            {"rule": [f"INTERVAL must be a whole number of at least 1, got {interval.group(1)!r}"]}
        )
    if frequency is None or frequency.group(1) not in ALLOWED_FREQUENCIES:
        raise ReminderError(
            {"rule": ["at most hourly: FREQ must be HOURLY, DAILY, WEEKLY, MONTHLY or YEARLY"]}
        )
    return parsed


def _due(wall: datetime, timezone_name: str) -> datetime:
    """When the event of the occurrence at ``wall`` is stored: that instant in the
    reminder's timezone, or, in each recipient's own, the first instant any reaches it."""
    return wall_time_instant(wall, timezone_name) if timezone_name else wall_time_earliest(wall)


def _next_ahead(
    parsed: rrule, after: datetime, timezone_name: str, now: datetime, *, inclusive: bool = False
) -> datetime | None:
    """The first occurrence after ``after`` (or at it, ``inclusive``) whose event is still
    to be stored at ``now``."""
    candidate = parsed.after(after, inc=inclusive)
    while candidate is not None and _due(candidate, timezone_name) < now:
        candidate = parsed.after(candidate, inc=False)
    return candidate


def reminder_create(
    *,
    api_key: Any,
    type_key: str,
    rule: str,
    starts_at: datetime,
    recipients: list[str] | None = None,
    topic_key: str | None = None,
    data: dict[str, Any] | None = None,
    timezone_name: str = "",
) -> Reminder:
    """A reminder whose first occurrence is the first of ``rule`` from ``starts_at`` still
    ahead. Raises ReminderError naming each field that is wrong."""
    errors: dict[str, list[str]] = {}
    if starts_at.tzinfo is not None:
        errors["starts_at"] = ["a wall-clock time has no offset (the timezone says where)"]
    if timezone_name:
        try:
            ZoneInfo(timezone_name)
        except (ZoneInfoNotFoundError, ValueError):
            errors["timezone"] = [
                f"unknown timezone {timezone_name!r}; an IANA name like Europe/Paris, or empty"
            ]
    notification_type = notification_type_by_key(type_key)
    if notification_type is None:
        errors["type"] = [f"unknown notification type {type_key!r}"]
    topic = None
    if (recipients is None) == (topic_key is None):
        errors["recipients"] = ["give either recipients or topic, not both"]
    elif recipients is not None:
        known = set(
            Recipient.objects.filter(external_id__in=recipients).values_list("external_id", flat=True)
        )
        missing = [r for r in recipients if r not in known]
        if missing:
            errors["recipients"] = [f"unknown recipients: {', '.join(repr(m) for m in missing[:20])}"]
    else:
        topic = Topic.objects.filter(key=topic_key).first()
        if topic is None:
            errors["topic"] = [f"unknown topic {topic_key!r}"]
    if errors:
        raise ReminderError(errors)
    assert notification_type is not None
    starts = starts_at.replace(microsecond=0)
    parsed = _rule(rule, starts)
    first = _next_ahead(parsed, starts, timezone_name, timezone.now(), inclusive=True)
    if first is None:
        raise ReminderError({"rule": ["no occurrence of it is still ahead"]})
    return Reminder.objects.create(
        api_key=api_key,
        notification_type=notification_type,
        recipients=list(dict.fromkeys(recipients)) if recipients is not None else None,
        topic=topic,
        data=data or {},
        rule=rule.strip(),
        starts_at=starts_at.replace(microsecond=0).isoformat(),
        timezone=timezone_name,
        next_at=first.isoformat(),
        due_at=_due(first, timezone_name),
    )


def reminder_cancel(*, reminder_id: Any) -> Reminder | None:
    """Cancel a reminder (no further occurrence); None when there is none."""
    with transaction.atomic():
        reminder = Reminder.objects.select_for_update().filter(id=reminder_id).first()
        if reminder is None:
            return None
        if reminder.status == ReminderStatus.ACTIVE:
            reminder.status = ReminderStatus.CANCELLED
            reminder.due_at = None
            reminder.save(update_fields=["status", "due_at"])
    return reminder


def _store(reminder: Reminder, wall: datetime) -> None:
    """The event of the occurrence at ``wall`` (a replay when it was stored before)."""
    assert reminder.api_key is not None
    recipients = None
    if reminder.recipients is not None:
        present = set(
            Recipient.objects.filter(external_id__in=reminder.recipients).values_list(
                "external_id", flat=True
            )
        )
        recipients = [r for r in reminder.recipients if r in present]
        if not recipients:
            log.info(
                "reminder occurrence skipped: no recipient left", extra={"reminder_id": str(reminder.id)}
            )
            return
    timing: dict[str, Any] = (
        {"send_at": wall_time_instant(wall, reminder.timezone)}
        if reminder.timezone
        else {"send_at_local": wall}
    )
    event_ingest(
        api_key=reminder.api_key,
        type_key=reminder.notification_type.key,
        recipients=recipients,
        topic_key=reminder.topic.key if reminder.topic is not None else None,
        data=reminder.data,
        idempotency_key=f"reminder:{reminder.id}:{wall.isoformat()}",
        **timing,
    )


def reminders_run_due(*, limit: int = SWEEP_BATCH) -> int:
    """Store the event of every reminder occurrence that came due and move each reminder
    on to its next occurrence still ahead (or finish it). Returns how many were stored."""
    now = timezone.now()
    stored = 0
    with transaction.atomic():
        due = list(
            Reminder.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("notification_type", "topic", "api_key")
            .filter(status=ReminderStatus.ACTIVE, due_at__lte=now)
            .order_by("due_at")[:limit]
        )
        for reminder in due:
            wall = datetime.fromisoformat(reminder.next_at)
            if reminder.api_key is None:
                reminder.status, reminder.due_at, reminder.next_at = ReminderStatus.FINISHED, None, ""
                reminder.save(update_fields=["status", "due_at", "next_at"])
                log.warning("reminder finished: its API key is gone", extra={"reminder_id": str(reminder.id)})
                continue
            try:
                with transaction.atomic():
                    _store(reminder, wall)
                stored += 1
                reminder.sent += 1
            except (IngestError, IdempotencyConflict) as exc:
                # The type or topic went away, or the key was used otherwise: this occurrence
                # is lost, the next ones are still tried.
                log.warning(
                    "reminder occurrence not stored: %s", exc, extra={"reminder_id": str(reminder.id)}
                )
            parsed = _rule(reminder.rule, datetime.fromisoformat(reminder.starts_at))
            following = _next_ahead(parsed, wall, reminder.timezone, now)
            if following is None:
                reminder.status, reminder.due_at, reminder.next_at = ReminderStatus.FINISHED, None, ""
            else:
                reminder.next_at, reminder.due_at = following.isoformat(), _due(following, reminder.timezone)
            reminder.save(update_fields=["sent", "status", "due_at", "next_at"])
    if stored:
        log.info("reminder occurrences stored", extra={"count": stored})
    return stored
