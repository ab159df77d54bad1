"""Presence's periodic work (thin: the service does it)."""

from __future__ import annotations

from celery import shared_task

from presence.services import last_seen_flush, presence_sweep


@shared_task(name="presence.tasks.last_seen_flush_task")
def last_seen_flush_task() -> int:
    return last_seen_flush()


@shared_task(name="presence.tasks.presence_sweep_task")
def presence_sweep_task() -> int:
    return presence_sweep()
