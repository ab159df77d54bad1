"""Thin Celery tasks: ids in, call a service (docs/architecture.md, "Layers"). All are idempotent, so
``acks_late`` redelivery after a crash is safe."""

from __future__ import annotations

from celery import shared_task
from django.db import OperationalError as DatabaseOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from notifications.services.deliveries import inapp_dispatch_batch
from notifications.services.digests import digests_run_due
from notifications.services.dispatch import dispatch_batches_sweep
from notifications.services.fallback import fallback_checks_due
from notifications.services.fanout import event_fanout_next, events_fanout_many
from notifications.services.inbox import inbox_snoozed_wake
from notifications.services.outbox import outbox_sweep
from notifications.services.receipts_poll import receipts_poll_all
from notifications.services.reminders import reminders_run_due
from notifications.services.scheduling import deliveries_release_due
from notifications.services.sending.send import provider_dispatch_batch

# Infrastructure hiccups are retried briefly by Celery; anything longer is left to the
# sweeps, which find the work again in PostgreSQL.
_TRANSIENT = (DatabaseOperationalError, RedisConnectionError, RedisTimeoutError)


@shared_task(autoretry_for=_TRANSIENT, retry_backoff=1, retry_backoff_max=30, max_retries=5)
def event_fanout_task(outbox_id: int) -> int:
    return event_fanout_next(outbox_id=outbox_id).recipients


@shared_task(autoretry_for=_TRANSIENT, retry_backoff=1, retry_backoff_max=30, max_retries=5)
def events_fanout_many_task(outbox_ids: list[int]) -> int:
    return events_fanout_many(outbox_ids=outbox_ids).recipients


@shared_task(autoretry_for=_TRANSIENT, retry_backoff=1, retry_backoff_max=30, max_retries=5)
def inapp_dispatch_task(batch_id: int) -> int:
    return inapp_dispatch_batch(batch_id=batch_id)


@shared_task(autoretry_for=_TRANSIENT, retry_backoff=1, retry_backoff_max=30, max_retries=5)
def provider_dispatch_task(batch_id: int, channel: str, chunk: int | None = None) -> int:
    return provider_dispatch_batch(batch_id=batch_id, channel=channel, chunk=chunk)


@shared_task
def outbox_sweep_task() -> int:
    return outbox_sweep()


@shared_task
def deliveries_sweep_task() -> int:
    return deliveries_release_due() + dispatch_batches_sweep() + fallback_checks_due()


@shared_task
def inbox_snooze_sweep_task() -> int:
    return inbox_snoozed_wake()


@shared_task
def reminders_sweep_task() -> int:
    return reminders_run_due()


@shared_task
def digests_sweep_task() -> int:
    return digests_run_due()


@shared_task
def receipts_poll_task() -> int:
    return receipts_poll_all()
