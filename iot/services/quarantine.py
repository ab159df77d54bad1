"""Payloads that could not be read: counted on their device and kept, the newest
``IOT_QUARANTINE_PER_DEVICE`` of each device, for staff to look at (admin, the device's
API answer). Never raises into the ingest for a bad payload: a bad payload is data."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from django.conf import settings
from django.db import connection
from django.db.models import F

from iot.models import Device, QuarantinedPayload

# What is kept of one payload.
PAYLOAD_KEPT_BYTES = 4096


@dataclass(frozen=True)
class Malformed:
    device_id: int | None
    topic: str
    payload: bytes
    error: str


def quarantine_many(items: Sequence[Malformed]) -> None:
    """Store ``items``, count them on their devices and trim each device's quarantine.
    Runs in the caller's transaction."""
    if not items:
        return
    QuarantinedPayload.objects.bulk_create(
        [
            QuarantinedPayload(
                device_id=item.device_id,
                topic=item.topic[:300],
                payload=item.payload[:PAYLOAD_KEPT_BYTES],
                payload_bytes=len(item.payload),
                error=item.error[:500],
            )
            for item in items
        ]
    )
    per_device = Counter(item.device_id for item in items if item.device_id is not None)
    for device_id, count in sorted(per_device.items()):
        Device.objects.filter(pk=device_id).update(malformed_count=F("malformed_count") + count)
    keep = settings.IOT_QUARANTINE_PER_DEVICE
    with connection.cursor() as cursor:
        # The rows past the newest `keep` of each device touched (and of no device).
        cursor.execute(
            "DELETE FROM iot_quarantinedpayload q USING ("
            " SELECT id FROM (SELECT id, row_number() OVER (PARTITION BY device_id ORDER BY id DESC) AS n"
            "  FROM iot_quarantinedpayload WHERE device_id = ANY(%s) OR (device_id IS NULL AND %s)) ranked"
            " WHERE n > %s) old WHERE q.id = old.id",
            [list(per_device), any(item.device_id is None for item in items), keep],
        )


def quarantine_add(device_id: int | None, topic: str, payload: bytes, error: str) -> None:
    quarantine_many([Malformed(device_id, topic, payload, error)])
