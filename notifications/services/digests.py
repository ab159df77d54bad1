"""Daily and weekly digests: what a recipient left unread, gathered into one email at
their local DIGEST_LOCAL_TIME.

A recipient chooses a frequency per category in the preference center (DigestSetting).
While one is on, a notification of that category that has an in-app copy is not also
emailed, pushed or texted one by one (services/planning.py suppresses those channels, reason
"in the daily digest"): the in-app item waits in the inbox. When the recipient's digest time
comes, the beat's ``digests-sweep`` gathers the category's items they have not read (nor
archived) since the last digest and sends them as one event of the platform's digest type,
through the whole pipeline (preferences, channels, retries, tracking). Nothing unread,
nothing sent.

Exactly once: due settings are claimed with ``SKIP LOCKED``, and each period's DigestRun row
(unique per recipient, category and period) is inserted in the transaction that stores the
digest event, so two beat processes, or a sweep run again, never send one digest twice.
Digests missed while nothing ran are sent once, covering everything since the last one.
"""

from __future__ import annotations

import logging
from datetime import datetime, time, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from notifications.models import (
    Category,
    DigestFrequency,
    DigestRun,
    DigestSetting,
    InboxItem,
    NotificationType,
)
from notifications.services.catalog import notification_type_save
from notifications.services.ingest import event_ingest
from notifications.services.local_time import wall_time_instant
from notifications.services.planning import DIGEST_TYPE_KEY

log = logging.getLogger(__name__)

SWEEP_BATCH = 500
PERIODS = {DigestFrequency.DAILY: timedelta(days=1), DigestFrequency.WEEKLY: timedelta(days=7)}

DIGEST_VARIABLES = {
    "frequency": {"type": "string", "example": "daily", "description": "daily or weekly"},
    "category": {"type": "string", "example": "social"},
    "count": {"type": "integer", "example": 3, "description": "unread items in the period"},
    "entries": {
        "type": "list",
        "example": [
            {
                "title": "Ana liked your photo",
                "body": "",
                "url": "https://example.com/p/1",
                "created_at": "2026-12-01T07:12:00+00:00",
            }
        ],
        "description": "the first DIGEST_MAX_ITEMS: title, body, url, created_at",
    },
    "more": {"type": "integer", "example": 0, "description": "unread items not listed"},
}
_ITEM_HTML = (
    '<li><a href="{{ item.url }}">{{ item.title }}</a>{% if item.body %}<br>{{ item.body }}{% endif %}'
    "<br><small>{{ item.created_at|datetime('short') }}</small></li>"
)
DIGEST_TEMPLATES = {
    "email": {
        "subject": "Your {{ data.frequency }} digest: {{ data.count }} unread {{ data.category }} "
        "notification{% if data.count != 1 %}s{% endif %}",
        "html": "<h2>{{ data.count }} unread {{ data.category }} notification{% if data.count != 1 %}s{% endif %}"
        "</h2><ul>{% for item in data.entries %}" + _ITEM_HTML + "{% endfor %}</ul>"
        "{% if data.more %}<p>and {{ data.more }} more in your inbox</p>{% endif %}",
        "text": "{{ data.count }} unread {{ data.category }} notification{% if data.count != 1 %}s{% endif %}:\n"
        "{% for item in data.entries %}- {{ item.title }} {{ item.url }}\n{% endfor %}"
        "{% if data.more %}and {{ data.more }} more in your inbox{% endif %}",
    }
}


def digest_time() -> time:
    hours, minutes = settings.DIGEST_LOCAL_TIME.split(":")
    return time(int(hours), int(minutes))


def digest_due_after(*, frequency: str, timezone_name: str, after: datetime) -> datetime:
    """The first digest time strictly after ``after``: DIGEST_LOCAL_TIME in the timezone,
    every day or on DIGEST_WEEKDAY. A time the clocks skip moves forward by the skip."""
    local_day = after.astimezone(_zone(timezone_name)).date()
    at = digest_time()
    for offset in range(0, 9):
        day = local_day + timedelta(days=offset)
        if frequency == DigestFrequency.WEEKLY and day.weekday() != settings.DIGEST_WEEKDAY % 7:
            continue
        due = wall_time_instant(datetime.combine(day, at), timezone_name)
        if due > after:
            return due
    raise AssertionError("a digest time is always within nine days")  # pragma: no cover


def _zone(name: str) -> Any:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def digest_type() -> NotificationType:
    """The platform's digest type (email), created the first time a digest goes out."""
    found = NotificationType.objects.filter(key=DIGEST_TYPE_KEY).first()
    if found is not None:
        return found
    try:
        with transaction.atomic():
            return notification_type_save(
                key=DIGEST_TYPE_KEY,
                fields={"name": "Digest", "category": Category.TRANSACTIONAL, "channels": ["email"]},
                templates=DIGEST_TEMPLATES,
                variables=DIGEST_VARIABLES,
                note="the platform's digest",
            )
    except IntegrityError:  # another sweep created it first
        return NotificationType.objects.get(key=DIGEST_TYPE_KEY)


def _absolute(url: str) -> str:
    return f"{settings.PUBLIC_URL.rstrip('/')}{url}" if url.startswith("/") else url


def _unread(
    recipient_id: int, category: str, since: datetime, until: datetime
) -> tuple[int, list[dict[str, Any]]]:
    items = InboxItem.objects.filter(
        recipient_id=recipient_id,
        category=category,
        read_at__isnull=True,
        archived_at__isnull=True,
        created_at__gt=since,
        created_at__lte=until,
    )
    listed = [
        {"title": title, "body": body, "url": _absolute(url), "created_at": created_at.isoformat()}
        for title, body, url, created_at in items.order_by("-created_at", "-id").values_list(
            "title", "body", "url", "created_at"
        )[: settings.DIGEST_MAX_ITEMS]
    ]
    # Counted only when the list is full: otherwise the list is all of them.
    return (items.count() if len(listed) == settings.DIGEST_MAX_ITEMS else len(listed)), listed


def _schedule_missing(now: datetime) -> None:
    """Settings turned on since the last sweep get their first digest time."""
    rows = list(
        DigestSetting.objects.filter(next_at__isnull=True)
        .exclude(frequency=DigestFrequency.OFF)
        .values_list("id", "frequency", "recipient__timezone")[:SWEEP_BATCH]
    )
    for setting_id, frequency, timezone_name in rows:
        due = digest_due_after(frequency=frequency, timezone_name=timezone_name, after=now)
        DigestSetting.objects.filter(id=setting_id, next_at__isnull=True).update(next_at=due)


def _run_one(setting: DigestSetting, now: datetime, kind: NotificationType) -> DigestRun | None:
    """Inside the transaction holding ``setting``'s lock: its digest for the period that
    ended at ``next_at``, then the next digest time (the first one still ahead)."""
    recipient = setting.recipient
    assert setting.next_at is not None
    period_end = setting.next_at
    previous = (
        DigestRun.objects.filter(recipient=recipient, category=setting.category)
        .order_by("-period_end")
        .values_list("period_end", flat=True)
        .first()
    )
    period_start = previous or period_end - PERIODS[DigestFrequency(setting.frequency)]
    setting.next_at = digest_due_after(
        frequency=setting.frequency, timezone_name=recipient.timezone, after=max(period_end, now)
    )
    DigestSetting.objects.filter(id=setting.id).update(next_at=setting.next_at)
    with connection.cursor() as db:
        db.execute(
            f"""INSERT INTO {DigestRun._meta.db_table}
                    (recipient_id, category, frequency, period_start, period_end, item_count, created_at)
                VALUES (%s, %s, %s, %s, %s, 0, %s)
                ON CONFLICT (recipient_id, category, period_end) DO NOTHING
                RETURNING id""",
            [recipient.id, setting.category, setting.frequency, period_start, period_end, now],
        )
        claimed = db.fetchone()
    if claimed is None:
        return None  # this period's digest was sent already
    count, items = _unread(recipient.id, setting.category, period_start, period_end)
    run = DigestRun.objects.get(id=claimed[0])
    run.item_count = count
    if items:
        event = event_ingest(
            api_key=None,
            type_key=kind.key,
            recipients=[recipient.external_id],
            data={
                "frequency": setting.frequency,
                "category": setting.category,
                "count": count,
                "entries": items,
                "more": count - len(items),
            },
        ).event
        run.event_id = event.id
    run.save(update_fields=["item_count", "event_id"])
    return run


def digests_run_due(*, now: datetime | None = None, limit: int = SWEEP_BATCH) -> int:
    """Send every digest that came due; returns how many periods were handled (sent, or
    found with nothing unread). Safe to run in several beat processes at once."""
    now = now or timezone.now()
    _schedule_missing(now)
    kind: NotificationType | None = None
    handled = 0
    with transaction.atomic():
        due = list(
            DigestSetting.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("recipient")
            .filter(next_at__lte=now)
            .exclude(frequency=DigestFrequency.OFF)
            .order_by("next_at")[:limit]
        )
        for setting in due:
            kind = kind or digest_type()
            if _run_one(setting, now, kind) is not None:
                handled += 1
    if handled:
        log.info("digests sent", extra={"count": handled})
    return handled
