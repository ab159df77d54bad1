"""Provisioning devices: a row here and a client with its role in the broker, together.

A device's password is made here, handed out once (the API's answer, the admin's page
after saving) and kept only as the broker's salted hash. The broker is changed last inside
the transaction: when it refuses, nothing of the device is stored; when the commit fails
after it accepted, the broker holds a client with no device, which the next broker start
drops (iot/services/broker.py builds the broker's clients from the database).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from iot.models import DEVICE_KEY_PATTERN, Device, DeviceStatus
from iot.services.broker import (
    DeviceCredential,
    PasswordHash,
    broker_settings,
    device_password_new,
    dynamic_security,
    password_hash,
)
from iot.services.rules import rule_states_for_new_device
from notifications.services.validation import ValidationFailed

NAME_MAX = 200
KIND_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Provisioned:
    device: Device
    password: str

    def mqtt(self) -> dict[str, Any]:
        """What the device connects with; the password appears here and nowhere else."""
        broker = broker_settings()
        return {
            "host": broker.public_host,
            "port": broker.public_port,
            "username": self.device.key,
            "password": self.password,
            "client_id": self.device.client_id,
            "telemetry_topic": f"devices/{self.device.key}/telemetry",
            "status_topic": f"devices/{self.device.key}/status",
            "commands_topic": f"devices/{self.device.key}/commands",
        }


def _text_errors(value: Any, *, required: bool, pattern: re.Pattern[str] | None, maximum: int) -> list[str]:
    if value is None or value == "":
        return ["this field is required"] if required else []
    if not isinstance(value, str):
        return ["must be a string"]
    if len(value) > maximum:
        return [f"at most {maximum} characters"]
    if pattern is not None and not pattern.fullmatch(value):
        return ["use lowercase letters, digits, _ - (and . in a kind), starting with a letter or digit"]
    return []


def device_errors(*, key: Any, name: Any, kind: Any, group: Any) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    if key_errors := _text_errors(key, required=True, pattern=re.compile(DEVICE_KEY_PATTERN), maximum=64):
        errors["key"] = key_errors
    elif Device.objects.filter(key=key).exists():
        errors["key"] = [f"a device {key!r} exists already (revoked devices keep their key)"]
    if name_errors := _text_errors(name, required=False, pattern=None, maximum=NAME_MAX):
        errors["name"] = name_errors
    if kind_errors := _text_errors(kind, required=True, pattern=KIND_PATTERN, maximum=64):
        errors["kind"] = kind_errors
    if group_errors := _text_errors(group, required=False, pattern=KIND_PATTERN, maximum=64):
        errors["group"] = group_errors
    return errors


def device_provision(*, key: Any, kind: Any, name: Any = "", group: Any = "") -> Provisioned:
    """A new device and its broker client. ``ValidationFailed`` names each bad field;
    ``BrokerUnavailable`` when the broker could not be changed (nothing is stored then)."""
    if errors := device_errors(key=key, name=name, kind=kind, group=group):
        raise ValidationFailed(errors)
    password = device_password_new()
    stored = password_hash(password)
    with transaction.atomic():
        device = Device.objects.create(
            key=key,
            name=name or "",
            kind=kind,
            group=group or "",
            mqtt_password_hash=stored.hash,
            mqtt_salt=stored.salt,
            mqtt_iterations=stored.iterations,
        )
        rule_states_for_new_device(device)
        dynamic_security().device_add(device.key, password)
    return Provisioned(device, password)


def device_credentials_rotate(device: Device) -> Provisioned:
    """A new password for the device; the old one stops working at once."""
    if device.revoked_at is not None:
        raise ValidationFailed({"key": ["the device is revoked"]})
    password = device_password_new()
    stored = password_hash(password)
    with transaction.atomic():
        Device.objects.filter(pk=device.pk).update(
            mqtt_password_hash=stored.hash, mqtt_salt=stored.salt, mqtt_iterations=stored.iterations
        )
        dynamic_security().device_password_set(device.key, password)
    device.refresh_from_db()
    return Provisioned(device, password)


def device_revoke(device: Device) -> Device:
    """Remove the device's broker client (it is disconnected at once) and mark it revoked;
    its readings and alerts stay. Revoking twice is a no-op."""
    with transaction.atomic():
        locked = Device.objects.select_for_update().get(pk=device.pk)
        if locked.revoked_at is None:
            moment = timezone.now()
            locked.revoked_at = moment
            locked.status = DeviceStatus.REVOKED
            locked.status_changed_at = moment
            locked.save(update_fields=["revoked_at", "status", "status_changed_at"])
            dynamic_security().device_remove(locked.key)
    return locked


def device_update(device: Device, *, name: Any = None, group: Any = None) -> Device:
    errors: dict[str, list[str]] = {}
    if name is not None and (
        name_errors := _text_errors(name, required=False, pattern=None, maximum=NAME_MAX)
    ):
        errors["name"] = name_errors
    if group is not None and (
        group_errors := _text_errors(group, required=False, pattern=KIND_PATTERN, maximum=64)
    ):
        errors["group"] = group_errors
    if errors:
        raise ValidationFailed(errors)
    fields = []
    if name is not None:
        device.name = name
        fields.append("name")
    if group is not None:
        device.group = group
        fields.append("group")
    if fields:
        device.save(update_fields=fields)
    return device


def device_credentials_active() -> list[DeviceCredential]:
    """The broker's copy of every device not revoked (iot/services/broker.py)."""
    rows = Device.objects.filter(revoked_at__isnull=True).values_list(
        "key", "mqtt_password_hash", "mqtt_salt", "mqtt_iterations"
    )
    return [
        DeviceCredential(key, PasswordHash(hash_, salt, iterations)) for key, hash_, salt, iterations in rows
    ]
