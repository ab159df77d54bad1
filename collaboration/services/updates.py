"""A document's updates: stored before any peer hears of them, merged on load, compacted.

An update is checked (its size, and that Yjs can read it) and stored by one statement
that also adds its bytes to the document's count, so a document over its size limit is
refused without reading it and a refused update leaves nothing behind; one round trip to
PostgreSQL per stored batch (a socket's group commit, collaboration/consumers.py). Nothing of a
document is kept in a process's memory: its state is its snapshot merged with the updates
stored since, read in one statement (``document_state``), so any number of processes can
serve one document and a restart loses nothing that was acknowledged.

Compaction (``document_compact``) merges the stored updates into the snapshot and deletes
them, under the document row's lock, which every store takes too: an update stored while
a compaction runs waits for it and lands after its snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any, cast

from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.utils import timezone
from pycrdt import Doc, Text, XmlElement, XmlFragment, XmlText, get_state, get_update, merge_updates

from collaboration.models import Document, DocumentKind, DocumentSnapshot, DocumentUpdate
from collaboration.services import protocol
from collaboration.services.relay import relay_publish_sync
from notifications.services.queues import enqueue

# collaboration/tasks.py registers it under this name.
DOCUMENT_COMPACT = "collaboration.tasks.document_compact_task"

# The update of a document with nothing in it (no structs, no deletions).
EMPTY_UPDATE = b"\x00\x00"
# The shared type whose text the API serves (DESIGN: `content`, a Y.Text).
CONTENT = "content"


class UpdateRefused(Exception):
    """An update not stored; ``code`` is one of "too_large", "malformed", "document_full"."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        # Of a batch (updates_store): what was stored of the updates before the refused one.
        self.stored: Stored | None = None


@dataclass(frozen=True)
class Stored:
    update_id: int
    compaction_due: bool
    data: bytes  # what was stored: the update, or a batch's updates merged into one


def update_check(data: bytes) -> None:
    """Refuse an update that is too large or that Yjs cannot read."""
    limit = settings.COLLAB_UPDATE_MAX_BYTES
    if len(data) > limit:
        raise UpdateRefused(f"update of {len(data):,} bytes is over the {limit:,}-byte limit", "too_large")
    try:
        merge_updates(data, EMPTY_UPDATE)
    except ValueError:
        raise UpdateRefused("update is not a Yjs update", "malformed") from None


def update_store(*, document_id: int, data: bytes, recipient_id: int | None = None) -> Stored:
    """Store one update of the document (``UpdateRefused`` if it is refused; nothing is
    stored then). ``compaction_due`` says enough updates wait to be merged: a compaction
    is then enqueued, once per COLLAB_COMPACT_AFTER_UPDATES stored (if the broker loses
    it, the next such count asks again)."""
    return updates_store(document_id=document_id, updates=[data], recipient_id=recipient_id)


def _first_refused(updates: list[bytes]) -> tuple[int, UpdateRefused] | None:
    """The first update of a batch that is refused, with why; None when all are good. One
    merge checks them all at once; only a batch that fails it is checked one by one."""
    limit = settings.COLLAB_UPDATE_MAX_BYTES
    for index, data in enumerate(updates):
        if len(data) > limit:
            return index, UpdateRefused(
                f"update of {len(data):,} bytes is over the {limit:,}-byte limit", "too_large"
            )
    try:
        merge_updates(*updates, EMPTY_UPDATE)
        return None
    except ValueError:
        pass
    for index, data in enumerate(updates):
        try:
            update_check(data)
        except UpdateRefused as refused:
            return index, refused
    return None


def updates_store(*, document_id: int, updates: list[bytes], recipient_id: int | None = None) -> Stored:
    """Store a batch of one editor's updates, as they came one after the other, merged into
    one row in one transaction (``Stored.data``: the merged update, what peers are sent).
    A refused update (``UpdateRefused``) is stored with none after it; those before it
    are stored first. A document that would go over its size limit stores none of the
    batch."""
    refused = _first_refused(updates)
    good = updates if refused is None else updates[: refused[0]]
    stored = _store_merged(document_id, good, recipient_id) if good else None
    if refused is not None:
        refused[1].stored = stored
        raise refused[1]
    assert stored is not None
    return stored


@dataclass(frozen=True)
class Batch:
    """One socket's updates to store (``updates_store_many``)."""

    document_id: int
    updates: list[bytes]
    recipient_id: int | None = None


def updates_store_many(batches: list[Batch]) -> list[Stored | UpdateRefused]:
    """Store the batches of several sockets, of any documents, in one transaction: one
    commit (one WAL flush) for all of them. Each batch gets what ``updates_store`` would
    have returned or raised, in order. The documents' rows are locked in id order, so two
    processes storing at once cannot deadlock. An error of the database fails them all
    (nothing is stored; the sockets' clients send their edits again when they reconnect)."""
    results: dict[int, Stored | UpdateRefused] = {}
    order = sorted(range(len(batches)), key=lambda index: batches[index].document_id)
    # What Channels does before each message a consumer handles: a connection that broke
    # or outlived CONN_MAX_AGE is replaced rather than failing every group from now on
    # (never inside a caller's transaction: its connection must stay).
    if not connection.in_atomic_block:
        close_old_connections()
    with transaction.atomic():
        for index in order:
            batch = batches[index]
            try:
                results[index] = updates_store(
                    document_id=batch.document_id, updates=batch.updates, recipient_id=batch.recipient_id
                )
            except UpdateRefused as refused:
                results[index] = refused
    return [results[index] for index in range(len(batches))]


def _store_merged(document_id: int, updates: list[bytes], recipient_id: int | None) -> Stored:
    """One statement, atomic on its own (no BEGIN and COMMIT around it): the document's
    byte count grows only if it stays within its limit, and the update is inserted only
    then. One round trip per batch."""
    data = updates[0] if len(updates) == 1 else merge_updates(*updates)
    limit = settings.COLLAB_DOCUMENT_MAX_BYTES
    documents, stored = Document._meta.db_table, DocumentUpdate._meta.db_table
    now = timezone.now()
    with connection.cursor() as db:
        db.execute(
            f"""WITH counted AS (
                    UPDATE {documents}
                    SET stored_bytes = stored_bytes + %(size)s, tail_updates = tail_updates + 1,
                        updated_at = %(now)s
                    WHERE id = %(document)s AND stored_bytes + %(size)s <= %(limit)s
                    RETURNING id, tail_updates
                ), added AS (
                    INSERT INTO {stored} (document_id, data, recipient_id, created_at)
                    SELECT id, %(data)s, %(recipient)s, %(now)s FROM counted
                    RETURNING id
                )
                SELECT added.id, counted.tail_updates FROM added, counted""",
            {
                "size": len(data),
                "now": now,
                "document": document_id,
                "limit": limit,
                "data": data,
                "recipient": recipient_id,
            },
        )
        row = db.fetchone()
    if row is None:
        if not Document.objects.filter(id=document_id).exists():
            raise Document.DoesNotExist(f"document {document_id}")
        raise UpdateRefused(f"document is full: it may hold {limit:,} bytes", "document_full")
    update_id, tail = int(row[0]), int(row[1])
    every = settings.COLLAB_COMPACT_AFTER_UPDATES
    due = tail >= every
    if due and tail % every == 0:
        enqueue(DOCUMENT_COMPACT, args=(document_id,))
    return Stored(update_id, due, data)


def _stored_parts(document_id: int) -> tuple[list[bytes], int]:
    """The snapshot (if any) and every update stored after it, in order, read in one
    statement so that a compaction between two reads cannot hide updates; and the id of
    the last update among them (0 if none)."""
    snapshots, updates = DocumentSnapshot._meta.db_table, DocumentUpdate._meta.db_table
    with connection.cursor() as db:
        db.execute(
            f"""SELECT 0 AS part, data, upto_update_id AS n FROM {snapshots} WHERE document_id = %s
                UNION ALL
                SELECT 1, data, id FROM {updates}
                WHERE document_id = %s
                  AND id > COALESCE((SELECT upto_update_id FROM {snapshots} WHERE document_id = %s), 0)
                ORDER BY part, n""",
            [document_id, document_id, document_id],
        )
        rows = db.fetchall()
    last = max((int(n) for part, _, n in rows if part == 1), default=0)
    return [bytes(data) for _, data, _ in rows], last


def _merged(parts: list[bytes]) -> bytes:
    if not parts:
        return EMPTY_UPDATE
    return parts[0] if len(parts) == 1 else merge_updates(*parts)


def _squashed(parts: list[bytes]) -> bytes:
    """The parts applied to one document and encoded again: what a Yjs client would send
    of the same state. ``merge_updates`` only concatenates structs, so a snapshot built
    with it kept every keystroke's header and grew with the edits (3.4 MB against 365 KB
    for the benchmark's trace, docs/benchmarks.md P7) and loaded slowly."""
    doc: Doc[Any] = Doc()
    for part in parts:
        doc.apply_update(part)
    # An update waiting for one it depends on is left out of the encoding. Only an update
    # built on a refused one waits like that (what peers are sent is stored first), and no
    # client can show it either: it would wait for ever.
    return doc.get_update()


def document_state(document_id: int) -> bytes:
    """The whole document as one Yjs update."""
    parts, _ = _stored_parts(document_id)
    return _merged(parts)


def state_vector(state: bytes) -> bytes:
    """The state vector of a document state (what a sync step 1 sends)."""
    return get_state(state)


def state_missing(state: bytes, vector: bytes) -> bytes:
    """What a peer whose state vector is ``vector`` lacks of ``state`` (a sync step 2)."""
    return get_update(state, vector)


def document_compact(document_id: int) -> int:
    """Merge the document's stored updates into its snapshot and delete them; returns how
    many were merged (0 as well for a document deleted since the compaction was asked for)."""
    with transaction.atomic():
        if (
            Document.objects.select_for_update().filter(id=document_id).values_list("id", flat=True).first()
            is None
        ):
            return 0
        parts, last = _stored_parts(document_id)
        if last == 0:
            return 0
        merged = _squashed(parts)
        DocumentSnapshot.objects.update_or_create(
            document_id=document_id,
            defaults={"data": merged, "upto_update_id": last, "updated_at": timezone.now()},
        )
        merged_count, _ = DocumentUpdate.objects.filter(document_id=document_id, id__lte=last).delete()
        Document.objects.filter(id=document_id).update(stored_bytes=len(merged), tail_updates=0)
    return merged_count


def state_text(state: bytes, kind: str) -> str:
    """The plain text of a document state: the ``content`` Y.Text of a text document, the
    text of the ``content`` XmlFragment of a rich one (y-prosemirror's), a line per block."""
    doc: Doc[Any] = Doc()
    doc.apply_update(state)
    if kind == DocumentKind.TEXT:
        return str(doc.get(CONTENT, type=Text))
    lines: list[str] = []
    _block_lines(doc.get(CONTENT, type=XmlFragment), lines)
    return "\n".join(lines)


def _inline_text(node: XmlText) -> str:
    return "".join(chunk for chunk, _ in node.diff() if isinstance(chunk, str))


def _block_lines(node: XmlFragment | XmlElement, lines: list[str]) -> None:
    children = list(node.children)
    if isinstance(node, XmlElement) and any(isinstance(child, XmlText) for child in children):
        lines.append("".join(_inline_text(c) if isinstance(c, XmlText) else "" for c in children))
        return
    for child in children:
        if isinstance(child, XmlText):
            lines.append(_inline_text(child))
        else:
            _block_lines(child, lines)


def document_text(document_id: int, kind: str = DocumentKind.TEXT) -> str:
    """The plain text of the document's shared ``content``."""
    return state_text(document_state(document_id), kind)


def state_restoring(current: bytes, target: bytes, kind: str) -> bytes:
    """The update that turns the content of ``current`` into that of ``target`` as a new
    edit on top of ``current``: collaborators' documents move forward to it, nobody's
    history is rewound. Text: only the characters that differ change (a diff), so cursors
    and comments on unchanged text stay where they were. Rich: the blocks are replaced by
    copies of the target's."""
    doc: Doc[Any] = Doc()
    doc.apply_update(current)
    before = doc.get_state()
    old: Doc[Any] = Doc()
    old.apply_update(target)
    if kind == DocumentKind.TEXT:
        text, wanted = doc.get(CONTENT, type=Text), str(old.get(CONTENT, type=Text))
        have = str(text)
        with doc.transaction():
            opcodes = SequenceMatcher(None, have, wanted, autojunk=False).get_opcodes()
            for tag, i1, i2, j1, j2 in reversed(opcodes):
                if tag in ("replace", "delete"):
                    del text[i1:i2]
                if tag in ("replace", "insert"):
                    text.insert(i1, wanted[j1:j2])
    else:
        fragment, source = doc.get(CONTENT, type=XmlFragment), old.get(CONTENT, type=XmlFragment)
        with doc.transaction():
            while len(fragment.children):
                del fragment.children[0]
            for child in source.children:
                _copy_node(child, fragment)
    return doc.get_update(before)


def _copy_node(node: XmlElement | XmlText | XmlFragment, parent: XmlFragment | XmlElement) -> None:
    if isinstance(node, XmlFragment):
        return  # a fragment is only ever a root
    if isinstance(node, XmlText):
        copy = parent.children.append(XmlText())
        at = 0
        for chunk, attributes in node.diff():
            if isinstance(chunk, str):
                copy.insert(at, chunk, dict(attributes) if attributes else None)
                at += len(chunk)
        return
    # pycrdt types its attribute view's __iter__ as returning an Iterable, not an Iterator.
    element_attributes: dict[str, Any] = dict(cast(Any, node.attributes))
    element = parent.children.append(XmlElement(node.tag, element_attributes))
    for child in node.children:
        _copy_node(child, element)


def document_publish(document_id: int, data: bytes) -> None:
    """Tell the document's open sockets, on every process, of an update the server stored
    itself (a restore): once the transaction that stored it commits."""
    transaction.on_commit(lambda: relay_publish_sync(document_id, protocol.sync_update(data)))
