"""Thin Celery tasks of gaming: the matchmaking pass, every second from beat."""

from __future__ import annotations

from celery import shared_task

from gaming.modes import MODES
from gaming.services.matchmaking import matchmaking_run


@shared_task
def matchmaking_task() -> dict[str, int]:
    """Form what matches the searching tickets of every mode allow; matches formed per mode."""
    return {mode: len(matchmaking_run(mode=mode)) for mode in MODES}
