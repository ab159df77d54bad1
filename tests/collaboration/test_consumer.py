"""``/ws/docs/{key}``: the y-websocket protocol between Yjs documents (pycrdt here; the
Node.js y-websocket client comes with the end-to-end tests), members only, every update
stored before peers hear of it.

Async test bodies run through ``async_to_sync``. Documents and recipients get random ids:
channel-layer groups are named by document id and parallel test databases hand out the
same ids."""

from __future__ import annotations

import random
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from pycrdt import Doc, Text

from collaboration.models import Document, DocumentMember, DocumentUpdate
from collaboration.services import protocol
from collaboration.services.awareness import awareness_current, awareness_record
from collaboration.services.updates import document_text
from notifications.models import Recipient
from project.asgi import application
from realtime.tokens import end_user_token_issue
from tests.notifications.factories import RecipientFactory

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 3.0


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    async_to_sync(scenario)()


def member(document: Document | None, role: str | None) -> Recipient:
    recipient = RecipientFactory(id=random.randint(10**12, 2**62), external_id=f"user-{uuid.uuid4()}")
    if document is not None and role is not None:
        DocumentMember.objects.create(document=document, recipient=recipient, role=role)
    return recipient


@pytest.fixture
def document() -> Document:
    return Document.objects.create(id=random.randint(10**12, 2**62), key=f"doc-{uuid.uuid4().hex[:12]}")


def socket(document: Document, recipient: Recipient | None, *, slash: bool = False) -> WebsocketCommunicator:
    query = ""
    if recipient is not None:
        token, _ = end_user_token_issue(recipient_id=recipient.id)
        query = f"?token={token}"
    return WebsocketCommunicator(application, f"/ws/docs/{document.key}{'/' if slash else ''}{query}")


class Peer:
    """A Yjs document on a socket, speaking y-websocket as the stock provider does."""

    def __init__(self, communicator: WebsocketCommunicator) -> None:
        self.ws = communicator
        self.doc: Doc = Doc()
        self.text = self.doc.get("content", type=Text)
        # the awareness states heard, by client id, the latest of each (as y-protocols keeps them)
        self.states: dict[int, protocol.AwarenessEntry] = {}

    @property
    def awareness(self) -> list[protocol.AwarenessEntry]:
        return list(self.states.values())

    def hear(self, message: protocol.Awareness) -> None:
        for entry in protocol.awareness_entries(message.payload):
            known = self.states.get(entry.client_id)
            if known is None or entry.clock >= known.clock:
                self.states[entry.client_id] = entry

    async def open(self) -> None:
        connected, code = await self.ws.connect(timeout=TIMEOUT)
        assert connected, code
        # the server's step 1: answer with what it lacks, and ask for what we lack. An
        # awareness update another process relayed may come first: the socket joined the
        # room before the server wrote step 1.
        step1 = protocol.parse(await self.ws.receive_from(timeout=TIMEOUT))
        while isinstance(step1, protocol.Awareness):
            self.hear(step1)
            step1 = protocol.parse(await self.ws.receive_from(timeout=TIMEOUT))
        assert isinstance(step1, protocol.Sync) and step1.step == protocol.SYNC_STEP1
        await self.ws.send_to(bytes_data=protocol.sync_step2(self.doc.get_update(step1.payload)))
        await self.ws.send_to(bytes_data=protocol.sync_step1(self.doc.get_state()))
        step2 = protocol.parse(await self.ws.receive_from(timeout=TIMEOUT))
        while isinstance(step2, protocol.Awareness):  # the states of those already here
            self.hear(step2)
            step2 = protocol.parse(await self.ws.receive_from(timeout=TIMEOUT))
        assert isinstance(step2, protocol.Sync) and step2.step == protocol.SYNC_STEP2
        self.doc.apply_update(step2.payload)

    async def type(self, at: int, value: str) -> None:
        before = self.doc.get_state()
        self.text.insert(at, value)
        await self.ws.send_to(bytes_data=protocol.sync_update(self.doc.get_update(before)))

    async def take_update(self) -> None:
        message = protocol.parse(await self.ws.receive_from(timeout=TIMEOUT))
        assert isinstance(message, protocol.Sync) and message.step == protocol.SYNC_UPDATE, message
        self.doc.apply_update(message.payload)

    async def closed_with(self) -> dict[str, Any]:
        output = await self.ws.receive_output(timeout=TIMEOUT)
        assert output["type"] == "websocket.close", output
        return output


def test_two_editors_converge_and_a_late_joiner_gets_the_document(document):
    ana, bob, cy = member(document, "owner"), member(document, "editor"), member(document, "editor")

    async def scenario() -> None:
        a, b = Peer(socket(document, ana)), Peer(socket(document, bob, slash=True))
        await a.open()
        await b.open()
        await a.type(0, "Hello")
        await b.take_update()
        await b.type(5, " world")
        await a.take_update()
        assert str(a.text) == str(b.text) == "Hello world"
        # a later member syncs the whole document from what was stored
        c = Peer(socket(document, cy))
        await c.open()
        assert str(c.text) == "Hello world"
        for peer in (a, b, c):
            await peer.ws.disconnect()

    run(scenario)
    assert document_text(document.id) == "Hello world"
    assert DocumentUpdate.objects.filter(document=document).count() == 2


def test_offline_edits_sent_on_connect_are_stored_and_relayed(document):
    ana, bob = member(document, "editor"), member(document, "editor")

    async def scenario() -> None:
        b = Peer(socket(document, bob))
        await b.open()
        a = Peer(socket(document, ana))
        a.text.insert(0, "typed offline")
        await a.open()
        await b.take_update()
        assert str(b.text) == "typed offline"
        for peer in (a, b):
            await peer.ws.disconnect()

    run(scenario)
    assert document_text(document.id) == "typed offline"


@pytest.mark.parametrize(
    ("who", "code"), [("stranger", 4403), ("anonymous", 4401), ("no-document", 4404)], ids=str
)
def test_it_refuses_a_socket_before_the_upgrade(document, who, code):
    recipient = None if who == "anonymous" else member(None, None)
    target = Document(id=1, key="no-such-document") if who == "no-document" else document

    async def scenario() -> None:
        communicator = socket(target, recipient)
        assert await communicator.connect(timeout=TIMEOUT) == (False, code)
        await communicator.disconnect()

    run(scenario)


def test_a_viewer_receives_everything_and_its_edits_are_refused_and_it_is_told(document):
    ana, viewer = member(document, "owner"), member(document, "viewer")

    async def scenario() -> None:
        a, v = Peer(socket(document, ana)), Peer(socket(document, viewer))
        await a.open()
        await v.open()
        await v.type(0, "vandalism")
        told = await v.ws.receive_from(timeout=TIMEOUT)
        assert told[0] == protocol.MESSAGE_AUTH and b"viewers cannot edit" in told
        await a.type(0, "from the owner")
        await v.take_update()
        assert str(a.text) == "from the owner"
        assert await a.ws.receive_nothing(timeout=0.2)
        for peer in (a, v):
            await peer.ws.disconnect()

    run(scenario)
    assert document_text(document.id) == "from the owner"


@pytest.mark.parametrize(
    ("message", "code", "reason"),
    [
        (b"\x00\x02\x09abc", 4400, "sync payload: says 9 bytes, 3 follow"),
        (protocol.sync_update(b"not an update"), 4400, "update is not a Yjs update"),
        (protocol.sync_step1(b"\xff\xff"), 4400, "sync step 1: not a Yjs state vector"),
        (protocol.sync_update(b"\x00" * 5000), 1009, "update of 5,000 bytes is over the 4,096-byte limit"),
    ],
    ids=["malformed", "not-yjs", "bad-state-vector", "too-large"],
)
def test_a_bad_message_closes_only_its_socket_with_a_reason(document, settings, message, code, reason):
    settings.COLLAB_UPDATE_MAX_BYTES = 4096
    ana, bob, cy = member(document, "editor"), member(document, "editor"), member(document, "viewer")

    async def scenario() -> None:
        a, b, c = Peer(socket(document, ana)), Peer(socket(document, bob)), Peer(socket(document, cy))
        for peer in (a, b, c):
            await peer.open()
        await b.ws.send_to(bytes_data=message)
        closed = await b.closed_with()
        assert (closed["code"], closed.get("reason")) == (code, reason)
        # the other sockets go on
        await a.type(0, "still here")
        await c.take_update()
        assert str(c.text) == "still here"
        for peer in (a, c):
            await peer.ws.disconnect()

    run(scenario)
    assert DocumentUpdate.objects.filter(document=document).count() == 1


def test_awareness_reaches_peers_and_a_departed_clients_state_is_cleared(document):
    ana, bob = member(document, "editor"), member(document, "viewer")
    here = protocol.AwarenessEntry(client_id=4242, clock=3, state={"user": {"name": "Ana", "color": "#d33"}})

    async def scenario() -> None:
        a, b = Peer(socket(document, ana)), Peer(socket(document, bob))
        await a.open()
        await b.open()
        # Ana's cursor and name reach Bob as she sent them
        await a.ws.send_to(bytes_data=protocol.awareness_message(protocol.awareness_update([here])))
        seen = protocol.parse(await b.ws.receive_from(timeout=TIMEOUT))
        assert isinstance(seen, protocol.Awareness)
        assert protocol.awareness_entries(seen.payload) == [here]
        # when her socket goes without a word, Bob is told her state is gone
        await a.ws.disconnect()
        cleared = protocol.parse(await b.ws.receive_from(timeout=TIMEOUT))
        assert isinstance(cleared, protocol.Awareness)
        assert protocol.awareness_entries(cleared.payload) == [protocol.AwarenessEntry(4242, 4, None)]
        await b.ws.disconnect()

    run(scenario)


def test_a_joiner_and_a_query_get_every_clients_current_awareness(document):
    ana, bob = member(document, "editor"), member(document, "editor")
    here = protocol.AwarenessEntry(client_id=77, clock=1, state={"user": {"name": "Ana"}, "cursor": None})

    async def scenario() -> None:
        a = Peer(socket(document, ana))
        await a.open()
        await a.ws.send_to(bytes_data=protocol.awareness_message(protocol.awareness_update([here])))
        b = Peer(socket(document, bob))
        await b.open()
        assert b.awareness == [here]
        # y-protocols' query-awareness: the server answers with the states it knows
        await b.ws.send_to(bytes_data=bytes([protocol.MESSAGE_QUERY_AWARENESS]))
        answer = protocol.parse(await b.ws.receive_from(timeout=TIMEOUT))
        assert isinstance(answer, protocol.Awareness)
        assert protocol.awareness_entries(answer.payload) == [here]
        await a.ws.disconnect()
        await b.ws.disconnect()

    run(scenario)


def test_a_client_not_heard_of_within_the_timeout_is_cleared_for_every_peer(document, settings):
    """A client whose web process died: its socket never said goodbye, its state stays in
    Redis until a socket of the document notices it is stale."""
    settings.COLLAB_AWARENESS_TIMEOUT_SECONDS = 0.6
    bob = member(document, "editor")
    ghost = protocol.AwarenessEntry(client_id=99, clock=5, state={"user": {"name": "Gone"}})

    async def scenario() -> None:
        await awareness_record(document.id, [ghost])  # as the dead process's socket did
        b = Peer(socket(document, bob))
        await b.open()
        assert b.awareness == [ghost]
        cleared = protocol.parse(await b.ws.receive_from(timeout=TIMEOUT))
        assert isinstance(cleared, protocol.Awareness)
        assert protocol.awareness_entries(cleared.payload) == [protocol.AwarenessEntry(99, 6, None)]
        assert await awareness_current(document.id) == []
        await b.ws.disconnect()

    run(scenario)


def test_updates_sent_faster_than_stored_are_stored_in_batches_and_all_reach_peers(document):
    ana, bob = member(document, "editor"), member(document, "editor")
    keystrokes = 300

    async def scenario() -> None:
        a, b = Peer(socket(document, ana)), Peer(socket(document, bob))
        await a.open()
        await b.open()
        for n in range(keystrokes):  # sent back to back, none waits for the server
            await a.type(n, "abcdefghij"[n % 10])
        while str(b.text) != str(a.text):
            await b.take_update()
        for peer in (a, b):
            await peer.ws.disconnect()

    run(scenario)
    assert document_text(document.id) == ("abcdefghij" * 30)
    # a transaction per batch, not per keystroke
    assert DocumentUpdate.objects.filter(document=document).count() < keystrokes


def test_the_updates_before_a_refused_one_are_stored_and_relayed(document, settings):
    settings.COLLAB_UPDATE_MAX_BYTES = 4096
    ana, bob = member(document, "editor"), member(document, "editor")

    async def scenario() -> None:
        a, b = Peer(socket(document, ana)), Peer(socket(document, bob))
        await a.open()
        await b.open()
        await a.type(0, "kept")
        await a.ws.send_to(bytes_data=protocol.sync_update(b"\x00" * 5000))
        assert (await a.closed_with())["code"] == 1009
        while str(b.text) != "kept":
            await b.take_update()
        await b.ws.disconnect()

    run(scenario)
    assert document_text(document.id) == "kept"
