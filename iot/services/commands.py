"""Commands to devices: stored, published at QoS 1, tracked until the device answers.

A command is stored (``pending``) and committed before it is published on
``devices/{key}/commands`` as ``{"id", "name", "params"}``, so the device's answer on
``devices/{key}/commands/ack`` (``{"id", "ok", "result"}``, read by the ingest) always
finds it. Once the broker acknowledged it, it is ``sent``; when the broker could not be
reached it is ``failed`` with the reason and stays listed (the API answers 503 with it).

Every state change is a compare-and-set, so an answer that overtakes the ``sent`` mark,
a redelivered answer and the time-out sweep cannot undo each other:

- the first answer of the device wins: ``acked`` when ok, ``failed`` when not; repeats of
  it (QoS 1 redelivery) change nothing;
- an answer after the time-out is still recorded: the command becomes ``acked`` (or
  ``failed``) and ``acked_at`` later than ``timeout_at`` shows it came late (the
  selectors call it ``late``);
- a device can only answer its own commands: an id of another device's command is
  ignored (and logged), whatever the payload says.

Callers must not hold a transaction open around ``command_send``: the command must be
committed before the device can answer it, and publishing is slow I/O.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from iot.models import Command, CommandStatus, Device
from iot.services.broker import BrokerUnavailable
from iot.services.publisher import publish
from iot.services.quarantine import quarantine_add
from notifications.services.validation import ValidationFailed

logger = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,99}")
PARAMS_MAX_BYTES = 8192
# An answer bigger than this is not stored (it is quarantined as unreadable).
ACK_MAX_BYTES = 65_536


def commands_topic(key: str) -> str:
    return f"devices/{key}/commands"


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def command_errors(device: Device, *, name: Any, params: Any) -> dict[str, list[str]]:
    """What is wrong with a command, by field; empty when it may be sent."""
    errors: dict[str, list[str]] = {}
    if name is None or name == "":
        errors["name"] = ["this field is required"]
    elif not isinstance(name, str):
        errors["name"] = [f"must be a string, got {type(name).__name__}"]
    elif not NAME_PATTERN.fullmatch(name):
        errors["name"] = [
            f"{name[:120]!r}: use letters, digits and _ . : - (at most 100), starting with a letter or _"
        ]
    if params is not None:
        if not isinstance(params, dict):
            errors["params"] = [f"must be a JSON object, got {type(params).__name__}"]
        else:
            try:
                size = len(_compact(params).encode())
            except (TypeError, ValueError) as error:
                errors["params"] = [f"must be JSON: {error}"]
            else:
                if size > PARAMS_MAX_BYTES:
                    errors["params"] = [f"at most {PARAMS_MAX_BYTES} bytes as JSON, got {size}"]
    if device.revoked_at is not None:
        errors["device"] = [f"the device {device.key!r} is revoked"]
    return errors


def command_send(device: Device, *, name: Any, params: Any) -> Command:
    """Store a command for ``device`` and publish it; returns the command, ``sent`` when
    the broker acknowledged it, ``failed`` (with ``error``) when the broker was
    unreachable. ``ValidationFailed`` names each bad field (``name``, ``params``,
    ``device``) and nothing is stored then. ``params`` None stands for ``{}``."""
    if errors := command_errors(device, name=name, params=params):
        raise ValidationFailed(errors)
    created = timezone.now()
    with transaction.atomic():
        command = Command.objects.create(
            device=device,
            name=name,
            params=params or {},
            status=CommandStatus.PENDING,
            created_at=created,
            timeout_at=created + timedelta(seconds=settings.IOT_COMMAND_TIMEOUT_SECONDS),
        )
    body = _compact({"id": command.id, "name": command.name, "params": command.params}).encode()
    try:
        publish(commands_topic(device.key), body, qos=1)
    except BrokerUnavailable as error:
        fields: dict[str, Any] = {"status": CommandStatus.FAILED, "error": f"not sent: {error}"[:500]}
    else:
        fields = {"status": CommandStatus.SENT, "sent_at": timezone.now()}
    # Only from pending: the device may have answered already.
    Command.objects.filter(pk=command.pk, status=CommandStatus.PENDING).update(**fields)
    command.refresh_from_db()
    return command


def _ack_read(payload: bytes) -> tuple[int, bool, Any]:
    """``(id, ok, result)`` of an answer; ValueError saying what is wrong."""
    if len(payload) > ACK_MAX_BYTES:
        raise ValueError(f"answer of {len(payload)} bytes, at most {ACK_MAX_BYTES}")
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"not JSON: {error}") from None
    if not isinstance(body, dict):
        raise ValueError('expected an object {"id", "ok", "result"}')
    command_id, ok = body.get("id"), body.get("ok")
    if not isinstance(command_id, int) or isinstance(command_id, bool) or command_id <= 0:
        raise ValueError(f"id: expected a command id (a positive integer), got {command_id!r}"[:300])
    if not isinstance(ok, bool):
        raise ValueError(f"ok: expected true or false, got {ok!r}"[:300])
    return command_id, ok, body.get("result")


def command_ack(device_key: str, payload: bytes, *, topic: str) -> None:
    """Record a device's answer to one of its commands (see the module's rules). An
    unreadable answer is quarantined on the device; never raises for a bad payload."""
    device_id = Device.objects.filter(key=device_key).values_list("id", flat=True).first()
    try:
        command_id, ok, result = _ack_read(payload)
    except ValueError as error:
        quarantine_add(device_id, topic, payload, f"command answer: {error}")
        return
    if device_id is None:
        logger.warning("command answer from unknown device %r ignored", device_key)
        return
    changed = Command.objects.filter(pk=command_id, device_id=device_id, acked_at__isnull=True).update(
        status=CommandStatus.ACKED if ok else CommandStatus.FAILED,
        acked_at=timezone.now(),
        ok=ok,
        result=result,
        error="" if ok else "the device reported failure",
    )
    if not changed and not Command.objects.filter(pk=command_id, device_id=device_id).exists():
        logger.warning(
            "device %s answered command %s, which is not one of its commands", device_key, command_id
        )


def commands_time_out(*, now: datetime) -> int:
    """Mark the commands still waiting for their answer past ``timeout_at`` (``sent``, and
    ``pending`` ones whose sender died before publishing) as ``timed_out``; returns how
    many. One UPDATE over the ``(status, timeout_at)`` index."""
    return Command.objects.filter(
        status__in=[CommandStatus.SENT, CommandStatus.PENDING], timeout_at__lte=now
    ).update(status=CommandStatus.TIMED_OUT, error="no answer from the device before its time-out")
