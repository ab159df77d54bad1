"""The y-websocket protocol's messages (y-protocols: sync, awareness), read strictly.

Each binary websocket message starts with a variable-length unsigned integer naming its
kind; a sync message then names its step and carries one length-prefixed update or state
vector; an awareness message carries one length-prefixed awareness update (a count, then
per client its id, clock and state as JSON text). Reading a message that is truncated, has
bytes left over or names an unknown kind raises ``ProtocolError``: the socket that sent it
is closed, and nothing else (collaboration/consumers.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pycrdt import write_var_uint

MESSAGE_SYNC = 0
MESSAGE_AWARENESS = 1
MESSAGE_AUTH = 2
MESSAGE_QUERY_AWARENESS = 3

SYNC_STEP1 = 0
SYNC_STEP2 = 1
SYNC_UPDATE = 2

# A variable-length integer never needs more than JavaScript's safe integers (53 bits).
_MAX_VAR_UINT_BYTES = 8


class ProtocolError(ValueError):
    """A message that is not a well-formed y-websocket message."""


@dataclass(frozen=True)
class Sync:
    step: int  # SYNC_STEP1 (payload: a state vector), SYNC_STEP2 or SYNC_UPDATE (an update)
    payload: bytes


@dataclass(frozen=True)
class Awareness:
    payload: bytes  # an awareness update, as relayed to peers


@dataclass(frozen=True)
class QueryAwareness:
    pass


Message = Sync | Awareness | QueryAwareness


@dataclass(frozen=True)
class AwarenessEntry:
    client_id: int
    clock: int
    state: Any  # None: the client left


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def var_uint(self, what: str) -> int:
        value = 0
        for index in range(_MAX_VAR_UINT_BYTES):
            if self.at >= len(self.data):
                raise ProtocolError(f"{what}: message ends inside a number")
            byte = self.data[self.at]
            self.at += 1
            value |= (byte & 0x7F) << (7 * index)
            if byte < 0x80:
                return value
        raise ProtocolError(f"{what}: number longer than {_MAX_VAR_UINT_BYTES} bytes")

    def var_bytes(self, what: str) -> bytes:
        length = self.var_uint(f"{what} length")
        end = self.at + length
        if end > len(self.data):
            raise ProtocolError(f"{what}: says {length} bytes, {len(self.data) - self.at} follow")
        chunk = self.data[self.at : end]
        self.at = end
        return chunk

    def end(self, what: str) -> None:
        if self.at != len(self.data):
            raise ProtocolError(f"{what}: {len(self.data) - self.at} bytes left over")


def parse(message: bytes) -> Message:
    """The message a client sent (``ProtocolError`` naming what is wrong with it)."""
    reader = _Reader(message)
    kind = reader.var_uint("message type")
    parsed: Message
    if kind == MESSAGE_SYNC:
        step = reader.var_uint("sync step")
        if step not in (SYNC_STEP1, SYNC_STEP2, SYNC_UPDATE):
            raise ProtocolError(f"sync step: unknown step {step}")
        parsed = Sync(step, reader.var_bytes("sync payload"))
    elif kind == MESSAGE_AWARENESS:
        payload = reader.var_bytes("awareness update")
        awareness_entries(payload)  # checked before it is relayed to anyone
        parsed = Awareness(payload)
    elif kind == MESSAGE_QUERY_AWARENESS:
        parsed = QueryAwareness()
    else:
        raise ProtocolError(f"message type: unknown type {kind}")
    reader.end("message")
    return parsed


def _var_bytes(data: bytes) -> bytes:
    return write_var_uint(len(data)) + data


def sync_step1(state_vector: bytes) -> bytes:
    return write_var_uint(MESSAGE_SYNC) + write_var_uint(SYNC_STEP1) + _var_bytes(state_vector)


def sync_step2(update: bytes) -> bytes:
    return write_var_uint(MESSAGE_SYNC) + write_var_uint(SYNC_STEP2) + _var_bytes(update)


def sync_update(update: bytes) -> bytes:
    return write_var_uint(MESSAGE_SYNC) + write_var_uint(SYNC_UPDATE) + _var_bytes(update)


def awareness_message(payload: bytes) -> bytes:
    return write_var_uint(MESSAGE_AWARENESS) + _var_bytes(payload)


# y-protocols' auth message says "permission denied" with this, then the reason.
_PERMISSION_DENIED = 0


def permission_denied(reason: str) -> bytes:
    """The auth message a Yjs client logs as permission denied, with ``reason``."""
    return (
        write_var_uint(MESSAGE_AUTH) + write_var_uint(_PERMISSION_DENIED) + _var_bytes(reason.encode("utf-8"))
    )


def awareness_entries(payload: bytes) -> list[AwarenessEntry]:
    """The clients an awareness update speaks of (``ProtocolError`` if it is malformed)."""
    reader = _Reader(payload)
    count = reader.var_uint("awareness count")
    entries: list[AwarenessEntry] = []
    for _ in range(count):
        client_id = reader.var_uint("awareness client id")
        clock = reader.var_uint("awareness clock")
        raw = reader.var_bytes("awareness state")
        try:
            state = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ProtocolError(f"awareness state of client {client_id}: not JSON text") from None
        entries.append(AwarenessEntry(client_id, clock, state))
    reader.end("awareness update")
    return entries


def awareness_update(entries: list[AwarenessEntry]) -> bytes:
    """An awareness update holding ``entries`` (a state of None says the client left)."""
    out = bytearray(write_var_uint(len(entries)))
    for entry in entries:
        out += write_var_uint(entry.client_id)
        out += write_var_uint(entry.clock)
        out += _var_bytes(json.dumps(entry.state, separators=(",", ":")).encode("utf-8"))
    return bytes(out)
