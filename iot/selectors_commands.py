"""Reading a device's commands, as the API and the admin show them."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from iot.models import Command, Device


def command_of(device: Device, command_id: int) -> Command | None:
    """The command ``command_id`` if it is one of ``device``'s, else None (answer 404)."""
    return Command.objects.filter(device=device, pk=command_id).first()


def commands_of(device: Device, *, limit: int = 100) -> QuerySet[Command]:
    """The device's newest commands first."""
    return Command.objects.filter(device=device).order_by("-id")[:limit]


def command_payload(command: Command) -> dict[str, Any]:
    """A command as the API answers it. ``late``: answered after its time-out."""
    return {
        "id": command.id,
        "name": command.name,
        "params": command.params,
        "status": command.status,
        "created_at": command.created_at.isoformat(),
        "sent_at": command.sent_at.isoformat() if command.sent_at else None,
        "acked_at": command.acked_at.isoformat() if command.acked_at else None,
        "timeout_at": command.timeout_at.isoformat(),
        "late": bool(command.acked_at and command.acked_at > command.timeout_at),
        "ok": command.ok,
        "result": command.result,
        "error": command.error,
    }
