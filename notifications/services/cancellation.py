"""Cancelling an event that has not gone out yet (``DELETE /api/v1/events/{id}/``, or by
its idempotency key): a send scheduled for later, or one accepted whose fan-out has not
stored its first page.

The event's outbox row is the point of agreement. Every fan-out stores a page under that
row's lock, and only while the row is unprocessed and its cursor is where the page was
planned from (services/fanout.py). The cancel takes the same lock, and marks the row
processed only while nothing was stored (cursor 0). So either the cancel comes first and no
fan-out stores anything after it, or a page was stored first and the cancel is refused.
There is no third way.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from django.db import transaction
from django.utils import timezone

from notifications.models import Event, EventStatus, OutboxMessage

log = logging.getLogger(__name__)


class EventNotFound(Exception):
    """No such event (or no event with that idempotency key for this API key)."""


class EventAlreadySent(Exception):
    """The event's fan-out has begun or is done: it can no longer be cancelled."""


def event_cancel(
    *, event_id: uuid.UUID | None = None, api_key: Any = None, idempotency_key: str | None = None
) -> Event:
    """Cancel the event named by ``event_id``, or by ``idempotency_key`` among ``api_key``'s
    events (a cancelled event stays cancelled: it is answered again). Raises
    EventNotFound, or EventAlreadySent once any of it went out."""
    events = Event.objects.all()
    if event_id is not None:
        found = events.filter(id=event_id).values_list("id", flat=True).first()
    else:
        found = (
            events.filter(api_key=api_key, idempotency_key=idempotency_key)
            .values_list("id", flat=True)
            .first()
        )
    if found is None:
        raise EventNotFound
    with transaction.atomic():
        # The outbox row first, then the event: the order a fan-out takes them in
        # (services/fanout.py), so the two never wait on each other. Waits for a page
        # being stored; a fan-out finding the row held skips it, and the sweep hands the
        # row on again once its lease ends if the cancel was refused.
        outbox = OutboxMessage.objects.select_for_update().filter(event_id=found).first()
        event = Event.objects.select_for_update().get(id=found)
        if event.status == EventStatus.CANCELLED:
            return event
        if outbox is None or outbox.processed_at is not None or outbox.cursor != 0:
            raise EventAlreadySent(
                f"its fan-out has begun: {event.planned_count} recipient(s) planned, status {event.status!r}"
            )
        now = timezone.now()
        OutboxMessage.objects.filter(id=outbox.id).update(processed_at=now, leased_until=None)
        event.status = EventStatus.CANCELLED
        event.completed_at = now
        event.save(update_fields=["status", "completed_at"])
    log.info("event cancelled", extra={"event_id": str(event.id), "send_at": str(event.send_at)})
    return event
