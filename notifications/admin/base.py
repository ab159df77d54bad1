"""What every admin module of the app shares: the changelist defaults for tables that grow
with traffic, the view-only base for rows the pipeline owns, and small parsers and links.

Tables that grow with traffic never run an unbounded ``COUNT(*)`` or a text scan to render
a page: see ``CappedCountPaginator`` and the exact-match searches of each module. Rows the
pipeline owns (events, outbox, deliveries, attempts, inbox) are view-only: their state
changes go through services with compare-and-set rules that a form save would bypass.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Any, cast

from django import forms
from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Model, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.functional import cached_property
from django.utils.html import format_html


class CappedCountPaginator(Paginator):
    """Counts at most ``count_cap`` rows, so a changelist over millions of rows costs a
    bounded ``SELECT COUNT(*) FROM (... LIMIT cap + 1)`` instead of a full scan.

    ``count`` never exceeds the cap; ``is_capped`` tells the pagination template to show
    "10000+" rather than a false total. Pages past the cap are not reachable: staff narrow
    such lists with filters or search instead of paging to row five million."""

    count_cap = 10_000

    @cached_property
    def _bounded_count(self) -> int:
        # Admin changelists always paginate a QuerySet.
        return cast("QuerySet[Any]", self.object_list)[: self.count_cap + 1].count()

    @cached_property
    def count(self) -> int:
        return min(self._bounded_count, self.count_cap)

    @property
    def is_capped(self) -> bool:
        return self._bounded_count > self.count_cap


def parse_uuid(term: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(term.strip())
    except ValueError:
        return None


def delivery_admin_link(delivery_id: int) -> str:
    url = reverse("admin:notifications_delivery_change", args=[delivery_id])
    return format_html('<a href="{}">{}</a>', url, delivery_id)


class ReadOnlyInline(admin.TabularInline):
    """History rows shown under their parent, never edited there."""

    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ProviderFilter(admin.SimpleListFilter):
    """The configured providers. Django's default filter on a plain text column runs a
    ``SELECT DISTINCT`` over the whole table on every page; the settings know the names."""

    title = "provider"
    parameter_name = "provider"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(name, name) for name in settings.PROVIDERS]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(provider=self.value()) if self.value() else queryset


class TimestampSetFilter(admin.SimpleListFilter):
    """Rows by whether a timestamp column is set (replayed, processed, read, revoked).
    Subclasses name the column and the two choices, each (URL value, label), in the order
    the sidebar lists them."""

    field: str
    unset: tuple[str, str]
    set: tuple[str, str]
    set_first = False

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [self.set, self.unset] if self.set_first else [self.unset, self.set]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == self.unset[0]:
            return queryset.filter(**{f"{self.field}__isnull": True})
        if self.value() == self.set[0]:
            return queryset.filter(**{f"{self.field}__isnull": False})
        return queryset


class BigTableAdmin(admin.ModelAdmin):
    """Defaults for tables that grow with traffic: no full counts, no facet counts."""

    paginator = CappedCountPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    list_per_page = 100


class ReadOnlyAdmin(admin.ModelAdmin):
    """View-only: rows are written by services, never by a form."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class PipelineOwnedAdmin(ReadOnlyAdmin, BigTableAdmin):
    """View-only: rows are written by the pipeline's services, never by a form."""


def status_badge_html(colour: str, label: str) -> str:
    """A status as a coloured pill, for list and change pages."""
    return format_html(
        '<span class="status-badge" style="background:{};color:#fff;padding:.1em .6em;border-radius:1em">{}</span>',
        colour,
        label,
    )


def page_context(request: HttpRequest, model_admin: admin.ModelAdmin, title: str) -> dict[str, Any]:
    """The context an admin page of ``model_admin`` needs besides its own: the site's
    header, sidebar and breadcrumbs, which read ``opts``."""
    return {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.model._meta,
        "title": title,
    }


def require_view(request: HttpRequest, model_admin: admin.ModelAdmin) -> None:
    """Raises PermissionDenied unless the user may view the model's rows."""
    if not model_admin.has_view_permission(request):
        raise PermissionDenied


def parse_id(term: str) -> int | None:
    """A bigint primary key, or None: a text term must never reach an integer column."""
    term = term.strip()
    return int(term) if re.fullmatch(r"\d{1,18}", term) else None


# --- Saving through the services ----------------------------------------------------------


def adopt_stored_row(obj: Model, stored: Model) -> None:
    """Make ``obj``, the instance the admin built from its form, the row a service stored:
    the admin goes on to log, redirect and save inlines with ``obj``."""
    for field in stored._meta.concrete_fields:
        setattr(obj, field.attname, getattr(stored, field.attname))
    obj._state.adding = False
    obj._state.db = stored._state.db


def refusal_lines(errors: Mapping[str, Any], prefix: str = "") -> list[str]:
    """A service's errors as "key: message" lines, nested keys joined with dots the way the
    API's error paths read ("templates.sms.text: ..."); the key "" stands for the value
    itself, so its messages carry only the prefix."""
    lines: list[str] = []
    for key, value in errors.items():
        where = ".".join(part for part in (prefix, key) if part)
        if isinstance(value, Mapping):
            lines += refusal_lines(value, where)
        else:
            lines += [f"{where}: {message}" if where else str(message) for message in value]
    return lines


def show_refusal(form: forms.BaseForm, errors: Mapping[str, Any], *, rename: Mapping[str, str] = {}) -> None:
    """Show a service's errors (``{field: [message]}``, as ValidationFailed carries them)
    beside the form's fields, in the service's words. ``rename`` maps a service's field to
    the form's where their names differ; an error of no form field is shown on the form as
    a whole, as "field: message". A field the form itself already refused keeps only that
    error: the service judged a value the form had not accepted."""
    for key, value in errors.items():
        field = rename.get(key, key)
        if field in form.fields and not isinstance(value, Mapping):
            if field not in form.errors:
                for message in value:
                    form.add_error(field, message)
        else:
            for line in refusal_lines({key: value}):
                form.add_error(None, line)
