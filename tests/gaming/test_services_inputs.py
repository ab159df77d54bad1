"""The match server's input gate (gaming/services/inputs.py): sequence numbers only go up,
and a player sending faster than the mode allows has the excess dropped and counted."""

from __future__ import annotations

from typing import Any

import pytest

from gaming.modes.base import InputRefused
from gaming.services.inputs import PlayerInputs


@pytest.mark.parametrize("seq", [None, 0, -1, 1.5, "3", True, 2**53])
def test_a_frame_without_a_usable_sequence_number_is_refused(seq: Any) -> None:
    gate = PlayerInputs(rate=60)
    with pytest.raises(InputRefused, match="seq: must be a whole number above 0"):
        gate.admit({"seq": seq}, now=0.0)
    assert gate.dropped == {"seq": 1}


def test_a_late_or_repeated_frame_is_dropped() -> None:
    gate = PlayerInputs(rate=60)
    assert gate.admit({"seq": 5}, now=0.0) == 5
    gate.applied(5)
    for seq in (5, 4):
        with pytest.raises(InputRefused, match="seq: must be above 5"):
            gate.admit({"seq": seq}, now=0.1)
    assert gate.admit({"seq": 9}, now=0.2) == 9  # gaps are fine: lost frames are superseded
    assert gate.dropped == {"seq": 2}


def test_inputs_beyond_the_rate_are_dropped_after_a_short_burst_and_allowed_again_later() -> None:
    gate = PlayerInputs(rate=60)
    admitted = 0
    for seq in range(1, 101):  # 100 frames at once
        try:
            gate.admit({"seq": seq}, now=10.0)
            gate.applied(seq)
            admitted += 1
        except InputRefused as refused:
            assert refused.field == "rate"
    assert admitted == 15  # a quarter of a second's worth
    assert gate.dropped == {"rate": 85}
    # a second later the bucket is full again, and a steady 60 a second passes
    steady = 0
    for n in range(60):
        gate.admit({"seq": 200 + n}, now=11.0 + n / 60)
        steady += 1
    assert steady == 60
