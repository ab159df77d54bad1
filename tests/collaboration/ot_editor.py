"""An OT client as ShareDB's ``Doc`` is one, for the tests of the server-ordered OT mode
(collaboration/services/ot.py): the text it shows, the server version it has seen, at most
one operation in flight (sent, not yet acknowledged) and the edits made since, composed
into one operation sent once the flight lands."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from collaboration.services.ot import Op, apply, compose, op_normalize, transform

# Characters of one, two, three and four UTF-8 bytes, and a newline: code points, not bytes
# nor UTF-16 units, are what the text type counts.
ALPHABET = "ab\né€𝄞"


@dataclass(frozen=True)
class Submission:
    client: str
    seq: int
    version: int
    op: Op

    def frame(self) -> dict[str, Any]:
        return {"type": "op", "version": self.version, "op": self.op, "seq": self.seq, "client": self.client}


class Editor:
    def __init__(self, client: str, *, version: int = 0, text: str = "") -> None:
        self.client = client
        self.version = version
        self.text = text
        # The operation in flight as it was sent (a resend sends it again unchanged), and
        # as it now applies: transformed past what the server accepted before it.
        self.sent: Submission | None = None
        self.flight: Op = []
        self.pending: Op = []
        self.seq = 0

    @property
    def idle(self) -> bool:
        return self.sent is None and not self.pending

    def edit(self, op: Op) -> None:
        """A local edit: shown at once, sent when the operation in flight is acknowledged."""
        self.text = apply(self.text, op)
        self.pending = compose(self.pending, op)

    def send(self) -> Submission | None:
        """The next operation to send, if nothing is in flight and something waits."""
        if self.sent is not None or not self.pending:
            return None
        self.seq += 1
        self.sent = Submission(self.client, self.seq, self.version, self.pending)
        self.flight, self.pending = self.pending, []
        return self.sent

    def receive_op(self, version: int, op: Op, client: str | None = None, seq: int | None = None) -> None:
        """An operation the server accepted: transformed past this client's unacknowledged
        edits (theirs go "left", as the server puts them when they arrive) and applied."""
        assert version == self.version + 1, f"{self.client} at {self.version} got version {version}"
        if self.sent is not None and client == self.client and seq == self.sent.seq:
            self.receive_ack(seq, version)  # its own, read back on a resume
            return
        if self.sent is not None:
            self.flight, op = transform(self.flight, op, "left"), transform(op, self.flight, "right")
        if self.pending:
            self.pending, op = transform(self.pending, op, "left"), transform(op, self.pending, "right")
        self.text = apply(self.text, op)
        self.version = version

    def receive_ack(self, seq: int, version: int) -> None:
        if self.sent is None or seq != self.sent.seq:
            return  # the answer to a resend of an operation acknowledged already
        assert version == self.version + 1, f"{self.client} at {self.version} got the ack of {version}"
        self.sent, self.flight = None, []
        self.version = version


@st.composite
def ops_on(draw: st.DrawFn, length: int) -> Op:
    """A random operation on a text of ``length`` characters: up to three edits, each an
    insert or a delete after a random retain."""
    components: list[Any] = []
    position = 0
    for _ in range(draw(st.integers(1, 3))):
        skip = draw(st.integers(0, length - position))
        components.append(skip)
        position += skip
        if draw(st.booleans()):
            components.append(draw(st.text(alphabet=ALPHABET, min_size=1, max_size=4)))
        else:
            count = draw(st.integers(0, length - position))
            components.append({"d": count})
            position += count
    return op_normalize(components)


@st.composite
def text_and_two_ops(draw: st.DrawFn) -> tuple[str, Op, Op]:
    text = draw(st.text(alphabet=ALPHABET, max_size=12))
    return text, draw(ops_on(len(text))), draw(ops_on(len(text)))
