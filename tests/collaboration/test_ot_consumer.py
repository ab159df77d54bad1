"""``/ws/docs/{key}/ot``: the server-ordered OT mode over a socket (collaboration/ot_consumers.py),
members of plain-text documents only; editors typing at once converge on the server's text,
and an operation the channel layer drops is read from the database.

Async test bodies run through ``async_to_sync``. Documents and recipients get random ids:
channel-layer groups are named by document id and parallel test databases hand out the
same ids."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator

from collaboration.models import Document, DocumentMember, DocumentOperation
from collaboration.ot_selectors import ot_state
from collaboration.services.ot import Op, op_at, ot_submit
from notifications.models import Recipient
from project.asgi import application
from realtime.tokens import end_user_token_issue
from tests.collaboration.ot_editor import Editor
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


def new_document(kind: str = "text") -> Document:
    return Document.objects.create(
        id=random.randint(10**12, 2**62), key=f"doc-{uuid.uuid4().hex[:12]}", kind=kind
    )


@pytest.fixture
def document() -> Document:
    return new_document()


def socket(
    document: Document, recipient: Recipient | None, *, query: str = "", slash: bool = False
) -> WebsocketCommunicator:
    params = [query] if query else []
    if recipient is not None:
        token, _ = end_user_token_issue(recipient_id=recipient.id)
        params.append(f"token={token}")
    path = f"/ws/docs/{document.key}/ot{'/' if slash else ''}"
    return WebsocketCommunicator(application, f"{path}?{'&'.join(params)}" if params else path)


class Peer:
    """An OT editor on a socket: sends one operation at a time, the next once it is acked."""

    def __init__(self, communicator: WebsocketCommunicator, client: str) -> None:
        self.ws = communicator
        self.client = client
        self.editor = Editor(client)
        self.frames: list[dict[str, Any]] = []

    async def open(self) -> dict[str, Any]:
        connected, code = await self.ws.connect(timeout=TIMEOUT)
        assert connected, code
        init = await self.ws.receive_json_from(timeout=TIMEOUT)
        if init["type"] == "init":
            self.editor = Editor(self.client, version=init["version"], text=init["text"])
        return dict(init)

    async def type(self, op: Op) -> None:
        self.editor.edit(op)
        await self.flush()

    async def flush(self) -> None:
        if (sent := self.editor.send()) is not None:
            await self.ws.send_json_to(sent.frame())

    async def take(self) -> dict[str, Any]:
        frame = dict(await self.ws.receive_json_from(timeout=TIMEOUT))
        self.frames.append(frame)
        if frame["type"] == "op":
            self.editor.receive_op(frame["version"], frame["op"], frame.get("client"), frame.get("seq"))
        elif frame["type"] == "ack":
            self.editor.receive_ack(frame["seq"], frame["version"])
            await self.flush()
        else:
            raise AssertionError(f"unexpected frame {frame}")
        return frame

    async def error(self) -> dict[str, Any]:
        frame = dict(await self.ws.receive_json_from(timeout=TIMEOUT))
        assert frame["type"] == "error", frame
        return frame

    async def closed_with(self) -> dict[str, Any]:
        output = await self.ws.receive_output(timeout=TIMEOUT)
        assert output["type"] == "websocket.close", output
        return dict(output)


async def settle(document: Document, peers: list[Peer]) -> str:
    """Take frames until every peer has had its edits acked and shows the server's text at
    its version (polling, within TIMEOUT); that text."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while True:
        version, text = await sync_to_async(ot_state)(document.id)
        if all(peer.editor.idle and peer.editor.version == version for peer in peers):
            assert [peer.editor.text for peer in peers] == [text] * len(peers)
            return text
        assert asyncio.get_running_loop().time() < deadline, [vars(peer.editor) for peer in peers]
        for peer in peers:
            if not await peer.ws.receive_nothing(timeout=0.02, interval=0.01):
                await peer.take()


def test_it_sends_the_version_and_text_on_connect(document):
    ana = member(document, "editor")
    ot_submit(
        document_id=document.id,
        recipient_id=None,
        client_id="seed",
        client_seq=1,
        base_version=0,
        op=["héllo 𝄞"],
    )

    async def scenario() -> None:
        peer = Peer(socket(document, ana, slash=True), "a")
        assert await peer.open() == {"type": "init", "version": 1, "text": "héllo 𝄞"}
        await peer.ws.disconnect()

    run(scenario)


def test_two_editors_typing_at_once_converge_on_the_servers_text(document):
    ana, bob = member(document, "owner"), member(document, "editor")

    async def scenario() -> None:
        a, b = Peer(socket(document, ana), "ana"), Peer(socket(document, bob), "bob")
        await a.open()
        await b.open()
        # both type on version 0 before hearing of the other
        await a.type(["Hello"])
        await b.type(["World"])
        await a.type([5, "!"])  # waits for the ack of "Hello"
        text = await settle(document, [a, b])
        assert sorted(text) == sorted("Hello!World")
        assert text.index("Hello") < text.index("!")
        # then each edits the other's words
        await a.type([{"d": 1}])
        await b.type([len(b.editor.text), "."])
        assert (await settle(document, [a, b])).endswith(".")
        # the ack is for the sender; the op for the others
        assert {frame["type"] for frame in a.frames} == {"ack", "op"}
        assert all(frame["client"] == "bob" for frame in a.frames if frame["type"] == "op")
        for peer in (a, b):
            await peer.ws.disconnect()

    run(scenario)
    assert DocumentOperation.objects.filter(document=document).count() == 5


def test_three_editors_making_random_edits_converge(document):
    clients = [member(document, "editor") for _ in range(3)]
    rng = random.Random(11)

    def random_op(text: str) -> Op:
        if text and rng.random() < 0.3:
            return op_at(rng.randrange(len(text)), delete=1)
        return op_at(rng.randint(0, len(text)), insert=rng.choice("xyzé𝄞"))

    async def scenario() -> None:
        peers = [Peer(socket(document, recipient), f"c{index}") for index, recipient in enumerate(clients)]
        for peer in peers:
            await peer.open()
        for _ in range(30):
            peer = rng.choice(peers)
            if rng.random() < 0.6:
                await peer.type(random_op(peer.editor.text))
            elif not await peer.ws.receive_nothing(timeout=0.01, interval=0.01):
                await peer.take()
        await settle(document, peers)
        for peer in peers:
            await peer.ws.disconnect()

    run(scenario)
    assert DocumentOperation.objects.filter(document=document).exists()


def test_an_op_the_channel_layer_never_delivered_is_read_from_the_database(document):
    ana, bob = member(document, "editor"), member(document, "editor")

    async def scenario() -> None:
        a, b = Peer(socket(document, ana), "ana"), Peer(socket(document, bob), "bob")
        await a.open()
        await b.open()
        # accepted without any relay, as if the pub/sub layer had dropped it
        await sync_to_async(ot_submit)(
            document_id=document.id,
            recipient_id=None,
            client_id="lost",
            client_seq=1,
            base_version=0,
            op=["abc"],
        )
        await b.type(["X"])
        # Bob gets the missing version 1 before the ack of his own (version 2) ...
        assert await b.take() == {"type": "op", "version": 1, "op": ["abc"], "client": "lost", "seq": 1}
        assert await b.take() == {"type": "ack", "seq": 1, "version": 2}
        # ... and Ana, seeing version 2 come with a hole, gets version 1 first too
        assert await a.take() == {"type": "op", "version": 1, "op": ["abc"], "client": "lost", "seq": 1}
        assert await a.take() == {"type": "op", "version": 2, "op": ["X"], "client": "bob", "seq": 1}
        assert a.editor.text == b.editor.text == "Xabc"
        assert await a.ws.receive_nothing(timeout=0.1)
        for peer in (a, b):
            await peer.ws.disconnect()

    run(scenario)


def test_a_resent_op_is_acked_again_and_applied_once(document):
    ana, bob = member(document, "editor"), member(document, "viewer")

    async def scenario() -> None:
        a, b = Peer(socket(document, ana), "ana"), Peer(socket(document, bob), "bob")
        await a.open()
        await b.open()
        frame = {"type": "op", "version": 0, "op": ["once"], "seq": 7, "client": "ana"}
        await a.ws.send_json_to(frame)
        assert await a.ws.receive_json_from(timeout=TIMEOUT) == {"type": "ack", "seq": 7, "version": 1}
        await a.ws.send_json_to(frame)  # as after a reconnect, unsure whether it landed
        assert await a.ws.receive_json_from(timeout=TIMEOUT) == {"type": "ack", "seq": 7, "version": 1}
        assert await b.take() == {"type": "op", "version": 1, "op": ["once"], "client": "ana", "seq": 7}
        assert await b.ws.receive_nothing(timeout=0.1)
        for peer in (a, b):
            await peer.ws.disconnect()

    run(scenario)
    assert ot_state(document.id) == (1, "once")


def test_a_client_coming_back_with_its_version_gets_every_op_it_missed(document):
    ana, bob = member(document, "editor"), member(document, "editor")
    for seq, op in enumerate((["ab"], [2, "c"]), start=1):
        ot_submit(
            document_id=document.id,
            recipient_id=ana.id,
            client_id="ana",
            client_seq=seq,
            base_version=seq - 1,
            op=op,
        )

    async def scenario() -> None:
        b = Peer(socket(document, bob, query="version=0"), "bob")
        assert await b.open() == {"type": "resume", "from": 0, "version": 2}
        assert await b.take() == {"type": "op", "version": 1, "op": ["ab"], "client": "ana", "seq": 1}
        assert await b.take() == {"type": "op", "version": 2, "op": [2, "c"], "client": "ana", "seq": 2}
        assert b.editor.text == "abc"
        await b.ws.disconnect()

    run(scenario)


def test_a_resume_from_a_version_ahead_of_the_document_is_refused_with_a_reason(document):
    bob = member(document, "editor")

    async def scenario() -> None:
        peer = Peer(socket(document, bob, query="version=9"), "bob")
        connected, _ = await peer.ws.connect(timeout=TIMEOUT)
        assert connected
        error = await peer.error()
        assert (error["field"], error["message"]) == (
            "version",
            "?version= must be a version up to 0, got '9'",
        )
        closed = await peer.closed_with()
        assert (closed["code"], closed["reason"]) == (4400, error["message"])

    run(scenario)


def test_a_viewer_gets_every_op_and_its_own_are_refused(document):
    ana, viewer = member(document, "owner"), member(document, "viewer")

    async def scenario() -> None:
        a, v = Peer(socket(document, ana), "ana"), Peer(socket(document, viewer), "vic")
        await a.open()
        await v.open()
        await v.ws.send_json_to({"type": "op", "version": 0, "op": ["vandalism"], "seq": 1, "client": "vic"})
        assert await v.error() == {
            "type": "error",
            "field": "op",
            "message": "viewers cannot edit this document",
            "seq": 1,
        }
        # the socket stays open and keeps receiving
        await a.type(["from the owner"])
        assert await v.take() == {
            "type": "op",
            "version": 1,
            "op": ["from the owner"],
            "client": "ana",
            "seq": 1,
        }
        for peer in (a, v):
            await peer.ws.disconnect()

    run(scenario)
    assert ot_state(document.id) == (1, "from the owner")


@pytest.mark.parametrize(
    ("who", "code"),
    [("stranger", 4403), ("anonymous", 4401), ("no-document", 4404), ("rich-document", 4409)],
    ids=str,
)
def test_it_refuses_a_socket_before_the_upgrade(document, who, code):
    target = document
    if who == "no-document":
        target = Document(id=1, key="no-such-document")
    elif who == "rich-document":
        target = new_document(kind="rich")
    recipient = None if who == "anonymous" else member(target if who == "rich-document" else None, "owner")

    async def scenario() -> None:
        communicator = socket(target, recipient)
        assert await communicator.connect(timeout=TIMEOUT) == (False, code)
        await communicator.disconnect()

    run(scenario)


GOOD = {"type": "op", "version": 0, "op": ["ok"], "seq": 1, "client": "ana"}


@pytest.mark.parametrize(
    ("frame", "field", "message"),
    [
        ([1, 2], "frame", "expected a JSON object, got list"),
        ({"type": "hello"}, "type", "unknown frame type \"hello\"; expected 'op'"),
        ({**GOOD, "version": "0"}, "version", 'must be a non-negative integer, got "0"'),
        ({**GOOD, "seq": True}, "seq", "must be a non-negative integer, got true"),
        (
            {k: v for k, v in GOOD.items() if k != "client"},
            "client",
            "required: an op frame has version, op, seq, client",
        ),
        (
            {**GOOD, "op": "ok"},
            "op",
            'must be a list of components: retain n, insert a string, {"d": n} delete',
        ),
        ({**GOOD, "op": [0, "x"]}, "op", "op[0]: a retain must be a positive integer, got 0"),
        ({**GOOD, "op": [{"d": 3}]}, "op", "op[0]: delete past the end of the text (3 > 0 characters)"),
        (
            {**GOOD, "op": ["\ud83d"]},
            "op",
            "op[0]: an insert may not hold U+D83D (send whole characters: code points, not UTF-16 halves; no NUL)",
        ),
        ({**GOOD, "version": 4}, "version", "version 4 is ahead of the document (at version 0)"),
        ({**GOOD, "op": ["x" * 1100]}, "frame", "a frame of 1,167 characters is over the 1,024 limit"),
    ],
    ids=[
        "not-an-object",
        "unknown-type",
        "version-string",
        "seq-boolean",
        "client-missing",
        "op-not-a-list",
        "zero-retain",
        "delete-past-end",
        "lone-surrogate",
        "version-ahead",
        "frame-too-big",
    ],
)
def test_a_bad_frame_gets_an_error_naming_the_field_and_the_socket_goes_on(
    document, settings, frame, field, message
):
    settings.COLLAB_UPDATE_MAX_BYTES = 1024
    ana = member(document, "editor")

    async def scenario() -> None:
        peer = Peer(socket(document, ana), "ana")
        await peer.open()
        await peer.ws.send_json_to(frame)
        error = await peer.error()
        assert (error["field"], error["message"]) == (field, message)
        await peer.ws.send_json_to(GOOD)
        assert await peer.ws.receive_json_from(timeout=TIMEOUT) == {"type": "ack", "seq": 1, "version": 1}
        await peer.ws.disconnect()

    run(scenario)
    assert ot_state(document.id) == (1, "ok")


@pytest.mark.parametrize(
    ("send", "reason"),
    [
        ({"text_data": "{not json"}, "not JSON: frames are JSON objects"),
        ({"bytes_data": b"\x00\x01"}, "JSON text frames only"),
    ],
    ids=["not-json", "binary"],
)
def test_a_frame_that_is_not_json_closes_the_socket_with_a_reason(document, send, reason):
    ana = member(document, "editor")

    async def scenario() -> None:
        peer = Peer(socket(document, ana), "ana")
        await peer.open()
        await peer.ws.send_to(**send)
        closed = await peer.closed_with()
        assert (closed["code"], closed["reason"]) == (4400, reason)

    run(scenario)
