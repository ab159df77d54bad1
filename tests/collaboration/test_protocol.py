"""The y-websocket protocol's messages: read as Yjs clients write them, refused when not."""

from __future__ import annotations

import pytest
from pycrdt import Doc, Text, create_sync_message, create_update_message

from collaboration.services.protocol import (
    SYNC_STEP1,
    SYNC_STEP2,
    SYNC_UPDATE,
    Awareness,
    AwarenessEntry,
    ProtocolError,
    QueryAwareness,
    Sync,
    awareness_entries,
    awareness_message,
    awareness_update,
    parse,
    sync_step1,
    sync_step2,
    sync_update,
    write_var_uint,
)


def _doc_with(text: str) -> Doc:
    doc: Doc = Doc()
    doc.get("content", type=Text).insert(0, text)
    return doc


def test_it_reads_the_sync_messages_pycrdt_writes():
    doc = _doc_with("hello")

    step1 = parse(create_sync_message(doc))
    update = parse(create_update_message(doc.get_update()))

    assert step1 == Sync(SYNC_STEP1, doc.get_state())
    assert update == Sync(SYNC_UPDATE, doc.get_update())


def test_it_writes_messages_that_read_back_the_same():
    update = _doc_with("a").get_update()
    assert parse(sync_step1(b"\x00")) == Sync(SYNC_STEP1, b"\x00")
    assert parse(sync_step2(update)) == Sync(SYNC_STEP2, update)
    assert parse(sync_update(update)) == Sync(SYNC_UPDATE, update)
    assert parse(write_var_uint(3)) == QueryAwareness()


def test_it_round_trips_awareness_states_and_a_departure():
    entries = [
        AwarenessEntry(client_id=2**40 + 5, clock=3, state={"user": {"name": "Ana", "color": "#e11"}}),
        AwarenessEntry(client_id=7, clock=9, state=None),
    ]

    message = awareness_message(awareness_update(entries))

    parsed = parse(message)
    assert isinstance(parsed, Awareness)
    assert awareness_entries(parsed.payload) == entries


@pytest.mark.parametrize(
    ("message", "says"),
    [
        (b"", "message type: message ends inside a number"),
        (b"\x09", "message type: unknown type 9"),
        (b"\x00\x07\x00", "sync step: unknown step 7"),
        (b"\x00\x02\x05ab", "sync payload: says 5 bytes, 2 follow"),
        (b"\x00\x02\x01ab", "message: 1 bytes left over"),
        (b"\x00" + b"\xff" * 9, "sync step: number longer than 8 bytes"),
        (b"\x01\x05\x01\x01\x01\x01{", "awareness state of client 1: not JSON text"),
        (b"\x03\x00", "message: 1 bytes left over"),
    ],
    ids=[
        "empty",
        "unknown-type",
        "unknown-step",
        "truncated",
        "left-over",
        "endless-number",
        "bad-json",
        "query-extra",
    ],
)
def test_it_refuses_a_malformed_message_naming_what_is_wrong(message, says):
    with pytest.raises(ProtocolError) as refused:
        parse(message)
    assert str(refused.value) == says
