"""The template language of notification types: Jinja2 in an immutable sandbox.

Attribute access to internals (``''.__class__``), ``|attr`` and mutation are refused, and
undefined variables fail loudly (a permanent delivery error, not an empty message).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


class TemplateRenderError(Exception):
    """A template could not be compiled or rendered; the message says why."""


def _environment(*, autoescape: bool) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=autoescape)
    # |attr reaches attributes by computed name, the usual way around sandbox checks.
    env.filters.pop("attr", None)
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


def template_uses_recipient(source: str) -> bool:
    """Whether output can differ per recipient (otherwise it is rendered once per event)."""
    return "recipient" in source
