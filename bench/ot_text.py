"""The client side of ShareDB's "text" OT type, as far as P7's OT writer and reader need
it: an editing-trace operation as a text operation, composing operations held while one
is in flight, and applying one to a text.

Operations are lists of components walked over the text from its start: an int retains
that many characters, a string inserts itself, ``{"d": n}`` deletes n characters; they
are normalized (no empty component, no two of one kind in a row, no trailing retain), as
``/ws/docs/{key}/ot`` requires (collaboration/services/ot.py holds the server's own copy of
the type: the benchmark's client must not borrow the server's code).
"""

from __future__ import annotations

from typing import Any

Component = Any  # int | str | dict[str, int]
Op = list[Component]


def _append(op: Op, component: Component) -> None:
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


def _trim(op: Op) -> Op:
    if op and isinstance(op[-1], int):
        op.pop()
    return op


def op_at(position: int, *, insert: str = "", delete: int = 0) -> Op:
    """Delete ``delete`` characters at ``position`` and insert ``insert`` there."""
    op: Op = []
    for component in (position, {"d": delete}, insert):
        _append(op, component)
    return _trim(op)


def apply(text: str, op: Op) -> str:
    """``text`` with ``op`` applied (ValueError when the operation walks past its end)."""
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
        if position > len(text):
            raise ValueError(f"operation walks to {position}, past the text's {len(text)} characters")
    parts.append(text[position:])
    return "".join(parts)


class _Cursor:
    def __init__(self, op: Op) -> None:
        self.op = op
        self.index = 0
        self.offset = 0

    def take(self, n: int = -1) -> Component:
        """Up to ``n`` characters' worth of the current component (a delete whole); past
        the end a retain of n, or None when n is -1."""
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
            if n == -1 or len(component) - self.offset <= n:
                part = component[self.offset :]
                self.index, self.offset = self.index + 1, 0
                return part
            part = component[self.offset : self.offset + n]
            self.offset += n
            return part
        self.index, self.offset = self.index + 1, 0
        return {"d": component["d"]}


def compose(first: Op, second: Op) -> Op:
    """One operation with the effect of ``first`` then ``second``."""
    result: Op = []
    cursor = _Cursor(first)
    for component in second:
        if isinstance(component, int):
            length = component
            while length > 0:
                chunk = cursor.take(length)
                _append(result, chunk)
                if not isinstance(chunk, dict):
                    length -= chunk if isinstance(chunk, int) else len(chunk)
        elif isinstance(component, str):
            _append(result, component)
        else:
            length = component["d"]
            while length > 0:
                chunk = cursor.take(length)
                if isinstance(chunk, int):
                    _append(result, {"d": chunk})
                    length -= chunk
                elif isinstance(chunk, str):
                    length -= len(chunk)  # inserted by first, deleted by second
                else:
                    _append(result, chunk)
    while (rest := cursor.take()) is not None:
        _append(result, rest)
    return _trim(result)
