"""The game modes the platform runs, by key (gaming/modes/base.py says what a mode is)."""

from __future__ import annotations

from django.conf import settings

from gaming.modes.arena import Arena
from gaming.modes.base import GameMode

MODES: dict[str, type[GameMode]] = {Arena.key: Arena}


def mode_get(key: str) -> GameMode:
    """A fresh instance of the mode ``key`` with its settings; KeyError when there is none."""
    if key == Arena.key:
        return Arena(round_seconds=settings.GAMING_ARENA_ROUND_SECONDS)
    return MODES[key]()
