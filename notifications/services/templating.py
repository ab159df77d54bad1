"""The template language of notification types: Jinja2 in an immutable sandbox.

Attribute access to internals (``''.__class__``), ``|attr`` and mutation are refused, and
undefined variables fail loudly (a permanent delivery error, not an empty message).

Filters format values for the recipient, in their locale and timezone (Babel, from the
``recipient`` of the context): ``{{ data.at|datetime }}`` (``short``, ``medium``,
``long``, ``full`` or a pattern), ``|date``, ``|time``, ``{{ data.total|currency("EUR") }}``,
``|number``, ``|percent``. A template's locale falls back along ``locale_chain``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale, UnknownLocaleError, dates, numbers
from jinja2 import StrictUndefined, Template, TemplateError, nodes, pass_context
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import escape

DEFAULT_FORMAT_LOCALE = "en"


def locale_chain(locale: str, default: str) -> list[str]:
    """The locales to try for ``locale``, most specific first, then ``default``:
    ``fr-CA`` → ``fr-ca``, ``fr``, then the default. Lowercase, ``-`` separated."""
    chain: list[str] = []
    parts = (locale or "").replace("_", "-").lower().split("-")
    for end in range(len(parts), 0, -1):
        candidate = "-".join(parts[:end])
        if candidate and candidate not in chain:
            chain.append(candidate)
    fallback = (default or "").replace("_", "-").lower()
    if fallback and fallback not in chain:
        chain.append(fallback)
    return chain


def locale_pick(templates: Mapping[str, Any], locale: str, default: str) -> tuple[str, Any] | None:
    """The (locale, template) of ``templates`` (keyed by locale) that ``locale`` falls back
    to, or None."""
    by_key = {key.replace("_", "-").lower(): key for key in templates}
    for candidate in locale_chain(locale, default):
        if candidate in by_key:
            return by_key[candidate], templates[by_key[candidate]]
    return None


@lru_cache(maxsize=256)
def _babel_locale(tag: str) -> Locale:
    try:
        return Locale.parse(tag.replace("-", "_"))
    except (UnknownLocaleError, ValueError, TypeError):
        language = tag.replace("-", "_").split("_")[0]
        try:
            return Locale.parse(language)
        except (UnknownLocaleError, ValueError, TypeError):
            return Locale.parse(DEFAULT_FORMAT_LOCALE)


def _recipient(context: Context) -> tuple[Locale, ZoneInfo]:
    recipient = context.get("recipient")
    recipient = recipient if isinstance(recipient, Mapping) else {}
    try:
        zone = ZoneInfo(str(recipient.get("timezone") or "UTC"))
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")
    return _babel_locale(str(recipient.get("locale") or DEFAULT_FORMAT_LOCALE)), zone


def _moment(value: Any) -> datetime | date:
    if isinstance(value, datetime | date):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO 8601 date or time") from None
        return parsed if "T" in value or " " in value or ":" in value else parsed.date()
    raise ValueError(f"{value!r} is not a date or time")


def _aware(moment: datetime | date) -> datetime:
    if not isinstance(moment, datetime):
        return datetime(moment.year, moment.month, moment.day, tzinfo=UTC)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _decimal(value: Any) -> Decimal:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a number") from None


@pass_context
def _format_datetime(context: Context, value: Any, format: str = "medium") -> str:
    locale, zone = _recipient(context)
    return str(dates.format_datetime(_aware(_moment(value)), format, tzinfo=zone, locale=locale))


@pass_context
def _format_date(context: Context, value: Any, format: str = "medium") -> str:
    locale, zone = _recipient(context)
    moment = _moment(value)
    day = _aware(moment).astimezone(zone).date() if isinstance(moment, datetime) else moment
    return str(dates.format_date(day, format, locale=locale))


@pass_context
def _format_time(context: Context, value: Any, format: str = "short") -> str:
    locale, zone = _recipient(context)
    return str(dates.format_time(_aware(_moment(value)), format, tzinfo=zone, locale=locale))


@pass_context
def _format_currency(context: Context, value: Any, currency: str = "USD") -> str:
    locale, _ = _recipient(context)
    return str(numbers.format_currency(_decimal(value), str(currency).upper(), locale=locale))


@pass_context
def _format_number(context: Context, value: Any) -> str:
    locale, _ = _recipient(context)
    return str(numbers.format_decimal(_decimal(value), locale=locale))


@pass_context
def _format_percent(context: Context, value: Any) -> str:
    locale, _ = _recipient(context)
    return str(numbers.format_percent(_decimal(value), locale=locale))


FORMAT_FILTERS = {
    "datetime": _format_datetime,
    "date": _format_date,
    "time": _format_time,
    "currency": _format_currency,
    "number": _format_number,
    "percent": _format_percent,
}


class TemplateRenderError(Exception):
    """A template could not be compiled or rendered; the message says why."""


def _environment(*, autoescape: bool) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=autoescape)
    # |attr reaches attributes by computed name, the usual way around sandbox checks.
    env.filters.pop("attr", None)
    env.filters.update(FORMAT_FILTERS)
    return env


_PLAIN = _environment(autoescape=False)
_HTML = _environment(autoescape=True)


@lru_cache(maxsize=2048)
def _compile(source: str, html: bool) -> Template:
    env = _HTML if html else _PLAIN
    try:
        return env.from_string(source)
    except TemplateError as exc:
        raise TemplateRenderError(f"template does not compile: {exc}") from exc


def template_check(*, source: str) -> str | None:
    """None when ``source`` compiles, else the error message."""
    try:
        _compile(source, False)
    except TemplateRenderError as exc:
        return str(exc)
    return None


def template_render(*, source: str, context: Mapping[str, Any], html: bool = False) -> str:
    """Render ``source`` with ``context``; raises TemplateRenderError (a permanent error)."""
    if "{" not in source:
        return source
    template = _compile(source, html)
    try:
        return template.render(**context)
    except TemplateError as exc:
        raise TemplateRenderError(f"template failed: {exc}") from exc
    except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
        raise TemplateRenderError(f"template failed: {exc.__class__.__name__}: {exc}") from exc


def _actor_name(data: Any) -> str | None:
    actor = data.get("actor") if isinstance(data, Mapping) else None
    if isinstance(actor, Mapping):
        actor = actor.get("name")
    return actor if isinstance(actor, str) and actor else None


def aggregate_context(count: int, samples: list[Any]) -> dict[str, Any]:
    """What templates see as ``aggregate`` for a delivery standing for ``count`` events
    whose first ``samples`` (their data) are kept: ``count``, ``others`` (count - 1),
    ``samples``, and ``actors``, who acted, named by each event's ``data.actor`` (text, or
    an object with a ``name``), distinct, first come first ("Ana and 41 others liked your
    photo": ``{{ aggregate.actors[0] }} and {{ aggregate.others }} others``)."""
    actors = list(dict.fromkeys(name for name in map(_actor_name, samples) if name is not None))
    return {"count": count, "others": count - 1, "samples": samples, "actors": actors}


def template_data_names(source: str) -> set[str]:
    """The names of ``data`` a template reads (``data.x`` or ``data["x"]``); raises
    TemplateRenderError when it does not compile."""
    try:
        tree = _PLAIN.parse(source)
    except TemplateError as exc:
        raise TemplateRenderError(f"template does not compile: {exc}") from exc
    names: set[str] = set()
    for attr in tree.find_all(nodes.Getattr):
        if isinstance(attr.node, nodes.Name) and attr.node.name == "data":
            names.add(attr.attr)
    for item in tree.find_all(nodes.Getitem):
        if (
            isinstance(item.node, nodes.Name)
            and item.node.name == "data"
            and isinstance(item.arg, nodes.Const)
            and isinstance(item.arg.value, str)
        ):
            names.add(item.arg.value)
    return names


_FORMATTED = re.compile(r"\|\s*(" + "|".join(FORMAT_FILTERS) + r")\b")


def template_uses_recipient(source: str) -> bool:
    """Whether output can differ per recipient (otherwise it is rendered once per event):
    it reads the recipient, or formats for their locale and timezone."""
    return "recipient" in source or _FORMATTED.search(source) is not None


# --- Batch sends: content a provider personalises per recipient --------------------------

# The recipient fields a batch send fills in per recipient (``%recipient.NAME%``); HTML
# takes their escaped form under NAME_html, since a provider fills a name the same
# everywhere and HTML needs it escaped where text must not be.
MERGE_FIELDS = ("external_id", "name")
# A name has no whitespace (as anymail writes them; sandbox/mailgun_api.py reads them so).
_MERGE_PLACEHOLDER = re.compile(r"%recipient\.([^%\s]+)%")


def merge_placeholders(*, html: bool) -> dict[str, str]:
    """The recipient fields as placeholders, for rendering content once for a batch."""
    suffix = "_html" if html else ""
    return {name: f"%recipient.{name}{suffix}%" for name in MERGE_FIELDS}


def merge_values(recipient: Mapping[str, Any], used: str) -> dict[str, str]:
    """A recipient's value of each placeholder that ``used`` (the rendered placeholders'
    text) holds."""
    values: dict[str, str] = {}
    for name in MERGE_FIELDS:
        raw = recipient.get(name)
        text = "" if raw is None else str(raw)
        values[name] = text
        values[f"{name}_html"] = str(escape(text))
    return {name: value for name, value in values.items() if f"%recipient.{name}%" in used}


@lru_cache(maxsize=2048)
def template_merge_exact(source: str) -> bool:
    """Whether rendering ``source`` with the merge fields as placeholders and filling them
    in gives exactly what rendering it for each recipient gives, by the template's shape:
    every use of a merge field is printed as it is (``{{ recipient.name }}``: no filter,
    test, condition, loop or call reads it). Templates that do otherwise are checked
    recipient by recipient instead."""
    try:
        tree = _PLAIN.parse(source)
    except TemplateError:
        return False
    if any(True for _ in tree.find_all(nodes.EvalContextModifier)):
        return False  # {% autoescape %} blocks: what is escaped is no longer the field's kind
    printed: set[int] = set()
    for output in tree.find_all(nodes.Output):
        for child in output.nodes:
            if _merge_field(child):
                printed.add(id(child))
    for name in tree.find_all(nodes.Name):
        if name.name == "recipient" and name.ctx == "load":
            break
    else:
        return True
    fields = [node for node in tree.find_all(nodes.Getattr) if _merge_field(node)]
    uses = sum(1 for name in tree.find_all(nodes.Name) if name.name == "recipient")
    other = sum(
        1
        for node in tree.find_all(nodes.Getattr)
        if isinstance(node.node, nodes.Name) and node.node.name == "recipient" and not _merge_field(node)
    )
    # Every read of ``recipient`` is either a printed merge field or another attribute
    # (locale, timezone: the same for every recipient sharing the rendering).
    return all(id(node) in printed for node in fields) and uses == len(fields) + other


def _merge_field(node: nodes.Node) -> bool:
    return (
        isinstance(node, nodes.Getattr)
        and isinstance(node.node, nodes.Name)
        and node.node.name == "recipient"
        and node.attr in MERGE_FIELDS
    )


def merge_substitute(text: str, values: Mapping[str, str]) -> str:
    """Fill ``%recipient.NAME%`` placeholders as Mailgun's batch send does: in one pass, a
    name it was not given becoming empty."""
    if "%recipient." not in text:
        return text
    return _MERGE_PLACEHOLDER.sub(lambda match: values.get(match.group(1), ""), text)
