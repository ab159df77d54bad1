"""A document's history: named versions its editors save, automatic ones taken while it
is edited, and restore.

A version is a whole state of the document (one Yjs update), numbered per document.
Restoring one never rewinds anyone: the server computes the edit that turns today's
content into the version's (collaboration/services/updates.py ``state_restoring``),
stores it like any editor's update and sends it to the open sockets, so collaborators
keep working and the restore itself is one more step of the history. A named version
"Before restoring version N" is taken first, so a restore can be undone by restoring it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Max, OuterRef, Q, Subquery
from django.utils import timezone

from collaboration.models import Document, DocumentVersion, VersionKind
from collaboration.services.updates import (
    EMPTY_UPDATE,
    document_publish,
    document_state,
    state_restoring,
    update_store,
)
from notifications.services.validation import ValidationFailed

NAME_MAX = 200
# Documents given an automatic version per run of the periodic task, at most.
AUTO_BATCH = 500


class VersionNotFound(Exception):
    pass


def _locked(document_id: int) -> Document:
    """The document, its row locked until the transaction ends: numbers are taken and
    restores computed one at a time per document."""
    return Document.objects.select_for_update().get(id=document_id)


def _next_number(document_id: int) -> int:
    last = DocumentVersion.objects.filter(document_id=document_id).aggregate(n=Max("number"))["n"]
    return int(last or 0) + 1


def version_create(*, document_id: int, name: Any, recipient_id: int | None = None) -> DocumentVersion:
    """Save the document as it is now under a name (``ValidationFailed`` naming ``name``)."""
    if not isinstance(name, str) or not name.strip() or len(name) > NAME_MAX:
        raise ValidationFailed({"name": [f"required: a name of 1 to {NAME_MAX} characters"]})
    with transaction.atomic():
        _locked(document_id)
        return DocumentVersion.objects.create(
            document_id=document_id,
            number=_next_number(document_id),
            kind=VersionKind.NAMED,
            name=name.strip(),
            data=document_state(document_id),
            created_by_id=recipient_id,
        )


def version_auto_take(document_id: int) -> DocumentVersion | None:
    """An automatic version of the document if it changed since its last version and that
    one is older than COLLAB_AUTO_VERSION_SECONDS; None otherwise. The oldest automatic
    versions past COLLAB_AUTO_VERSIONS_KEPT are dropped (named ones are kept)."""
    with transaction.atomic():
        try:
            _locked(document_id)
        except Document.DoesNotExist:
            return None
        last = DocumentVersion.objects.filter(document_id=document_id).order_by("-number").first()
        horizon = timezone.now() - timedelta(seconds=settings.COLLAB_AUTO_VERSION_SECONDS)
        if last is not None and last.created_at > horizon:
            return None
        state = document_state(document_id)
        if state == EMPTY_UPDATE or (last is not None and bytes(last.data) == state):
            return None
        version = DocumentVersion.objects.create(
            document_id=document_id,
            number=_next_number(document_id),
            kind=VersionKind.AUTO,
            name="",
            data=state,
        )
        stale = DocumentVersion.objects.filter(document_id=document_id, kind=VersionKind.AUTO).order_by(
            "-number"
        )[settings.COLLAB_AUTO_VERSIONS_KEPT :]
        DocumentVersion.objects.filter(id__in=list(stale.values_list("id", flat=True))).delete()
    return version


def versions_auto_due() -> list[int]:
    """Documents edited since their last version was taken, that version (if any) being
    older than COLLAB_AUTO_VERSION_SECONDS: the ones an automatic version is due for."""
    horizon = timezone.now() - timedelta(seconds=settings.COLLAB_AUTO_VERSION_SECONDS)
    latest = (
        DocumentVersion.objects.filter(document_id=OuterRef("id")).order_by("-number").values("created_at")
    )
    rows = (
        Document.objects.filter(stored_bytes__gt=0)
        .annotate(last_version_at=Subquery(latest[:1]))
        .filter(
            Q(last_version_at__isnull=True)
            | Q(last_version_at__lt=horizon, updated_at__gt=F("last_version_at"))
        )
        .values_list("id", flat=True)[:AUTO_BATCH]
    )
    return list(rows)


def version_restore(*, document_id: int, number: int, recipient_id: int | None) -> DocumentVersion:
    """Make the document's content that of version ``number`` again, as a new edit sent to
    every open socket; returns the version saved just before ("Before restoring ...")."""
    with transaction.atomic():
        document = _locked(document_id)
        target = DocumentVersion.objects.filter(document_id=document_id, number=number).first()
        if target is None:
            raise VersionNotFound(f"document {document.key} has no version {number}")
        current = document_state(document_id)
        before = DocumentVersion.objects.create(
            document_id=document_id,
            number=_next_number(document_id),
            kind=VersionKind.NAMED,
            name=f"Before restoring version {number}",
            data=current,
            created_by_id=recipient_id,
        )
        update = state_restoring(current, bytes(target.data), document.kind)
        if update != EMPTY_UPDATE:
            update_store(document_id=document_id, data=update, recipient_id=recipient_id)
            document_publish(document_id, update)
    return before
