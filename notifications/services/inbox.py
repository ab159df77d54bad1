"""In-app delivery and the end user's inbox: items, read state, live frames.

Frames are a nudge, sent after commit to the recipients the connection registry (Redis)
knows to be connected; the inbox rows are the truth and clients resume by seq. Redis is
never asked while inbox sequence rows are locked: a Redis hiccup costs frames, never an
inbox write.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import redis
from django.db import connection, transaction
from django.utils import timezone

from notifications import selectors
from notifications.models import (
    Channel,
    Delivery,
    Event,
    InboxItem,
    InboxSequence,
    NotificationType,
    Recipient,
)
from notifications.services.aggregation import aggregation_context
from notifications.services.catalog import type_channel_templates
from notifications.services.dispatch import bigint_array_literal
from notifications.services.metrics import metrics_increment
from notifications.services.realtime import (
    ITEM_MESSAGE,
    NOTIFICATIONS_MESSAGE,
    READ_ALL_MESSAGE,
    realtime_publish,
    realtime_publish_entries,
)
from notifications.services.templating import (
    TemplateRenderError,
    aggregate_context,
    locale_pick,
    template_render,
    template_uses_recipient,
)
from notifications.states import INAPP_UNRENDERABLE, INAPP_WRITTEN, READ
from realtime.hub import Entry
from realtime.registry import recipients_connected

log = logging.getLogger(__name__)


def inbox_item_payload(item: InboxItem | dict[str, Any]) -> dict[str, Any]:
    """The JSON shape of an inbox item, the same in the API, socket frames and SSE."""
    get = item.get if isinstance(item, dict) else lambda name: getattr(item, name)
    read_at: datetime | None = get("read_at")
    created_at: datetime = get("created_at")  # type: ignore[assignment]
    accepted_at: datetime = get("accepted_at")  # type: ignore[assignment]
    archived_at: datetime | None = get("archived_at")
    snoozed_until: datetime | None = get("snoozed_until")
    return {
        "id": get("id"),
        "seq": get("seq"),
        "type": get("notification_type"),
        "category": get("category"),
        "title": get("title"),
        "body": get("body"),
        "url": get("url"),
        "data": get("data"),
        "read": read_at is not None,
        "read_at": read_at.isoformat() if read_at else None,
        "created_at": created_at.isoformat(),
        "accepted_at": accepted_at.isoformat(),
        "event_id": str(get("event_id")),
        "archived": archived_at is not None,
        "archived_at": archived_at.isoformat() if archived_at else None,
        "snoozed_until": snoozed_until.isoformat() if snoozed_until else None,
    }


def _templates_for(event: Event) -> tuple[int | None, dict[str, dict[str, str]]]:
    """The template version an event's in-app items render and its in-app templates,
    {locale: content} (services/catalog.py, type_channel_templates)."""
    return type_channel_templates(
        notification_type=event.notification_type, channel=Channel.INAPP, version=event.template_version
    )


def _render(
    content: dict[str, str],
    data: dict[str, Any],
    recipient: dict[str, Any] | None,
    aggregate: dict[str, Any] | None = None,
) -> tuple[str, str, str]:
    context = {
        "data": data,
        "recipient": recipient or {},
        "aggregate": aggregate or aggregate_context(1, [data]),
    }
    return (
        template_render(source=content.get("title", ""), context=context),
        template_render(source=content.get("body", ""), context=context),
        template_render(source=content.get("url", ""), context=context),
    )


# Up to this many deliveries, the planner's choice needs no help (see inapp_dispatch).
_FEW_IDS = 50


def inapp_dispatch(*, delivery_ids: list[int], events: dict[Any, Event] | None = None) -> int:
    """Write inbox items for the pending in-app deliveries among ``delivery_ids`` and push a
    frame to each connected owner after commit. Returns how many items were written.
    ``events`` (optional): events already loaded with their types, by id, not read again.
    The commit is durable (services/durability.py): frames go out right after it.

    Rows are claimed with a compare-and-set (pending -> delivered) in the same transaction
    as their inbox items, so a task run twice writes each item once. One that cannot be
    rendered is failed in that same transaction, so nobody ever sees it delivered.
    """
    if not delivery_ids:
        return 0
    now = timezone.now()
    # No savepoint: called inside a fan-out page or a batch claim, it fails with its caller.
    with transaction.atomic(savepoint=False):
        with connection.cursor() as db:
            # Primary-key lookups only: given "channel = …" the planner scans the whole
            # (event, recipient, channel) index testing each row against the id array, and
            # with young statistics it picks sequential scans or hash joins (0.4 s per
            # 2,000 ids at 60,000 rows). The ids come from an in-app batch; a few ids are
            # looked up by primary key anyway, and spare the statement.
            if len(delivery_ids) > _FEW_IDS:
                db.execute("SET LOCAL enable_seqscan TO OFF")
            db.execute(
                f"""UPDATE {Delivery._meta.db_table}
                    SET status = %s, attempts = attempts + 1, sent_at = %s, updated_at = %s
                    WHERE id = ANY(%b) AND status = ANY(%b)
                    RETURNING id, event_id, recipient_id, aggregate_count""",
                [INAPP_WRITTEN.target, now, now, list(delivery_ids), list(INAPP_WRITTEN.sources)],
            )
            claimed_rows = db.fetchall()
        if not claimed_rows:
            return 0
        return inapp_write(
            delivered=[(row[0], row[1], row[2]) for row in claimed_rows],
            aggregated=[row[0] for row in claimed_rows if row[3] > 1],
            events=events,
            now=now,
        )


def inapp_write(
    *,
    delivered: list[tuple[int, Any, int]],
    now: datetime,
    aggregated: list[int] | None = None,
    events: dict[Any, Event] | None = None,
    versions_stamped: bool = False,
) -> int:
    """Inside a transaction that just made these in-app deliveries delivered, by claiming
    them (``inapp_dispatch``) or by inserting them so (services/deliveries.py): write their
    inbox items, fail the ones that cannot be rendered, and push frames after commit.
    ``delivered``: (delivery id, event id, recipient id); ``aggregated``: those of them that
    stand for several events; ``versions_stamped``: the rows were inserted with the template
    version their items render (services/deliveries.py). Returns how many items were written."""
    with transaction.atomic(savepoint=False):
        aggregates = aggregation_context(delivery_ids=aggregated) if aggregated else {}
        # The caller (a fan-out) may hold the events with their types already.
        known = events or {}
        events = {
            event_id: known[event_id] for event_id in {row[1] for row in delivered} if event_id in known
        }
        missing = {row[1] for row in delivered} - events.keys()
        if missing:
            events.update(
                (e.id, e) for e in Event.objects.select_related("notification_type").filter(id__in=missing)
            )
        versions: dict[Any, int | None] = {}
        templates: dict[Any, dict[str, dict[str, str]]] = {}
        for event_id, e in events.items():
            versions[event_id], templates[event_id] = _templates_for(e)
        multilingual = any(len(by_locale) > 1 for by_locale in templates.values())
        recipients_needed = any(
            template_uses_recipient(source)
            for by_locale in templates.values()
            for content in by_locale.values()
            for source in content.values()
        )
        recipient_rows: dict[int, dict[str, Any]] = {}
        locales: dict[int, str] = {}
        # The recipients' rows are read only when a template needs them (locale or fields).
        wanted = {r[2] for r in delivered} if multilingual or recipients_needed else set()
        for facts in Recipient.objects.filter(id__in=wanted).values(
            "id", "external_id", "name", "locale", "timezone"
        ):
            locales[facts["id"]] = facts["locale"]
            if recipients_needed:
                recipient_rows[facts["id"]] = dict(facts)

        rendered_once: dict[tuple[Any, str], tuple[str, str, str] | TemplateRenderError] = {}
        # (event, locale) -> whether its template differs per recipient, asked once each
        per_recipient: dict[tuple[Any, str], bool] = {}
        ready: list[tuple[int, int, Any, tuple[str, str, str]]] = []
        failed: list[tuple[int, str]] = []
        for delivery_id, event_id, recipient_id in delivered:
            event = events[event_id]
            picked = locale_pick(
                templates[event_id], locales.get(recipient_id, ""), event.notification_type.default_locale
            )
            if picked is None:
                failed.append((delivery_id, "no in-app template for this type"))
                continue
            locale, content = picked
            personal = per_recipient.get((event_id, locale))
            if personal is None:
                personal = any(template_uses_recipient(s) for s in content.values())
                per_recipient[(event_id, locale)] = personal
            try:
                if delivery_id in aggregates:
                    text = _render(
                        content, event.data, recipient_rows.get(recipient_id), aggregates[delivery_id]
                    )
                elif personal:
                    text = _render(content, event.data, recipient_rows.get(recipient_id))
                else:
                    cached = rendered_once.get((event_id, locale))
                    if cached is None:
                        try:
                            cached = _render(content, event.data, None)
                        except TemplateRenderError as exc:
                            cached = exc
                        rendered_once[(event_id, locale)] = cached
                    if isinstance(cached, TemplateRenderError):
                        raise cached
                    text = cached
            except TemplateRenderError as exc:
                failed.append((delivery_id, str(exc)[:200]))
                continue
            ready.append((recipient_id, delivery_id, event_id, text))

        if failed:
            _fail_unrenderable(failed, now)
        items = _assign_sequence(ready, events)
        written = _insert_items(items, now)
        if not versions_stamped:
            _record_versions(items, versions)
        _written(items, written, failed, now)
    return len(items)


def _record_versions(items: list[tuple[Any, ...]], versions: dict[Any, int | None]) -> None:
    """Each written delivery names the template version its item rendered."""
    ids = [item[2] for item in items if versions.get(item[3]) is not None]
    if not ids:
        return
    with connection.cursor() as db:
        db.execute(
            f"""UPDATE {Delivery._meta.db_table} AS d SET template_version = u.v
                FROM unnest(%b::bigint[], %b::int[]) AS u(id, v) WHERE d.id = u.id""",
            [ids, [versions[item[3]] for item in items if versions.get(item[3]) is not None]],
        )


# inapp_write_one_text's statement: the deliveries (of recipients that exist), their
# sequence numbers (rows locked in recipient order, as in _assign_sequence) and their items.
_SKIP_EXISTING = "ON CONFLICT (event_id, recipient_id, channel) DO NOTHING"
_ONE_TEXT_WRITE = f"""WITH d AS (
        INSERT INTO {Delivery._meta.db_table}
            (event_id, recipient_id, channel, status, reason, attempts, sent_at, created_at, updated_at,
             template_version)
        SELECT %(event)s, r.id, %(channel)s, %(delivered)s, '', 1, %(now)s, %(planned_at)s, %(now)s,
               %(version)s
        FROM {Recipient._meta.db_table} r WHERE r.id = ANY(%(recipients)s::bigint[]) ORDER BY r.id
        {{on_conflict}}
        RETURNING id, recipient_id),
    s AS (
        INSERT INTO {InboxSequence._meta.db_table} AS s (recipient_id, last_seq)
        SELECT recipient_id, 1 FROM d ORDER BY recipient_id
        ON CONFLICT (recipient_id) DO UPDATE SET last_seq = s.last_seq + 1
        RETURNING recipient_id, last_seq)
    INSERT INTO {InboxItem._meta.db_table}
        (recipient_id, seq, delivery_id, event_id, notification_type, category, title, body, url, data,
         created_at, accepted_at)
    SELECT d.recipient_id, s.last_seq, d.id, %(event)s, %(type)s, %(category)s, %(title)s, %(body)s,
           %(url)s, %(data)s::jsonb, %(now)s, %(accepted_at)s
    FROM d JOIN s ON s.recipient_id = d.recipient_id
    ORDER BY d.recipient_id
    RETURNING id, recipient_id, seq, delivery_id"""


def inapp_write_one_text(
    *,
    event: Event,
    recipient_ids: Sequence[int],
    planned_at: datetime,
    now: datetime,
    rows_are_new: bool = False,
) -> int | None:
    """Inside a transaction: for an event whose in-app text is the same for everyone (one
    locale, no recipient fields, and it renders), write the in-app deliveries planned for
    these recipients (inserted delivered, created at ``planned_at``; rows that exist and
    recipients deleted since are skipped), their sequence numbers and their inbox items in
    one statement, and push frames after commit. Returns the items written, or None when
    the text is not the same for everyone or does not render (the caller then inserts the
    rows and calls ``inapp_write``, which renders per recipient or fails them).

    ``rows_are_new``: no delivery of these recipients for this event exists, so they are
    inserted without ON CONFLICT, whose check for each row cost the statement about 7%
    (docs/benchmarks.md, P1); should one exist after all, the statement fails with
    IntegrityError and writes nothing.

    The database does the per-row work: a large page of a topic event costs no Python per
    recipient beyond its frame, and nothing crosses the wire twice (docs/benchmarks.md, P1).
    Sequence rows are locked in recipient order, as in ``_assign_sequence``."""
    notification_type = event.notification_type
    version, templates = _templates_for(event)
    content = templates.get(notification_type.default_locale)
    if content is None or len(templates) != 1 or any(template_uses_recipient(s) for s in content.values()):
        return None
    try:
        text = _render(content, event.data, None)
    except TemplateRenderError:
        return None
    params: dict[str, Any] = {
        "event": event.id,
        "channel": Channel.INAPP,
        "delivered": INAPP_WRITTEN.target,
        "now": now,
        "planned_at": planned_at,
        "recipients": bigint_array_literal(recipient_ids),
        "type": notification_type.key,
        "category": notification_type.category,
        "title": text[0],
        "body": text[1],
        "url": text[2],
        "data": json.dumps(event.data),
        "accepted_at": accepted_time(event),
        "version": version,
    }
    with transaction.atomic(savepoint=False), connection.cursor() as db:
        db.execute(_ONE_TEXT_WRITE.format(on_conflict="" if rows_are_new else _SKIP_EXISTING), params)
        rows = db.fetchall()
        items = [
            (recipient_id, seq, delivery_id, event.id, event, text)
            for _, recipient_id, seq, delivery_id in rows
        ]
        _written(items, [row[0] for row in rows], [], now)
    return len(items)


def _written(
    items: list[tuple[Any, ...]], written: list[int], failed: list[tuple[int, str]], now: datetime
) -> None:
    """Inside the transaction that wrote ``items`` (ids ``written``) and failed ``failed``:
    frames and counters after commit, and the log lines."""
    counts: Counter[str] = Counter({"deliveries:inapp:delivered": len(items)})
    if failed:
        counts["deliveries:inapp:failed"] = len(failed)
    # Frames first: the counters can wait a Redis round trip, the reader cannot.
    if items:
        transaction.on_commit(lambda: _push_frames(items, written, now), robust=True)
    transaction.on_commit(lambda: metrics_increment(counts), robust=True)
    for delivery_id, reason in failed:
        log.warning("in-app delivery failed: %s", reason, extra={"delivery_id": delivery_id})
    by_event: dict[Any, list[int]] = {}
    for item in items:
        by_event.setdefault(item[3], []).append(item[2])
    for event_id, ids in by_event.items():
        log.info(
            "in-app delivered",
            extra={
                "event_id": str(event_id),
                # Small batches name every delivery; large ones their id range.
                "delivery_ids": ids if len(ids) <= 20 else [ids[0], ids[-1]],
                "count": len(ids),
            },
        )


def _fail_unrenderable(failed: list[tuple[int, str]], now: datetime) -> None:
    with connection.cursor() as db:
        db.execute(
            f"""UPDATE {Delivery._meta.db_table} AS d SET status = %s, reason = u.reason, updated_at = %s
                FROM unnest(%b::bigint[], %b::text[]) AS u(id, reason)
                WHERE d.id = u.id AND d.status = ANY(%b)""",
            [
                INAPP_UNRENDERABLE.target,
                now,
                [row[0] for row in failed],
                [row[1] for row in failed],
                list(INAPP_UNRENDERABLE.sources),
            ],
        )


def _push_frames(items: list[tuple[Any, ...]], written: list[int], now: datetime) -> None:
    """After commit: a notification frame and the new unread count to each owner with a
    live connection. At-most-once: a Redis failure costs frames, never items.

    Items that read the same (one event, one text: a broadcast page) go out as ONE message
    for all their owners, the shared item once and each owner's item id, seq and unread
    count beside it (services/live_inbox.py builds each frame); a page of 2,000 is one
    publish, and each web process parses it once (docs/benchmarks.md, P3 broadcast)."""
    try:
        online = recipients_connected(item[0] for item in items)
    except redis.RedisError as exc:
        log.warning("connection registry unavailable, no live frames (clients resume by seq): %s", exc)
        return
    if not online:
        return
    unread = _unread_counts(online)
    # The shared item of each (event, text), and each owner's (seq, item id, group) in seq order.
    shared_items: dict[tuple[Any, ...], dict[str, Any]] = {}
    owned: dict[int, list[tuple[int, int, tuple[Any, ...]]]] = {}
    for item_id, item in zip(written, items, strict=True):
        recipient_id, seq, _delivery_id, event_id, event, text = item
        if recipient_id not in online:
            continue
        key = (event_id, text)
        if key not in shared_items:
            title, body, url = text
            shared_items[key] = inbox_item_payload(
                {
                    "id": None,
                    "seq": None,
                    "notification_type": event.notification_type.key,
                    "category": event.notification_type.category,
                    "title": title,
                    "body": body,
                    "url": url,
                    "data": event.data,
                    "read_at": None,
                    "created_at": now,
                    "accepted_at": accepted_time(event),
                    "event_id": event_id,
                }
            )
        owned.setdefault(recipient_id, []).append((seq, item_id, key))
    # One message per group for the owners whose items are all in it (a broadcast page: all
    # of them); an owner with items in several groups gets messages of its own, in seq order,
    # which no order of the groups could guarantee. The new unread count goes with each
    # owner's last item; the connection sends it as its own frame after the notification.
    groups: dict[tuple[Any, ...], tuple[dict[str, list[list[int]]], dict[str, int]]] = {}
    own: list[Entry] = []
    for recipient_id, rows in owned.items():
        rows.sort()
        owner = str(recipient_id)
        if len({key for _seq, _item_id, key in rows}) == 1:
            group_rows, counts = groups.setdefault(rows[0][2], ({}, {}))
            group_rows[owner] = [[item_id, seq] for seq, item_id, _key in rows]
            counts[owner] = unread.get(recipient_id, 0)
            continue
        for index, (seq, item_id, key) in enumerate(rows):
            last = index == len(rows) - 1
            own.append(
                (
                    [recipient_id],
                    {
                        "type": NOTIFICATIONS_MESSAGE,
                        "item": shared_items[key],
                        "rows": {owner: [[item_id, seq]]},
                        "unread": {owner: unread.get(recipient_id, 0)} if last else {},
                    },
                )
            )
    realtime_publish_entries(
        [
            (
                [int(owner) for owner in group_rows],
                {
                    "type": NOTIFICATIONS_MESSAGE,
                    "item": shared_items[key],
                    "rows": group_rows,
                    "unread": counts,
                },
            )
            for key, (group_rows, counts) in groups.items()
        ]
        + own
    )


def _unread_counts(recipient_ids: set[int]) -> dict[int, int]:
    """{recipient: unread items} for the recipients, from the partial index of unread
    items. Plain SQL: this runs between a commit and its frames, and the ORM spent longer
    building the grouped query than the database spent answering it."""
    with connection.cursor() as db:
        db.execute(
            f"""SELECT recipient_id, count(*) FROM {InboxItem._meta.db_table}
                WHERE recipient_id = ANY(%b) AND read_at IS NULL AND snoozed_until IS NULL
                GROUP BY recipient_id""",
            [sorted(recipient_ids)],
        )
        return dict(db.fetchall())


def accepted_time(event: Event) -> datetime:
    """When the event counts as accepted for the inbox's order: its creation, or for a
    scheduled send the moment it came due."""
    return max(event.created_at, event.send_at) if event.send_at else event.created_at


def _assign_sequence(
    ready: list[tuple[int, int, Any, tuple[str, str, str]]], events: dict[Any, Event]
) -> list[tuple[Any, ...]]:
    """Hand out the next sequence numbers, one per item, gapless per recipient. Sequence
    rows are locked in recipient order so concurrent dispatches cannot deadlock."""
    if not ready:
        return []
    ready.sort(key=lambda row: (row[0], row[1]))
    per_recipient = Counter(row[0] for row in ready)
    recipient_ids = sorted(per_recipient)
    with connection.cursor() as db:
        db.execute(
            f"""INSERT INTO {InboxSequence._meta.db_table} AS s (recipient_id, last_seq)
                SELECT r, n FROM unnest(%b::bigint[], %b::bigint[]) AS t(r, n) ORDER BY r
                ON CONFLICT (recipient_id) DO UPDATE SET last_seq = s.last_seq + EXCLUDED.last_seq
                RETURNING recipient_id, last_seq""",
            [recipient_ids, [per_recipient[r] for r in recipient_ids]],
        )
        next_seq = {rid: last - per_recipient[rid] + 1 for rid, last in db.fetchall()}
    items: list[tuple[Any, ...]] = []
    for recipient_id, delivery_id, event_id, text in ready:
        seq = next_seq[recipient_id]
        next_seq[recipient_id] = seq + 1
        items.append((recipient_id, seq, delivery_id, event_id, events[event_id], text))
    return items


def _insert_items(items: list[tuple[Any, ...]], now: datetime) -> list[int]:
    """Insert the items; returns their ids in the order given. The event's data, type key
    and category are joined in by the database rather than sent once per item; the items
    of one event with one text (a page of a topic event, the common large batch) get them
    as constants instead, which spares the two lookups per row (docs/benchmarks.md, P1)."""
    if not items:
        return []
    first = items[0]
    with connection.cursor() as db:
        if all(i[3] == first[3] and i[5] == first[5] for i in items):
            event: Event = first[4]
            db.execute(
                f"""INSERT INTO {InboxItem._meta.db_table}
                        (recipient_id, seq, delivery_id, event_id, notification_type, category, title, body,
                         url, data, created_at, accepted_at)
                    SELECT t.r, t.s, t.d, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s
                    FROM unnest(%b::bigint[], %b::bigint[], %b::bigint[]) AS t(r, s, d)
                    RETURNING id, delivery_id""",
                [
                    first[3],
                    event.notification_type.key,
                    event.notification_type.category,
                    *first[5],
                    json.dumps(event.data),
                    now,
                    accepted_time(event),
                    [i[0] for i in items],
                    [i[1] for i in items],
                    [i[2] for i in items],
                ],
            )
        else:
            db.execute(
                f"""INSERT INTO {InboxItem._meta.db_table}
                        (recipient_id, seq, delivery_id, event_id, notification_type, category, title, body,
                         url, data, created_at, accepted_at)
                    SELECT t.r, t.s, t.d, t.e, nt.key, nt.category, t.ti, t.b, t.u, ev.data, %s,
                           greatest(ev.created_at, coalesce(ev.send_at, ev.created_at))
                    FROM unnest(%b::bigint[], %b::bigint[], %b::bigint[], %b::uuid[], %b::text[], %b::text[],
                                %b::text[]) AS t(r, s, d, e, ti, b, u)
                    JOIN {Event._meta.db_table} ev ON ev.id = t.e
                    JOIN {NotificationType._meta.db_table} nt ON nt.id = ev.notification_type_id
                    RETURNING id, delivery_id""",
                [
                    now,
                    [i[0] for i in items],
                    [i[1] for i in items],
                    [i[2] for i in items],
                    [i[3] for i in items],
                    [i[5][0] for i in items],
                    [i[5][1] for i in items],
                    [i[5][2] for i in items],
                ],
            )
        ids = dict((delivery_id, item_id) for item_id, delivery_id in db.fetchall())
    return [ids[i[2]] for i in items]


# --- what the end user does with an item ------------------------------------------------
#
# Every change is one transaction on the item's row (locked), and after commit the new
# state of the item and the unread count go to every live connection of its owner (an
# ``item`` frame), so other tabs and devices follow at once. Frames are a nudge as always:
# a client that missed them reads the state again (the newest page) when it reconnects.

SNOOZE_MAX = timedelta(days=365)


class InboxChangeRefused(Exception):
    """The change cannot be made; ``field`` and ``message`` say why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _push_item_state(recipient_id: int, item_id: int) -> None:
    """After commit: the item's state and the unread count to the owner's connections."""
    _push_items_state([item_id])


def _push_items_state(item_ids: list[int]) -> None:
    """After commit: each item's state, with its owner's unread count, to the owner's
    connections; two queries whatever the number of items."""

    def push() -> None:
        rows = list(InboxItem.objects.filter(id__in=item_ids).values("recipient_id", *selectors.ITEM_COLUMNS))
        if not rows:
            return
        unread = _unread_counts({row["recipient_id"] for row in rows})
        realtime_publish(
            [
                (
                    row["recipient_id"],
                    {
                        "type": ITEM_MESSAGE,
                        "item": inbox_item_payload(row),
                        "unread": unread.get(row["recipient_id"], 0),
                    },
                )
                for row in rows
            ]
        )

    transaction.on_commit(push, robust=True)


def _change(recipient_id: int, item_id: int, change: Callable[[InboxItem, datetime], list[str]]) -> InboxItem:
    """Apply ``change`` (which returns the fields it changed) to the locked item; raises
    InboxItem.DoesNotExist for an item that is not the recipient's."""
    now = timezone.now()
    with transaction.atomic():
        item = InboxItem.objects.select_for_update().get(id=item_id, recipient_id=recipient_id)
        changed = change(item, now)
        if changed:
            item.save(update_fields=changed)
            _push_item_state(recipient_id, item.id)
    return item


def _mark_read(item: InboxItem, now: datetime) -> list[str]:
    if item.read_at is not None:
        return []
    item.read_at = now
    Delivery.objects.filter(id=item.delivery_id, status__in=READ.sources).update(
        status=READ.target, updated_at=now
    )
    transaction.on_commit(lambda: metrics_increment({"inbox_read": 1}), robust=True)
    return ["read_at"]


def inbox_item_mark_read(*, recipient_id: int, item_id: int) -> InboxItem:
    """Mark one of the recipient's items read (idempotent). Raises InboxItem.DoesNotExist
    for an item that is not theirs, exactly as for one that does not exist."""
    return _change(recipient_id, item_id, _mark_read)


def inbox_item_mark_unread(*, recipient_id: int, item_id: int) -> InboxItem:
    """Mark an item unread again (idempotent). Its delivery stays ``read``: it was."""

    def change(item: InboxItem, now: datetime) -> list[str]:
        if item.read_at is None:
            return []
        item.read_at = None
        return ["read_at"]

    return _change(recipient_id, item_id, change)


def inbox_item_archive(*, recipient_id: int, item_id: int) -> InboxItem:
    """Archive an item: it leaves the inbox list and counts as read (idempotent). Archiving
    a snoozed item ends the snooze."""

    def change(item: InboxItem, now: datetime) -> list[str]:
        if item.archived_at is not None:
            return []
        item.archived_at = now
        item.snoozed_until = None
        return ["archived_at", "snoozed_until", *_mark_read(item, now)]

    return _change(recipient_id, item_id, change)


def inbox_item_unarchive(*, recipient_id: int, item_id: int) -> InboxItem:
    """Bring an archived item back to the inbox list (read, as it was archived)."""

    def change(item: InboxItem, now: datetime) -> list[str]:
        if item.archived_at is None:
            return []
        item.archived_at = None
        return ["archived_at"]

    return _change(recipient_id, item_id, change)


def inbox_item_snooze(*, recipient_id: int, item_id: int, until: datetime) -> InboxItem:
    """Hide an item until ``until`` (in the future, at most SNOOZE_MAX ahead); it then
    comes back on top of the list, unread (inbox_snoozed_wake). Snoozing again moves the
    time. Raises InboxChangeRefused for a time in the past or too far ahead, or for an
    archived item."""

    def change(item: InboxItem, now: datetime) -> list[str]:
        if until <= now:
            raise InboxChangeRefused("until", f"must be in the future, got {until.isoformat()}")
        if until > now + SNOOZE_MAX:
            raise InboxChangeRefused("until", f"must be at most {SNOOZE_MAX.days} days ahead")
        if item.archived_at is not None:
            raise InboxChangeRefused("item", "an archived item cannot be snoozed; unarchive it first")
        item.snoozed_until = until
        return ["snoozed_until"]

    return _change(recipient_id, item_id, change)


def inbox_item_unsnooze(*, recipient_id: int, item_id: int) -> InboxItem:
    """End a snooze now: the item is back in the list where it was (idempotent)."""

    def change(item: InboxItem, now: datetime) -> list[str]:
        if item.snoozed_until is None:
            return []
        item.snoozed_until = None
        return ["snoozed_until"]

    return _change(recipient_id, item_id, change)


def inbox_snoozed_wake(*, limit: int = 1000) -> int:
    """Bring back the snoozed items whose time has come: each is listed again on top (its
    ``accepted_at`` becomes the time it woke, as for a scheduled send that came due),
    unread, and its owner's connections get the item frame and the unread count. Claimed
    with SKIP LOCKED, so two beat processes never wake one item twice. Returns how many
    woke."""
    now = timezone.now()
    with transaction.atomic(), connection.cursor() as db:
        db.execute(
            f"""UPDATE {InboxItem._meta.db_table} SET
                    accepted_at = snoozed_until, read_at = NULL, snoozed_until = NULL
                WHERE id IN (
                    SELECT id FROM {InboxItem._meta.db_table}
                    WHERE snoozed_until IS NOT NULL AND snoozed_until <= %s
                    ORDER BY snoozed_until LIMIT %s FOR UPDATE SKIP LOCKED)
                RETURNING id""",
            [now, limit],
        )
        woke = [row[0] for row in db.fetchall()]
        if woke:
            _push_items_state(woke)
    return len(woke)


def inbox_mark_all_read(*, recipient_id: int) -> int:
    """Mark every unread item of the recipient read (snoozed ones stay as they are), and
    their deliveries with them, in one statement: an item committed meanwhile is either
    marked with its delivery or left unread, never half. The owner's connections get a
    ``read_all`` frame naming the newest seq marked, and the unread count. Returns how
    many items changed."""
    now = timezone.now()
    with transaction.atomic(), connection.cursor() as db:
        db.execute(
            f"""WITH marked AS (
                    UPDATE {InboxItem._meta.db_table} SET read_at = %s
                    WHERE recipient_id = %s AND read_at IS NULL AND snoozed_until IS NULL
                    RETURNING delivery_id, seq),
                moved AS (
                    UPDATE {Delivery._meta.db_table} d SET status = %s, updated_at = %s
                    FROM marked WHERE d.id = marked.delivery_id AND d.status = ANY(%s)
                    RETURNING d.id)
                SELECT (SELECT count(*) FROM marked), (SELECT max(seq) FROM marked),
                       (SELECT count(*) FROM moved)""",
            [now, recipient_id, READ.target, now, list(READ.sources)],
        )
        row = db.fetchone()
        changed = int(row[0]) if row else 0
        if changed:
            up_to = int(row[1])

            def push() -> None:
                count = _unread_counts({recipient_id}).get(recipient_id, 0)
                message = {
                    "type": READ_ALL_MESSAGE,
                    "up_to_seq": up_to,
                    "read_at": now.isoformat(),
                    "unread": count,
                }
                realtime_publish([(recipient_id, message)])

            transaction.on_commit(push, robust=True)
    if changed:
        metrics_increment({"inbox_read": changed})
    return changed
