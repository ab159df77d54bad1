"""What a game mode is: a Python class the match server drives (gaming/modes/arena.py is
the one that ships). A second game is a new class registered in gaming/modes/__init__.py,
not a new server.

The server owns the state; clients send inputs only. For every input frame the server
calls ``validate_input`` (which refuses with an ``InputRefused`` naming the field and the
problem: the server drops the input and counts it), then ``apply_input`` on the next
tick, then ``step`` once per tick at ``tick_rate``. ``snapshot`` is what a client needs to
draw the whole match; ``delta`` between two snapshots is what it needs to follow it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar


class Refused(Exception):
    """Something the game refuses: ``field`` names what was wrong, ``reason`` says how."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class InputRefused(Refused):
    """An input the server drops (and counts)."""


@dataclass(frozen=True)
class Standing:
    """One player's place in a finished match: rank 1 is the best; equal ranks are a draw."""

    player: str
    rank: int
    score: int
    forfeited: bool = False


@dataclass
class Result:
    standings: list[Standing]
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "standings": [
                {"player": s.player, "rank": s.rank, "score": s.score, "forfeited": s.forfeited}
                for s in self.standings
            ],
            **self.detail,
        }


class GameMode(ABC):
    """The small interface of a game. A mode holds no state of its own: the state object
    it returns from ``initial_state`` is passed back to every other call."""

    key: ClassVar[str]
    title: ClassVar[str]
    tick_rate: ClassVar[int] = 20
    min_players: ClassVar[int] = 2
    max_players: ClassVar[int] = 10
    # Inputs a player may send per second; more are dropped as too fast.
    max_inputs_per_second: ClassVar[int] = 60

    @abstractmethod
    def initial_state(self, players: list[str], *, seed: int) -> Any:
        """The state of a new match between ``players`` (their external ids)."""

    @abstractmethod
    def validate_input(self, state: Any, player: str, frame: dict[str, Any]) -> Any:
        """The input ``frame`` (the client's ``{"type": "input", "seq", ...}``) checked
        against what ``player`` may do now; raises InputRefused."""

    @abstractmethod
    def apply_input(self, state: Any, player: str, command: Any) -> None:
        """Apply a validated input (what ``validate_input`` returned)."""

    @abstractmethod
    def step(self, state: Any, dt: float) -> None:
        """Advance the match by one tick of ``dt`` seconds."""

    @abstractmethod
    def is_over(self, state: Any) -> bool: ...

    @abstractmethod
    def result(self, state: Any) -> Result: ...

    @abstractmethod
    def forfeit(self, state: Any, player: str) -> None:
        """``player`` left for good (did not come back within the grace period)."""

    @abstractmethod
    def snapshot(self, state: Any) -> dict[str, Any]:
        """Everything a client needs to draw the match, as JSON-ready values."""


# --- deltas between snapshots -------------------------------------------------------------------


def delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What changed from ``before`` to ``after``, two snapshots: a changed scalar as itself;
    for a collection (a dict of entities by id), each added or changed entity's changed
    fields under ``set`` and the ids gone under ``del``. ``apply_delta(before, d)``
    gives ``after`` back."""
    changes: dict[str, Any] = {}
    for key, value in after.items():
        old = before.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            set_: dict[str, Any] = {}
            for entity, fields in value.items():
                previous = old.get(entity)
                if not isinstance(fields, dict) or not isinstance(previous, dict):
                    if fields != previous:
                        set_[entity] = fields
                    continue
                changed = {f: v for f, v in fields.items() if previous.get(f) != v}
                gone = [f for f in previous if f not in fields]
                if gone:
                    set_[entity] = fields  # a field removed: send the entity whole
                elif changed:
                    set_[entity] = changed
            removed = [entity for entity in old if entity not in value]
            if set_ or removed:
                changes[key] = {"set": set_, "del": removed}
        elif old != value or key not in before:
            changes[key] = value
    return changes


def apply_delta(before: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``before`` with ``changes`` (from ``delta``) applied; ``before`` is left alone."""
    after = dict(before)
    for key, value in changes.items():
        old = before.get(key)
        if isinstance(value, dict) and set(value) == {"set", "del"} and isinstance(old, dict):
            merged = {
                entity: dict(fields) if isinstance(fields, dict) else fields for entity, fields in old.items()
            }
            for entity in value["del"]:
                merged.pop(entity, None)
            for entity, fields in value["set"].items():
                current = merged.get(entity)
                if isinstance(current, dict) and isinstance(fields, dict):
                    current.update(fields)
                else:
                    merged[entity] = dict(fields) if isinstance(fields, dict) else fields
            after[key] = merged
        else:
            after[key] = value
    return after


def finite_number(frame: dict[str, Any], name: str, low: float, high: float) -> float:
    """``frame[name]`` as a float within [low, high], or InputRefused naming it."""
    value = frame.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputRefused(name, "must be a number")
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise InputRefused(name, f"must be between {low:g} and {high:g}")
    return number
