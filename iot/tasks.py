"""Thin Celery tasks of the IoT app: the periodic sweeps of commands, rollouts, partitions
and no-data rules."""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from iot.services.commands import commands_time_out
from iot.services.firmware import rollouts_check
from iot.services.partitions import partitions_maintain
from iot.services.rules import rules_no_data_sweep


@shared_task
def commands_time_out_task() -> int:
    return commands_time_out(now=timezone.now())


@shared_task
def rollouts_check_task() -> int:
    return rollouts_check(now=timezone.now())


@shared_task
def partitions_task() -> dict[str, list[str]]:
    """Make the time series' partitions ahead and drop the expired ones (the ingest makes
    the ones it needs too, iot/services/partitions.py)."""
    changes = partitions_maintain(timezone.now())
    return {"created": changes.created, "dropped": changes.dropped}


@shared_task
def no_data_sweep_task() -> int:
    """No-data alerts while no ingest runs its own sweep (iot/services/ingest.py)."""
    return rules_no_data_sweep(now=timezone.now())
