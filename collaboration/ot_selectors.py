"""Reads of the server-ordered OT mode (collaboration/services/ot.py): a document's OT text
and version, and the operations it accepted, for the OT socket (collaboration/ot_consumers.py)
and for the service itself."""

from __future__ import annotations

from typing import Any, NamedTuple

from collaboration.models import Document, DocumentOperation


class OtState(NamedTuple):
    version: int
    text: str


class StoredOperation(NamedTuple):
    """An accepted operation as the server transformed it: applying the operations of
    versions 1 to n in order to the empty text gives the text at version n."""

    version: int
    op: list[Any]
    client_id: str
    client_seq: int
    recipient_id: int | None


def ot_state(document_id: int) -> OtState:
    """The document's OT version and text (``Document.DoesNotExist`` if there is none)."""
    version, text = Document.objects.values_list("ot_version", "ot_text").get(id=document_id)
    return OtState(version, text)


def ot_version(document_id: int) -> int | None:
    """The document's OT version, without its text; None if there is no such document."""
    return Document.objects.filter(id=document_id).values_list("ot_version", flat=True).first()


def ot_operations_since(document_id: int, version: int, *, upto: int | None = None) -> list[StoredOperation]:
    """The operations accepted after ``version`` (and up to ``upto``, when given), in
    version order. Nothing trims operations yet, so they are all there; a caller that
    needs a run without holes compares the count with the versions it asked for."""
    rows = DocumentOperation.objects.filter(document_id=document_id, version__gt=version)
    if upto is not None:
        rows = rows.filter(version__lte=upto)
    return [
        StoredOperation(*row)
        for row in rows.order_by("version").values_list(
            "version", "op", "client_id", "client_seq", "recipient_id"
        )
    ]
