"""Template versions: drafts, publishing (with a second staff member's approval for
critical and marketing types), history, roll back, diffs, previews and test sends.

A type's deliveries render its published version, whose templates are also its
NotificationTemplate rows (written on publish, in the same transaction). Every other way
of changing templates (the API, the type's admin page) records what it stored as a new
published version (``version_record``), so the history is whole and each delivery can
name the version it rendered (Delivery.template_version).

A version moves draft → published, or draft → pending → published when the type needs
approval (NotificationType.needs_approval); a pending version goes back to draft when
rejected. Publishing retires the version published before. Versions are never edited once
asked to publish: a roll back copies an old version into a new draft.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.utils import timezone

from notifications.models import (
    TEMPLATE_FIELDS,
    Channel,
    Event,
    NotificationTemplate,
    NotificationType,
    Recipient,
    TemplateVersion,
)
from notifications.models import TemplateVersionStatus as Status
from notifications.services.catalog import (
    TYPE_FIELDS,
    next_version_number,
    notification_type_locales_errors,
    stored_locales,
    user_or_none,
)
from notifications.services.channel_checks import (
    email_with_text,
    push_payload_bytes,
    push_problem,
    sms_problem,
)
from notifications.services.ingest import event_ingest
from notifications.services.template_variables import (
    preview_context,
    templates_variables_errors,
    variables_clean,
)
from notifications.services.templating import TemplateRenderError, locale_pick, template_render
from notifications.services.validation import ValidationFailed
from notifications.transports.sms import sms_encoding, sms_segments


class VersionRefused(Exception):
    """A step of the workflow that cannot be taken; ``str()`` says why."""


# --- Reading ----------------------------------------------------------------------------

# --- Judging a version -------------------------------------------------------------------


def _flatten(errors: Any, prefix: str, out: dict[str, list[str]]) -> None:
    if isinstance(errors, dict):
        for key, value in errors.items():
            _flatten(value, f"{prefix}.{key}" if prefix and key else (prefix or str(key)), out)
    elif isinstance(errors, list):
        out.setdefault(prefix, []).extend(str(message) for message in errors)
    else:
        out.setdefault(prefix, []).append(str(errors))


def version_errors(
    *, notification_type: NotificationType, templates: Any, variables: Any
) -> dict[str, list[str]]:
    """Everything a version's templates and variables break, keyed ``templates``,
    ``templates.<locale>.<channel>[.<field>]``, ``variables[.<name>]`` or a field of the
    type they no longer fit (``fallbacks``): the template rules of the type's API, the
    declaration's rules, every ``data`` name used declared, and every template rendering
    with the examples."""
    errors: dict[str, list[str]] = {}
    clean, variable_errors = variables_clean(variables)
    for name, messages in variable_errors.items():
        errors[f"variables.{name}" if name else "variables"] = messages
    if not isinstance(templates, dict) or not templates:
        errors["templates"] = [
            "must be an object of locale to {channel: {field: template}}, with the default locale"
        ]
        return errors
    default = notification_type.default_locale
    if default not in templates:
        errors["templates"] = [f"the default locale {default!r} needs templates"]
    fields = {name: getattr(notification_type, name) for name in TYPE_FIELDS}
    _, type_errors = notification_type_locales_errors(
        key=notification_type.key, fields=fields, locales=templates, instance=notification_type
    )
    for key, problem in type_errors.items():
        if key == "templates":
            _flatten(problem, f"templates.{default}", errors)
        elif key == "translations":
            _flatten(problem, "templates", errors)
        else:
            _flatten(problem, key, errors)
    if not variable_errors:
        for where, messages in templates_variables_errors(templates, clean).items():
            errors.setdefault(f"templates.{where}", []).extend(messages)
    return errors


# --- The workflow -------------------------------------------------------------------------


def version_draft_create(
    *,
    notification_type: NotificationType,
    by: Any,
    based_on: int | None = None,
    note: str = "",
) -> TemplateVersion:
    """A new draft holding a copy of version ``based_on`` (default: the published one)."""
    with transaction.atomic():
        locked = NotificationType.objects.select_for_update().get(pk=notification_type.pk)
        number = based_on if based_on is not None else locked.template_version
        source = TemplateVersion.objects.filter(notification_type=locked, number=number).first()
        if based_on is not None and source is None:
            raise VersionRefused(f"{locked.key} has no version {based_on}")
        now = timezone.now()
        return TemplateVersion.objects.create(
            notification_type=locked,
            number=next_version_number(locked),
            status=Status.DRAFT,
            templates=source.templates if source else stored_locales(locked),
            variables=source.variables if source else (locked.variables or {}),
            based_on=source.number if source else None,
            note=note[:200],
            created_by=user_or_none(by),
            created_at=now,
            updated_at=now,
        )


def version_draft_update(
    *, version: TemplateVersion, templates: Any, variables: Any, note: str | None = None
) -> TemplateVersion:
    """Replace a draft's templates and variables. A draft may break the rules while it is
    worked on (the admin shows how); it cannot be published until it does not."""
    with transaction.atomic():
        locked = TemplateVersion.objects.select_for_update().get(pk=version.pk)
        if not locked.editable:
            raise VersionRefused(
                f"version {locked.number} is {locked.get_status_display().lower()}: only drafts change"
            )
        if not isinstance(templates, dict):
            raise ValidationFailed(
                {"templates": ["must be an object of locale to {channel: {field: template}}"]}
            )
        if not isinstance(variables, dict):
            raise ValidationFailed({"variables": ["must be an object of variable name to its declaration"]})
        locked.templates, locked.variables = templates, variables
        if note is not None:
            locked.note = note[:200]
        if locked.status == Status.REJECTED:
            locked.status = Status.DRAFT
        locked.updated_at = timezone.now()
        locked.save()
        return locked


def _publish(version: TemplateVersion, notification_type: NotificationType, by: Any) -> None:
    """Inside a transaction holding the type's lock: the version's templates become the
    type's, the version published before is retired."""
    clean, _ = variables_clean(version.variables)
    locales: dict[str, dict[str, dict[str, str]]] = version.templates
    wanted = {(locale, channel) for locale, channels in locales.items() for channel in channels}
    NotificationTemplate.objects.filter(notification_type=notification_type).exclude(
        pk__in=[
            t.pk
            for t in NotificationTemplate.objects.filter(notification_type=notification_type)
            if (t.locale, t.channel) in wanted
        ]
    ).delete()
    for locale, channels in locales.items():
        for channel, content in channels.items():
            NotificationTemplate.objects.update_or_create(
                notification_type=notification_type,
                channel=channel,
                locale=locale,
                defaults={"content": content},
            )
    now = timezone.now()
    TemplateVersion.objects.filter(notification_type=notification_type, status=Status.PUBLISHED).update(
        status=Status.RETIRED, updated_at=now
    )
    version.status, version.published_at, version.published_by = Status.PUBLISHED, now, user_or_none(by)
    version.variables, version.updated_at = clean, now
    version.save()
    notification_type.template_version, notification_type.variables = version.number, clean
    notification_type.save(update_fields=["template_version", "variables", "updated_at"])


def _locked(version: TemplateVersion) -> tuple[TemplateVersion, NotificationType]:
    notification_type = NotificationType.objects.select_for_update().get(pk=version.notification_type_id)
    return TemplateVersion.objects.select_for_update().get(pk=version.pk), notification_type


def version_publish_request(*, version: TemplateVersion, by: Any) -> TemplateVersion:
    """Publish a draft, or, for a type that needs approval, ask for it (pending). Raises
    ValidationFailed with what the version breaks, VersionRefused when it is no draft."""
    with transaction.atomic():
        locked, notification_type = _locked(version)
        if not locked.editable:
            raise VersionRefused(
                f"version {locked.number} is {locked.get_status_display().lower()}: only a draft can be published"
            )
        errors = version_errors(
            notification_type=notification_type, templates=locked.templates, variables=locked.variables
        )
        if errors:
            raise ValidationFailed(errors)
        now = timezone.now()
        locked.requested_by, locked.requested_at = user_or_none(by), now
        locked.approved_by = locked.approved_at = None
        locked.rejected_reason = ""
        if notification_type.needs_approval:
            locked.status, locked.updated_at = Status.PENDING, now
            locked.save()
        else:
            _publish(locked, notification_type, by)
        return locked


def version_approve(*, version: TemplateVersion, by: Any) -> TemplateVersion:
    """A second staff member approves a pending version, which is then published. Who
    asked to publish it, or wrote it, cannot approve it."""
    with transaction.atomic():
        locked, notification_type = _locked(version)
        if locked.status != Status.PENDING:
            raise VersionRefused(
                f"version {locked.number} is {locked.get_status_display().lower()}, not awaiting approval"
            )
        if by.pk in (locked.requested_by_id, locked.created_by_id):
            raise VersionRefused(
                "a second staff member must approve: you wrote this version or asked to publish it"
            )
        errors = version_errors(
            notification_type=notification_type, templates=locked.templates, variables=locked.variables
        )
        if errors:
            raise ValidationFailed(errors)
        locked.approved_by, locked.approved_at = by, timezone.now()
        _publish(locked, notification_type, by)
        return locked


def version_reject(*, version: TemplateVersion, by: Any, reason: str) -> TemplateVersion:
    """Send a pending version back, with why; it can be edited and asked again."""
    reason = (reason or "").strip()
    if not reason:
        raise ValidationFailed({"reason": ["say why, for whoever asked to publish it"]})
    with transaction.atomic():
        locked, _ = _locked(version)
        if locked.status != Status.PENDING:
            raise VersionRefused(
                f"version {locked.number} is {locked.get_status_display().lower()}, not awaiting approval"
            )
        locked.status, locked.rejected_reason = Status.REJECTED, f"{by}: {reason}"[:200]
        locked.updated_at = timezone.now()
        locked.save()
        return locked


def version_rollback(*, version: TemplateVersion, by: Any) -> TemplateVersion:
    """Bring back an earlier version: a copy of it as a new draft, asked to publish at
    once (published now, or pending for a type that needs approval)."""
    if version.status not in (Status.RETIRED, Status.PUBLISHED):
        raise VersionRefused(f"version {version.number} was never published: publish it instead")
    draft = version_draft_create(
        notification_type=version.notification_type,
        by=by,
        based_on=version.number,
        note=f"roll back to version {version.number}",
    )
    return version_publish_request(version=draft, by=by)


# --- Diffs and previews -------------------------------------------------------------------


@dataclass
class DiffPart:
    """The change of one template field (``where``: locale.channel.field, or a variable)."""

    where: str
    lines: list[str] = field(default_factory=list)


def _leaves(version: TemplateVersion) -> dict[str, str]:
    leaves: dict[str, str] = {}
    templates = version.templates if isinstance(version.templates, dict) else {}
    for locale, channels in sorted(templates.items()):
        for channel, content in sorted((channels or {}).items()):
            for name, source in sorted((content or {}).items()):
                leaves[f"{locale}.{channel}.{name}"] = str(source)
    variables = version.variables if isinstance(version.variables, dict) else {}
    for name, spec in sorted(variables.items()):
        leaves[f"variables.{name}"] = ", ".join(f"{k}: {v!r}" for k, v in sorted((spec or {}).items()))
    return leaves


def version_diff(old: TemplateVersion, new: TemplateVersion) -> list[DiffPart]:
    """What changed from ``old`` to ``new``, field by field, as unified diff lines."""
    before, after = _leaves(old), _leaves(new)
    parts: list[DiffPart] = []
    for where in sorted(set(before) | set(after)):
        a, b = before.get(where), after.get(where)
        if a == b:
            continue
        lines = list(
            difflib.unified_diff(
                (a or "").splitlines(),
                (b or "").splitlines(),
                fromfile=f"v{old.number}" if a is not None else "(none)",
                tofile=f"v{new.number}" if b is not None else "(none)",
                lineterm="",
                n=2,
            )
        )
        parts.append(DiffPart(where, lines))
    return parts


@dataclass
class Preview:
    """One channel of a version rendered for a locale: the fields, the locale whose
    template was used (after falling back), the checks before sending."""

    channel: str
    locale: str
    fields: dict[str, str] = field(default_factory=dict)
    error: str = ""
    facts: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def version_preview(
    *,
    notification_type: NotificationType,
    templates: Any,
    variables: Any,
    locale: str,
    data: Any = None,
    timezone_name: str = "UTC",
) -> list[Preview]:
    """Each channel of ``templates`` rendered for ``locale`` (falling back as deliveries
    do) with ``data`` (default: the variables' examples), with the checks a send makes."""
    clean, _ = variables_clean(variables)
    context = preview_context(clean, locale=locale, timezone=timezone_name, data=data)
    previews: list[Preview] = []
    templates = templates if isinstance(templates, dict) else {}
    channels = sorted(
        {channel for content in templates.values() if isinstance(content, dict) for channel in content}
    )
    for channel in channels:
        per_locale = {
            loc: content[channel]
            for loc, content in templates.items()
            if isinstance(content, dict) and channel in content
        }
        picked = locale_pick(per_locale, locale, notification_type.default_locale)
        if picked is None:
            continue
        used, content = picked
        preview = Preview(channel=channel, locale=used)
        previews.append(preview)
        try:
            order = TEMPLATE_FIELDS.get(channel, ())
            ordered = sorted(
                (content or {}).items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else 99, kv[0])
            )
            preview.fields = {
                name: template_render(
                    source=str(source), context=context, html=(channel == Channel.EMAIL and name == "html")
                )
                for name, source in ordered
            }
        except TemplateRenderError as exc:
            preview.error = str(exc)
            continue
        if channel == Channel.SMS:
            text = preview.fields.get("text", "")
            preview.facts.append(
                f"{sms_segments(text)} segment(s), {sms_encoding(text)}, {len(text)} characters"
            )
            if (problem := sms_problem(text)) is not None:
                preview.problems.append(problem)
        elif channel == Channel.PUSH:
            payload = {"event_id": "preview", "type": notification_type.key}
            preview.facts.append(f"payload {push_payload_bytes(preview.fields, payload)} of 4096 bytes")
            if (problem := push_problem(preview.fields, payload)) is not None:
                preview.problems.append(problem)
        elif channel == Channel.EMAIL:
            if not preview.fields.get("text", "").strip():
                preview.facts.append("text part made from the HTML")
            preview.fields = email_with_text(preview.fields)
    return previews


# --- Test sends ------------------------------------------------------------------------------


def version_send_test(*, version: TemplateVersion, user: Any) -> Event:
    """Send ``version`` (any status) to the staff member's own recipient through the real
    pipeline, with the variables' examples as data: the event renders that version."""
    recipient = Recipient.objects.filter(user=user).first()
    if recipient is None:
        raise VersionRefused(
            "no recipient is linked to your user: link one (Recipients, its user field) to receive tests"
        )
    clean, problems = variables_clean(version.variables)
    if problems:
        raise VersionRefused("the variables break their rules: fix them before a test send")
    result = event_ingest(
        api_key=None,
        type_key=version.notification_type.key,
        recipients=[recipient.external_id],
        data={name: spec["example"] for name, spec in clean.items()},
        template_version=version.number,
    )
    return result.event
