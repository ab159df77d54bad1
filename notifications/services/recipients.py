"""Recipients, their devices, webhook endpoints, preferences and topic subscriptions."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import time
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from notifications.models import (
    Category,
    Delivery,
    Device,
    DigestFrequency,
    DigestSetting,
    NotificationType,
    Preference,
    Recipient,
    Subscription,
    Topic,
    WebhookEndpoint,
    WebhookKind,
)
from notifications.services.validation import (
    RuleViolation,
    ValidationFailed,
    external_id_check,
    key_check,
    recipient_fields_clean,
    webhook_kind_check,
    webhook_secret_check,
    webhook_url_check,
)


@dataclass(frozen=True)
class PreferenceSet:
    """A recipient's stored overrides in the API's shape."""

    channels: dict[str, bool]
    categories: dict[str, dict[str, bool]]
    types: dict[str, dict[str, bool]]
    quiet_hours: dict[str, str] | None
    digest: dict[str, str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "channels": self.channels,
            "categories": self.categories,
            "types": self.types,
            "quiet_hours": self.quiet_hours,
            "digest": self.digest,
        }


def recipient_upsert(*, external_id: str, fields: dict[str, Any]) -> tuple[Recipient, bool]:
    """Create or update the recipient; only the given fields change. Returns (row, created).

    The fields are checked and normalised (E.164 phone, IANA time zone, ...) by the rules of
    services/validation.py; ValidationFailed names every bad field and nothing is stored."""
    errors: dict[str, list[str]] = {}
    try:
        external_id_check(external_id)
    except RuleViolation as exc:
        errors["external_id"] = [str(exc)]
    fields, field_errors = recipient_fields_clean(fields)
    errors.update(field_errors)
    if errors:
        raise ValidationFailed(errors)
    with transaction.atomic():
        recipient, created = Recipient.objects.select_for_update().get_or_create(
            external_id=external_id, defaults=fields
        )
        if not created and fields:
            for name, value in fields.items():
                setattr(recipient, name, value)
            recipient.save(update_fields=[*fields, "updated_at"])
    return recipient, created


def recipients_delete(*, recipient_ids: list[int]) -> int:
    """Delete recipients and everything of theirs (deliveries, inbox items, devices,
    preferences...), through the ORM's cascade. Returns how many recipients were deleted.

    Deliveries carry no database-checked key to their recipient (see the Delivery model), so
    this keeps any from being orphaned: it first locks the deliveries table against writes
    (SHARE), which waits until every transaction inserting deliveries has finished and holds
    new ones back until this one commits. The cascade then finds every row of theirs, and an
    insert that runs afterwards finds the recipient gone (each selects its recipients in its
    own statement, whose snapshot is taken once the lock is granted). Deliveries are not
    written for those moments, so deleting many recipients is best done a few at a time."""
    if not recipient_ids:
        return 0
    with transaction.atomic():
        with connection.cursor() as db:
            db.execute(f"LOCK TABLE {Delivery._meta.db_table} IN SHARE MODE")
        _, deleted = Recipient.objects.filter(id__in=recipient_ids).delete()
    return deleted.get(Recipient._meta.label, 0)


def device_register(*, recipient: Recipient, platform: str, token: str) -> tuple[Device, bool]:
    """Register a push token for the recipient. A token seen before (the app was reinstalled
    or another user signed in on the device) moves to this recipient and is reactivated."""
    now = timezone.now()
    with transaction.atomic():
        device = Device.objects.select_for_update().filter(platform=platform, token=token).first()
        if device is None:
            try:
                with transaction.atomic():
                    return Device.objects.create(recipient=recipient, platform=platform, token=token), True
            except IntegrityError:
                device = Device.objects.select_for_update().get(platform=platform, token=token)
        device.recipient = recipient
        device.active = True
        device.deactivated_at = None
        device.last_seen_at = now
        device.save(update_fields=["recipient", "active", "deactivated_at", "last_seen_at"])
    return device, False


def webhook_endpoint_add(
    *, recipient: Recipient, kind: str, url: str, secret: str = ""
) -> tuple[WebhookEndpoint, bool]:
    """Add a webhook endpoint to the recipient. The same URL again replaces its kind and
    secret and reactivates it (one endpoint per URL). Returns (endpoint, created).
    ValidationFailed when the URL or secret breaks the rules of services/validation.py."""
    url, secret = _webhook_clean(kind=kind, url=url, secret=secret)
    with transaction.atomic():
        endpoint = WebhookEndpoint.objects.select_for_update().filter(recipient=recipient, url=url).first()
        if endpoint is None:
            try:
                with transaction.atomic():
                    created = WebhookEndpoint.objects.create(
                        recipient=recipient, kind=kind, url=url, secret=secret
                    )
                    return created, True
            except IntegrityError:
                # A concurrent request added the same URL first; update that one.
                endpoint = WebhookEndpoint.objects.select_for_update().get(recipient=recipient, url=url)
        endpoint.kind, endpoint.secret, endpoint.active = kind, secret, True
        endpoint.save(update_fields=["kind", "secret", "active"])
    return endpoint, False


def _webhook_clean(*, kind: str, url: str, secret: str) -> tuple[str, str]:
    """The URL and secret in stored form, or ValidationFailed naming what breaks the rules."""
    errors: dict[str, list[str]] = {}
    try:
        url = webhook_url_check(url)
    except RuleViolation as exc:
        errors["url"] = [str(exc)]
    try:
        secret = webhook_secret_check(kind=webhook_kind_check(kind), secret=secret)
    except RuleViolation as exc:
        errors["secret" if kind in WebhookKind.values else "kind"] = [str(exc)]
    if errors:
        raise ValidationFailed(errors)
    return url, secret


def webhook_endpoint_change(
    *, endpoint: WebhookEndpoint, kind: str, url: str, secret: str, active: bool
) -> WebhookEndpoint:
    """Change one endpoint in place (staff editing it), by the rules webhook_endpoint_add
    applies; a URL the recipient has on another endpoint is refused (one endpoint per URL).
    Returns the stored endpoint; ValidationFailed names every bad field."""
    url, secret = _webhook_clean(kind=kind, url=url, secret=secret)
    with transaction.atomic():
        taken = (
            WebhookEndpoint.objects.filter(recipient_id=endpoint.recipient_id, url=url)
            .exclude(id=endpoint.id)
            .exists()
        )
        if taken:
            raise ValidationFailed({"url": [f"the recipient has another endpoint with the URL {url!r}"]})
        stored = WebhookEndpoint.objects.select_for_update().get(id=endpoint.id)
        stored.kind, stored.url, stored.secret, stored.active = kind, url, secret, active
        stored.save(update_fields=["kind", "url", "secret", "active"])
    return stored


def device_deactivate(*, device: Device) -> Device:
    """Switch a push token off (staff): nothing is pushed to it until it is registered
    again (device_register). Idempotent; returns the stored device."""
    Device.objects.filter(id=device.id, active=True).update(active=False, deactivated_at=timezone.now())
    return Device.objects.get(id=device.id)


def recipient_account_set(
    *, recipient: Recipient, user: Any, quiet_hours: tuple[time, time] | None
) -> Recipient:
    """Link the recipient to a site login (its live inbox page and session sockets) or
    unlink it (None), and set or clear its quiet hours, for staff. The API sets quiet
    hours with the preferences (preferences_replace); both refuse equal start and end."""
    if quiet_hours is not None and quiet_hours[0] == quiet_hours[1]:
        raise ValidationFailed({"quiet_hours_end": ["must differ from the start of quiet hours"]})
    if user is not None and Recipient.objects.filter(user=user).exclude(id=recipient.id).exists():
        raise ValidationFailed({"user": [f"{user} is linked to another recipient already"]})
    with transaction.atomic():
        stored = Recipient.objects.select_for_update().get(id=recipient.id)
        stored.user = user
        stored.quiet_hours_start, stored.quiet_hours_end = quiet_hours or (None, None)
        stored.save(update_fields=["user", "quiet_hours_start", "quiet_hours_end", "updated_at"])
    return stored


def webhook_endpoint_remove(*, recipient: Recipient, endpoint_id: int) -> bool:
    """Delete one of the recipient's endpoints; False when it has no such endpoint."""
    deleted, _ = WebhookEndpoint.objects.filter(recipient=recipient, id=endpoint_id).delete()
    return deleted > 0


# --- Preferences ----------------------------------------------------------------------------------

CLOCK_PATTERN = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
_CLOCK = re.compile(CLOCK_PATTERN)
# Critical notifications go out at once, always: they are never gathered into a digest.
DIGEST_CATEGORIES: tuple[str, ...] = tuple(c for c in Category.values if c != Category.CRITICAL)


def clock_parse(value: Any) -> time:
    """A time of day from "HH:MM"; RuleViolation saying what is expected otherwise."""
    if not isinstance(value, str) or not _CLOCK.fullmatch(value):
        raise RuleViolation(f"must be a time of day as HH:MM, got {value!r}")
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


def digest_frequency_check(*, category: Any, frequency: Any) -> str:
    """The frequency if a digest of ``category`` may be set to it; RuleViolation otherwise."""
    if category == Category.CRITICAL:
        raise RuleViolation("critical notifications are always sent at once, never in a digest")
    if category not in DIGEST_CATEGORIES:
        raise RuleViolation(f"unknown category; expected one of {', '.join(DIGEST_CATEGORIES)}")
    if frequency not in DigestFrequency.values:
        raise RuleViolation(f"must be one of {', '.join(DigestFrequency.values)}, got {frequency!r}")
    return str(frequency)


def preferences_get(*, recipient: Recipient) -> PreferenceSet:
    """The recipient's stored overrides, quiet hours and digest frequencies (only what was
    chosen: a channel, category or type missing from the result follows the defaults)."""
    channels: dict[str, bool] = {}
    categories: dict[str, dict[str, bool]] = {}
    types: dict[str, dict[str, bool]] = {}
    for pref in Preference.objects.filter(recipient=recipient).select_related("notification_type"):
        if pref.notification_type is not None:
            types.setdefault(pref.notification_type.key, {})[pref.channel] = pref.enabled
        elif pref.category:
            categories.setdefault(pref.category, {})[pref.channel] = pref.enabled
        else:
            channels[pref.channel] = pref.enabled
    quiet = None
    if recipient.quiet_hours_start is not None and recipient.quiet_hours_end is not None:
        quiet = {
            "start": recipient.quiet_hours_start.strftime("%H:%M"),
            "end": recipient.quiet_hours_end.strftime("%H:%M"),
        }
    digest = dict(
        DigestSetting.objects.filter(recipient=recipient)
        .order_by("category")
        .values_list("category", "frequency")
    )
    return PreferenceSet(
        channels=channels, categories=categories, types=types, quiet_hours=quiet, digest=digest
    )


def preferences_replace(
    *,
    recipient: Recipient,
    channels: dict[str, bool],
    categories: dict[str, dict[str, bool]],
    types: dict[NotificationType, dict[str, bool]],
    quiet_hours: tuple[time, time] | None,
    digest: dict[str, str],
    timezone_name: str | None = None,
) -> PreferenceSet:
    """Replace every stored override, the quiet hours and the digest frequencies of the
    recipient (and its time zone, when given) in one transaction; returns what is stored.

    The values must have passed the API's or the preference center's checks. Planning reads
    preferences from the database for every page it plans (services/planning.py), with no
    cache in between, so the next event planned after the commit sees them."""
    rows = [Preference(recipient=recipient, channel=c, enabled=e) for c, e in channels.items()]
    rows += [
        Preference(recipient=recipient, category=cat, channel=c, enabled=e)
        for cat, values in categories.items()
        for c, e in values.items()
    ]
    rows += [
        Preference(recipient=recipient, notification_type=nt, channel=c, enabled=e)
        for nt, values in types.items()
        for c, e in values.items()
    ]
    digest_rows = [
        DigestSetting(recipient=recipient, category=category, frequency=frequency)
        for category, frequency in sorted(digest.items())
    ]
    with transaction.atomic():
        # The recipient's row first: two replaces of one recipient take turns instead of
        # both deleting, then both inserting into the unique scope.
        stored = Recipient.objects.select_for_update().get(id=recipient.id)
        Preference.objects.filter(recipient=stored).delete()
        Preference.objects.bulk_create(rows)
        DigestSetting.objects.filter(recipient=stored).delete()
        DigestSetting.objects.bulk_create(digest_rows)
        stored.quiet_hours_start, stored.quiet_hours_end = quiet_hours or (None, None)
        changed = ["quiet_hours_start", "quiet_hours_end", "updated_at"]
        if timezone_name is not None:
            stored.timezone = timezone_name
            changed.append("timezone")
        stored.save(update_fields=changed)
    recipient.quiet_hours_start, recipient.quiet_hours_end = stored.quiet_hours_start, stored.quiet_hours_end
    recipient.timezone = stored.timezone
    return preferences_get(recipient=stored)


def topic_subscribe(*, topic_key: str, recipients: list[Recipient]) -> tuple[Topic, int]:
    """Subscribe recipients to the topic, creating the topic on first use. Returns the topic
    and how many subscriptions are new."""
    topic, _ = Topic.objects.get_or_create(key=topic_key)
    before = Subscription.objects.filter(topic=topic, recipient__in=recipients).count()
    Subscription.objects.bulk_create(
        [Subscription(topic=topic, recipient=r) for r in recipients], ignore_conflicts=True, batch_size=1000
    )
    return topic, len(recipients) - before


def topic_unsubscribe(*, topic: Topic, recipients: list[Recipient]) -> int:
    deleted, _ = Subscription.objects.filter(topic=topic, recipient__in=recipients).delete()
    return deleted


# --- Bulk ---------------------------------------------------------------------------------------

RECIPIENTS_BULK_MAX = 1000


@dataclass(frozen=True)
class RecipientBulkResult:
    """What became of one item of a bulk upsert: ``status`` is "created", "updated" or
    "error"; ``external_id`` is set unless the status is "error", ``errors`` only then, and
    ``duplicate_of`` (the index of the earlier item) when the error is a repeated id."""

    index: int
    status: str
    external_id: str | None = None
    errors: dict[str, list[str]] | None = None
    duplicate_of: int | None = None


def _unstorable(value: str) -> str | None:
    """Why PostgreSQL could not store this text, or None. NUL and lone surrogates cannot be
    encoded; the API's serializers refuse them before, raw bulk items are checked here."""
    if "\x00" in value:
        return "must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must not contain unpaired surrogate characters"
    return None


def _bulk_item_clean(item: Any) -> tuple[str | None, dict[str, Any], dict[str, list[str]]]:
    """(external_id, fields in stored form, errors) of one bulk item."""
    if not isinstance(item, dict):
        return None, {}, {"non_field_errors": ['must be an object {"external_id": ..., field: value}']}
    errors: dict[str, list[str]] = {}
    external_id = item.get("external_id")
    if external_id is None:
        errors["external_id"] = ["this field is required"]
    elif not isinstance(external_id, str):
        errors["external_id"] = [f"must be a string, got {type(external_id).__name__}"]
    else:
        try:
            external_id_check(external_id)
        except RuleViolation as exc:
            errors["external_id"] = [str(exc)]
        else:
            if (problem := _unstorable(external_id)) is not None:
                errors["external_id"] = [problem]
            elif "/" in external_id:
                # The API names a recipient by a path segment (/recipients/{external_id}/),
                # which cannot hold a "/"; PUT cannot create such an id, nor can bulk.
                errors["external_id"] = [f"{external_id!r} must not contain '/'"]
    given = {name: value for name, value in item.items() if name != "external_id"}
    for name, value in given.items():
        if isinstance(value, str) and (problem := _unstorable(value)) is not None:
            errors[name] = [problem]
    fields, field_errors = recipient_fields_clean({n: v for n, v in given.items() if n not in errors})
    errors.update(field_errors)
    return (external_id if isinstance(external_id, str) else None), fields, errors


def _recipients_insert(
    rows: list[tuple[str, dict[str, Any]]], updated_fields: frozenset[str]
) -> dict[str, bool]:
    """INSERT ... ON CONFLICT (external_id) DO UPDATE the given fields of every row in one
    statement; returns {external_id: created}. Rows are written in external_id order, so
    two bulk calls sharing recipients lock them in the same order and never deadlock."""
    columns = [field for field in Recipient._meta.concrete_fields if not field.primary_key]
    values_sql: list[str] = []
    params: list[Any] = []
    for external_id, fields in sorted(rows):
        # An unsaved instance carries the model's defaults (locale "en", created_at ...).
        instance = Recipient(external_id=external_id, **fields)
        values_sql.append("(" + ", ".join(["%s"] * len(columns)) + ")")
        params += [field.get_db_prep_save(field.pre_save(instance, True), connection) for field in columns]
    quote = connection.ops.quote_name
    by_name = {field.name: field for field in columns}
    if updated_fields:
        assignments = ", ".join(
            f"{quote(by_name[name].column)} = EXCLUDED.{quote(by_name[name].column)}"
            for name in sorted({*updated_fields, "updated_at"})
        )
        conflict = f"DO UPDATE SET {assignments}"
    else:
        # Nothing to change: existing rows stay as they are (and are not returned).
        conflict = "DO NOTHING"
    sql = (
        f"INSERT INTO {quote(Recipient._meta.db_table)} ({', '.join(quote(f.column) for f in columns)}) "
        f"VALUES {', '.join(values_sql)} "
        f"ON CONFLICT ({quote(by_name['external_id'].column)}) {conflict} "
        # xmax is 0 only for a row this statement inserted; an updated row carries our lock.
        f"RETURNING {quote(by_name['external_id'].column)}, (xmax = 0)"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        returned = {external_id: bool(inserted) for external_id, inserted in cursor.fetchall()}
    return {external_id: returned.get(external_id, False) for external_id, _ in rows}


def recipients_bulk_upsert(*, items: list[Any]) -> list[RecipientBulkResult]:
    """Create or update up to RECIPIENTS_BULK_MAX recipients, each item an object with
    ``external_id`` and the fields of recipient_upsert (only the given fields change).

    Returns one result per item, in input order. Every item is judged on its own by the
    rules of services/validation.py: a bad item, or a later item repeating an external_id,
    is an "error" result and never stops or half-stores the others. The good items are
    written in one transaction with one INSERT ... ON CONFLICT per set of given fields
    (usually one statement in all)."""
    if len(items) > RECIPIENTS_BULK_MAX:
        raise ValidationFailed(
            {"recipients": [f"at most {RECIPIENTS_BULK_MAX} recipients per call, got {len(items)}"]}
        )
    results: list[RecipientBulkResult | None] = [None] * len(items)
    first_index: dict[str, int] = {}
    groups: dict[frozenset[str], list[tuple[int, str, dict[str, Any]]]] = {}
    for index, item in enumerate(items):
        external_id, fields, errors = _bulk_item_clean(item)
        if external_id is not None and not errors and external_id in first_index:
            earlier = first_index[external_id]
            results[index] = RecipientBulkResult(
                index=index,
                status="error",
                errors={"external_id": [f"{external_id!r} is already at index {earlier}"]},
                duplicate_of=earlier,
            )
            continue
        if errors:
            results[index] = RecipientBulkResult(index=index, status="error", errors=errors)
            continue
        assert external_id is not None
        first_index[external_id] = index
        groups.setdefault(frozenset(fields), []).append((index, external_id, fields))
    with transaction.atomic():
        for updated_fields, members in groups.items():
            created = _recipients_insert([(eid, fields) for _, eid, fields in members], updated_fields)
            for index, external_id, _ in members:
                status = "created" if created[external_id] else "updated"
                results[index] = RecipientBulkResult(index=index, status=status, external_id=external_id)
    return [result for result in results if result is not None]


# --- Topics, in bulk ------------------------------------------------------------------------------

TOPIC_SUBSCRIBERS_MAX = 10_000


def topic_subscribers_add(*, topic_key: str, external_ids: list[str]) -> tuple[Topic, int, int]:
    """Subscribe the recipients named by external_id to the topic, creating the topic on
    first use. Returns (topic, how many subscriptions are new, subscribers now).

    A constant number of queries for any number of recipients: one lookup of their ids and
    one INSERT ... SELECT unnest(...) ON CONFLICT DO NOTHING. ValidationFailed for a bad
    key or unknown recipients; nothing is stored then."""
    errors: dict[str, list[str]] = {}
    try:
        key_check(topic_key)
    except RuleViolation as exc:
        errors["key"] = [str(exc)]
    wanted = list(dict.fromkeys(external_ids))
    found = dict(Recipient.objects.filter(external_id__in=wanted).values_list("external_id", "id"))
    missing = [external_id for external_id in wanted if external_id not in found]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:20])
        more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        errors["recipients"] = [f"unknown recipients: {shown}{more}"]
    if errors:
        raise ValidationFailed(errors)
    quote = connection.ops.quote_name
    table = quote(Subscription._meta.db_table)
    column = {field.name: quote(field.column) for field in Subscription._meta.concrete_fields}
    with transaction.atomic():
        topic, _ = Topic.objects.get_or_create(key=topic_key)
        with connection.cursor() as cursor:
            # Sorted: concurrent calls take the unique index's locks in the same order.
            cursor.execute(
                f"INSERT INTO {table} ({column['topic']}, {column['recipient']}, {column['created_at']}) "
                "SELECT %s, unnest(%s::bigint[]), %s ON CONFLICT DO NOTHING",
                [topic.id, sorted(found.values()), timezone.now()],
            )
            added = cursor.rowcount
        subscribers = Subscription.objects.filter(topic=topic).count()
    return topic, added, subscribers


def topic_subscribers_remove(*, topic: Topic, external_ids: list[str]) -> tuple[int, int]:
    """Unsubscribe the recipients named by external_id (unknown ones are ignored) in one
    DELETE. Returns (how many were removed, subscribers now)."""
    removed, _ = Subscription.objects.filter(topic=topic, recipient__external_id__in=external_ids).delete()
    return removed, Subscription.objects.filter(topic=topic).count()
