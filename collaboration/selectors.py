"""Reads of collaborative documents for the interfaces (consumers, API views, admin)."""

from __future__ import annotations

from collaboration.models import Document, DocumentMember


def document_by_key(key: str) -> Document | None:
    return Document.objects.filter(key=key).first()


def member_role(*, document_id: int, recipient_id: int) -> str | None:
    """The recipient's role in the document, or None when they are not a member."""
    return (
        DocumentMember.objects.filter(document_id=document_id, recipient_id=recipient_id)
        .values_list("role", flat=True)
        .first()
    )
