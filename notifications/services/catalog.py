"""Notification types and their templates."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from notifications.models import (
    Category,
    Channel,
    NotificationTemplate,
    NotificationType,
    QuietHoursPolicy,
    TemplateVersion,
    TemplateVersionStatus,
)
from notifications.services.template_variables import templates_variables_errors, variables_clean
from notifications.services.validation import (
    RuleViolation,
    ValidationFailed,
    fallback_rules_clean,
    key_check,
    locale_check,
    type_templates_errors,
    when_active_parse,
)


def notification_type_errors(
    *, key: str, fields: dict[str, Any], templates: dict[str, Any], instance: NotificationType | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The type's fields with its fallback rules in stored form, and the errors by field:
    the one judgement of a type, whether it comes from the API or the admin."""
    errors: dict[str, Any] = {}
    if instance is None:
        try:
            key_check(key)
        except RuleViolation as exc:
            errors["key"] = [str(exc)]
        else:
            if NotificationType.objects.filter(key=key).exists():
                errors["key"] = [f"a notification type with key {key!r} already exists"]
    category = fields.get("category", Category.TRANSACTIONAL)
    if category not in Category.values:
        errors["category"] = [f"{category!r} is not a category; expected one of {', '.join(Category.values)}"]
    channels = list(fields.get("channels") or [])
    unknown = [c for c in channels if c not in Channel.values]
    if not channels:
        errors["channels"] = ["at least one channel is required"]
    elif unknown:
        errors["channels"] = [
            f"unknown channel(s) {', '.join(map(repr, unknown))}; expected some of {', '.join(Channel.values)}"
        ]
    elif len(set(channels)) < len(channels):
        twice = sorted({c for c in channels if channels.count(c) > 1})
        errors["channels"] = [f"channels listed twice: {', '.join(twice)}"]
    policy = fields.get("quiet_hours_policy", QuietHoursPolicy.DEFER)
    if policy not in QuietHoursPolicy.values:
        errors["quiet_hours_policy"] = [
            f"{policy!r} is not a policy; expected one of {', '.join(QuietHoursPolicy.values)}"
        ]
    if "default_locale" in fields:
        try:
            locale_check(fields["default_locale"])
        except RuleViolation as exc:
            errors["default_locale"] = [str(exc)]
    if "when_active" in fields:
        try:
            when_active_parse(fields["when_active"])
        except RuleViolation as exc:
            errors["when_active"] = [str(exc)]
    window = fields.get("aggregation_window_seconds")
    if window is not None and (
        not isinstance(window, int) or isinstance(window, bool) or not 1 <= window <= 86_400
    ):
        errors["aggregation_window_seconds"] = [f"must be 1 to 86400 seconds, got {window!r}"]
    fallbacks, fallback_errors = fallback_rules_clean(
        fields.get("fallbacks", []), channels=channels, template_channels=set(templates)
    )
    errors.update(fallback_errors)
    template_errors = type_templates_errors(
        channels=channels, templates=templates, fallback_targets={rule["to"] for rule in fallbacks}
    )
    if template_errors:
        errors["templates"] = template_errors
    return {**fields, "fallbacks": fallbacks}, errors


APPROVAL_NEEDED = (
    "changing the templates or variables of a {category} type needs a second staff member's "
    "approval: propose a template version in the admin (Template versions)"
)


def _approval_errors(
    instance: NotificationType | None,
    category: str,
    locales: dict[str, Any],
    variables: dict[str, Any],
) -> dict[str, list[str]]:
    """A change of templates or variables that skips the approval a critical or marketing
    type needs (notifications/services/template_versions.py), refused on ``templates``."""
    if instance is None:
        return {}
    gated = next(
        (c for c in (instance.category, category) if c in (Category.CRITICAL, Category.MARKETING)), None
    )
    if gated is None:
        return {}
    if stored_locales(instance) == locales and (instance.variables or {}) == variables:
        return {}
    return {"templates": [APPROVAL_NEEDED.format(category=gated)]}


def notification_type_save(
    *,
    key: str,
    fields: dict[str, Any],
    templates: dict[str, dict[str, str]],
    instance: NotificationType | None = None,
    variables: dict[str, Any] | None = None,
    note: str = "",
) -> NotificationType:
    """Create (or, given ``instance``, replace) a type with its default-locale templates
    and, given ``variables``, the variables they use (None keeps the stored ones).
    ValidationFailed names every field that breaks the rules; nothing is stored then.
    What it stores is recorded as the type's published template version."""
    fields, errors = notification_type_errors(key=key, fields=fields, templates=templates, instance=instance)
    stored_variables = (instance.variables or {}) if instance is not None else {}
    declared, variable_errors = variables_clean(stored_variables if variables is None else variables)
    if variable_errors:
        errors["variables"] = variable_errors
    elif declared:
        locale = fields.get("default_locale") or (instance.default_locale if instance else DEFAULT_LOCALE)
        for where, messages in templates_variables_errors({locale: templates}, declared).items():
            _, channel, name = where.split(".", 2)
            errors.setdefault("templates", {}).setdefault(channel, {}).setdefault(name, []).extend(messages)
    with transaction.atomic():
        if instance is not None:
            instance = NotificationType.objects.select_for_update().get(pk=instance.pk)
            locale = fields.get("default_locale") or instance.default_locale
            # The other locales' templates stay as they are.
            after = {**stored_locales(instance), locale: templates} if templates else stored_locales(instance)
            if not errors:
                errors.update(_approval_errors(instance, fields.get("category", ""), after, declared))
        if errors:
            raise ValidationFailed(errors)
        if instance is None:
            instance = NotificationType.objects.create(key=key, variables=declared, **fields)
        else:
            for name, value in fields.items():
                setattr(instance, name, value)
            instance.variables = declared
            instance.save()
        locale = instance.default_locale
        NotificationTemplate.objects.filter(notification_type=instance, locale=locale).exclude(
            channel__in=list(templates)
        ).delete()
        for channel, content in templates.items():
            NotificationTemplate.objects.update_or_create(
                notification_type=instance, channel=channel, locale=locale, defaults={"content": content}
            )
        version_record(notification_type=instance, note=note or "through the API")
    return instance


def notification_type_templates(*, notification_type: NotificationType) -> dict[str, dict[str, str]]:
    return {
        t.channel: t.content
        for t in NotificationTemplate.objects.filter(
            notification_type=notification_type, locale=notification_type.default_locale
        )
    }


# Templates change rarely and are read for every batch: keep them a few seconds per process.
TEMPLATE_CACHE_SECONDS = 5.0
_template_cache: dict[tuple[int, str], tuple[float, dict[str, dict[str, str]]]] = {}


def channel_templates(*, type_id: int, channel: str) -> dict[str, dict[str, str]]:
    """{locale: content} of one channel of a type, cached for a few seconds per process:
    edits apply within TEMPLATE_CACHE_SECONDS."""
    cached = _template_cache.get((type_id, channel))
    if cached is not None and time.monotonic() - cached[0] < TEMPLATE_CACHE_SECONDS:
        return cached[1]
    templates = {
        t.locale: t.content
        for t in NotificationTemplate.objects.filter(notification_type_id=type_id, channel=channel)
    }
    _template_cache[(type_id, channel)] = (time.monotonic(), templates)
    return templates


# Published and retired versions never change: their templates are cached per process
# for good (bounded), so a send reads them once.
_CACHE_SIZE = 512
_immutable: OrderedDict[tuple[int, int], dict[str, dict[str, dict[str, str]]]] = OrderedDict()


def version_templates(*, type_id: int, number: int) -> dict[str, dict[str, dict[str, str]]] | None:
    """``{locale: {channel: content}}`` of version ``number`` of a type, None if it has no
    such version. Cached when the version can no longer change."""
    cached = _immutable.get((type_id, number))
    if cached is not None:
        return cached
    row = (
        TemplateVersion.objects.filter(notification_type_id=type_id, number=number)
        .values_list("templates", "status")
        .first()
    )
    if row is None:
        return None
    templates, status = row
    if status in (TemplateVersionStatus.PUBLISHED, TemplateVersionStatus.RETIRED):
        _immutable[(type_id, number)] = templates
        if len(_immutable) > _CACHE_SIZE:
            _immutable.popitem(last=False)
    return dict(templates)


def stored_locales(notification_type: NotificationType) -> dict[str, dict[str, dict[str, str]]]:
    locales: dict[str, dict[str, dict[str, str]]] = {}
    for template in NotificationTemplate.objects.filter(notification_type=notification_type).order_by(
        "locale", "channel"
    ):
        locales.setdefault(template.locale, {})[template.channel] = template.content
    return locales


def next_version_number(notification_type: NotificationType) -> int:
    top = TemplateVersion.objects.filter(notification_type=notification_type).aggregate(top=Max("number"))
    return int(top["top"] or 0) + 1


def user_or_none(by: Any) -> Any:
    """A saved user, or None (anonymous, or none given)."""
    return by if by is not None and getattr(by, "pk", None) is not None else None


def version_record(
    *, notification_type: NotificationType, by: Any = None, note: str = ""
) -> TemplateVersion | None:
    """Inside the transaction that stored a type's templates (and variables): record them
    as its new published version, unless they are those of the version published now.
    The caller holds the type's row lock."""
    locales = stored_locales(notification_type)
    current = TemplateVersion.objects.filter(
        notification_type=notification_type, status=TemplateVersionStatus.PUBLISHED
    ).first()
    if (
        current is not None
        and current.templates == locales
        and current.variables == (notification_type.variables or {})
    ):
        if notification_type.template_version != current.number:
            NotificationType.objects.filter(pk=notification_type.pk).update(template_version=current.number)
            notification_type.template_version = current.number
        return None
    now = timezone.now()
    if current is not None:
        TemplateVersion.objects.filter(pk=current.pk).update(
            status=TemplateVersionStatus.RETIRED, updated_at=now
        )
    version = TemplateVersion.objects.create(
        notification_type=notification_type,
        number=next_version_number(notification_type),
        status=TemplateVersionStatus.PUBLISHED,
        templates=locales,
        variables=notification_type.variables or {},
        note=note[:200],
        created_by=user_or_none(by),
        published_by=user_or_none(by),
        published_at=now,
        created_at=now,
        updated_at=now,
    )
    NotificationType.objects.filter(pk=notification_type.pk).update(template_version=version.number)
    notification_type.template_version = version.number
    return version


def type_channel_templates(
    *, notification_type: NotificationType, channel: str, version: int | None = None
) -> tuple[int | None, dict[str, dict[str, str]]]:
    """The template version a delivery of ``channel`` renders (``version``, a staff
    member's test, or the type's published one) and its templates, ``{locale: content}``;
    the type's rows (version None) when it has no version recorded."""
    number = version or notification_type.template_version or None
    if number is not None:
        locales = version_templates(type_id=notification_type.id, number=number)
        if locales is not None:
            return number, {
                locale: content[channel] for locale, content in locales.items() if channel in content
            }
    return None, channel_templates(type_id=notification_type.id, channel=channel)


# --- Types with templates in several locales (the admin's type and template pages) ----------


def notification_type_ensure(
    *,
    key: str,
    fields: dict[str, Any],
    templates: dict[str, dict[str, str]],
    variables: dict[str, Any] | None = None,
    note: str = "",
) -> NotificationType:
    """The type ``key``, created the first time it is needed (an app's own notifications:
    mentions, IoT alerts, matches found); an existing one is returned as staff left it.
    Two processes that create it at once both get the one that was stored."""
    existing = NotificationType.objects.filter(key=key).first()
    if existing is not None:
        return existing
    try:
        with transaction.atomic():
            return notification_type_save(
                key=key, fields=fields, templates=templates, variables=variables, note=note
            )
    except (IntegrityError, ValidationFailed):
        created = NotificationType.objects.filter(key=key).first()
        if created is None:
            raise
        return created


# The stored fields of a type that notification_type_save takes in ``fields``.
TYPE_FIELDS = (
    "name",
    "category",
    "channels",
    "default_locale",
    "aggregation_window_seconds",
    "quiet_hours_policy",
    "when_active",
    "fallbacks",
)
DEFAULT_LOCALE = "en"


def notification_type_locale_templates(
    *, notification_type: NotificationType
) -> dict[str, dict[str, dict[str, str]]]:
    """Every template of the type, ``{locale: {channel: content}}``."""
    locales: dict[str, dict[str, dict[str, str]]] = {}
    for template in NotificationTemplate.objects.filter(notification_type=notification_type):
        locales.setdefault(template.locale, {})[template.channel] = template.content
    return locales


def notification_type_locales_errors(
    *,
    key: str,
    fields: dict[str, Any],
    locales: dict[str, dict[str, Any]],
    instance: NotificationType | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The judgement of a type with its templates in every locale, ``{locale: {channel:
    content}}``: the fields and the default locale's templates exactly as the API's
    (notification_type_errors, errors keyed as there), and each other locale's templates
    as translations: a valid locale, a channel the type has or falls back to, content by
    the same template rules. A translation may leave channels out; the default locale's
    words are used for them. Errors of translations are keyed ``translations`` →
    ``{locale: [message] | {channel: [message] | {field: [message]}}}``."""
    default = fields.get("default_locale") or (instance.default_locale if instance else DEFAULT_LOCALE)
    fields, errors = notification_type_errors(
        key=key, fields=fields, templates=locales.get(default, {}), instance=instance
    )
    reachable = set(fields.get("channels") or []) | {rule["to"] for rule in fields["fallbacks"]}
    translations: dict[str, Any] = {}
    for locale, templates in locales.items():
        if locale == default:
            continue
        try:
            locale_check(locale)
        except RuleViolation as exc:
            translations[locale] = [str(exc)]
            continue
        # No channel is required of a translation, so none is passed as the type's.
        locale_errors = type_templates_errors(channels=[], templates=templates, fallback_targets=reachable)
        if locale_errors:
            translations[locale] = locale_errors
    if translations:
        errors["translations"] = translations
    return fields, errors


def notification_type_save_locales(
    *,
    key: str,
    fields: dict[str, Any],
    locales: dict[str, dict[str, dict[str, str]]],
    instance: NotificationType | None = None,
    by: Any = None,
    note: str = "saved on the type's admin page",
) -> NotificationType:
    """Create (or, given ``instance``, replace) a type with its templates in every locale.
    ``locales`` is the whole set: stored templates not in it are deleted. ValidationFailed
    names every field that breaks the rules (notification_type_locales_errors), a data
    name the type's variables do not declare, or a change of a critical or marketing
    type's templates (those go through approval); nothing is stored then. What it stores
    is recorded as the type's published template version, by ``by``."""
    with transaction.atomic():
        locked = None
        if instance is not None:
            # Two staff saving the same type one after the other, never interleaved.
            locked = NotificationType.objects.select_for_update().filter(pk=instance.pk).first()
        fields, errors = notification_type_locales_errors(
            key=key, fields=fields, locales=locales, instance=instance
        )
        declared = (instance.variables or {}) if instance is not None else {}
        if not errors and declared:
            for where, messages in templates_variables_errors(locales, declared).items():
                locale, channel, name = where.split(".", 2)
                section = "templates" if locale == fields.get("default_locale") else "translations"
                place = errors.setdefault(section, {})
                if section == "translations":
                    place = place.setdefault(locale, {})
                place.setdefault(channel, {}).setdefault(name, []).extend(messages)
        if not errors:
            # Judged by the type as stored (``instance`` may hold the form's new values).
            errors.update(_approval_errors(locked, fields.get("category", ""), locales, declared))
        if errors:
            raise ValidationFailed(errors)
        if instance is None:
            instance = NotificationType.objects.create(key=key, **fields)
        else:
            for name, value in fields.items():
                setattr(instance, name, value)
            instance.save()
        wanted = {(locale, channel) for locale, templates in locales.items() for channel in templates}
        stale = [
            template.pk
            for template in NotificationTemplate.objects.filter(notification_type=instance)
            if (template.locale, template.channel) not in wanted
        ]
        NotificationTemplate.objects.filter(pk__in=stale).delete()
        for locale, templates in locales.items():
            for channel, content in templates.items():
                NotificationTemplate.objects.update_or_create(
                    notification_type=instance, channel=channel, locale=locale, defaults={"content": content}
                )
        version_record(notification_type=instance, by=by, note=note)
    return instance


def _locales_with(
    *,
    notification_type: NotificationType,
    channel: str,
    locale: str,
    content: Any,
    template: NotificationTemplate | None,
) -> dict[str, dict[str, Any]]:
    locales: dict[str, dict[str, Any]] = notification_type_locale_templates(
        notification_type=notification_type
    )
    if template is not None:
        locales.get(template.locale, {}).pop(template.channel, None)
    locales.setdefault(locale, {})[channel] = content
    return {locale: templates for locale, templates in locales.items() if templates}


def notification_template_errors(
    *,
    notification_type: NotificationType,
    channel: str,
    locale: str,
    content: Any,
    template: NotificationTemplate | None = None,
) -> dict[str, Any]:
    """The errors of one template saved on its own, in place of ``template`` (None: a new
    one): its type is judged whole with it (notification_type_locales_errors), so a
    template cannot break its type's rules. Keyed as there."""
    locales = _locales_with(
        notification_type=notification_type,
        channel=channel,
        locale=locale,
        content=content,
        template=template,
    )
    stored = {name: getattr(notification_type, name) for name in TYPE_FIELDS}
    _, errors = notification_type_locales_errors(
        key=notification_type.key, fields=stored, locales=locales, instance=notification_type
    )
    return errors


def notification_template_save(
    *,
    notification_type: NotificationType,
    channel: str,
    locale: str,
    content: dict[str, str],
    template: NotificationTemplate | None = None,
    by: Any = None,
) -> NotificationTemplate:
    """Store one template in place of ``template`` (None: add it), its type judged whole
    with it; ValidationFailed as notification_template_errors says, and nothing stored.
    A template moved to another channel or locale is stored as a new row."""
    with transaction.atomic():
        locked = NotificationType.objects.select_for_update().get(pk=notification_type.pk)
        locales = _locales_with(
            notification_type=locked, channel=channel, locale=locale, content=content, template=template
        )
        notification_type_save_locales(
            key=locked.key,
            fields={name: getattr(locked, name) for name in TYPE_FIELDS},
            locales=locales,
            instance=locked,
            by=by,
            note=f"{channel} template in {locale} saved on its admin page",
        )
        return NotificationTemplate.objects.get(notification_type=locked, channel=channel, locale=locale)
