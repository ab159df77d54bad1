"""A document's updates: stored before anyone hears of them, refused whole, merged on
load, compacted without losing an edit."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest
from asgiref.sync import async_to_sync
from django.db import connections
from pycrdt import Doc, Text

from collaboration.models import Document, DocumentSnapshot, DocumentUpdate
from collaboration.services.updates import (
    EMPTY_UPDATE,
    Batch,
    Stored,
    UpdateRefused,
    document_compact,
    document_state,
    document_text,
    state_missing,
    state_vector,
    update_store,
    updates_store_many,
)
from collaboration.services.writer import writer

pytestmark = pytest.mark.django_db


class Editor:
    """A Yjs client's document: each edit gives the update it would send."""

    def __init__(self) -> None:
        self.doc: Doc = Doc()
        self.text = self.doc.get("content", type=Text)

    def edit(self, at: int, value: str) -> bytes:
        before = self.doc.get_state()
        self.text.insert(at, value)
        return self.doc.get_update(before)

    def receive(self, update: bytes) -> None:
        self.doc.apply_update(update)


@pytest.fixture
def document() -> Document:
    return Document.objects.create(key="notes")


def test_two_editors_concurrent_edits_merge_into_one_text(document):
    # given two editors who both start from the empty document
    ana, bob = Editor(), Editor()

    # when each types without having seen the other's edit, and both updates are stored
    update_store(document_id=document.id, data=ana.edit(0, "Hello "))
    update_store(document_id=document.id, data=bob.edit(0, "world"))

    # then the stored document holds both, and each editor converges on it
    state = document_state(document.id)
    for editor in (ana, bob):
        editor.receive(state)
    assert str(ana.text) == str(bob.text) == document_text(document.id)
    # (concurrent inserts at one place are ordered by the editors' client ids)
    assert document_text(document.id) in ("Hello world", "worldHello ")


def test_a_peer_gets_only_what_its_state_vector_lacks(document):
    ana = Editor()
    first = ana.edit(0, "a" * 500)
    update_store(document_id=document.id, data=first)
    late = Editor()
    late.receive(first)

    update_store(document_id=document.id, data=ana.edit(500, "b"))
    missing = state_missing(document_state(document.id), late.doc.get_state())

    assert len(missing) < len(first) / 10, "only the one new character, not the whole document"
    late.receive(missing)
    assert str(late.text) == "a" * 500 + "b"


def test_an_empty_document_loads_as_the_empty_update(document):
    assert document_state(document.id) == EMPTY_UPDATE
    assert state_vector(EMPTY_UPDATE) == b"\x00"
    assert document_text(document.id) == ""


@pytest.mark.parametrize(
    ("data", "code"),
    [(b"not a yjs update", "malformed"), (b"", "malformed"), (b"\x00" * 5000, "too_large")],
    ids=["garbage", "empty", "too-large"],
)
def test_it_refuses_a_bad_update_and_stores_nothing(document, settings, data, code):
    settings.COLLAB_UPDATE_MAX_BYTES = 4096

    with pytest.raises(UpdateRefused) as refused:
        update_store(document_id=document.id, data=data)

    assert refused.value.code == code
    document.refresh_from_db()
    assert (document.stored_bytes, document.tail_updates) == (0, 0)
    assert not DocumentUpdate.objects.exists()


def test_it_refuses_an_update_that_would_take_the_document_over_its_limit(document, settings):
    settings.COLLAB_DOCUMENT_MAX_BYTES = 4096
    ana = Editor()
    update_store(document_id=document.id, data=ana.edit(0, "x" * 3000))

    with pytest.raises(UpdateRefused) as refused:
        update_store(document_id=document.id, data=ana.edit(0, "y" * 2000))

    assert refused.value.code == "document_full"
    assert "4,096 bytes" in refused.value.message
    assert DocumentUpdate.objects.count() == 1
    assert document_text(document.id) == "x" * 3000


def test_compaction_merges_the_updates_into_one_snapshot_and_loses_nothing(document):
    # given a hundred one-character edits
    ana = Editor()
    for i in range(100):
        update_store(document_id=document.id, data=ana.edit(i, "abcdefghij"[i % 10]))
    before = document_text(document.id)
    bytes_before = Document.objects.get(id=document.id).stored_bytes

    # when the document is compacted
    merged = document_compact(document.id)

    # then one snapshot holds them, no update is left, the text is the same and smaller
    assert merged == 100
    assert not DocumentUpdate.objects.filter(document=document).exists()
    snapshot = DocumentSnapshot.objects.get(document=document)
    document.refresh_from_db()
    assert document.stored_bytes == len(bytes(snapshot.data)) < bytes_before
    assert document.tail_updates == 0
    assert document_text(document.id) == before == str(ana.text)
    # and later edits land after the snapshot
    update_store(document_id=document.id, data=ana.edit(0, "!"))
    assert document_text(document.id) == "!" + before
    assert document_compact(document.id) == 1 and document_compact(document.id) == 0


def test_a_compaction_of_a_document_deleted_since_it_was_asked_for_does_nothing(document):
    document_id = document.id
    document.delete()
    assert document_compact(document_id) == 0


def test_a_compaction_is_enqueued_once_enough_updates_wait(document, settings):
    # given a document compacted after every 10 updates (tasks run at once in tests)
    settings.COLLAB_COMPACT_AFTER_UPDATES = 10
    ana = Editor()

    # when 9 updates are stored, none is merged; the tenth makes it due and merges all ten
    stored = [update_store(document_id=document.id, data=ana.edit(i, "x")) for i in range(10)]
    assert [s.compaction_due for s in stored] == [False] * 9 + [True]
    assert DocumentSnapshot.objects.filter(document=document).exists()
    assert not DocumentUpdate.objects.filter(document=document).exists()

    # then the document reads the same, and the count starts again
    update_store(document_id=document.id, data=ana.edit(10, "y"))
    document.refresh_from_db()
    assert document.tail_updates == 1
    assert document_text(document.id) == "x" * 10 + "y"


@pytest.mark.django_db(transaction=True)
def test_edits_stored_while_compactions_run_are_all_kept_and_every_read_is_whole(document):
    # given an editor storing edits while one thread compacts over and over and another
    # loads the document over and over
    ana = Editor()
    updates = [ana.edit(i, "x") for i in range(200)]
    done = threading.Event()
    failures: list[BaseException] = []
    lengths: list[int] = []

    def loop(work: Callable[[], object]) -> None:
        try:
            while not done.is_set():
                work()
        except BaseException as error:  # noqa: BLE001 - reported by the test
            failures.append(error)
        finally:
            connections.close_all()

    threads = [
        threading.Thread(target=loop, args=(lambda: document_compact(document.id),)),
        threading.Thread(target=loop, args=(lambda: lengths.append(len(document_text(document.id))),)),
    ]
    for thread in threads:
        thread.start()
    try:
        for update in updates:
            update_store(document_id=document.id, data=update)
    finally:
        done.set()
        for thread in threads:
            thread.join(30)

    # then no edit is lost, no load ever saw fewer edits than one before it did
    assert not failures
    assert document_text(document.id) == "x" * 200
    assert lengths and lengths == sorted(lengths), "a load missed updates a compaction was moving"
    # and the bytes counted are the bytes held
    document.refresh_from_db()
    snapshot = DocumentSnapshot.objects.filter(document=document).first()
    held = len(bytes(snapshot.data)) if snapshot else 0
    held += sum(len(bytes(u.data)) for u in DocumentUpdate.objects.filter(document=document))
    assert document.stored_bytes == held


def test_several_sockets_batches_are_stored_in_one_transaction_each_with_its_result(document, settings):
    settings.COLLAB_DOCUMENT_MAX_BYTES = 4096
    other, full = Document.objects.create(key="other"), Document.objects.create(key="full", stored_bytes=4096)
    ana, bob, cy = Editor(), Editor(), Editor()
    batches = [
        Batch(document.id, [ana.edit(0, "a"), ana.edit(1, "b")]),
        Batch(full.id, [cy.edit(0, "no room")]),
        Batch(other.id, [bob.edit(0, "x")]),
        Batch(document.id, [b"not yjs"]),
    ]

    results = updates_store_many(batches)

    assert isinstance(results[0], Stored) and isinstance(results[2], Stored)
    assert isinstance(results[1], UpdateRefused) and results[1].code == "document_full"
    assert isinstance(results[3], UpdateRefused) and results[3].code == "malformed"
    assert (document_text(document.id), document_text(other.id), document_text(full.id)) == ("ab", "x", "")
    # one row per socket's batch: its updates merged
    assert DocumentUpdate.objects.filter(document=document).count() == 1


def test_the_process_writer_hands_each_socket_its_own_result(document):
    ana = Editor()

    async def scenario() -> tuple[Stored | BaseException, ...]:
        shared = writer()
        return await asyncio.gather(
            shared.store(Batch(document.id, [ana.edit(0, "one ")])),
            shared.store(Batch(document.id, [ana.edit(4, "two")])),
            shared.store(Batch(document.id, [b"junk"])),
            return_exceptions=True,
        )

    first, second, third = async_to_sync(scenario)()

    assert isinstance(first, Stored) and isinstance(second, Stored)
    assert isinstance(third, UpdateRefused)
    assert document_text(document.id) == "one two"


def test_a_compacted_snapshot_is_as_small_as_a_yjs_clients_own_encoding(document):
    ana = Editor()
    for n in range(300):
        update_store(document_id=document.id, data=ana.edit(n, "x"))

    document_compact(document.id)

    snapshot = bytes(DocumentSnapshot.objects.get(document=document).data)
    assert len(snapshot) == len(ana.doc.get_update())
    assert document_text(document.id) == "x" * 300
