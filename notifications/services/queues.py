"""The one door from services to Celery: work is enqueued by task name.

``notifications/tasks.py`` is an interface over the services (ids in, call a service), so
the services never import it; they name the task here instead. Enqueueing never raises
for a broker outage: the work is already durable in PostgreSQL (an outbox row, an open
dispatch batch) and the sweeps enqueue it again, so a failure is reported as False.
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.exceptions import KombuError, OperationalError
from redis import RedisError

from project.celery import app

log = logging.getLogger(__name__)

# Task names (notifications/tasks.py registers them under these names).
EVENT_FANOUT = "notifications.tasks.event_fanout_task"
INAPP_DISPATCH = "notifications.tasks.inapp_dispatch_task"
PROVIDER_DISPATCH = "notifications.tasks.provider_dispatch_task"

_registered = False


def _task(name: str) -> Any:
    global _registered
    if not _registered:
        # Registers every app's tasks module (Celery's autodiscovery) the first time work
        # is enqueued from a process that is not a worker (the web server, a command).
        app.loader.import_default_modules()
        _registered = True
    return app.tasks[name]


def enqueue(name: str, *, args: tuple[Any, ...], queue: str | None = None) -> bool:
    """Hand one task to the broker now; False (logged) when the broker did not take it."""
    options: dict[str, Any] = {"retry": False}
    if queue is not None:
        options["queue"] = queue
    try:
        _task(name).apply_async(args=args, **options)
    except (KombuError, OperationalError, RedisError, OSError) as exc:
        log.warning("broker unavailable, %s%r not enqueued (a sweep will): %s", name, args, exc)
        return False
    return True
