"""The one door from services to Celery: work is enqueued by task name.

``notifications/tasks.py`` is an interface over the services (ids in, call a service), so
the services never import it; they name the task here instead. Enqueueing never raises
for a broker outage: the work is already durable in PostgreSQL (an outbox row, an open
dispatch batch) and the sweeps enqueue it again, so a failure is reported as False.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from kombu.exceptions import ChannelError, KombuError, OperationalError
from redis import RedisError

from project.celery import app

log = logging.getLogger(__name__)

# Task names (notifications/tasks.py registers them under these names).
EVENT_FANOUT = "notifications.tasks.event_fanout_task"
EVENTS_FANOUT_MANY = "notifications.tasks.events_fanout_many_task"
INAPP_DISPATCH = "notifications.tasks.inapp_dispatch_task"
PROVIDER_DISPATCH = "notifications.tasks.provider_dispatch_task"
# The queue of campaign traffic (services/campaigns.py): its fan-out pages and its provider
# sends, consumed by a worker of its own, so a campaign never delays a password reset.
CAMPAIGN_QUEUE = "campaign"


def enqueue(
    name: str, *, args: tuple[Any, ...], queue: str | None = None, countdown: float | None = None
) -> bool:
    """Hand one task to the broker now; False (logged) when the broker did not take it.

    Where the task is registered (a worker; tests, which run tasks eagerly) it is sent as
    that task, with its own options; elsewhere (the web server, a command) by name alone,
    which needs nothing imported and routes by CELERY_TASK_ROUTES all the same."""
    options: dict[str, Any] = {"retry": False}
    if queue is not None:
        options["queue"] = queue
    if countdown:
        options["countdown"] = countdown
    task = app.tasks.get(name)
    try:
        if task is not None:
            task.apply_async(args=args, **options)
        else:
            app.send_task(name, args=args, **options)
    except (KombuError, OperationalError, RedisError, OSError) as exc:
        log.warning("broker unavailable, %s%r not enqueued (a sweep will): %s", name, args, exc)
        return False
    return True


def queue_depths(names: Iterable[str]) -> dict[str, int]:
    """Messages waiting in each named queue, as the broker counts them (Redis or RabbitMQ);
    a queue the broker does not know yet counts 0. Raises when the broker is down."""
    depths: dict[str, int] = {}
    with app.connection_for_read() as connection:
        for name in names:
            # A channel per queue: RabbitMQ closes a channel on which a passive declare of
            # an unknown queue failed.
            channel: Any = connection.channel()
            try:
                depths[name] = int(channel.queue_declare(queue=name, passive=True).message_count)
            except ChannelError:
                depths[name] = 0
            finally:
                channel.close()
    return depths
