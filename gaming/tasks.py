"""Thin Celery tasks of gaming: the matchmaking pass, every second from beat, and the end
of matches whose match server died."""

from __future__ import annotations

from celery import shared_task

from gaming.modes import MODES
from gaming.services.matchmaking import matchmaking_run
from gaming.services.placement import matches_orphaned_abort


@shared_task
def matchmaking_task() -> dict[str, int]:
    """Form what matches the searching tickets of every mode allow; matches formed per mode."""
    return {mode: len(matchmaking_run(mode=mode)) for mode in MODES}


@shared_task
def orphans_task() -> int:
    """Matches whose server stopped beating, ended as aborted (their players are told)."""
    return matches_orphaned_abort()
