"""The match server's gate in front of a mode's ``validate_input``: each player's inputs
must come with a sequence number above the last one applied (a late or repeated frame is
dropped) and no faster than the mode's ``max_inputs_per_second`` (a token bucket that
allows a short burst of a quarter of a second's worth)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gaming.modes.base import InputRefused

MAX_SEQ = 2**53  # what a JavaScript number holds exactly


@dataclass
class PlayerInputs:
    rate: float
    last_seq: int = 0
    tokens: float = field(default=-1.0)
    refilled_at: float = 0.0
    dropped: dict[str, int] = field(default_factory=dict)

    def admit(self, frame: dict[str, Any], now: float) -> int:
        """The frame's ``seq`` if it may go on to the mode; InputRefused otherwise (and the
        refusal is counted under its field)."""
        try:
            seq = frame.get("seq")
            if isinstance(seq, bool) or not isinstance(seq, int) or not 0 < seq < MAX_SEQ:
                raise InputRefused("seq", "must be a whole number above 0")
            if seq <= self.last_seq:
                raise InputRefused("seq", f"must be above {self.last_seq}, the last one applied")
            burst = max(1.0, self.rate / 4)
            if self.tokens < 0:
                self.tokens, self.refilled_at = burst, now
            self.tokens = min(burst, self.tokens + (now - self.refilled_at) * self.rate)
            self.refilled_at = now
            if self.tokens < 1:
                raise InputRefused("rate", f"more than {self.rate:g} inputs a second")
            self.tokens -= 1
        except InputRefused as refused:
            self.count(refused)
            raise
        return seq

    def applied(self, seq: int) -> None:
        self.last_seq = seq

    def count(self, refused: InputRefused) -> None:
        self.dropped[refused.field] = self.dropped.get(refused.field, 0) + 1
