"""Planning one page of recipients: who gets which channel now, later, or not at all.

Bulk per page: one preference query, one Redis pipeline per channel for rate caps, and
timezone arithmetic in Python. Critical types bypass opt-outs, quiet hours and rate caps.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, time, timedelta
from functools import lru_cache
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import redis
from django.conf import settings
from django.db import connection

from notifications.models import (
    Category,
    Channel,
    DeliveryStatus,
    DigestFrequency,
    DigestSetting,
    NotificationType,
    Preference,
    QuietHoursPolicy,
)
from notifications.services.dispatch import bigint_array_literal, channel_has_transport
from notifications.services.local_time import wall_time_instant
from notifications.services.ratelimits import marketing_caps_consume, rate_caps_consume
from notifications.services.validation import WHEN_ACTIVE_SEND, WHEN_ACTIVE_SKIP, when_active_parse
from presence.services import recipients_online

# Named tuples, not dataclasses: a fan-out builds one of each per recipient, and a frozen
# dataclass takes more than twice as long to construct (its __init__ sets each field
# through object.__setattr__).
# The reason of a delivery waiting for its recipient's local time (send_at_local).
LOCAL_TIME = "local time"


def event_local_wall(event: Any) -> datetime | None:
    """The event's wall-clock time for each recipient (send_at_local), or None."""
    return datetime.fromisoformat(event.send_at_local) if event.send_at_local else None


class RecipientFacts(NamedTuple):
    id: int
    timezone: str
    quiet_hours_start: time | None
    quiet_hours_end: time | None


class PlannedDelivery(NamedTuple):
    recipient_id: int
    channel: str
    status: str
    reason: str = ""
    due_at: datetime | None = None


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def quiet_hours_end(facts: RecipientFacts, now: datetime) -> datetime | None:
    """When the recipient's quiet hours end, if ``now`` falls inside them; else None."""
    start, end = facts.quiet_hours_start, facts.quiet_hours_end
    if start is None or end is None or start == end:
        return None
    local = now.astimezone(_zone(facts.timezone))
    clock = local.time().replace(tzinfo=None)
    inside = (start <= clock < end) if start < end else (clock >= start or clock < end)
    if not inside:
        return None
    ends = datetime.combine(local.date(), end, tzinfo=local.tzinfo)
    if ends <= local:
        ends += timedelta(days=1)
    return ends


def preferences_resolve(
    *, notification_type: NotificationType, recipient_ids: Sequence[int]
) -> dict[tuple[int, str], bool]:
    """Stored overrides that apply to this type, resolved by precedence
    (type > category > all notifications); pairs not in the result use the type default."""
    table = Preference._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"""SELECT recipient_id, channel, enabled,
                       CASE WHEN notification_type_id IS NOT NULL THEN 3 WHEN category <> '' THEN 2 ELSE 1 END
                FROM {table}
                WHERE recipient_id = ANY(%s::bigint[])
                  AND (notification_type_id = %s
                       OR (notification_type_id IS NULL AND category IN (%s, '')))""",
            # The ids as one text literal: adapting a list of 2,000 ints cost more than
            # the query (docs/benchmarks.md, P1).
            [bigint_array_literal(recipient_ids), notification_type.id, notification_type.category],
        )
        rows = cursor.fetchall()
    best: dict[tuple[int, str], tuple[int, bool]] = {}
    for recipient_id, channel, enabled, rank in rows:
        key = (recipient_id, channel)
        if key not in best or rank > best[key][0]:
            best[key] = (rank, enabled)
    return {key: enabled for key, (_, enabled) in best.items()}


# The platform's own digest type (services/digests.py): never gathered into a digest.
DIGEST_TYPE_KEY = "platform.digest"


def digests_resolve(*, notification_type: NotificationType, recipient_ids: Sequence[int]) -> dict[int, str]:
    """{recipient id: "daily" | "weekly"} of those who gather the type's category into a
    digest. Only a type with an in-app copy is gathered (the item waits in the inbox for the
    digest to list it); never critical ones, nor the digest itself."""
    if (
        notification_type.is_critical
        or Channel.INAPP not in notification_type.channels
        or len(notification_type.channels) < 2
        or notification_type.key == DIGEST_TYPE_KEY
    ):
        return {}
    with connection.cursor() as cursor:
        cursor.execute(
            f"""SELECT recipient_id, frequency FROM {DigestSetting._meta.db_table}
                WHERE recipient_id = ANY(%s::bigint[]) AND category = %s AND frequency <> %s""",
            [bigint_array_literal(recipient_ids), notification_type.category, DigestFrequency.OFF],
        )
        return dict(cursor.fetchall())


def plan_page(
    *,
    notification_type: NotificationType,
    recipients: Sequence[RecipientFacts],
    now: datetime,
    local_walls: Sequence[datetime | None] | None = None,
) -> list[PlannedDelivery]:
    """One PlannedDelivery per entry of ``recipients`` and channel of the type: channel by
    channel, each channel's rows in the order of ``recipients`` (so ``planned[c * n + i]``
    belongs to ``recipients[i]``). A recipient may appear more than once (the recipients
    of several events of one type, planned together); each entry is planned on its own.
    ``local_walls``, aligned with ``recipients``: the wall-clock time in the recipient's
    timezone its event is for (``send_at_local``), or None; a recipient whose time has not
    come yet is scheduled for it on every channel it is not opted out of."""
    critical = notification_type.is_critical
    overrides = (
        {}
        if critical
        else preferences_resolve(
            notification_type=notification_type, recipient_ids=[r.id for r in recipients]
        )
    )
    quiet_channels = set(settings.QUIET_HOURS_CHANNELS)
    when_active, delay = (
        (WHEN_ACTIVE_SEND, 0) if critical else when_active_parse(notification_type.when_active)
    )
    online: set[int] | None = None  # asked once per page, and only when a channel needs it
    digested = digests_resolve(notification_type=notification_type, recipient_ids=[r.id for r in recipients])
    capped = (
        marketing_caps_consume(recipient_ids=[r.id for r in recipients])
        if notification_type.category == Category.MARKETING
        else {}
    )
    planned: list[PlannedDelivery] = []
    for channel in notification_type.channels:
        if not channel_has_transport(channel):
            planned.extend(
                PlannedDelivery(
                    r.id, channel, DeliveryStatus.FAILED, f"no transport configured for channel {channel}"
                )
                for r in recipients
            )
            continue
        # One slot per recipient, in the order given (callers may align rows with their
        # inputs); candidates are filled in once the rate caps are known. The loop runs
        # once per recipient of a fan-out: what does not depend on the recipient is
        # decided before it.
        check_preferences = not critical and bool(overrides)
        check_quiet_hours = not critical and channel in quiet_channels
        slots: list[PlannedDelivery | None] = []
        candidates: list[int] = []
        for index, facts in enumerate(recipients):
            if check_preferences and not overrides.get((facts.id, channel), True):
                slots.append(
                    PlannedDelivery(facts.id, channel, DeliveryStatus.SUPPRESSED, "preference: opted out")
                )
                continue
            if capped and facts.id in capped:
                slots.append(PlannedDelivery(facts.id, channel, DeliveryStatus.SUPPRESSED, capped[facts.id]))
                continue
            if digested and channel != Channel.INAPP and facts.id in digested:
                slots.append(
                    PlannedDelivery(
                        facts.id, channel, DeliveryStatus.SUPPRESSED, f"in the {digested[facts.id]} digest"
                    )
                )
                continue
            wall = local_walls[index] if local_walls is not None else None
            if wall is not None:
                due = wall_time_instant(wall, facts.timezone)
                if due > now:
                    # A wall time inside the recipient's quiet hours waits for their end
                    # (or, with the drop policy, is not sent), as a send at that time would.
                    quiet_end = (
                        quiet_hours_end(facts, due)
                        if check_quiet_hours and facts.quiet_hours_start is not None
                        else None
                    )
                    if (
                        quiet_end is not None
                        and notification_type.quiet_hours_policy == QuietHoursPolicy.DROP
                    ):
                        slots.append(
                            PlannedDelivery(facts.id, channel, DeliveryStatus.SUPPRESSED, "quiet hours")
                        )
                    else:
                        slots.append(
                            PlannedDelivery(
                                facts.id,
                                channel,
                                DeliveryStatus.SCHEDULED,
                                LOCAL_TIME,
                                due_at=quiet_end or due,
                            )
                        )
                    continue
            if check_quiet_hours and facts.quiet_hours_start is not None:
                quiet_end = quiet_hours_end(facts, now)
                if quiet_end is not None:
                    if notification_type.quiet_hours_policy == QuietHoursPolicy.DROP:
                        slots.append(
                            PlannedDelivery(facts.id, channel, DeliveryStatus.SUPPRESSED, "quiet hours")
                        )
                    else:
                        slots.append(
                            PlannedDelivery(
                                facts.id, channel, DeliveryStatus.SCHEDULED, "quiet hours", due_at=quiet_end
                            )
                        )
                    continue
            slots.append(None)
            candidates.append(facts.id)
        if when_active != WHEN_ACTIVE_SEND and channel in WHEN_ACTIVE_CHANNELS and candidates:
            if online is None:
                # The whole page, once: another channel's candidates may differ (opt-outs).
                online = _online([r.id for r in recipients])
            if online:
                candidates = _held_for_the_active(slots, candidates, online, channel, when_active, delay, now)
        over_cap = (
            [False] * len(candidates)
            if critical
            else rate_caps_consume(channel=channel, recipient_ids=candidates)
        )
        if len(candidates) == len(recipients) and not any(over_cap):
            # Everyone is sent to now (most pages).
            planned.extend([PlannedDelivery(rid, channel, DeliveryStatus.PENDING) for rid in candidates])
            continue
        over = iter(over_cap)
        for facts, slot in zip(recipients, slots, strict=True):
            if slot is not None:
                planned.append(slot)
            elif next(over):
                planned.append(
                    PlannedDelivery(facts.id, channel, DeliveryStatus.SUPPRESSED, "rate cap reached")
                )
            else:
                planned.append(PlannedDelivery(facts.id, channel, DeliveryStatus.PENDING))
    return planned


# The channels a type's ``when_active`` holds back for a user online in the app.
WHEN_ACTIVE_CHANNELS = frozenset({"email", "sms", "push"})
ACTIVE_IN_APP = "active in the app"


def _online(recipient_ids: list[int]) -> set[int]:
    """Who of them is online in the app now; nobody when Redis does not answer (they are
    then sent to as usual: a missed skip costs a duplicate channel, a wrong one the
    message)."""
    try:
        return recipients_online(recipient_ids)
    except redis.RedisError:
        return set()


def _held_for_the_active(
    slots: list[PlannedDelivery | None],
    candidates: list[int],
    online: set[int],
    channel: str,
    when_active: str,
    delay: int,
    now: datetime,
) -> list[int]:
    """Fill the slots of the online candidates (skipped, or scheduled ``delay`` seconds
    on) and return the candidates left. ``slots`` and ``candidates`` are in recipient
    order, a None slot standing for each candidate."""
    left: list[int] = []
    remaining = iter(candidates)
    for index, slot in enumerate(slots):
        if slot is not None:
            continue
        rid = next(remaining)
        if rid not in online:
            left.append(rid)
        elif when_active == WHEN_ACTIVE_SKIP:
            slots[index] = PlannedDelivery(rid, channel, DeliveryStatus.SUPPRESSED, ACTIVE_IN_APP)
        else:
            slots[index] = PlannedDelivery(
                rid, channel, DeliveryStatus.SCHEDULED, ACTIVE_IN_APP, due_at=now + timedelta(seconds=delay)
            )
    return left
