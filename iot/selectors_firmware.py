"""Reading firmware rollouts: which devices a stage covers, and how each stage stands."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from django.db.models import Count, QuerySet

from iot.models import Device, Rollout, RolloutDevice, RolloutStatus, UpdateStatus


def stage_counts(total: int, stages: Sequence[int]) -> list[int]:
    """How many of ``total`` devices each stage covers, cumulatively: ``ceil(pct/100 *
    total)``, at least one more than the stage before while devices remain."""
    counts: list[int] = []
    before = 0
    for percent in stages:
        wanted = -(-percent * total // 100)  # ceil without floats
        before = min(total, max(wanted, before + 1))
        counts.append(before)
    return counts


def rollout_devices(rollout: Rollout) -> QuerySet[Device]:
    """The devices the rollout is for now: active devices of its firmware's kind (and of
    its group, when it has one)."""
    devices = Device.objects.filter(kind=rollout.firmware.kind, revoked_at__isnull=True)
    if rollout.group:
        devices = devices.filter(group=rollout.group)
    return devices


def rollout_order_key(rollout_id: int, device_key: str) -> bytes:
    """A device's place in the rollout's order: shuffled, and the same every time it is
    computed, so that a stage taken later extends the stages before it."""
    return hashlib.sha256(f"{rollout_id}:{device_key}".encode()).digest()


@dataclass(frozen=True)
class StageProgress:
    number: int  # 1-based, as people count stages
    percent: int  # cumulative share of the devices
    target: int  # devices the stage covers (planned from today's devices before it starts)
    offered: int
    succeeded: int
    failed: int
    pending: int
    current: bool

    def share(self, count: int) -> float:
        """``count`` as a percentage of the stage's devices, for a progress bar."""
        base = max(self.target, self.offered)
        return round(100.0 * count / base, 1) if base else 0.0

    @property
    def succeeded_share(self) -> float:
        return self.share(self.succeeded)

    @property
    def failed_share(self) -> float:
        return self.share(self.failed)

    @property
    def pending_share(self) -> float:
        return self.share(self.pending)


def rollout_progress(rollout: Rollout) -> list[StageProgress]:
    """Each stage: devices covered, offered, succeeded, failed and still pending. One
    GROUP BY over the rollout's devices and one COUNT of its target."""
    counts: dict[tuple[int, str], int] = {
        (row["stage"], row["status"]): row["n"]
        for row in RolloutDevice.objects.filter(rollout=rollout)
        .values("stage", "status")
        .annotate(n=Count("id"))
        .order_by()
    }
    cumulative = stage_counts(rollout_devices(rollout).count(), rollout.stages)
    progress: list[StageProgress] = []
    before = 0
    for index, percent in enumerate(rollout.stages):
        succeeded = counts.get((index, UpdateStatus.SUCCEEDED), 0)
        failed = counts.get((index, UpdateStatus.FAILED), 0)
        pending = counts.get((index, UpdateStatus.OFFERED), 0)
        progress.append(
            StageProgress(
                number=index + 1,
                percent=percent,
                target=cumulative[index] - before,
                offered=succeeded + failed + pending,
                succeeded=succeeded,
                failed=failed,
                pending=pending,
                current=rollout.status == RolloutStatus.RUNNING and index == rollout.current_stage,
            )
        )
        before = cumulative[index]
    return progress
