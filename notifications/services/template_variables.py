"""The variables a type's templates use, declared with them: each has a type, whether it
is required and an example. Ingest refuses an event whose ``data`` lacks a required one
or holds one of the wrong type (a 400 naming ``data.<name>``); previews and test sends
render the examples; a version whose templates use a variable it does not declare cannot
be published (notifications/services/template_versions.py).

Declared as ``{name: {"type": ..., "required": true, "example": ..., "description": ""}}``.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any

from notifications.services.templating import (
    TemplateRenderError,
    aggregate_context,
    template_data_names,
    template_render,
)

VARIABLE_TYPES: dict[str, str] = {
    "string": "text",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "datetime": "an ISO 8601 date and time",
    "date": "an ISO 8601 date",
    "url": "an http(s) URL",
    "object": "an object",
    "list": "a list",
}
VARIABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
VARIABLE_FIELDS = ("type", "required", "example", "description")
MAX_VARIABLES = 100


def _type_problem(kind: str, value: Any) -> str | None:
    """None when ``value`` is of ``kind``, else what it is instead."""
    ok: bool
    if kind == "string":
        ok = isinstance(value, str)
    elif kind == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "number":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif kind == "boolean":
        ok = isinstance(value, bool)
    elif kind in ("datetime", "date"):
        ok = isinstance(value, str) and _iso(value, kind) is not None
    elif kind == "url":
        ok = isinstance(value, str) and re.match(r"^https?://[^\s/]+", value) is not None
    elif kind == "object":
        ok = isinstance(value, dict)
    else:
        ok = isinstance(value, list)
    if ok:
        return None
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    return f"must be {VARIABLE_TYPES[kind]}, got {shown}"


def _iso(value: str, kind: str) -> date | datetime | None:
    try:
        return datetime.fromisoformat(value) if kind == "datetime" else date.fromisoformat(value)
    except ValueError:
        return None


def variables_clean(value: Any) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    """The declaration in stored form (``required`` defaults to true, ``description`` to
    empty) and the errors keyed by variable name (``""`` for the whole)."""
    if value is None:
        return {}, {}
    if not isinstance(value, dict):
        return {}, {"": ["must be an object of variable name to its declaration"]}
    if len(value) > MAX_VARIABLES:
        return {}, {"": [f"at most {MAX_VARIABLES} variables, got {len(value)}"]}
    clean: dict[str, dict[str, Any]] = {}
    errors: dict[str, list[str]] = {}
    for name, spec in value.items():
        problems: list[str] = []
        if not isinstance(name, str) or not VARIABLE_NAME.match(name):
            problems.append("a name is letters, digits and _ (at most 64), not starting with a digit")
        if not isinstance(spec, dict):
            errors[str(name)] = ['must be an object such as {"type": "string", "required": true}']
            continue
        unknown = sorted(set(spec) - set(VARIABLE_FIELDS))
        if unknown:
            problems.append(
                f"unknown field(s) {', '.join(unknown)}; a variable has {', '.join(VARIABLE_FIELDS)}"
            )
        kind = spec.get("type")
        if not isinstance(kind, str) or kind not in VARIABLE_TYPES:
            problems.append(f"type must be one of {', '.join(VARIABLE_TYPES)}, got {kind!r}")
        required = spec.get("required", True)
        if not isinstance(required, bool):
            problems.append(f"required must be true or false, got {required!r}")
        description = spec.get("description", "")
        if not isinstance(description, str) or len(description) > 200:
            problems.append("description must be text of at most 200 characters")
        if "example" not in spec:
            problems.append("an example is required (previews and test sends render it)")
        elif (
            isinstance(kind, str)
            and kind in VARIABLE_TYPES
            and (problem := _type_problem(kind, spec["example"])) is not None
        ):
            problems.append(f"example {problem}")
        if problems:
            errors[str(name)] = problems
            continue
        clean[name] = {
            "type": kind,
            "required": required,
            "example": spec["example"],
            "description": description,
        }
    return clean, errors


def data_variables_errors(variables: dict[str, dict[str, Any]], data: Any) -> dict[str, list[str]]:
    """What an event's ``data`` breaks in the declaration, keyed ``data.<name>``."""
    if not variables:
        return {}
    if not isinstance(data, dict):
        return {"data": ["must be an object"]}
    errors: dict[str, list[str]] = {}
    for name, spec in variables.items():
        if name not in data or data[name] is None:
            if spec.get("required", True):
                errors[f"data.{name}"] = [
                    f"required by the template: {VARIABLE_TYPES.get(spec.get('type', ''), 'a value')}"
                ]
            continue
        problem = (
            _type_problem(spec.get("type", ""), data[name]) if spec.get("type") in VARIABLE_TYPES else None
        )
        if problem is not None:
            errors[f"data.{name}"] = [problem]
    return errors


def variables_example_data(variables: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Event data made of each variable's example."""
    return {name: spec.get("example") for name, spec in variables.items()}


def preview_context(
    variables: dict[str, dict[str, Any]], *, locale: str, timezone: str = "UTC", data: Any = None
) -> dict[str, Any]:
    """What a template renders with in a preview or a check: ``data`` (default: the
    examples), a sample recipient in ``locale``, an aggregate of one."""
    data = variables_example_data(variables) if data is None else data
    return {
        "data": data,
        "recipient": {
            "external_id": "preview",
            "name": "Ana Example",
            "locale": locale,
            "timezone": timezone,
        },
        "aggregate": aggregate_context(1, [data]),
    }


def templates_variables_errors(
    locales: dict[str, Any], variables: dict[str, dict[str, Any]]
) -> dict[str, list[str]]:
    """What templates (``{locale: {channel: {field: source}}}``) break in the declaration,
    keyed ``<locale>.<channel>.<field>``: a ``data`` name used and not declared, or a
    template that fails when rendered with the examples."""
    errors: dict[str, list[str]] = {}
    for locale, channels in locales.items():
        if not isinstance(channels, dict):
            continue
        context = preview_context(variables, locale=str(locale))
        for channel, content in channels.items():
            if not isinstance(content, dict):
                continue
            for field, source in content.items():
                if not isinstance(source, str):
                    continue
                where = f"{locale}.{channel}.{field}"
                try:
                    undeclared = sorted(template_data_names(source) - set(variables))
                except TemplateRenderError:
                    continue  # the template rules name it already
                if undeclared:
                    errors[where] = [
                        f"uses data.{name}, which the variables do not declare" for name in undeclared
                    ]
                    continue
                try:
                    template_render(
                        source=source, context=context, html=(channel == "email" and field == "html")
                    )
                except TemplateRenderError as exc:
                    errors[where] = [f"fails with the variables' examples: {exc}"]
    return errors
