"""The server-ordered OT mode: plain text edited by operational transformation, the server
putting every operation in one order, as ShareDB does (``/ws/docs/{key}/ot``,
collaboration/ot_consumers.py). It is kept apart from the CRDT content of the document
(``Document.ot_text``), the mode being there to compare the two approaches.

**The text type** is ShareDB's "text" type (ottypes/text), counted in Unicode code points
(a Python ``str``'s characters; a JavaScript client counts with ``Array.from(text)``, not
``text.length``). An operation is a list of components walked over the text from its start:

- a positive integer ``n``: retain (skip) n characters;
- a non-empty string: insert it;
- ``{"d": n}``, n positive: delete n characters.

Characters after the last component are kept. An operation is normalized: no empty
component, no two components of one kind in a row, no trailing retain (``op_normalize``
makes one so); ``op_check`` refuses anything else with an error naming the component.

**The server ordering** (``ot_submit``): a client sends an operation made on the text at
version ``base_version``; under the document row's lock the server transforms it against
every operation it accepted since, in order, applies it, stores it as the next version and
answers with that version and the operation as transformed. When two inserts land at one
place, the operation being submitted goes first ("left"); a client transforms an operation
it has not had acknowledged against one the server relays the same way (its own "left",
the relayed one "right"), so every copy converges (``transform`` satisfies TP1).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from collaboration import ot_selectors
from collaboration.models import Document, DocumentKind, DocumentOperation

Component = int | str | dict[str, int]
Op = list[Component]
Side = Literal["left", "right"]

# client_id is a CharField of this length; client_seq a PositiveIntegerField (PostgreSQL integer).
CLIENT_ID_MAX = 64
CLIENT_SEQ_MAX = 2**31 - 1

# PostgreSQL text holds no NUL, and a lone surrogate (half of a JavaScript UTF-16 pair) is
# not a character: neither could be stored.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class OtRefused(Exception):
    """An operation not accepted; ``field`` names what was wrong ("op", "version",
    "client", "document"), ``message`` says how, naming the component when it is one."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class OpInvalid(OtRefused):
    """An operation that is not a normalized text operation, or that does not fit the text
    it is applied to: ``message`` starts with the component, e.g. "op[2]: ..."."""

    def __init__(self, message: str) -> None:
        super().__init__("op", message)


# --- the text type ------------------------------------------------------------------------


def _kind(component: Any) -> str:
    """'retain', 'insert' or 'delete' of a well-formed component."""
    if isinstance(component, int):
        return "retain"
    return "insert" if isinstance(component, str) else "delete"


def _component_problem(component: Any) -> str | None:
    if isinstance(component, bool):
        return f"expected a component, got {json.dumps(component)}"
    if isinstance(component, int):
        return None if component > 0 else f"a retain must be a positive integer, got {component}"
    if isinstance(component, str):
        if not component:
            return "an insert must be a non-empty string"
        if unstorable := _UNSTORABLE.search(component):
            return (
                f"an insert may not hold U+{ord(unstorable.group()):04X} "
                "(send whole characters: code points, not UTF-16 halves; no NUL)"
            )
        return None
    if isinstance(component, dict):
        if set(component) != {"d"}:
            return f'a delete is {{"d": n}}, got the keys {sorted(component)}'
        count = component["d"]
        if isinstance(count, bool) or not isinstance(count, int) or count <= 0:
            return f'a delete is {{"d": n}} with n a positive integer, got {json.dumps(count)}'
        return None
    return (
        f"unknown component {json.dumps(component)[:60]}: expected a positive integer (retain), "
        'a non-empty string (insert) or {"d": n} (delete)'
    )


def op_check(op: Any, length: int | None = None) -> None:
    """Refuse (``OpInvalid``) anything but a normalized text operation, and, when the text's
    ``length`` (in code points) is given, one that retains or deletes past its end."""
    if not isinstance(op, list):
        raise OpInvalid(f"op: must be a list of components, got {type(op).__name__}")
    position = 0
    previous = ""
    for index, component in enumerate(op):
        if problem := _component_problem(component):
            raise OpInvalid(f"op[{index}]: {problem}")
        kind = _kind(component)
        if kind == previous:
            raise OpInvalid(f"op[{index}]: not normalized: two {kind}s in a row (combine them)")
        previous = kind
        if kind == "insert":
            continue
        position += component if isinstance(component, int) else component["d"]
        if length is not None and position > length:
            raise OpInvalid(
                f"op[{index}]: {kind} past the end of the text ({position} > {length} characters)"
            )
    if previous == "retain":
        raise OpInvalid(f"op[{len(op) - 1}]: not normalized: a trailing retain does nothing (drop it)")


def op_length_change(op: Op) -> int:
    """How many characters the (valid) operation adds to the text (negative: removes)."""
    change = 0
    for component in op:
        if isinstance(component, str):
            change += len(component)
        elif isinstance(component, dict):
            change -= component["d"]
    return change


def apply(text: str, op: Any) -> str:
    """The text with the operation applied (``OpInvalid`` if it does not fit the text)."""
    op_check(op, len(text))
    parts: list[str] = []
    position = 0
    for component in op:
        if isinstance(component, int):
            parts.append(text[position : position + component])
            position += component
        elif isinstance(component, str):
            parts.append(component)
        else:
            position += component["d"]
    parts.append(text[position:])
    return "".join(parts)


def _appender(op: Op) -> Callable[[Component | None], None]:
    """Appends a component to ``op``, dropping empty ones and merging one of the kind of
    the last (the operation stays normalized but for a trailing retain: ``_trim``)."""

    def append(component: Component | None) -> None:
        if not component or (isinstance(component, dict) and component["d"] == 0):
            return
        if op:
            last = op[-1]
            if isinstance(component, int) and isinstance(last, int):
                op[-1] = last + component
                return
            if isinstance(component, str) and isinstance(last, str):
                op[-1] = last + component
                return
            if isinstance(component, dict) and isinstance(last, dict):
                op[-1] = {"d": last["d"] + component["d"]}
                return
        op.append(component)

    return append


def _trim(op: Op) -> Op:
    if op and isinstance(op[-1], int):
        op.pop()
    return op


class _Cursor:
    """Walks an operation's components, handing out parts of them (ottypes/text makeTake)."""

    def __init__(self, op: Op) -> None:
        self.op = op
        self.index = 0
        self.offset = 0

    def peek(self) -> Component | None:
        return self.op[self.index] if self.index < len(self.op) else None

    def take(self, n: int = -1, indivisible: str = "") -> Component | None:
        """Up to ``n`` characters' worth of the current component (all of it when n is -1
        or its kind is ``indivisible``: "insert" or "delete"). Past the end, a retain of n
        (the characters after the last component are retained), or None when n is -1."""
        if self.index == len(self.op):
            return None if n == -1 else n
        component = self.op[self.index]
        if isinstance(component, int):
            left = component - self.offset
            if n == -1 or left <= n:
                self.index, self.offset = self.index + 1, 0
                return left
            self.offset += n
            return n
        if isinstance(component, str):
            if n == -1 or indivisible == "insert" or len(component) - self.offset <= n:
                part = component[self.offset :]
                self.index, self.offset = self.index + 1, 0
                return part
            part = component[self.offset : self.offset + n]
            self.offset += n
            return part
        left = component["d"] - self.offset
        if n == -1 or indivisible == "delete" or left <= n:
            self.index, self.offset = self.index + 1, 0
            return {"d": left}
        self.offset += n
        return {"d": n}


def _span(component: Component) -> int:
    """Characters of the text a component walks over or adds (an insert: its length)."""
    if isinstance(component, int):
        return component
    if isinstance(component, str):
        return len(component)
    return component["d"]


def transform(op: Any, other: Any, side: Side) -> Op:
    """``op`` rewritten to apply after ``other``, both made on the same text. ``side`` breaks
    the tie of two inserts at one place: "left", op's goes first; "right", other's does.
    For TP1: apply(apply(t, a), transform(b, a, "right")) == apply(apply(t, b), transform(a, b, "left"))."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    op_check(op)
    op_check(other)
    result: Op = []
    append = _appender(result)
    cursor = _Cursor(op)
    for component in other:
        if isinstance(component, int):
            length = component
            while length > 0:
                chunk = cursor.take(length, "insert")
                assert chunk is not None
                append(chunk)
                if not isinstance(chunk, str):
                    length -= _span(chunk)
        elif isinstance(component, str):
            if side == "left" and isinstance(cursor.peek(), str):
                append(cursor.take())
            append(len(component))
        else:
            length = component["d"]
            while length > 0:
                chunk = cursor.take(length, "insert")
                assert chunk is not None
                if isinstance(chunk, str):
                    append(chunk)
                else:
                    # Retained text the other deleted goes; text both deleted is gone once.
                    length -= _span(chunk)
    while (rest := cursor.take()) is not None:
        append(rest)
    return _trim(result)


def compose(first: Any, second: Any) -> Op:
    """One operation with the effect of ``first`` then ``second``."""
    op_check(first)
    op_check(second)
    result: Op = []
    append = _appender(result)
    cursor = _Cursor(first)
    for component in second:
        if isinstance(component, int):
            length = component
            while length > 0:
                chunk = cursor.take(length, "delete")
                assert chunk is not None
                append(chunk)
                if not isinstance(chunk, dict):
                    length -= _span(chunk)
        elif isinstance(component, str):
            append(component)
        else:
            length = component["d"]
            while length > 0:
                chunk = cursor.take(length, "delete")
                assert chunk is not None
                if isinstance(chunk, int):
                    append({"d": chunk})
                    length -= chunk
                elif isinstance(chunk, str):
                    length -= len(chunk)  # inserted by first, deleted by second: never was
                else:
                    append(chunk)  # deleted by first, before what second deletes
    while (rest := cursor.take()) is not None:
        append(rest)
    return _trim(result)


def op_normalize(components: Sequence[Component]) -> Op:
    """The normalized operation of well-formed components that may be empty, repeat a kind
    or end with a retain (e.g. ``[3, 0, "a", "b", 2]`` -> ``[3, "ab"]``)."""
    result: Op = []
    append = _appender(result)
    for component in components:
        append(component)
    return _trim(result)


def op_at(position: int, *, insert: str = "", delete: int = 0) -> Op:
    """The operation deleting ``delete`` characters at ``position`` and inserting ``insert``
    there: a trace's single edit (``op_at(4, insert="x")`` is ``[4, "x"]``)."""
    return op_normalize([position, {"d": delete}, insert])


# --- the server ordering ------------------------------------------------------------------


@dataclass(frozen=True)
class Accepted:
    """The version the operation got and the operation as the server applied it (transformed
    against those accepted since its base). ``duplicate``: it had been accepted before (a
    resend), nothing was applied this time."""

    version: int
    op: Op
    duplicate: bool = False


def _client_checked(client_id: Any, client_seq: Any, base_version: Any) -> None:
    if not isinstance(client_id, str) or not 1 <= len(client_id) <= CLIENT_ID_MAX:
        raise OtRefused("client", f"must be a string of 1 to {CLIENT_ID_MAX} characters")
    if (
        isinstance(client_seq, bool)
        or not isinstance(client_seq, int)
        or not 0 <= client_seq <= CLIENT_SEQ_MAX
    ):
        raise OtRefused("seq", f"must be an integer from 0 to {CLIENT_SEQ_MAX}")
    if isinstance(base_version, bool) or not isinstance(base_version, int) or base_version < 0:
        raise OtRefused("version", "must be a non-negative integer: the version the operation was made on")


def _earlier(
    since: Sequence[ot_selectors.StoredOperation],
    *,
    client_id: str,
    client_seq: int,
    recipient_id: int | None,
) -> Accepted | None:
    for stored in since:
        if stored.client_id == client_id and stored.client_seq == client_seq:
            if stored.recipient_id != recipient_id:
                raise OtRefused("client", f"client id {client_id!r} is another member's: use a random one")
            return Accepted(stored.version, stored.op, duplicate=True)
    return None


def _text_limit_checked(text: str) -> None:
    limit = settings.COLLAB_DOCUMENT_MAX_BYTES
    # Four bytes a character at most: the encoding is only needed near the limit.
    if len(text) * 4 > limit and (size := len(text.encode("utf-8"))) > limit:
        raise OpInvalid(f"op: the text would be {size:,} bytes, over the {limit:,}-byte limit")


def ot_submit(
    *,
    document_id: int,
    recipient_id: int | None,
    client_id: str,
    client_seq: int,
    base_version: int,
    op: Any,
) -> Accepted:
    """Accept an operation made on the document's OT text at ``base_version``: transformed
    against every operation accepted since (in version order), applied, stored as the next
    version with the document's new text, all in one transaction under the document row's
    lock, so operations are ordered one at a time and a failure stores nothing.

    A resend (the ``client_id`` and ``client_seq`` of an accepted operation) returns that
    operation's result again and applies nothing. Raises ``OtRefused`` naming the field:
    "op" (``OpInvalid``: not a text operation, past the end of the text at its base, or
    the text would go over COLLAB_DOCUMENT_MAX_BYTES), "version" (ahead of the document, or
    older than the operations kept), "client"/"seq", "document" (none, or not plain text).
    """
    _client_checked(client_id, client_seq, base_version)
    op_check(op)
    with transaction.atomic():
        row = (
            Document.objects.select_for_update()
            .filter(id=document_id)
            .values_list("kind", "ot_version", "ot_text")
            .first()
        )
        if row is None:
            raise OtRefused("document", f"no document {document_id}")
        kind, version, text = row
        if kind != DocumentKind.TEXT:
            raise OtRefused("document", "the OT mode edits plain-text documents only (this one is rich)")
        if base_version > version:
            raise OtRefused(
                "version", f"version {base_version} is ahead of the document (at version {version})"
            )
        since: list[ot_selectors.StoredOperation] = []
        if base_version < version:
            since = ot_selectors.ot_operations_since(document_id, base_version)
            if len(since) != version - base_version:
                raise OtRefused(
                    "version",
                    f"version {base_version} is too old: the operations since are no longer kept; reload the text",
                )
            earlier = _earlier(since, client_id=client_id, client_seq=client_seq, recipient_id=recipient_id)
            if earlier is not None:
                return earlier
        # Checked against the text it was made on, so a component is named as the client sent it.
        op_check(op, len(text) - sum(op_length_change(stored.op) for stored in since))
        for stored in since:
            op = transform(op, stored.op, "left")
        new_text = apply(text, op)
        _text_limit_checked(new_text)
        version += 1
        with connection.cursor() as db:
            # A resend with a base past its own first acceptance is not among ``since``: the
            # constraint finds it, and it is answered as a resend, the transaction left usable.
            db.execute(
                f"""INSERT INTO {DocumentOperation._meta.db_table}
                        (document_id, version, op, recipient_id, client_id, client_seq, created_at)
                    VALUES (%s, %s, %s::jsonb, %s, %s, %s, %s)
                    ON CONFLICT (document_id, client_id, client_seq) DO NOTHING
                    RETURNING id""",
                [document_id, version, json.dumps(op), recipient_id, client_id, client_seq, timezone.now()],
            )
            inserted = db.fetchone() is not None
        if not inserted:
            stored_op = (
                DocumentOperation.objects.filter(
                    document_id=document_id, client_id=client_id, client_seq=client_seq
                )
                .values_list("version", "op", "client_id", "client_seq", "recipient_id")
                .get()
            )
            earlier = _earlier(
                [ot_selectors.StoredOperation(*stored_op)],
                client_id=client_id,
                client_seq=client_seq,
                recipient_id=recipient_id,
            )
            assert earlier is not None
            return earlier
        Document.objects.filter(id=document_id).update(
            ot_text=new_text, ot_version=version, updated_at=timezone.now()
        )
    return Accepted(version, op)
