"""Reads of collaborative documents for the interfaces (consumers, API views, admin)."""

from __future__ import annotations

from collaboration.models import Document, DocumentComment, DocumentMember, DocumentVersion


def document_by_key(key: str) -> Document | None:
    return Document.objects.filter(key=key).first()


def member_role(*, document_id: int, recipient_id: int) -> str | None:
    """The recipient's role in the document, or None when they are not a member."""
    return (
        DocumentMember.objects.filter(document_id=document_id, recipient_id=recipient_id)
        .values_list("role", flat=True)
        .first()
    )


def documents_of(*, recipient_id: int | None, limit: int) -> list[Document]:
    """The documents a recipient is a member of (None: every document), newest edit first."""
    rows = Document.objects.order_by("-updated_at", "-id")
    if recipient_id is not None:
        rows = rows.filter(members__recipient_id=recipient_id)
    return list(rows[:limit])


def members_of(document_ids: list[int]) -> dict[int, list[dict[str, str]]]:
    """Each document's members as ``{"recipient", "name", "role"}``, owners first."""
    order = {"owner": 0, "editor": 1, "viewer": 2}
    found: dict[int, list[dict[str, str]]] = {document_id: [] for document_id in document_ids}
    rows = DocumentMember.objects.filter(document_id__in=document_ids).values_list(
        "document_id", "recipient__external_id", "recipient__name", "role"
    )
    for document_id, external_id, name, role in rows:
        found[document_id].append({"recipient": external_id, "name": name or "", "role": role})
    for members in found.values():
        members.sort(key=lambda m: (order.get(m["role"], 3), m["recipient"]))
    return found


def versions_of(document_id: int) -> list[DocumentVersion]:
    """The document's versions, newest first, without their data."""
    return list(
        DocumentVersion.objects.filter(document_id=document_id)
        .defer("data")
        .select_related("created_by")
        .order_by("-number")
    )


def version_of(document_id: int, number: int) -> DocumentVersion | None:
    return (
        DocumentVersion.objects.filter(document_id=document_id, number=number)
        .select_related("created_by")
        .first()
    )


def comments_of(document_id: int) -> list[DocumentComment]:
    """The document's comments (threads and replies), oldest first, with their authors."""
    return list(
        DocumentComment.objects.filter(document_id=document_id)
        .select_related("author", "resolved_by")
        .order_by("id")
    )


def comment_of(document_id: int, comment_id: int) -> DocumentComment | None:
    return DocumentComment.objects.filter(document_id=document_id, id=comment_id).first()
