"""Automatic versions: taken of documents edited since their last version once that one is
old enough, never twice of the same state, the oldest automatic ones dropped; a restore of
a rich document brings its blocks back with their formatting."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from pycrdt import Doc, Text, XmlElement, XmlFragment, XmlText

from collaboration.models import Document, DocumentVersion
from collaboration.services.documents import document_create
from collaboration.services.updates import document_state, document_text, update_store
from collaboration.services.versions import (
    version_auto_take,
    version_create,
    version_restore,
    versions_auto_due,
)
from collaboration.tasks import versions_auto_task

pytestmark = pytest.mark.django_db


def _append(document: Document, words: str) -> None:
    doc: Doc[Any] = Doc()
    doc.apply_update(document_state(document.id))
    before = doc.get_state()
    text = doc.get("content", type=Text)
    text.insert(len(text), words)
    update_store(document_id=document.id, data=doc.get_update(before))


def _age_versions(document: Document, seconds: float) -> None:
    DocumentVersion.objects.filter(document=document).update(
        created_at=timezone.now() - timedelta(seconds=seconds)
    )


def test_an_edited_document_gets_an_automatic_version_once_per_interval(settings: Any) -> None:
    settings.COLLAB_AUTO_VERSION_SECONDS = 600
    edited, untouched = (
        document_create(key="edited", kind="text"),
        document_create(key="untouched", kind="text"),
    )
    _append(edited, "first words")

    assert versions_auto_due() == [edited.id]
    assert versions_auto_task() == 1
    assert versions_auto_due() == []  # its last version is recent
    _append(edited, ", more")
    assert version_auto_take(edited.id) is None  # still within the interval
    _age_versions(edited, 601)
    assert versions_auto_due() == [edited.id]
    assert version_auto_take(edited.id) is not None
    numbers = list(DocumentVersion.objects.filter(document=edited).values_list("number", "kind"))
    assert numbers == [(1, "auto"), (2, "auto")]
    assert not DocumentVersion.objects.filter(document=untouched).exists()


def test_an_unchanged_document_gets_no_second_automatic_version(settings: Any) -> None:
    settings.COLLAB_AUTO_VERSION_SECONDS = 60
    document = document_create(key="still", kind="text")
    _append(document, "same")
    version_create(document_id=document.id, name="Mine")
    _age_versions(document, 120)

    assert version_auto_take(document.id) is None


def test_only_the_latest_automatic_versions_are_kept_and_named_ones_stay(settings: Any) -> None:
    settings.COLLAB_AUTO_VERSION_SECONDS = 1
    settings.COLLAB_AUTO_VERSIONS_KEPT = 2
    document = document_create(key="busy", kind="text")
    _append(document, "a")
    version_create(document_id=document.id, name="Named")
    for words in "bcd":
        _append(document, words)
        _age_versions(document, 5)
        assert version_auto_take(document.id) is not None

    kept = list(
        DocumentVersion.objects.filter(document=document).order_by("number").values_list("number", "kind")
    )
    assert kept == [(1, "named"), (3, "auto"), (4, "auto")]


def test_restoring_a_rich_version_brings_back_its_blocks_and_formatting() -> None:
    document = document_create(key="rich", kind="rich")
    doc: Doc[Any] = Doc()
    fragment = doc.get("content", type=XmlFragment)
    heading = fragment.children.append(XmlElement("heading", {"level": "2"}))
    heading.children.append(XmlText("Title"))
    paragraph = fragment.children.append(XmlElement("paragraph"))
    words = paragraph.children.append(XmlText())
    words.insert(0, "plain ")
    words.insert(6, "bold", {"bold": {}})
    update_store(document_id=document.id, data=doc.get_update())
    version_create(document_id=document.id, name="Good")
    before = doc.get_state()
    del fragment.children[0]
    update_store(document_id=document.id, data=doc.get_update(before))
    assert document_text(document.id, "rich") == "plain bold"

    version_restore(document_id=document.id, number=1, recipient_id=None)

    restored: Doc[Any] = Doc()
    restored.apply_update(document_state(document.id))
    assert str(restored.get("content", type=XmlFragment)) == (
        '<heading level="2">Title</heading><paragraph>plain <bold>bold</bold></paragraph>'
    )
