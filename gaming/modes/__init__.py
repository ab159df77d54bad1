"""The game modes the platform runs, by key (gaming/modes/base.py says what a mode is)."""

from __future__ import annotations

from gaming.modes.arena import Arena
from gaming.modes.base import GameMode

MODES: dict[str, type[GameMode]] = {Arena.key: Arena}


def mode_get(key: str) -> GameMode:
    """A fresh instance of the mode ``key``; KeyError when there is none."""
    return MODES[key]()
