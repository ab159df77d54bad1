"""Firmware images and staged rollouts.

An image is stored with its SHA-256. A rollout offers it to the active devices of the
image's kind (and of one group, if given) in stages of cumulative percentages, e.g.
``[5, 50, 100]``: the devices in a shuffled order that stays the same for the rollout
(``selectors_firmware.rollout_order_key``), stage *i* covering the first
``ceil(pct_i / 100 * N)`` of them. A device already running the version is counted as
succeeded without an offer.

An offer is published at QoS 1 on ``devices/{key}/firmware``::

    {"rollout": id, "version", "sha256", "size", "url", "expires_at"}

``url`` is ``{PUBLIC_URL}/iot/firmware/{token}/`` (iot/firmware_views.py), the token a
signature (``django.core.signing``, SECRET_KEY) of the firmware and the device valid for
``LINK_SECONDS``: a device can fetch only what it was offered, and only for a while.
PUBLIC_URL is https in production, so the image and the link travel encrypted; the
device checks the image against ``sha256`` before flashing it either way.

The device answers on ``devices/{key}/firmware/status`` with ``{"rollout", "version",
"ok", "detail"?}``; the ingest hands that to ``firmware_report``. When every device of the
current stage has answered, the stage is judged, under a lock on the rollout's row: more
failed than ``failure_threshold`` of the stage stops the rollout (no further offers, the
reason names the stage and its rate); otherwise the next stage's devices are offered, or
the rollout is completed. Offers go out after the commit that created their rows.

``rollouts_check`` (a beat task) sends again the offers the broker did not take, and
counts the devices of a stage that stay silent for ``STAGE_TIMEOUT_SECONDS`` after the
stage began as failed, so a rollout never waits forever on a dead device. A device that
reports after that is still recorded on the device (its firmware version), not on the
stage that was judged without it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core import signing
from django.db import IntegrityError, transaction
from django.db.models import Min, Q
from django.utils import timezone

from iot.models import Device, Firmware, Rollout, RolloutDevice, RolloutStatus, UpdateStatus
from iot.selectors_firmware import rollout_devices, rollout_order_key, stage_counts
from iot.services.broker import BrokerUnavailable
from iot.services.devices import KIND_PATTERN
from iot.services.publisher import publish_many
from iot.services.quarantine import quarantine_add
from notifications.services.validation import ValidationFailed

logger = logging.getLogger(__name__)

FIRMWARE_MAX_BYTES = 64 * 1024 * 1024
VERSION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
NOTES_MAX = 10_000
DEFAULT_STAGES = (5, 50, 100)
STAGES_MAX = 20
LINK_SECONDS = 3600
LINK_SALT = "iot.firmware.link"
# A row's ``detail`` while its offer has not reached the broker (rollouts_check resends).
OFFER_NOT_SENT = "offer not sent"
STAGE_TIMEOUT_SECONDS = 3600.0
RESEND_AFTER_SECONDS = 60.0
REPORT_MAX_BYTES = 4096


def firmware_topic(key: str) -> str:
    return f"devices/{key}/firmware"


# --- images -------------------------------------------------------------------------------------


def firmware_errors(*, kind: Any, version: Any, image: Any, notes: Any) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    if not isinstance(kind, str) or not KIND_PATTERN.fullmatch(kind):
        errors["kind"] = [
            f"{kind!r}: a device kind: lowercase letters, digits, _ . - (at most 64), starting with a letter or digit"
        ]
    if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version):
        errors["version"] = [
            f"{str(version)[:80]!r}: letters, digits and . _ + - (at most 64), starting with a letter or digit"
        ]
    elif "kind" not in errors and Firmware.objects.filter(kind=kind, version=version).exists():
        errors["version"] = [f"{kind} version {version} exists already; give the new image a new version"]
    if not isinstance(image, bytes | bytearray | memoryview):
        errors["image"] = ["must be the image's bytes"]
    elif len(image) == 0:
        errors["image"] = ["the image is empty"]
    elif len(image) > FIRMWARE_MAX_BYTES:
        errors["image"] = [
            f"{len(image)} bytes: at most {FIRMWARE_MAX_BYTES} ({FIRMWARE_MAX_BYTES // 2**20} MB)"
        ]
    if not isinstance(notes, str):
        errors["notes"] = ["must be text"]
    elif len(notes) > NOTES_MAX:
        errors["notes"] = [f"at most {NOTES_MAX} characters"]
    return errors


def firmware_upload(*, kind: Any, version: Any, image: bytes, notes: Any = "") -> Firmware:
    """Store an image with its size and SHA-256. ``ValidationFailed`` names each bad field
    (a kind and version stored already is refused on ``version``)."""
    if errors := firmware_errors(kind=kind, version=version, image=image, notes=notes):
        raise ValidationFailed(errors)
    data = bytes(image)
    try:
        with transaction.atomic():
            return Firmware.objects.create(
                kind=kind,
                version=version,
                image=data,
                size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                notes=notes,
            )
    except IntegrityError:
        # Another upload of the same version won the race.
        raise ValidationFailed({"version": [f"{kind} version {version} exists already"]}) from None


# --- download links -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FirmwareLink:
    token: str
    url: str
    expires_at: datetime


class FirmwareLinkRefused(Exception):
    """A download link that is forged, damaged or expired; ``str()`` says which."""


def firmware_link(firmware: Firmware, device_key: str) -> FirmwareLink:
    """A link for ``device_key`` to fetch ``firmware``, valid for ``LINK_SECONDS``."""
    token = signing.dumps([firmware.pk, device_key], salt=LINK_SALT)
    url = f"{settings.PUBLIC_URL.rstrip('/')}/iot/firmware/{token}/"
    return FirmwareLink(token, url, timezone.now() + timedelta(seconds=LINK_SECONDS))


def firmware_link_open(token: str) -> tuple[Firmware, Device]:
    """The firmware (with its image) and the device a link was made for; raises
    ``FirmwareLinkRefused`` naming the problem."""
    try:
        firmware_id, device_key = signing.loads(token, salt=LINK_SALT, max_age=LINK_SECONDS)
    except signing.SignatureExpired:
        raise FirmwareLinkRefused(
            f"the download link expired (links are valid for {LINK_SECONDS // 60} minutes); wait for a new offer"
        ) from None
    except (signing.BadSignature, ValueError, TypeError):
        raise FirmwareLinkRefused("the download link is not valid: its signature does not match") from None
    device = Device.objects.filter(key=device_key).first()
    if device is None or device.revoked_at is not None:
        raise FirmwareLinkRefused(f"the device {device_key!r} is revoked")
    firmware = Firmware.objects.filter(pk=firmware_id).first()
    if firmware is None:
        raise FirmwareLinkRefused("the firmware of this link was deleted")
    return firmware, device


# --- rollouts -----------------------------------------------------------------------------------


def rollout_errors(
    firmware: Firmware, *, group: Any, stages: Any, failure_threshold: Any
) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    if not isinstance(group, str) or (group and not KIND_PATTERN.fullmatch(group)):
        errors["group"] = [f"{group!r}: a device group, or empty for every device of kind {firmware.kind}"]
    expected = "whole percentages of the devices, strictly increasing, ending at 100, e.g. [5, 50, 100]"
    if (
        not isinstance(stages, list | tuple)
        or not stages
        or len(stages) > STAGES_MAX
        or any(not isinstance(p, int) or isinstance(p, bool) or not 1 <= p <= 100 for p in stages)
    ):
        errors["stages"] = [f"{stages!r}: expected at most {STAGES_MAX} {expected}"]
    elif any(b <= a for a, b in zip(stages, stages[1:], strict=False)) or stages[-1] != 100:
        errors["stages"] = [f"{list(stages)!r}: expected {expected}"]
    if (
        not isinstance(failure_threshold, int | float)
        or isinstance(failure_threshold, bool)
        or not 0 <= failure_threshold <= 1
    ):
        errors["failure_threshold"] = [
            f"{failure_threshold!r}: expected the share of a stage's devices that may fail, from 0 to 1 (0.1 = 10%)"
        ]
    if "group" not in errors and not rollout_devices(Rollout(firmware=firmware, group=group)).exists():
        where = f" in group {group}" if group else ""
        errors["group" if group else "firmware"] = [f"no active {firmware.kind} device{where} to update"]
    if "group" not in errors:
        rivals = Rollout.objects.filter(firmware__kind=firmware.kind, status=RolloutStatus.RUNNING)
        if group:
            rivals = rivals.filter(Q(group="") | Q(group=group))
        if rival := rivals.order_by("id").first():
            errors["firmware"] = [
                f"rollout {rival.pk} to {firmware.kind} devices{' of group ' + rival.group if rival.group else ''} "
                "is running; cancel it or wait for it to finish"
            ]
    return errors


def _stage_rows(rollout: Rollout, stage: int, now: datetime) -> list[int]:
    """Create the rows of ``stage``'s devices not in the rollout yet; returns the ids of
    those to offer (a device on the version already is recorded as succeeded)."""
    targets = sorted(
        rollout_devices(rollout).values_list("id", "key", "firmware_version"),
        key=lambda device: rollout_order_key(rollout.pk, device[1]),
    )
    covered = targets[: stage_counts(len(targets), rollout.stages)[stage]]
    present = set(RolloutDevice.objects.filter(rollout=rollout).values_list("device_id", flat=True))
    version = rollout.firmware.version
    rows = [
        RolloutDevice(
            rollout=rollout,
            device_id=device_id,
            stage=stage,
            offered_at=now,
            status=UpdateStatus.SUCCEEDED if running == version else UpdateStatus.OFFERED,
            reported_at=now if running == version else None,
            detail=f"already runs {version}" if running == version else f"{OFFER_NOT_SENT} yet",
        )
        for device_id, _key, running in covered
        if device_id not in present
    ]
    RolloutDevice.objects.bulk_create(rows)
    return [row.pk for row in rows if row.status == UpdateStatus.OFFERED]


def _offers_send(row_ids: Sequence[int]) -> int:
    """Publish the offers of ``row_ids`` (rows still offered); returns how many the broker
    took. Those it did not keep ``detail`` = "offer not sent: why" for rollouts_check."""
    rows = list(
        RolloutDevice.objects.filter(pk__in=row_ids, status=UpdateStatus.OFFERED)
        .select_related("device", "rollout__firmware")
        .defer("rollout__firmware__image")
        .order_by("id")
    )
    if not rows:
        return 0
    messages = []
    for row in rows:
        firmware = row.rollout.firmware
        link = firmware_link(firmware, row.device.key)
        body = {
            "rollout": row.rollout_id,
            "version": firmware.version,
            "sha256": firmware.sha256,
            "size": firmware.size,
            "url": link.url,
            "expires_at": link.expires_at.isoformat(),
        }
        messages.append((firmware_topic(row.device.key), json.dumps(body, separators=(",", ":")).encode()))
    try:
        outcomes = publish_many(messages, qos=1)
    except BrokerUnavailable as error:
        outcomes = [str(error)] * len(rows)
    sent = [row.pk for row, outcome in zip(rows, outcomes, strict=True) if outcome is None]
    RolloutDevice.objects.filter(
        pk__in=sent, status=UpdateStatus.OFFERED, detail__startswith=OFFER_NOT_SENT
    ).update(detail="")
    for row, outcome in zip(rows, outcomes, strict=True):
        if outcome is not None:
            logger.warning("firmware offer to %s not sent: %s", row.device.key, outcome)
            RolloutDevice.objects.filter(pk=row.pk, status=UpdateStatus.OFFERED).update(
                detail=f"{OFFER_NOT_SENT}: {outcome}"[:300]
            )
    return len(sent)


def _settle(rollout_id: int, *, now: datetime) -> None:
    """Judge the rollout's current stage if every device of it has answered: stop, move on
    (offering the next stage after the commit) or complete. Under a lock on the rollout's
    row, so two last answers arriving together advance it once."""
    to_offer: list[int] = []
    changed = False
    with transaction.atomic():
        rollout = (
            Rollout.objects.select_for_update(of=("self",))
            .select_related("firmware")
            .defer("firmware__image")
            .get(pk=rollout_id)
        )
        while rollout.status == RolloutStatus.RUNNING:
            stage = rollout.current_stage
            rows = RolloutDevice.objects.filter(rollout=rollout, stage=stage)
            # A device revoked while offered will never answer: it does not hold the stage.
            waiting = rows.filter(status=UpdateStatus.OFFERED, device__revoked_at__isnull=True).exists()
            if waiting:
                break
            changed = True
            total = rows.exclude(status=UpdateStatus.OFFERED).count()
            failed = rows.filter(status=UpdateStatus.FAILED).count()
            if total and failed / total > rollout.failure_threshold:
                rollout.status = RolloutStatus.STOPPED
                rollout.finished_at = now
                rollout.reason = (
                    f"stage {stage + 1} of {len(rollout.stages)} ({rollout.stages[stage]}% of the devices): "
                    f"{failed} of {total} devices failed ({failed / total:.0%}), "
                    f"above the {rollout.failure_threshold:.0%} threshold"
                )[:300]
                break
            if stage + 1 >= len(rollout.stages):
                rollout.status = RolloutStatus.COMPLETED
                rollout.finished_at = now
                break
            rollout.current_stage = stage + 1
            to_offer += _stage_rows(rollout, stage + 1, now)
        if changed:
            rollout.save(update_fields=["status", "finished_at", "reason", "current_stage"])
        if to_offer:
            transaction.on_commit(lambda: _offers_send(to_offer))


def rollout_start(
    firmware: Firmware,
    *,
    group: Any = "",
    stages: Any = DEFAULT_STAGES,
    failure_threshold: Any = 0.1,
) -> Rollout:
    """Start offering ``firmware`` to its kind's devices stage by stage; returns the
    rollout, its first stage's rows made (offers go out after the commit). Raises
    ``ValidationFailed`` on ``group``, ``stages``, ``failure_threshold`` or ``firmware``
    (no device to update, or a rollout to the same devices running)."""
    stages = list(stages) if isinstance(stages, tuple) else stages
    if errors := rollout_errors(firmware, group=group, stages=stages, failure_threshold=failure_threshold):
        raise ValidationFailed(errors)
    now = timezone.now()
    with transaction.atomic():
        rollout = Rollout.objects.create(
            firmware=firmware,
            group=group,
            stages=stages,
            failure_threshold=float(failure_threshold),
            created_at=now,
        )
        to_offer = _stage_rows(rollout, 0, now)
        rollout_id = rollout.pk

        def after_commit() -> None:
            _offers_send(to_offer)
            # A first stage whose devices all run the version already is judged at once.
            _settle(rollout_id, now=timezone.now())

        transaction.on_commit(after_commit)
    return rollout


def _report_read(payload: bytes) -> tuple[int, str, bool, str]:
    if len(payload) > REPORT_MAX_BYTES:
        raise ValueError(f"report of {len(payload)} bytes, at most {REPORT_MAX_BYTES}")
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"not JSON: {error}") from None
    if not isinstance(body, dict):
        raise ValueError('expected an object {"rollout", "version", "ok", "detail"}')
    rollout_id, version, ok, detail = (
        body.get("rollout"),
        body.get("version"),
        body.get("ok"),
        body.get("detail", ""),
    )
    if not isinstance(rollout_id, int) or isinstance(rollout_id, bool) or rollout_id <= 0:
        raise ValueError(f"rollout: expected the offer's rollout id, got {rollout_id!r}"[:300])
    if not isinstance(version, str):
        raise ValueError(f"version: expected the offered version, got {version!r}"[:300])
    if not isinstance(ok, bool):
        raise ValueError(f"ok: expected true or false, got {ok!r}"[:300])
    if detail is None:
        detail = ""
    if not isinstance(detail, str):
        raise ValueError(f"detail: expected text, got {type(detail).__name__}")
    return rollout_id, version, ok, detail


def firmware_report(device_key: str, payload: bytes, *, topic: str) -> None:
    """Record a device's answer to an offer and judge its stage when it was the last one.
    Unreadable reports are quarantined; a report for a rollout that did not offer to this
    device is ignored (logged); repeats change nothing. A success sets the device's
    ``firmware_version``, even when the rollout was stopped or cancelled meanwhile."""
    device_id = Device.objects.filter(key=device_key).values_list("id", flat=True).first()
    try:
        rollout_id, version, ok, detail = _report_read(payload)
    except ValueError as error:
        quarantine_add(device_id, topic, payload, f"firmware report: {error}")
        return
    row = (
        RolloutDevice.objects.filter(rollout_id=rollout_id, device_id=device_id)
        .select_related("rollout__firmware")
        .defer("rollout__firmware__image")
        .first()
        if device_id is not None
        else None
    )
    if row is None:
        logger.warning(
            "firmware report of %s for rollout %s, which did not offer to it, ignored", device_key, rollout_id
        )
        return
    offered = row.rollout.firmware.version
    if ok and version != offered:
        ok, detail = False, f"reported version {version!r} while {offered!r} was offered"
    now = timezone.now()
    if ok:
        Device.objects.filter(pk=row.device_id).exclude(firmware_version=version).update(
            firmware_version=version
        )
    changed = RolloutDevice.objects.filter(pk=row.pk, status=UpdateStatus.OFFERED).update(
        status=UpdateStatus.SUCCEEDED if ok else UpdateStatus.FAILED, reported_at=now, detail=detail[:300]
    )
    if changed:
        _settle(rollout_id, now=now)


def rollout_cancel(rollout: Rollout, *, reason: str = "cancelled by staff") -> Rollout:
    """Stop a running rollout: no further offers (devices offered already may still update
    and report). Cancelling a cancelled rollout changes nothing; a finished one is refused
    with ``ValidationFailed`` on ``status``."""
    changed = Rollout.objects.filter(pk=rollout.pk, status=RolloutStatus.RUNNING).update(
        status=RolloutStatus.CANCELLED, finished_at=timezone.now(), reason=reason[:300]
    )
    rollout.refresh_from_db(fields=["status", "finished_at", "reason"])
    if not changed and rollout.status != RolloutStatus.CANCELLED:
        raise ValidationFailed(
            {"status": [f"the rollout is {rollout.status}; only a running rollout can be cancelled"]}
        )
    return rollout


def rollouts_check(
    *, now: datetime, stage_timeout: float = STAGE_TIMEOUT_SECONDS, resend_after: float = RESEND_AFTER_SECONDS
) -> int:
    """For each running rollout: send again the offers the broker did not take (older than
    ``resend_after``), count the current stage's devices silent ``stage_timeout`` after the
    stage began as failed, and judge the stage. Returns offers resent + devices failed."""
    done = 0
    for rollout_id, stage in Rollout.objects.filter(status=RolloutStatus.RUNNING).values_list(
        "id", "current_stage"
    ):
        unsent = RolloutDevice.objects.filter(
            rollout_id=rollout_id,
            status=UpdateStatus.OFFERED,
            detail__startswith=OFFER_NOT_SENT,
            offered_at__lte=now - timedelta(seconds=resend_after),
        )
        done += _offers_send(list(unsent.values_list("id", flat=True)))
        rows = RolloutDevice.objects.filter(rollout_id=rollout_id, stage=stage)
        began = rows.aggregate(began=Min("offered_at"))["began"]
        if began is not None and began <= now - timedelta(seconds=stage_timeout):
            # Offers the broker never took are not the device's fault: they wait for a resend.
            done += (
                rows.filter(status=UpdateStatus.OFFERED)
                .exclude(detail__startswith=OFFER_NOT_SENT)
                .update(
                    status=UpdateStatus.FAILED,
                    reported_at=now,
                    detail=f"no report within {stage_timeout:g} s",
                )
            )
        _settle(rollout_id, now=now)
    return done
