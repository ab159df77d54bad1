"""The server-ordered OT mode (collaboration/services/ot.py): ShareDB's text type on code
points, and the server ordering operations against PostgreSQL; random concurrent editors
(hypothesis) converge on the server's text."""

from __future__ import annotations

import threading
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collaboration.models import Document, DocumentOperation
from collaboration.ot_selectors import ot_operations_since, ot_state
from collaboration.services.ot import (
    Accepted,
    Op,
    OpInvalid,
    OtRefused,
    Side,
    apply,
    compose,
    op_at,
    op_check,
    op_normalize,
    ot_submit,
    transform,
)
from tests.collaboration.ot_editor import Editor, Submission, ops_on, text_and_two_ops

PURE = settings(max_examples=300, deadline=None)


def text_document(text: str = "") -> Document:
    return Document.objects.create(key=f"ot-{uuid.uuid4().hex[:12]}", kind="text")


def submit(
    document: Document, op: Any, *, base: int, seq: int, client: str = "c1", recipient_id: Any = None
) -> Accepted:
    return ot_submit(
        document_id=document.id,
        recipient_id=recipient_id,
        client_id=client,
        client_seq=seq,
        base_version=base,
        op=op,
    )


def replayed(document: Document) -> str:
    """The text the stored operations give, applied in version order to the empty text."""
    text = ""
    for stored in ot_operations_since(document.id, 0):
        text = apply(text, stored.op)
    return text


# --- the text type ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "op", "expected"),
    [
        ("", [], ""),
        ("", ["hello"], "hello"),
        ("hello", [5, " world"], "hello world"),
        ("hello world", [5, {"d": 6}], "hello"),
        ("hello world", [{"d": 6}, "Hi, ", 5, "!"], "Hi, world!"),
        ("a😀b", [1, {"d": 1}], "ab"),
        ("a😀b", [2, "é"], "a😀éb"),
    ],
    ids=["empty", "insert", "retain-insert", "delete-tail", "mixed", "emoji-is-one-character", "after-emoji"],
)
def test_it_applies_retains_inserts_and_deletes_counted_in_code_points(text, op, expected):
    assert apply(text, op) == expected


@pytest.mark.parametrize(
    ("op", "length", "message"),
    [
        ("abc", 3, "op: must be a list of components, got str"),
        ([0], 3, "op[0]: a retain must be a positive integer, got 0"),
        ([1, ""], 3, "op[1]: an insert must be a non-empty string"),
        ([True], 3, "op[0]: expected a component, got true"),
        (
            [1.5],
            3,
            'op[0]: unknown component 1.5: expected a positive integer (retain), a non-empty string (insert) or {"d": n} (delete)',
        ),
        ([{"d": 0}], 3, 'op[0]: a delete is {"d": n} with n a positive integer, got 0'),
        ([{"d": "ab"}], 3, 'op[0]: a delete is {"d": n} with n a positive integer, got "ab"'),
        ([{"d": 1, "x": 2}], 3, "op[0]: a delete is {\"d\": n}, got the keys ['d', 'x']"),
        ([1, 1, "x"], 3, "op[1]: not normalized: two retains in a row (combine them)"),
        (["a", "b"], 3, "op[1]: not normalized: two inserts in a row (combine them)"),
        ([{"d": 1}, {"d": 1}], 3, "op[1]: not normalized: two deletes in a row (combine them)"),
        (["x", 2], 3, "op[1]: not normalized: a trailing retain does nothing (drop it)"),
        ([1, "x", {"d": 3}], 3, "op[2]: delete past the end of the text (4 > 3 characters)"),
        ([4, "x"], 3, "op[0]: retain past the end of the text (4 > 3 characters)"),
        (
            ["\x00"],
            3,
            "op[0]: an insert may not hold U+0000 (send whole characters: code points, not UTF-16 halves; no NUL)",
        ),
        (
            ["a\ud83d"],
            3,
            "op[0]: an insert may not hold U+D83D (send whole characters: code points, not UTF-16 halves; no NUL)",
        ),
    ],
    ids=[
        "not-a-list",
        "zero-retain",
        "empty-insert",
        "boolean",
        "float",
        "zero-delete",
        "string-delete",
        "delete-extra-key",
        "two-retains",
        "two-inserts",
        "two-deletes",
        "trailing-retain",
        "delete-past-end",
        "retain-past-end",
        "nul",
        "lone-surrogate",
    ],
)
def test_op_check_names_the_component_and_the_problem(op, length, message):
    with pytest.raises(OpInvalid) as refused:
        op_check(op, length)
    assert (refused.value.field, refused.value.message) == ("op", message)


def test_apply_refuses_an_op_past_the_end_of_the_text():
    with pytest.raises(OpInvalid, match=r"^op\[0\]: delete past the end of the text \(3 > 2 characters\)$"):
        apply("ab", [{"d": 3}])


@pytest.mark.parametrize(
    ("side", "expected"),
    [("left", "abXYcd"), ("right", "abYXcd")],
    ids=["left-goes-first", "right-goes-after"],
)
def test_transform_breaks_the_tie_of_two_inserts_at_one_place_by_side(side, expected):
    mine, theirs = [2, "X"], [2, "Y"]
    assert apply(apply("abcd", theirs), transform(mine, theirs, side)) == expected


@pytest.mark.parametrize(
    ("op", "other", "expected"),
    [
        ([5, "!"], [{"d": 2}], [3, "!"]),
        ([{"d": 3}], [1, {"d": 3}], [{"d": 1}]),
        ([2, "X"], [1, {"d": 3}], [1, "X"]),
        ([1, {"d": 2}], ["abc"], [4, {"d": 2}]),
        ([{"d": 4}], [2, "zz"], [{"d": 2}, 2, {"d": 2}]),
    ],
    ids=[
        "insert-shifts-left-past-a-delete",
        "overlapping-deletes-delete-once",
        "insert-inside-a-deleted-range-stays",
        "delete-shifts-right-past-an-insert",
        "delete-keeps-text-inserted-inside-it",
    ],
)
def test_transform_moves_an_op_past_another(op, other, expected):
    assert transform(op, other, "left") == expected


def test_transform_refuses_an_unknown_side():
    with pytest.raises(ValueError, match="side must be 'left' or 'right', got 'up'"):
        transform([], [], "up")  # type: ignore[arg-type]


@PURE
@given(text_and_two_ops())
def test_transform_converges_whichever_op_comes_first_tp1(case):
    text, a, b = case
    sides: tuple[tuple[Side, Side], ...] = (("left", "right"), ("right", "left"))
    for side_a, side_b in sides:
        after_b = apply(apply(text, b), transform(a, b, side_a))
        after_a = apply(apply(text, a), transform(b, a, side_b))
        assert after_b == after_a


@PURE
@given(st.data())
def test_compose_has_the_effect_of_both_ops(data):
    text = data.draw(st.text(alphabet="ab€𝄞", max_size=10))
    first = data.draw(ops_on(len(text)))
    middle = apply(text, first)
    second = data.draw(ops_on(len(middle)))
    composed = compose(first, second)
    op_check(composed)
    assert apply(text, composed) == apply(middle, second)


def test_op_normalize_and_op_at_make_normalized_ops():
    assert op_normalize([3, 0, "a", "b", {"d": 0}, 2]) == [3, "ab"]
    assert op_normalize([{"d": 1}, {"d": 2}, 1, 2]) == [{"d": 3}]
    assert op_at(4, insert="x") == [4, "x"]
    assert op_at(0, delete=2) == [{"d": 2}]
    assert op_at(3, insert="ab", delete=1) == [3, {"d": 1}, "ab"]


# --- the server ordering ------------------------------------------------------------------


@pytest.mark.django_db
def test_it_orders_ops_and_transforms_one_made_on_an_older_version(django_assert_max_num_queries):
    document = text_document()
    with django_assert_max_num_queries(5):
        first = submit(document, ["Hello world"], base=0, seq=1, client="ana")
    assert first == Accepted(1, ["Hello world"])
    # Bob made his edit on version 0 (the empty text): it lands after Ana's text.
    second = submit(document, ["Oh. "], base=0, seq=1, client="bob")
    assert second == Accepted(2, ["Oh. "])  # both inserts at 0: the submitted one goes first
    third = submit(document, [5, {"d": 6}], base=1, seq=2, client="ana")  # "Hello" on version 1
    assert third == Accepted(3, [9, {"d": 6}])
    assert ot_state(document.id) == (3, "Oh. Hello")
    assert replayed(document) == "Oh. Hello"
    assert [op.version for op in ot_operations_since(document.id, 1)] == [2, 3]
    assert [op.version for op in ot_operations_since(document.id, 0, upto=2)] == [1, 2]


@pytest.mark.django_db
def test_a_resent_op_lands_once_and_gets_its_first_answer():
    document = text_document()
    submit(document, ["abc"], base=0, seq=1, client="ana")
    submit(document, [3, "!"], base=1, seq=1, client="bob")
    resent = submit(document, ["abc"], base=0, seq=1, client="ana")
    assert resent == Accepted(1, ["abc"], duplicate=True)
    # also when the resend names a base after its first acceptance
    assert submit(document, ["abc"], base=2, seq=1, client="ana") == Accepted(1, ["abc"], duplicate=True)
    assert ot_state(document.id) == (2, "abc!")
    assert DocumentOperation.objects.filter(document=document).count() == 2


@pytest.mark.django_db
def test_another_members_client_id_is_refused():
    document = text_document()
    submit(document, ["abc"], base=0, seq=1, client="ana", recipient_id=1)
    with pytest.raises(OtRefused) as refused:
        submit(document, ["xyz"], base=0, seq=1, client="ana", recipient_id=2)
    assert refused.value.field == "client"
    assert refused.value.message == "client id 'ana' is another member's: use a random one"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("base", "op", "field", "message"),
    [
        (5, ["x"], "version", "version 5 is ahead of the document (at version 2)"),
        (-1, ["x"], "version", "must be a non-negative integer: the version the operation was made on"),
        # "ab" is 2 characters long at version 1, though the text is longer now
        (1, [1, {"d": 2}], "op", "op[1]: delete past the end of the text (3 > 2 characters)"),
        (2, [{"d": 1}, {"d": 1}], "op", "op[1]: not normalized: two deletes in a row (combine them)"),
    ],
    ids=["version-ahead", "version-negative", "past-the-end-of-its-base", "not-normalized"],
)
def test_a_refused_op_names_the_field_and_stores_nothing(base, op, field, message):
    document = text_document()
    submit(document, ["ab"], base=0, seq=1)
    submit(document, ["cd"], base=1, seq=2)
    with pytest.raises(OtRefused) as refused:
        submit(document, op, base=base, seq=3)
    assert (refused.value.field, refused.value.message) == (field, message)
    assert ot_state(document.id) == (2, "cdab")
    assert DocumentOperation.objects.filter(document=document).count() == 2


@pytest.mark.django_db
def test_an_op_made_on_a_version_whose_operations_are_gone_is_refused():
    document = text_document()
    for seq in (1, 2, 3):
        submit(document, ["x"], base=seq - 1, seq=seq)
    DocumentOperation.objects.filter(document=document, version=2).delete()  # as a trim would
    with pytest.raises(OtRefused, match="version 1 is too old: the operations since are no longer kept"):
        submit(document, ["y"], base=1, seq=4)
    assert submit(document, ["y"], base=3, seq=4).version == 4


@pytest.mark.django_db
def test_a_text_over_the_document_limit_is_refused(settings):
    settings.COLLAB_DOCUMENT_MAX_BYTES = 4096
    document = text_document()
    submit(document, ["€" * 1300], base=0, seq=1)  # 3,900 bytes
    with pytest.raises(OpInvalid, match=r"^op: the text would be 4,200 bytes, over the 4,096-byte limit$"):
        submit(document, ["€" * 100], base=1, seq=2)
    assert ot_state(document.id).version == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("kind", "message"),
    [("rich", "the OT mode edits plain-text documents only (this one is rich)"), (None, "no document")],
    ids=["rich", "missing"],
)
def test_only_an_existing_plain_text_document_takes_ops(kind, message):
    document = Document.objects.create(key=f"rich-{uuid.uuid4().hex[:8]}", kind="rich")
    if kind is None:
        document.delete()
        document.id = 999_999_999
    with pytest.raises(OtRefused) as refused:
        submit(document, ["x"], base=0, seq=1)
    assert refused.value.field == "document"
    assert refused.value.message.startswith(message)


@pytest.mark.django_db(transaction=True)
def test_ops_submitted_at_once_from_many_connections_get_one_order():
    # Each thread has its own database connection; the document row lock orders them.
    document = text_document()
    errors: list[BaseException] = []

    def editor(client: str) -> None:
        try:
            for seq in range(1, 6):
                # Always on version 0: every op is transformed past all accepted before it.
                submit(document, [client], base=0, seq=seq, client=client)
        except BaseException as error:  # reported by the assertion below
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=editor, args=(name,)) for name in "abcd"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    version, text = ot_state(document.id)
    assert version == 20 and sorted(text) == sorted("abcd" * 5)
    assert replayed(document) == text
    assert list(
        DocumentOperation.objects.filter(document=document)
        .order_by("version")
        .values_list("version", flat=True)
    ) == list(range(1, 21))


# --- random concurrent editors ----------------------------------------------------------------


class MemoryServer:
    """The server ordering in memory, with the same transform: the DB-backed run's twin."""

    def __init__(self) -> None:
        self.text = ""
        self.history: list[tuple[Op, str, int]] = []

    def submit(self, sent: Submission) -> Accepted:
        since = self.history[sent.version :]
        for version, (op, client, seq) in enumerate(since, start=sent.version + 1):
            if (client, seq) == (sent.client, sent.seq):
                return Accepted(version, op, duplicate=True)
        op = sent.op
        for other, _, _ in since:
            op = transform(op, other, "left")
        self.text = apply(self.text, op)
        self.history.append((op, sent.client, sent.seq))
        return Accepted(len(self.history), op)


ACTIONS = ("edit", "edit", "send", "serve", "deliver", "deliver", "resend")


def editors_converge(
    data: st.DataObject, server_submit: Callable[[Submission], Accepted], server_text: Callable[[], str]
) -> None:
    """Random editors edit, send, resend and receive in a random interleaving; the server
    takes each editor's messages in order and answers in order (as one socket does). When
    every message has arrived, every editor shows the server's text."""
    count = data.draw(st.integers(2, 4), label="editors")
    editors = [Editor(f"client-{index}") for index in range(count)]
    to_server: list[deque[Submission]] = [deque() for _ in editors]
    to_editor: list[deque[tuple[Any, ...]]] = [deque() for _ in editors]

    def serve(index: int) -> None:
        sent = to_server[index].popleft()
        accepted = server_submit(sent)
        if not accepted.duplicate:
            for other in range(count):
                if other != index:
                    to_editor[other].append(("op", accepted.version, accepted.op))
        to_editor[index].append(("ack", sent.seq, accepted.version))

    def deliver(index: int) -> None:
        message = to_editor[index].popleft()
        if message[0] == "op":
            editors[index].receive_op(message[1], message[2])
        else:
            editors[index].receive_ack(message[1], message[2])

    for _ in range(data.draw(st.integers(1, 50), label="steps")):
        index = data.draw(st.integers(0, count - 1), label="who")
        editor = editors[index]
        action = data.draw(st.sampled_from(ACTIONS), label="does")
        if action == "edit":
            editor.edit(data.draw(ops_on(len(editor.text)), label="op"))
        elif action == "send" and (sent := editor.send()) is not None:
            to_server[index].append(sent)
        elif action == "resend" and editor.sent is not None:
            to_server[index].append(editor.sent)
        elif action == "serve" and to_server[index]:
            serve(index)
        elif action == "deliver" and to_editor[index]:
            deliver(index)
    while not all(editor.idle for editor in editors) or any(to_server) or any(to_editor):
        for index, editor in enumerate(editors):
            if (sent := editor.send()) is not None:
                to_server[index].append(sent)
            while to_server[index]:
                serve(index)
        for index in range(count):
            while to_editor[index]:
                deliver(index)
    text = server_text()
    assert [editor.text for editor in editors] == [text] * count
    assert len({editor.version for editor in editors}) == 1


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_random_concurrent_editors_converge_through_the_ordering_in_memory(data):
    server = MemoryServer()
    editors_converge(data, server.submit, lambda: server.text)


@pytest.mark.django_db
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_random_concurrent_editors_converge_through_ot_submit_in_postgresql(data):
    document = text_document()  # one per example, all in the test's transaction

    def server_submit(sent: Submission) -> Accepted:
        return submit(document, sent.op, base=sent.version, seq=sent.seq, client=sent.client)

    editors_converge(data, server_submit, lambda: ot_state(document.id).text)
    assert replayed(document) == ot_state(document.id).text
