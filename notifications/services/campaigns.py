"""Campaigns: one message to an audience, at a pace, in A/B variants, that staff can pause,
resume and cancel in the middle.

- Create: a type, an audience (a topic, or a saved segment), data, the channels (some of
  the type's), a throttle in sends per second, optionally ``send_at`` and variants
  (``name``, ``weight``, ``data`` over the campaign's, a ``template_version`` of the type).
  Every wrong field is named.
- Start: refused until the data satisfies the template (every required declared variable,
  every template of every variant rendering with it). The audience is snapshotted then, in
  one statement, into one hidden topic per variant: a recipient's variant is a hash of the
  campaign and the recipient, so it is stable (the same recipient, the same variant) and
  the shares follow the weights. Each variant is then one event of the type (with the
  campaign's data and the variant's), fanned out by keyset pages like any topic event
  (services/fanout.py), at its share of the throttle: a page is about a second of sends,
  and the next page is a task due after it.
- Pause (within a second): the campaign row is locked while each page is stored, so a
  pause waits for a page in flight, then holds every delivery not yet claimed by a sender
  (pending -> scheduled, "held: campaign paused"); the fan-out stops at its next page.
- Resume: releases the held deliveries and the fan-out where it stopped. Deliveries are
  unique per event, recipient and channel and the fan-out's cursor moved with each page
  stored, so nothing is sent twice.
- Cancel: what is not sent is suppressed ("campaign cancelled"), the fan-out stops.
- Progress: the audience, and recipients sent (handed to a channel, each at most once),
  delivered, failed and suppressed, per campaign and per variant.

Marketing caps (services/planning.py) and preferences apply to campaign messages as to any.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from django.core.cache import cache
from django.db import connection, transaction
from django.utils import timezone

from notifications.models import (
    Campaign,
    CampaignStatus,
    CampaignVariant,
    Channel,
    Delivery,
    DeliveryEvent,
    DeliverySchedule,
    Event,
    EventStatus,
    InboxItem,
    NotificationType,
    OutboxMessage,
    Segment,
    Subscription,
    TemplateVersion,
    Topic,
)
from notifications.services.catalog import type_channel_templates
from notifications.services.dispatch import deliveries_dispatch
from notifications.services.ingest import event_ingest
from notifications.services.outbox import outbox_relay
from notifications.services.queues import CAMPAIGN_QUEUE
from notifications.services.segments import segment_recipients
from notifications.services.template_variables import data_variables_errors, preview_context
from notifications.services.templating import TemplateRenderError, template_render
from notifications.services.validation import ValidationFailed
from notifications.states import CAMPAIGN_CANCELLED, CAMPAIGN_HELD, RELEASE, DeliveryStatus

THROTTLE_MAX = 100_000
VARIANTS_MAX = 10
HELD = "campaign paused"
CANCELLED = "campaign cancelled"
# Statuses of a delivery that reached its channel (sent and later).
HANDED = (
    DeliveryStatus.SENT,
    DeliveryStatus.DELIVERED,
    DeliveryStatus.READ,
    DeliveryStatus.OPENED,
    DeliveryStatus.CLICKED,
    DeliveryStatus.BOUNCED,
)
REACHED = (DeliveryStatus.DELIVERED, DeliveryStatus.READ, DeliveryStatus.OPENED, DeliveryStatus.CLICKED)
FAILED = (DeliveryStatus.FAILED, DeliveryStatus.DEAD, DeliveryStatus.BOUNCED)


class CampaignRefused(Exception):
    """A step the campaign's status does not allow; ``str()`` says why (the API's 409)."""


# --- Create ---------------------------------------------------------------------------------


def _variants_clean(
    value: Any, notification_type: NotificationType | None, errors: dict[str, list[str]]
) -> list[dict[str, Any]]:
    if value is None or value == []:
        return [{"name": "A", "weight": 100, "data": {}, "template_version": None}]
    if not isinstance(value, list) or len(value) > VARIANTS_MAX:
        errors["variants"] = [f"must be a list of at most {VARIANTS_MAX} variants"]
        return []
    clean: list[dict[str, Any]] = []
    names: set[str] = set()
    for index, variant in enumerate(value):
        where = f"variants[{index}]"
        if not isinstance(variant, dict):
            errors[where] = ['must be an object such as {"name": "A", "weight": 50}']
            continue
        unknown = sorted(set(variant) - {"name", "weight", "data", "template_version"})
        if unknown:
            errors[where] = [
                f"unknown field(s) {', '.join(unknown)}; a variant has name, weight, data, template_version"
            ]
            continue
        name = variant.get("name")
        if not isinstance(name, str) or not 1 <= len(name.strip()) <= 40:
            errors[f"{where}.name"] = ["a name of 1 to 40 characters is required"]
            continue
        if name in names:
            errors[f"{where}.name"] = [f"two variants are named {name!r}"]
        names.add(name)
        weight = variant.get("weight", 1)
        if not isinstance(weight, int) or isinstance(weight, bool) or not 1 <= weight <= 1000:
            errors[f"{where}.weight"] = ["must be a whole number, 1 to 1000"]
        data = variant.get("data", {})
        if not isinstance(data, dict):
            errors[f"{where}.data"] = ["must be an object"]
        version = variant.get("template_version")
        if version is not None and (
            not isinstance(version, int)
            or notification_type is None
            or not TemplateVersion.objects.filter(
                notification_type=notification_type, number=version
            ).exists()
        ):
            errors[f"{where}.template_version"] = [f"the type has no template version {version!r}"]
        clean.append({"name": name, "weight": weight, "data": data, "template_version": version})
    return clean


@dataclass
class _Checked:
    name: str
    notification_type: NotificationType
    topic: Topic | None
    segment: Segment | None
    data: dict[str, Any]
    channels: list[str]
    variants: list[dict[str, Any]]


def campaign_errors(
    *,
    name: Any,
    type_key: Any,
    audience: Any,
    data: Any = None,
    channels: Any = None,
    throttle_per_second: Any = 100,
    variants: Any = None,
) -> dict[str, list[str]]:
    """Every wrong field of a campaign to create, by name (empty: none)."""
    try:
        _checked(name, type_key, audience, data, channels, throttle_per_second, variants)
    except ValidationFailed as exc:
        return exc.errors
    return {}


def campaign_create(
    *,
    name: str,
    type_key: str,
    audience: Any,
    data: Any = None,
    channels: Any = None,
    throttle_per_second: Any = 100,
    send_at: datetime | None = None,
    variants: Any = None,
) -> Campaign:
    """A draft campaign; ValidationFailed names every wrong field, and nothing is stored."""
    checked = _checked(name, type_key, audience, data, channels, throttle_per_second, variants)
    with transaction.atomic():
        campaign = Campaign.objects.create(
            name=checked.name,
            notification_type=checked.notification_type,
            audience_topic=checked.topic,
            audience_segment=checked.segment,
            data=checked.data,
            channels=checked.channels,
            throttle_per_second=throttle_per_second,
            send_at=send_at,
        )
        CampaignVariant.objects.bulk_create(CampaignVariant(campaign=campaign, **v) for v in checked.variants)
    return campaign


def _checked(
    name: Any, type_key: Any, audience: Any, data: Any, channels: Any, throttle_per_second: Any, variants: Any
) -> _Checked:
    errors: dict[str, list[str]] = {}
    name = name.strip() if isinstance(name, str) else ""
    if not 1 <= len(name) <= 200:
        errors["name"] = ["a name of 1 to 200 characters is required"]
    notification_type = (
        NotificationType.objects.filter(key=type_key).first() if isinstance(type_key, str) else None
    )
    if notification_type is None:
        errors["type"] = [f"unknown notification type {type_key!r}"]
    elif notification_type.is_critical:
        errors["type"] = ["a critical type is not sent as a campaign"]
    topic = segment = None
    if not isinstance(audience, dict) or len(audience) != 1 or not ({"topic", "segment"} & set(audience)):
        errors["audience"] = ['must be {"topic": key} or {"segment": id}']
    elif "topic" in audience:
        topic = (
            Topic.objects.filter(key=audience["topic"]).first()
            if isinstance(audience["topic"], str)
            else None
        )
        if topic is None:
            errors["audience.topic"] = [f"unknown topic {audience['topic']!r}"]
    else:
        ident = audience["segment"]
        segment = (
            Segment.objects.filter(id=ident).first()
            if isinstance(ident, int) and not isinstance(ident, bool)
            else None
        )
        if segment is None:
            errors["audience.segment"] = [f"unknown segment {ident!r}"]
    data = {} if data is None else data
    if not isinstance(data, dict):
        errors["data"] = ["must be an object"]
    channels = [] if channels is None else channels
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        errors["channels"] = ["must be a list of channels"]
    elif notification_type is not None:
        foreign = [c for c in channels if c not in notification_type.channels]
        if foreign:
            errors["channels"] = [
                f"not channels of {notification_type.key}: {', '.join(foreign)}; it has {', '.join(notification_type.channels)}"
            ]
        elif len(set(channels)) < len(channels):
            errors["channels"] = ["a channel is listed twice"]
    if (
        not isinstance(throttle_per_second, int)
        or isinstance(throttle_per_second, bool)
        or not 1 <= throttle_per_second <= THROTTLE_MAX
    ):
        errors["throttle_per_second"] = [f"must be a whole number of sends per second, 1 to {THROTTLE_MAX}"]
    clean_variants = _variants_clean(variants, notification_type, errors)
    if errors:
        raise ValidationFailed(errors)
    assert notification_type is not None
    return _Checked(name, notification_type, topic, segment, data, channels, clean_variants)


# --- Start -----------------------------------------------------------------------------------


def campaign_readiness_errors(campaign: Campaign) -> dict[str, list[str]]:
    """What keeps the campaign's data from satisfying its template, per variant: a declared
    variable missing or of another type, or a template that fails with the data."""
    notification_type = campaign.notification_type
    errors: dict[str, list[str]] = {}
    channels = campaign.channels or notification_type.channels
    for variant in campaign.variants.all():
        where = f"variants[{variant.name}]" if campaign.variants.count() > 1 else ""
        data = {**campaign.data, **variant.data}
        missing = data_variables_errors(notification_type.variables, data)
        for field, problems in missing.items():
            errors[f"{where}.{field}" if where else field] = problems
        if missing:
            continue  # the templates would only fail for the same reasons
        context = preview_context({}, locale=notification_type.default_locale, data=data)
        for channel in channels:
            _, templates = type_channel_templates(
                notification_type=notification_type, channel=channel, version=variant.template_version
            )
            for locale, content in templates.items():
                for field, source in content.items():
                    try:
                        template_render(
                            source=source, context=context, html=(channel == "email" and field == "html")
                        )
                    except TemplateRenderError as exc:
                        key = f"templates.{locale}.{channel}.{field}"
                        errors.setdefault(f"{where}.{key}" if where else key, []).append(
                            f"fails with this campaign's data: {exc}"
                        )
    return errors


def _audience_sql(campaign: Campaign) -> tuple[str, list[Any]]:
    if campaign.audience_topic_id is not None:
        return (
            f"SELECT recipient_id AS id FROM {Subscription._meta.db_table} WHERE topic_id = %s",
            [campaign.audience_topic_id],
        )
    assert campaign.audience_segment is not None
    sql, params = segment_recipients(campaign.audience_segment.filters).values("id").query.sql_with_params()
    return sql, list(params)


def _snapshot(campaign: Campaign, variants: list[CampaignVariant], now: datetime) -> dict[int, int]:
    """Each variant's audience into its own topic, in one statement; returns {variant id:
    recipients}. A recipient's variant: the hash of campaign and recipient, within the
    cumulative weights."""
    total = sum(v.weight for v in variants)
    bounds: list[tuple[int, int]] = []
    running = 0
    for variant in variants:
        topic = Topic.objects.create(
            key=f"campaign.{campaign.id}.{variant.id}",
            name=f"Audience of {campaign.name}, variant {variant.name}",
        )
        variant.topic = topic
        running += variant.weight
        bounds.append((running, topic.id))
    case = " ".join(f"WHEN b < {bound} THEN {topic_id}" for bound, topic_id in bounds)
    audience, params = _audience_sql(campaign)
    with connection.cursor() as db:
        db.execute(
            f"""INSERT INTO {Subscription._meta.db_table} (topic_id, recipient_id, created_at)
                SELECT CASE {case} END, a.id, %s
                FROM (SELECT DISTINCT id, mod(mod(hashtextextended(%s || ':' || id, 0), %s) + %s, %s) AS b
                      FROM ({audience}) AS audience) AS a
                ORDER BY 1, 2""",
            [now, f"campaign:{campaign.id}", total, total, total, *params],
        )
        db.execute(
            f"""SELECT topic_id, count(*) FROM {Subscription._meta.db_table}
                WHERE topic_id = ANY(%s) GROUP BY topic_id""",
            [[topic_id for _, topic_id in bounds]],
        )
        by_topic = dict(db.fetchall())
    return {v.id: by_topic.get(v.topic_id, 0) for v in variants}


def campaign_start(*, campaign: Campaign) -> Campaign:
    """Start a draft (or, with a ``send_at`` ahead, schedule it). ValidationFailed when its
    data does not satisfy its template; CampaignRefused when it is no draft."""
    with transaction.atomic():
        locked = (
            Campaign.objects.select_for_update(of=("self",))
            .select_related("notification_type", "audience_segment")
            .get(pk=campaign.pk)
        )
        if locked.status != CampaignStatus.DRAFT:
            raise CampaignRefused(f"the campaign is {locked.status}; only a draft starts")
        errors = campaign_readiness_errors(locked)
        if errors:
            raise ValidationFailed(errors)
        now = timezone.now()
        variants = list(locked.variants.order_by("id"))
        counts = _snapshot(locked, variants, now)
        later = locked.send_at is not None and locked.send_at > now
        for variant in variants:
            assert variant.topic is not None
            event = event_ingest(
                api_key=None,
                type_key=locked.notification_type.key,
                topic_key=variant.topic.key,
                data={**locked.data, **variant.data},
                send_at=locked.send_at if later else None,
                template_version=variant.template_version,
                campaign_id=locked.id,
            ).event
            variant.event_id, variant.audience_count = event.id, counts[variant.id]
            variant.save(update_fields=["topic", "event_id", "audience_count"])
        locked.status = CampaignStatus.SCHEDULED if later else CampaignStatus.RUNNING
        locked.started_at = None if later else now
        locked.audience_count = sum(counts.values())
        locked.save(update_fields=["status", "started_at", "audience_count"])
        return locked


# --- Pause, resume, cancel --------------------------------------------------------------------


def _event_ids(campaign: Campaign) -> list[Any]:
    return list(campaign.variants.exclude(event_id=None).values_list("event_id", flat=True))


def _move_unsent(
    event_ids: list[Any], move: Any, reason_from: str | None, reason: str, now: datetime
) -> list[tuple[int, str]]:
    """Move the campaign's deliveries in ``move``'s sources that no sender holds (and, with
    ``reason_from``, only those of that reason); returns (id, channel) of those moved."""
    if not event_ids:
        return []
    with connection.cursor() as db:
        db.execute(
            f"""UPDATE {Delivery._meta.db_table} SET status = %s, reason = %s, due_at = NULL, updated_at = %s
                WHERE event_id = ANY(%s::uuid[]) AND status = ANY(%s)
                  AND (claimed_until IS NULL OR claimed_until < %s)
                  AND (%s::text IS NULL OR reason = %s)
                RETURNING id, channel""",
            [move.target, reason, now, event_ids, list(move.sources), now, reason_from, reason_from],
        )
        return [(row[0], row[1]) for row in db.fetchall()]


# A paused campaign's schedule rows (quiet hours, retries) wait here until its resume puts
# them back at their delivery's own due time.
_PARKED = timedelta(days=3650)


def _park_schedules(event_ids: list[Any], now: datetime) -> None:
    """Deliveries of the campaign waiting for a time (quiet hours, a retry's backoff) are
    not released while it is paused."""
    if event_ids:
        with connection.cursor() as db:
            db.execute(
                f"""UPDATE {DeliverySchedule._meta.db_table} AS s SET due_at = %s
                    FROM {Delivery._meta.db_table} AS d
                    WHERE s.delivery_id = d.id AND d.event_id = ANY(%s::uuid[])""",
                [now + _PARKED, event_ids],
            )


def _unpark_schedules(event_ids: list[Any], now: datetime) -> None:
    if event_ids:
        with connection.cursor() as db:
            db.execute(
                f"""UPDATE {DeliverySchedule._meta.db_table} AS s SET due_at = COALESCE(d.due_at, %s)
                    FROM {Delivery._meta.db_table} AS d
                    WHERE s.delivery_id = d.id AND d.event_id = ANY(%s::uuid[]) AND s.due_at > %s""",
                [now, event_ids, now + _PARKED / 2],
            )


def campaign_pause(*, campaign: Campaign) -> Campaign:
    """Stop sending now: the fan-out stops at its next page, what is not yet handed to a
    provider is held, and what waits for a time (quiet hours, a retry) waits for the resume.
    CampaignRefused unless it runs (or waits for its send_at)."""
    with transaction.atomic():
        locked = Campaign.objects.select_for_update().get(pk=campaign.pk)
        if locked.status not in (CampaignStatus.RUNNING, CampaignStatus.SCHEDULED):
            raise CampaignRefused(f"the campaign is {locked.status}; only a running or scheduled one pauses")
        now = timezone.now()
        _move_unsent(_event_ids(locked), CAMPAIGN_HELD, None, HELD, now)
        _park_schedules(_event_ids(locked), now)
        locked.status, locked.paused_at = CampaignStatus.PAUSED, now
        locked.save(update_fields=["status", "paused_at"])
        return locked


def campaign_resume(*, campaign: Campaign) -> Campaign:
    """Send again from where it stopped: the held deliveries and the rest of the fan-out."""
    with transaction.atomic():
        locked = Campaign.objects.select_for_update().get(pk=campaign.pk)
        if locked.status != CampaignStatus.PAUSED:
            raise CampaignRefused(f"the campaign is {locked.status}; only a paused one resumes")
        now = timezone.now()
        event_ids = _event_ids(locked)
        released = _move_unsent(event_ids, RELEASE, HELD, "", now)
        deliveries_dispatch(released, now=now, queue=CAMPAIGN_QUEUE)
        _unpark_schedules(event_ids, now)
        locked.status, locked.paused_at = CampaignStatus.RUNNING, None
        if locked.started_at is None:
            locked.started_at = now
        locked.save(update_fields=["status", "paused_at", "started_at"])
        outboxes = list(
            OutboxMessage.objects.filter(event_id__in=event_ids, processed_at__isnull=True).values_list(
                "id", flat=True
            )
        )
        available = locked.send_at if locked.send_at and locked.send_at > now else now
        OutboxMessage.objects.filter(id__in=outboxes).update(available_at=available, leased_until=None)
        if available <= now:
            transaction.on_commit(
                lambda: [outbox_relay(outbox_id=i, queue=CAMPAIGN_QUEUE) for i in outboxes], robust=True
            )
        return locked


def campaign_cancel(*, campaign: Campaign) -> Campaign:
    """Stop for good: nothing more is sent. CampaignRefused once it completed."""
    with transaction.atomic():
        locked = Campaign.objects.select_for_update().get(pk=campaign.pk)
        if locked.status in (CampaignStatus.COMPLETED, CampaignStatus.CANCELLED):
            raise CampaignRefused(f"the campaign is {locked.status} already")
        now = timezone.now()
        event_ids = _event_ids(locked)
        cancelled = _move_unsent(event_ids, CAMPAIGN_CANCELLED, None, CANCELLED, now)
        DeliverySchedule.objects.filter(delivery_id__in=[row[0] for row in cancelled]).delete()
        OutboxMessage.objects.filter(event_id__in=event_ids, processed_at__isnull=True).update(
            processed_at=now, leased_until=None
        )
        Event.objects.filter(id__in=event_ids).exclude(status=EventStatus.COMPLETED).update(
            status=EventStatus.CANCELLED
        )
        locked.status, locked.finished_at = CampaignStatus.CANCELLED, now
        locked.save(update_fields=["status", "finished_at"])
        return locked


# --- Progress -----------------------------------------------------------------------------------


@dataclass
class Progress:
    audience: int
    planned: int
    sent: int
    delivered: int
    failed: int
    suppressed: int
    held: int

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)

    @property
    def percent(self) -> int:
        done = self.sent + self.failed + self.suppressed
        return min(100, round(100 * done / self.audience)) if self.audience else 0


def _counts(event_ids: list[Any]) -> dict[Any, Progress]:
    """Per event: recipients with a delivery handed to a channel (each once), reached,
    failed on every channel, suppressed on every channel, held."""
    if not event_ids:
        return {}
    with connection.cursor() as db:
        db.execute(
            f"""SELECT event_id, count(*),
                       count(*) FILTER (WHERE handed), count(*) FILTER (WHERE reached),
                       count(*) FILTER (WHERE failed AND NOT handed), count(*) FILTER (WHERE all_suppressed),
                       count(*) FILTER (WHERE held)
                FROM (SELECT event_id, recipient_id,
                             bool_or(status = ANY(%s)) AS handed, bool_or(status = ANY(%s)) AS reached,
                             bool_or(status = ANY(%s)) AS failed, bool_and(status = %s) AS all_suppressed,
                             bool_or(status = %s AND reason = %s) AS held
                      FROM {Delivery._meta.db_table} WHERE event_id = ANY(%s::uuid[])
                      GROUP BY event_id, recipient_id) AS r
                GROUP BY event_id""",
            [
                list(HANDED),
                list(REACHED),
                list(FAILED),
                DeliveryStatus.SUPPRESSED,
                DeliveryStatus.SCHEDULED,
                HELD,
                event_ids,
            ],
        )
        return {row[0]: Progress(0, row[1], row[2], row[3], row[4], row[5], row[6]) for row in db.fetchall()}


# A campaign's counts are aggregated over its deliveries, about a quarter of a second per
# million, and its pages poll them every second: a large campaign's are computed at most
# once per PROGRESS_SHARE_SECONDS per 200,000 recipients (at most PROGRESS_MAX_AGE_SECONDS)
# and shared by every viewer.
PROGRESS_SHARE_RECIPIENTS = 200_000
PROGRESS_MAX_AGE_SECONDS = 5


def _shared_for(campaign: Campaign) -> int:
    """How many seconds this campaign's counts are shared (0: computed on each call)."""
    return min(PROGRESS_MAX_AGE_SECONDS, campaign.audience_count // PROGRESS_SHARE_RECIPIENTS)


def _shared(campaign: Campaign, name: str, compute: Callable[[], Any]) -> Any:
    seconds = _shared_for(campaign)
    if seconds <= 0:
        return compute()
    key = f"campaign:{campaign.pk}:{name}:{campaign.status}"
    try:
        value = cache.get(key)
    except Exception:  # the cache is an optimisation: without Redis, compute
        value = None
    if value is None:
        value = compute()
        try:
            cache.set(key, value, timeout=seconds)
        except Exception:
            pass
    return value


def campaign_progress(*, campaign: Campaign) -> tuple[Progress, dict[str, Progress]]:
    """The campaign's progress and each variant's (by name). A running campaign whose
    fan-outs all finished and that has nothing left to send is marked completed. A large
    campaign's counts may be a few seconds old (_shared_for)."""
    variants = list(campaign.variants.order_by("id"))
    event_ids = [v.event_id for v in variants if v.event_id]
    counts: dict[Any, Progress] = _shared(campaign, "counts", lambda: _counts(event_ids))
    per_variant: dict[str, Progress] = {}
    for variant in variants:
        known = counts.get(variant.event_id)
        progress = replace(known) if known is not None else Progress(0, 0, 0, 0, 0, 0, 0)
        progress.audience = variant.audience_count
        per_variant[variant.name] = progress
    total = Progress(
        campaign.audience_count,
        *(
            sum(getattr(p, f) for p in per_variant.values())
            for f in ("planned", "sent", "delivered", "failed", "suppressed", "held")
        ),
    )
    # Finished when every variant's fan-out is (recipients deleted since the snapshot are
    # skipped, so the planned count may stay below the audience) and nothing waits.
    if campaign.status == CampaignStatus.RUNNING:
        finished = (
            not Event.objects.filter(id__in=[v.event_id for v in variants if v.event_id])
            .exclude(status=EventStatus.COMPLETED)
            .exists()
        )
        pending = Delivery.objects.filter(
            event_id__in=[v.event_id for v in variants if v.event_id],
            status__in=[DeliveryStatus.PENDING, DeliveryStatus.RETRYING, DeliveryStatus.SCHEDULED],
        ).exists()
        if finished and not pending:
            now = timezone.now()
            Campaign.objects.filter(pk=campaign.pk, status=CampaignStatus.RUNNING).update(
                status=CampaignStatus.COMPLETED, finished_at=now
            )
            campaign.status, campaign.finished_at = CampaignStatus.COMPLETED, now
    return total, per_variant


TIMELINE_POINTS = 60
TIMELINE_MIN_SECONDS = 5


def campaign_timeline(
    *, campaign: Campaign, now: datetime | None = None
) -> tuple[list[datetime], dict[str, list[int]]]:
    """What happened over time since the campaign started: per bucket (at most
    TIMELINE_POINTS, each at least TIMELINE_MIN_SECONDS), the deliveries sent, delivered,
    opened, clicked and failed (in-app items count as delivered when written and as opened
    when read). Returns the buckets' starts and the counts by name. Up to now, a large
    campaign's may be a few seconds old (_shared_for)."""
    if now is not None:
        return _timeline(campaign, now)
    timeline: tuple[list[datetime], dict[str, list[int]]] = _shared(
        campaign, "timeline", lambda: _timeline(campaign, None)
    )
    return timeline


def _timeline(campaign: Campaign, now: datetime | None) -> tuple[list[datetime], dict[str, list[int]]]:
    started = campaign.started_at
    if started is None:
        return [], {}
    end = campaign.finished_at or now or timezone.now()
    span = max(1.0, (end - started).total_seconds())
    bucket = max(TIMELINE_MIN_SECONDS, int(-(-span // TIMELINE_POINTS)))
    count = int(span // bucket) + 1
    event_ids = _event_ids(campaign)
    names = ("sent", "delivered", "opened", "clicked", "failed")
    series = {name: [0] * count for name in names}
    if event_ids:
        with connection.cursor() as db:
            db.execute(
                f"""WITH d AS (SELECT id, channel, status, sent_at, updated_at FROM {Delivery._meta.db_table}
                               WHERE event_id = ANY(%(events)s::uuid[]))
                    SELECT %(sent)s, floor(extract(epoch FROM sent_at - %(start)s) / %(bucket)s), count(*)
                      FROM d WHERE sent_at IS NOT NULL GROUP BY 2
                    UNION ALL
                    SELECT %(delivered)s, floor(extract(epoch FROM sent_at - %(start)s) / %(bucket)s), count(*)
                      FROM d WHERE channel = %(inapp)s AND sent_at IS NOT NULL GROUP BY 2
                    UNION ALL
                    SELECT t.kind, floor(extract(epoch FROM t.occurred_at - %(start)s) / %(bucket)s), count(*)
                      FROM {DeliveryEvent._meta.db_table} t JOIN d ON d.id = t.delivery_id
                      WHERE t.kind = ANY(%(kinds)s) GROUP BY 1, 2
                    UNION ALL
                    SELECT %(opened)s, floor(extract(epoch FROM i.read_at - %(start)s) / %(bucket)s), count(*)
                      FROM {InboxItem._meta.db_table} i WHERE i.event_id = ANY(%(events)s::uuid[])
                      AND i.read_at IS NOT NULL GROUP BY 2
                    UNION ALL
                    SELECT %(failed_name)s, floor(extract(epoch FROM updated_at - %(start)s) / %(bucket)s), count(*)
                      FROM d WHERE status = ANY(%(failed)s) GROUP BY 2""",
                {
                    "events": event_ids,
                    "start": started,
                    "bucket": bucket,
                    "failed": list(FAILED),
                    "kinds": ["delivered", "opened", "clicked"],
                    **{name: name for name in ("sent", "delivered", "opened")},
                    "failed_name": "failed",
                    "inapp": Channel.INAPP,
                },
            )
            for name, index, n in db.fetchall():
                position = min(max(int(index), 0), count - 1)
                series[name][position] += int(n)
    return [started + timedelta(seconds=i * bucket) for i in range(count)], series


def campaign_payload(campaign: Campaign) -> dict[str, Any]:
    """The API's view of a campaign (DESIGN's progress fields, and per variant)."""
    total, per_variant = campaign_progress(campaign=campaign)
    keys = ("audience", "sent", "delivered", "failed", "suppressed")
    return {
        "id": campaign.id,
        "name": campaign.name,
        "type": campaign.notification_type.key,
        "status": campaign.status,
        "throttle_per_second": campaign.throttle_per_second,
        "channels": campaign.channels,
        "send_at": campaign.send_at.isoformat() if campaign.send_at else None,
        "started_at": campaign.started_at.isoformat() if campaign.started_at else None,
        "finished_at": campaign.finished_at.isoformat() if campaign.finished_at else None,
        "progress": {key: getattr(total, key) for key in keys}
        | {"held": total.held, "percent": total.percent},
        "variants": [
            {"name": name, "progress": {key: getattr(p, key) for key in keys}}
            for name, p in per_variant.items()
        ],
    }
