"""Cursor pages of the v1 listings, and how they are documented."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DataError
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request

from notifications.api.common import query

PAGE_SIZE_MAX = 1000


class Pagination(CursorPagination):
    """Cursor pages. A page size out of range is a 400 naming it; a cursor that names no
    page (made up, or from another listing) is a 404, as DRF answers it."""

    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = PAGE_SIZE_MAX

    def get_page_size(self, request: Request) -> int:
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None or raw == "":
            return self.page_size
        if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= PAGE_SIZE_MAX:
            raise serializers.ValidationError(
                {"page_size": [f"must be a whole number from 1 to {PAGE_SIZE_MAX}, got {raw!r}"]}
            )
        return int(raw)

    def paginate_queryset(self, queryset: Any, request: Request, view: Any = None) -> list[Any] | None:
        try:
            return super().paginate_queryset(queryset, request, view)
        except (DjangoValidationError, ValueError, DataError) as exc:
            # A forged cursor position that the ordering column cannot hold.
            raise NotFound(self.invalid_cursor_message) from exc


PAGE_PARAMETERS = [
    query(
        "page_size",
        {"type": "integer", "minimum": 1, "maximum": PAGE_SIZE_MAX},
        "Items per page, default 100",
        blank=True,
    ),
    query(
        "cursor",
        {"type": "string"},
        "The `next` or `previous` link's cursor; one that names no page is a 404",
    ),
]


def page_of(name: str, item: serializers.Serializer) -> serializers.Serializer:
    """The documented shape of a cursor page of ``item``."""

    page = type(
        name,
        (serializers.Serializer,),
        {
            "next": serializers.URLField(allow_null=True),
            "previous": serializers.URLField(allow_null=True),
            "results": item,
        },
    )
    return page()
