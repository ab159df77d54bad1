"""The rules a value must meet before it is stored, in one place for every door.

The API's serializers, the admin's forms and the services that store recipients,
webhooks, suppressions and notification types all call these functions, so a phone
number, a webhook URL or a fallback rule is judged the same way whichever door it came
through. Each check returns the value in its stored form (E.164, lower-case email) or
raises ``RuleViolation`` with a message that names the value and says what is expected;
the checks of structured values return their errors keyed by field instead.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import available_timezones

from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import EmailValidator, URLValidator

from notifications.models import (
    KEY_VALIDATOR,
    TEMPLATE_FIELDS,
    Category,
    Channel,
    SuppressionKind,
    WebhookKind,
)
from notifications.services.templating import template_check
from notifications.transports.sms import InvalidPhoneNumber, sms_normalise


class RuleViolation(ValueError):
    """A value breaks a rule; ``str()`` is the message for the person who sent it."""


CHANNELS: tuple[str, ...] = tuple(Channel.values)
CATEGORIES: tuple[str, ...] = tuple(Category.values)
TIMEZONES = frozenset(available_timezones())

_LOCALE = re.compile(r"^[a-z]{2,3}([_-][A-Za-z0-9]{2,8})*$")
LOCALE_PATTERN = _LOCALE.pattern
# Characters PostgreSQL cannot store in text: NUL, and unpaired UTF-16 surrogates.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")

# --- Keys -------------------------------------------------------------------------------


def key_check(value: str) -> str:
    """A type or topic key: lowercase letters, digits and . _ : - (at most 100). The whole
    value must match: a regex "$" would also let a final newline through."""
    try:
        KEY_VALIDATOR(value)
        if "\n" in value:
            raise DjangoValidationError(KEY_VALIDATOR.message)
    except DjangoValidationError as exc:
        raise RuleViolation(f"{value!r}: {exc.messages[0]}") from exc
    return value


# --- Recipients ---------------------------------------------------------------------------

PHONE_PATTERN = r"^\+[1-9][0-9 ().-]{5,30}$"
_PHONE = re.compile(PHONE_PATTERN.removeprefix("^").removesuffix("$"))


def phone_normalise(value: str) -> str:
    """The E.164 form of an international phone number ("+44 (0)20 7946 0958" becomes
    "+442079460958"); the empty string stays empty (no phone)."""
    value = value.strip()
    if not value:
        return ""
    invalid = RuleViolation(
        f"{value!r} is not a valid phone number in international form (+<country><number>, e.g. +14155550100)"
    )
    # Only digits and the usual separators: libphonenumber would skip other characters (a
    # trailing "*", letters of a vanity number) and store a number nobody typed.
    if not _PHONE.fullmatch(value):
        raise invalid
    try:
        e164, _ = sms_normalise(value)
    except InvalidPhoneNumber as exc:
        raise invalid from exc
    return e164


def email_normalise(value: str) -> str:
    """An email address as stored: trimmed; the empty string stays empty (no email)."""
    value = value.strip()
    if not value:
        return ""
    try:
        EmailValidator()(value)
    except DjangoValidationError as exc:
        raise RuleViolation(f"{value!r} is not an email address") from exc
    return value


def locale_check(value: str) -> str:
    if not _LOCALE.fullmatch(value) or "\n" in value:
        raise RuleViolation(f"{value!r} is not a locale such as 'en' or 'pt-BR'")
    return value


def timezone_check(value: str) -> str:
    if value not in TIMEZONES:
        raise RuleViolation(f"{value!r} is not an IANA time zone such as 'Europe/Lisbon'")
    return value


RECIPIENT_FIELDS = ("name", "email", "phone", "locale", "timezone")
_RECIPIENT_LIMITS = {"name": 200, "email": 254, "phone": 32, "locale": 20, "timezone": 64}


def recipient_fields_clean(fields: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The recipient fields in stored form, and the errors by field name. Unknown fields are
    errors too, so a typo is never silently dropped."""
    cleaned: dict[str, Any] = {}
    errors: dict[str, list[str]] = {}
    for name, value in fields.items():
        if name not in RECIPIENT_FIELDS:
            errors[name] = [f"unknown field; a recipient has {', '.join(RECIPIENT_FIELDS)}"]
            continue
        if not isinstance(value, str):
            errors[name] = [f"must be a string, got {type(value).__name__}"]
            continue
        if len(value) > _RECIPIENT_LIMITS[name]:
            errors[name] = [f"at most {_RECIPIENT_LIMITS[name]} characters, got {len(value)}"]
            continue
        if _UNSTORABLE.search(value):
            errors[name] = ["contains a character that cannot be stored (NUL or an unpaired surrogate)"]
            continue
        try:
            if name == "phone":
                value = phone_normalise(value)
            elif name == "email":
                value = email_normalise(value)
            elif name == "locale":
                value = locale_check(value)
            elif name == "timezone":
                value = timezone_check(value)
        except RuleViolation as exc:
            errors[name] = [str(exc)]
            continue
        cleaned[name] = value
    return cleaned, errors


EXTERNAL_ID_MAX = 200


def external_id_check(value: str) -> str:
    if not value or len(value) > EXTERNAL_ID_MAX:
        raise RuleViolation(f"must be 1 to {EXTERNAL_ID_MAX} characters, got {len(value)}")
    if _UNSTORABLE.search(value):
        raise RuleViolation("contains a character that cannot be stored (NUL or an unpaired surrogate)")
    return value


# --- Webhook endpoints ------------------------------------------------------------------------

WEBHOOK_SECRET_MIN = 16
WEBHOOK_SECRET_MAX = 100
WEBHOOK_URL_MAX = 2000
# Plain http only to this machine: the provider sandbox and local development.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def webhook_url_check(value: str) -> str:
    """An https URL; plain http only to 127.0.0.1 or localhost (development, sandbox)."""
    if len(value) > WEBHOOK_URL_MAX:
        raise RuleViolation(f"at most {WEBHOOK_URL_MAX} characters, got {len(value)}")
    scheme = urlsplit(value).scheme
    if scheme not in ("http", "https"):
        raise RuleViolation(
            f"must be an https URL (http only to 127.0.0.1 or localhost), got scheme {scheme!r}"
        )
    try:
        URLValidator(schemes=["http", "https"])(value)
    except DjangoValidationError as exc:
        raise RuleViolation(f"{value!r} is not a URL") from exc
    parts = urlsplit(value)
    if parts.scheme == "https":
        return value
    if parts.scheme == "http" and (parts.hostname or "") in LOOPBACK_HOSTS:
        return value
    if parts.scheme != "http":
        raise RuleViolation(
            f"must be an https URL (http only to 127.0.0.1 or localhost), got scheme {parts.scheme!r}"
        )
    raise RuleViolation(
        f"must be an https URL; plain http is allowed only to 127.0.0.1 or localhost, not {parts.hostname!r}"
    )


def webhook_kind_check(kind: str) -> str:
    if kind not in WebhookKind.values:
        raise RuleViolation(f"unknown kind {kind!r}; expected one of {', '.join(WebhookKind.values)}")
    return kind


def webhook_secret_check(*, kind: str, secret: str) -> str:
    """Generic webhooks are signed with a secret of at least 16 characters; Slack and Teams
    webhooks are not signed and take none. ``kind`` is a valid kind (webhook_kind_check)."""
    if len(secret) > WEBHOOK_SECRET_MAX:
        raise RuleViolation(f"at most {WEBHOOK_SECRET_MAX} characters, got {len(secret)}")
    if kind == WebhookKind.GENERIC:
        if not secret:
            raise RuleViolation("a signing secret is required for generic webhooks")
        if len(secret) < WEBHOOK_SECRET_MIN:
            raise RuleViolation(f"must be at least {WEBHOOK_SECRET_MIN} characters, got {len(secret)}")
    elif secret:
        raise RuleViolation(f"{kind} webhooks are not signed; leave the secret out")
    return secret


# --- Suppression list ---------------------------------------------------------------------------


def suppression_address_normalise(*, kind: str, address: str) -> str:
    """The stored form of a suppressed address: lower-case email, E.164 phone."""
    address = address.strip()
    if kind == SuppressionKind.EMAIL:
        return email_normalise(address).lower() if address else _empty(kind)
    if kind == SuppressionKind.PHONE:
        return phone_normalise(address) if address else _empty(kind)
    raise RuleViolation(f"unknown kind {kind!r}; expected one of {', '.join(SuppressionKind.values)}")


def _empty(kind: str) -> str:
    raise RuleViolation(
        f"an {kind} address is required" if kind == "email" else f"a {kind} number is required"
    )


# --- Notification types: templates and fallback rules ----------------------------------------------

FALLBACK_MAX_SECONDS = 86_400
FALLBACK_FIELDS = ("from", "to", "after_seconds")
# The fields each channel's template must have.
TEMPLATE_REQUIRED: dict[str, tuple[str, ...]] = {
    Channel.INAPP: ("title",),
    Channel.EMAIL: ("subject",),
    Channel.SMS: ("text",),
    Channel.PUSH: ("body",),
    Channel.WEBHOOK: (),
}


# A type's ``when_active``: what happens to email, SMS and push for a user online in the app.
WHEN_ACTIVE_SEND, WHEN_ACTIVE_SKIP, WHEN_ACTIVE_DELAY = "send", "skip", "delay"
WHEN_ACTIVE_DELAY_MAX = 86_400
WHEN_ACTIVE_PATTERN = r"^(send|skip|delay:[1-9][0-9]{0,4})$"


def when_active_parse(value: str) -> tuple[str, int]:
    """("send" | "skip" | "delay", seconds) for a type's ``when_active``; an empty value is
    "send". Raises RuleViolation naming what is expected."""
    if value in ("", WHEN_ACTIVE_SEND):
        return WHEN_ACTIVE_SEND, 0
    if value == WHEN_ACTIVE_SKIP:
        return WHEN_ACTIVE_SKIP, 0
    kind, _, seconds = value.partition(":")
    if kind == WHEN_ACTIVE_DELAY and seconds.isascii() and seconds.isdigit():
        if 1 <= int(seconds) <= WHEN_ACTIVE_DELAY_MAX:
            return WHEN_ACTIVE_DELAY, int(seconds)
    raise RuleViolation(
        f"{value!r} is not a choice; expected 'send', 'skip' or 'delay:<seconds>' (1 to {WHEN_ACTIVE_DELAY_MAX})"
    )


def fallback_rules_clean(
    rules: Any, *, channels: list[str], template_channels: set[str] | None
) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """The rules in stored form and the errors, keyed ``fallbacks[i].field``.

    ``template_channels`` are the channels the type has templates for; a rule's ``to``
    needs one. None skips that check (the caller checks templates itself, later).
    """
    if rules is None or rules == "":
        return [], {}
    if not isinstance(rules, list):
        return [], {"fallbacks": ['must be a list of {"from", "to", "after_seconds"} rules']}
    errors: dict[str, list[str]] = {}
    cleaned: list[dict[str, Any]] = []
    first_rule_of: dict[str, int] = {}
    for i, rule in enumerate(rules):
        where = f"fallbacks[{i}]"
        if not isinstance(rule, dict):
            errors[where] = ['must be an object {"from": channel, "to": channel, "after_seconds": n}']
            continue
        for name in sorted(set(rule) - set(FALLBACK_FIELDS)):
            errors[f"{where}.{name}"] = ["unknown field; a rule has from, to and after_seconds"]
        source, target, after = rule.get("from"), rule.get("to"), rule.get("after_seconds")
        shape_ok = True
        for name, value in (("from", source), ("to", target)):
            if value is None:
                errors[f"{where}.{name}"] = ["this field is required"]
                shape_ok = False
            elif value not in CHANNELS:
                errors[f"{where}.{name}"] = [
                    f"{value!r} is not a channel; expected one of {', '.join(CHANNELS)}"
                ]
                shape_ok = False
        if isinstance(after, float) and after.is_integer():
            after = int(after)  # JSON has one number type: 60.0 is 60 seconds
        if after is None:
            errors[f"{where}.after_seconds"] = ["this field is required"]
            shape_ok = False
        elif not isinstance(after, int) or isinstance(after, bool) or not 0 <= after <= FALLBACK_MAX_SECONDS:
            errors[f"{where}.after_seconds"] = [
                f"must be a whole number of seconds from 0 to {FALLBACK_MAX_SECONDS}, got {after!r}"
            ]
            shape_ok = False
        if not shape_ok or any(key.startswith(f"{where}.") for key in errors):
            continue
        if source == target:
            errors[f"{where}.to"] = [f"must differ from 'from' ({source!r})"]
        if source not in channels:
            errors.setdefault(f"{where}.from", []).append(
                f"channel {source!r} is not among the type's channels ({', '.join(channels)}), "
                "so the rule would never apply"
            )
        elif source in first_rule_of:
            errors.setdefault(f"{where}.from", []).append(
                f"fallbacks[{first_rule_of[source]}] already has a rule for {source!r}; "
                "at most one rule per channel"
            )
        else:
            first_rule_of[source] = i
        if template_channels is not None and target != source and target not in template_channels:
            errors.setdefault(f"{where}.to", []).append(
                f"channel {target!r} has no template; add templates.{target}"
            )
        cleaned.append({"from": source, "to": target, "after_seconds": after})
    return cleaned, errors


def template_content_errors(*, channel: str, content: Any) -> dict[str, list[str]]:
    """Errors of one channel's template content, by field ("" for the whole content)."""
    if channel not in TEMPLATE_FIELDS:
        return {"": [f"unknown channel {channel!r}; expected one of {', '.join(CHANNELS)}"]}
    if not isinstance(content, dict):
        return {"": ["must be an object of field name to template text"]}
    allowed = TEMPLATE_FIELDS[channel]
    errors: dict[str, list[str]] = {}
    for field, source in content.items():
        if field not in allowed:
            errors[field] = [f"unknown field; {channel} templates have {', '.join(allowed)}"]
        elif not isinstance(source, str):
            errors[field] = [f"must be text, got {type(source).__name__}"]
        elif (problem := template_check(source=source)) is not None:
            errors[field] = [problem]
    for field in TEMPLATE_REQUIRED[channel]:
        if not content.get(field):
            errors.setdefault(field, []).append("this field is required")
    if channel == Channel.EMAIL and not (content.get("html") or content.get("text")):
        errors.setdefault("text", []).append("an email needs html or text")
    return errors


def type_templates_errors(
    *, channels: list[str], templates: dict[str, Any], fallback_targets: set[str]
) -> dict[str, Any]:
    """Errors of a type's templates, keyed by channel, then field: every channel of the
    type needs a template, a template needs a channel (or a fallback reaching it)."""
    errors: dict[str, Any] = {}
    for channel in channels:
        if channel not in templates:
            errors[channel] = [f"a template is required for channel {channel!r}"]
    for channel, content in templates.items():
        if channel not in channels and channel not in fallback_targets:
            errors[channel] = [f"channel {channel!r} is not in channels nor the 'to' of a fallback"]
            continue
        field_errors = template_content_errors(channel=channel, content=content)
        if field_errors:
            errors[channel] = field_errors
    return errors


class ValidationFailed(Exception):
    """Values a service refused, as ``{field: [message, ...]}``: the API answers them as a
    400 and the admin shows them beside each field."""

    def __init__(self, errors: dict[str, Any]) -> None:
        super().__init__(errors)
        self.errors = errors
