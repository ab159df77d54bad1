"""The preference center (``/preferences/`` and the unsubscribe links' pages): a recipient's
preferences as the page shows them, and saving what the person changed on it.

The page shows one checkbox per type and channel with its *effective* value, resolved as
planning resolves it (services/planning.py: type > category > all notifications > the
type's default, which is "on" for every channel of the type), plus a checkbox per
category and channel and one per channel for all notifications. Only overrides are stored
(models.Preference), so saving turns checkbox states back into overrides:

- a control whose submitted value equals what was shown is unchanged: its stored override,
  if any, stays, and without one it keeps following the level above it. Turning "Email"
  off for all notifications therefore turns off every type's email that had no choice of
  its own, with or without the page's script (which also unticks the boxes below);
- a changed control stores an override only where its value differs from the level above
  after the change, so switching a category back on leaves nothing behind;
- controls missing from the form (a type created after the page was rendered) are
  unchanged.

Critical types are shown as always on and cannot be changed here; their email, SMS and
push bypass opt-outs in planning anyway.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import time
from typing import Any

from django.db import transaction

from notifications.models import (
    Category,
    Channel,
    DigestFrequency,
    DigestSetting,
    NotificationType,
    Preference,
    Recipient,
)
from notifications.services.recipients import (
    DIGEST_CATEGORIES,
    clock_parse,
    digest_frequency_check,
    preferences_replace,
)
from notifications.services.unsubscribe import unsubscribe_parse
from notifications.services.validation import RuleViolation, ValidationFailed, timezone_check

# The page's order: what a person can change first, the always-on critical types last.
CATEGORY_ORDER: tuple[str, ...] = (
    Category.TRANSACTIONAL,
    Category.SOCIAL,
    Category.MARKETING,
    Category.CRITICAL,
)
CATEGORY_HINTS: dict[str, str] = {
    Category.TRANSACTIONAL: "Answers to something you did: orders, receipts, replies.",
    Category.SOCIAL: "What other people do: likes, follows, mentions.",
    Category.MARKETING: "News, offers and newsletters.",
    Category.CRITICAL: "Security and account alerts. They always reach you, on every channel, "
    "even during quiet hours.",
}
CHANNEL_LABELS: dict[str, str] = dict(Channel.choices)
ON, OFF = "on", "off"
QUIET_START, QUIET_END, TIMEZONE = "quiet_hours_start", "quiet_hours_end", "timezone"
FIELD_LABELS = {QUIET_START: "Quiet hours from", QUIET_END: "Quiet hours until", TIMEZONE: "Time zone"}
FIELD_IDS = {QUIET_START: "quiet-start", QUIET_END: "quiet-end", TIMEZONE: "timezone"}


def channel_field(channel: str) -> str:
    return f"channel:{channel}"


def category_field(category: str, channel: str) -> str:
    return f"category:{category}:{channel}"


def type_field(key: str, channel: str) -> str:
    return f"type:{key}:{channel}"


def digest_field(category: str) -> str:
    return f"digest:{category}"


@dataclass(frozen=True)
class Toggle:
    """One checkbox: its form field ``name``, an HTML ``control_id``, the ``label`` a
    screen reader announces, and whether it is ``checked``. ``default`` is the type's
    default (type rows only); a ``locked`` toggle is a critical type's: on, not editable."""

    name: str
    control_id: str
    label: str
    channel: str
    checked: bool
    default: bool | None = None
    locked: bool = False

    @property
    def channel_label(self) -> str:
        return CHANNEL_LABELS.get(self.channel, self.channel)


@dataclass(frozen=True)
class TypeRow:
    key: str
    name: str
    critical: bool
    # One per channel of the table, None where the type is not sent on that channel.
    cells: list[Toggle | None]


@dataclass(frozen=True)
class CategoryTable:
    category: str
    label: str
    hint: str
    critical: bool
    channels: list[tuple[str, str]]  # (channel, label)
    toggles: list[Toggle]  # the category's own, one per channel; none for critical
    rows: list[TypeRow]
    digest_name: str
    digest_id: str
    digest: str  # a DigestFrequency value; "" for critical


@dataclass(frozen=True)
class PreferenceCenter:
    """What the preference center shows for one recipient."""

    channels: list[Toggle]  # all notifications, per channel
    tables: list[CategoryTable]
    quiet_hours_start: str  # "HH:MM" or ""
    quiet_hours_end: str
    timezone: str
    labels: dict[str, str] = field(default_factory=dict)  # form field -> what the page calls it
    ids: dict[str, str] = field(default_factory=dict)  # form field -> the HTML id of its control

    def values(self) -> dict[str, str]:
        """Every control's value by form field: "on"/"off" for checkboxes (locked ones
        left out), the text of the others. The page's script sets the form from it after
        a save."""
        values: dict[str, str] = {}
        toggles: list[Toggle] = list(self.channels)
        for table in self.tables:
            toggles += table.toggles
            toggles += [cell for row in table.rows for cell in row.cells if cell is not None]
            if not table.critical:
                values[table.digest_name] = table.digest
        values.update({t.name: ON if t.checked else OFF for t in toggles if not t.locked})
        values.update(
            {QUIET_START: self.quiet_hours_start, QUIET_END: self.quiet_hours_end, TIMEZONE: self.timezone}
        )
        return values

    def label(self, name: str) -> str:
        """How the page names a form field, for error messages; the field's name if unknown."""
        return self.labels.get(name, FIELD_LABELS.get(name, name))

    def control_id(self, name: str) -> str:
        """The HTML id of a form field's control; "" when the page has none."""
        return self.ids.get(name, FIELD_IDS.get(name, ""))


@dataclass
class _Overrides:
    """A recipient's stored overrides by scope: all notifications by channel, a category by
    (category, channel), a type by (type id, channel)."""

    channels: dict[str, bool]
    categories: dict[tuple[str, str], bool]
    types: dict[tuple[int, str], bool]

    @classmethod
    def read(cls, recipient_id: int) -> _Overrides:
        overrides = cls({}, {}, {})
        rows = Preference.objects.filter(recipient_id=recipient_id).values_list(
            "notification_type_id", "category", "channel", "enabled"
        )
        for type_id, category, channel, enabled in rows:
            if type_id is not None:
                overrides.types[(type_id, channel)] = enabled
            elif category:
                overrides.categories[(category, channel)] = enabled
            else:
                overrides.channels[channel] = enabled
        return overrides

    def for_channel(self, channel: str) -> bool:
        return self.channels.get(channel, True)

    def for_category(self, category: str, channel: str) -> bool:
        return self.categories.get((category, channel), self.for_channel(channel))

    def for_type(self, notification_type: NotificationType, channel: str) -> bool:
        if notification_type.is_critical:
            return True
        return self.types.get(
            (notification_type.id, channel), self.for_category(notification_type.category, channel)
        )


def _catalog() -> list[NotificationType]:
    return list(NotificationType.objects.only("id", "key", "name", "category", "channels").order_by("key"))


def _channels_of(types: Iterable[NotificationType]) -> list[str]:
    used = {channel for t in types for channel in t.channels}
    return [channel for channel in Channel.values if channel in used]


def _toggle(
    name: str,
    control_id: str,
    label: str,
    channel: str,
    checked: bool,
    submitted: Mapping[str, str],
    **extra: Any,
) -> Toggle:
    if not extra.get("locked") and submitted.get(name) in (ON, OFF):
        checked = submitted[name] == ON
    return Toggle(name=name, control_id=control_id, label=label, channel=channel, checked=checked, **extra)


def _center(
    *,
    recipient: Recipient,
    overrides: _Overrides,
    catalog: list[NotificationType],
    digest: Mapping[str, str],
    submitted: Mapping[str, str],
) -> PreferenceCenter:
    labels: dict[str, str] = {}
    position = {t.id: index for index, t in enumerate(catalog)}
    adjustable = [t for t in catalog if not t.is_critical]
    global_toggles = []
    for channel in _channels_of(adjustable):
        name = channel_field(channel)
        labels[name] = f"All notifications by {CHANNEL_LABELS[channel]}"
        global_toggles.append(
            _toggle(name, f"all-{channel}", labels[name], channel, overrides.for_channel(channel), submitted)
        )
    tables = []
    for category in CATEGORY_ORDER:
        members = [t for t in catalog if t.category == category]
        if not members:
            continue
        critical = category == Category.CRITICAL
        category_label = Category(category).label
        channels = _channels_of(members)
        toggles = []
        if not critical:
            for channel in channels:
                name = category_field(category, channel)
                labels[name] = f"All {category_label.lower()} notifications by {CHANNEL_LABELS[channel]}"
                checked = overrides.for_category(category, channel)
                toggles.append(
                    _toggle(name, f"{category}-{channel}", labels[name], channel, checked, submitted)
                )
        rows = []
        for notification_type in members:
            index = position[notification_type.id]
            title = notification_type.name or notification_type.key
            cells: list[Toggle | None] = []
            for channel in channels:
                if channel not in notification_type.channels:
                    cells.append(None)
                    continue
                name = type_field(notification_type.key, channel)
                labels[name] = f"{title} by {CHANNEL_LABELS[channel]}"
                checked = overrides.for_type(notification_type, channel)
                cells.append(
                    _toggle(
                        name,
                        f"type-{index}-{channel}",
                        labels[name],
                        channel,
                        checked,
                        submitted,
                        default=True,
                        locked=notification_type.is_critical,
                    )
                )
            rows.append(TypeRow(notification_type.key, title, notification_type.is_critical, cells))
        digest_name = digest_field(category)
        labels[digest_name] = f"{category_label} digest"
        chosen = "" if critical else submitted.get(digest_name, digest.get(category, DigestFrequency.OFF))
        tables.append(
            CategoryTable(
                category=category,
                label=category_label,
                hint=CATEGORY_HINTS.get(category, ""),
                critical=critical,
                channels=[(channel, CHANNEL_LABELS[channel]) for channel in channels],
                toggles=toggles,
                rows=rows,
                digest_name=digest_name,
                digest_id=f"digest-{category}",
                digest=chosen,
            )
        )
    ids = {t.name: t.control_id for t in global_toggles}
    for table in tables:
        ids.update({t.name: t.control_id for t in table.toggles})
        ids.update({c.name: c.control_id for row in table.rows for c in row.cells if c is not None})
        ids[table.digest_name] = table.digest_id
    start, end = recipient.quiet_hours_start, recipient.quiet_hours_end
    return PreferenceCenter(
        channels=global_toggles,
        tables=tables,
        quiet_hours_start=submitted.get(QUIET_START, start.strftime("%H:%M") if start else ""),
        quiet_hours_end=submitted.get(QUIET_END, end.strftime("%H:%M") if end else ""),
        timezone=submitted.get(TIMEZONE, recipient.timezone),
        labels=labels,
        ids=ids,
    )


def preference_center_get(
    *, recipient: Recipient, submitted: Mapping[str, str] | None = None
) -> PreferenceCenter:
    """The recipient's preference center as stored, or, with ``submitted`` (form fields, the
    last value of each), showing those values over the stored ones: a form refused for bad
    input is shown again as the person filled it in."""
    digest = dict(DigestSetting.objects.filter(recipient=recipient).values_list("category", "frequency"))
    return _center(
        recipient=recipient,
        overrides=_Overrides.read(recipient.id),
        catalog=_catalog(),
        digest=digest,
        submitted=submitted or {},
    )


@dataclass
class _Changes:
    channels: dict[str, bool] = field(default_factory=dict)
    categories: dict[tuple[str, str], bool] = field(default_factory=dict)
    types: dict[tuple[NotificationType, str], bool] = field(default_factory=dict)
    digest: dict[str, str] = field(default_factory=dict)
    quiet_hours: tuple[time, time] | None = None
    quiet_hours_given: bool = False
    timezone: str | None = None


def _switch(value: str) -> bool:
    if value not in (ON, OFF):
        raise RuleViolation(f"must be {ON!r} or {OFF!r}, got {value!r}")
    return value == ON


def _channel(channel: str) -> str:
    if channel not in Channel.values:
        raise RuleViolation(f"unknown channel {channel!r}; expected one of {', '.join(Channel.values)}")
    return channel


def _changes_parse(fields: Mapping[str, str], catalog: list[NotificationType]) -> _Changes:
    """The form's fields as changes; ValidationFailed naming every bad field."""
    by_key = {t.key: t for t in catalog}
    changes = _Changes()
    errors: dict[str, list[str]] = {}
    for name, value in fields.items():
        kind, _, rest = name.partition(":")
        try:
            if kind == "channel" and rest:
                changes.channels[_channel(rest)] = _switch(value)
            elif kind == "category" and rest:
                category, _, channel = rest.rpartition(":")
                if category == Category.CRITICAL:
                    raise RuleViolation("critical notifications are always on")
                if category not in Category.values:
                    raise RuleViolation(f"unknown category {category!r}")
                changes.categories[(category, _channel(channel))] = _switch(value)
            elif kind == "type" and rest:
                key, _, channel = rest.rpartition(":")
                notification_type = by_key.get(key)
                if notification_type is None:
                    raise RuleViolation(f"unknown notification type {key!r}")
                if notification_type.is_critical:
                    raise RuleViolation(f"{key!r} is critical: it is always on")
                if channel not in notification_type.channels:
                    raise RuleViolation(f"{key!r} is not sent by {channel!r}")
                changes.types[(notification_type, channel)] = _switch(value)
            elif kind == "digest" and rest:
                changes.digest[rest] = digest_frequency_check(category=rest, frequency=value)
            elif name == TIMEZONE:
                changes.timezone = timezone_check(value)
        except RuleViolation as exc:
            errors[name] = [str(exc)]
    if QUIET_START in fields or QUIET_END in fields:
        changes.quiet_hours_given = True
        start_text, end_text = fields.get(QUIET_START, ""), fields.get(QUIET_END, "")
        if start_text or end_text:
            clocks: dict[str, time] = {}
            for name, text in ((QUIET_START, start_text), (QUIET_END, end_text)):
                if not text:
                    errors[name] = ["give both the start and the end of quiet hours, or leave both empty"]
                    continue
                try:
                    clocks[name] = clock_parse(text)
                except RuleViolation as exc:
                    errors[name] = [str(exc)]
            if len(clocks) == 2:
                if clocks[QUIET_START] == clocks[QUIET_END]:
                    errors[QUIET_END] = ["must differ from the start of quiet hours"]
                else:
                    changes.quiet_hours = (clocks[QUIET_START], clocks[QUIET_END])
    if errors:
        raise ValidationFailed(errors)
    return changes


def _store_override(store: dict[Any, bool], key: Any, value: bool, above: bool) -> None:
    """An override only where the value differs from the level above."""
    if value == above:
        store.pop(key, None)
    else:
        store[key] = value


def preference_center_save(*, recipient: Recipient, fields: Mapping[str, str]) -> PreferenceCenter:
    """Apply what the person changed on the preference center's form and return the center
    as stored now.

    ``fields`` are the form's fields by name, the last value of each: ``channel:<channel>``,
    ``category:<category>:<channel>`` and ``type:<key>:<channel>`` are "on" or "off";
    ``digest:<category>`` is off, daily or weekly; ``quiet_hours_start`` and
    ``quiet_hours_end`` are HH:MM, both empty for none; ``timezone`` is an IANA zone. Other
    fields (the CSRF token) are ignored; a field left out is unchanged. See the module's
    docstring for how checkbox states become overrides.

    Bad input raises ValidationFailed ``{field: [message]}`` naming every bad field, and
    nothing is stored. Everything is written in one transaction, with the recipient's row
    locked, and read by the next event's planning."""
    catalog = _catalog()
    changes = _changes_parse(fields, catalog)
    with transaction.atomic():
        stored = Recipient.objects.select_for_update().get(id=recipient.id)
        before = _Overrides.read(stored.id)
        after = _Overrides(dict(before.channels), dict(before.categories), dict(before.types))
        # Top down: each level is judged against what it showed, and stored against the
        # level above as it is after the change.
        for channel, value in changes.channels.items():
            if value != before.for_channel(channel):
                _store_override(after.channels, channel, value, True)
        for (category, channel), value in changes.categories.items():
            if value != before.for_category(category, channel):
                _store_override(after.categories, (category, channel), value, after.for_channel(channel))
        for (notification_type, channel), value in changes.types.items():
            if value != before.for_type(notification_type, channel):
                above = after.for_category(notification_type.category, channel)
                _store_override(after.types, (notification_type.id, channel), value, above)
        digest = dict(DigestSetting.objects.filter(recipient=stored).values_list("category", "frequency"))
        for category, frequency in changes.digest.items():
            # "off" is the default: nothing stored (the API may store it explicitly).
            if frequency == DigestFrequency.OFF:
                digest.pop(category, None)
            else:
                digest[category] = frequency
        quiet = changes.quiet_hours
        if not changes.quiet_hours_given:
            start, end = stored.quiet_hours_start, stored.quiet_hours_end
            quiet = (start, end) if start is not None and end is not None else None
        # By id, read now: the overrides may name a type created after the catalog was read.
        types_by_id = NotificationType.objects.in_bulk({type_id for type_id, _ in after.types})
        type_overrides: dict[NotificationType, dict[str, bool]] = {}
        for (type_id, channel), enabled in after.types.items():
            type_overrides.setdefault(types_by_id[type_id], {})[channel] = enabled
        category_overrides: dict[str, dict[str, bool]] = {}
        for (category, channel), enabled in after.categories.items():
            category_overrides.setdefault(category, {})[channel] = enabled
        preferences_replace(
            recipient=stored,
            channels=after.channels,
            categories=category_overrides,
            types=type_overrides,
            quiet_hours=quiet,
            digest={c: f for c, f in digest.items() if c in DIGEST_CATEGORIES},
            timezone_name=changes.timezone,
        )
    recipient.refresh_from_db(fields=["timezone", "quiet_hours_start", "quiet_hours_end"])
    return preference_center_get(recipient=recipient)


@dataclass(frozen=True)
class UnsubscribeLanding:
    """Who an email's unsubscribe link names and what it turns off: email of ``category``
    (``type_name``: the type the mail was of, "" when it is gone)."""

    recipient: Recipient
    category: str
    category_label: str
    type_name: str


def unsubscribe_landing(*, token: str) -> UnsubscribeLanding | None:
    """The landing of an unsubscribe link's token, or None when the token was not made by
    us or its recipient is gone. The token authenticates its recipient for the unsubscribe
    pages (the one-click POST, Undo, and the preference center bound to it)."""
    scope = unsubscribe_parse(token)
    if scope is None:
        return None
    recipient = Recipient.objects.filter(id=scope.recipient_id).first()
    if recipient is None:
        return None
    label = Category(scope.category).label if scope.category in Category.values else scope.category
    type_name = ""
    if scope.notification_type:
        found = (
            NotificationType.objects.filter(key=scope.notification_type).values_list("name", "key").first()
        )
        if found is not None:
            type_name = found[0] or found[1]
    return UnsubscribeLanding(
        recipient=recipient, category=scope.category, category_label=label, type_name=type_name
    )
