"""Collaborative documents in admin: documents with their members, sizes and versions.

Content is edited only through the document sockets (every edit is a stored Yjs update),
so staff see a document's size and history here and manage who may edit it.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from collaboration.models import Document, DocumentMember, DocumentVersion


class MemberInline(admin.TabularInline):
    model = DocumentMember
    extra = 0
    autocomplete_fields = ("recipient",)
    fields = ("recipient", "role", "created_at")
    readonly_fields = ("created_at",)


class VersionInline(admin.TabularInline):
    model = DocumentVersion
    extra = 0
    fields = ("number", "kind", "name", "created_by", "created_at")
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Document)
class DocumentAdmin(admin.ModelAdmin):
    list_display = ("key", "title", "kind", "stored_bytes", "tail_updates", "updated_at")
    list_filter = ("kind",)
    search_fields = ("key", "title")
    ordering = ("-updated_at",)
    readonly_fields = ("stored_bytes", "tail_updates", "created_at", "updated_at")
    inlines = (MemberInline, VersionInline)
