"""The Celery application. Queues: fanout, inapp, periodic, default (later: email, sms, push,
webhook, campaign), so that each class of work scales and fails on its own.

Two signal handlers serve whoever supervises the workers (``project.processes``): a worker
tells it is ready through a file, and the pool processes of a prefork worker die with it.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import task_postrun, worker_init, worker_process_init, worker_ready
from django.db import close_old_connections
from kombu.exceptions import OperationalError as BrokerUnavailable

from project.processes import WORKER_READY_FILE_VARIABLE, die_with_parent
from project.processes.heap import heap_freeze

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

app = Celery("project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

log = logging.getLogger(__name__)

# The worker's main process, recorded before it forks its pool (each pool process inherits
# the value): a pool process compares it with its parent to see that it was orphaned.
_worker_pid: int | None = None


@worker_init.connect
def worker_pid_remember(sender: Any = None, **kwargs: Any) -> None:
    global _worker_pid
    _worker_pid = os.getpid()


@worker_init.connect
def broker_queues_declare(sender: Any = None, **kwargs: Any) -> None:
    """On RabbitMQ, declare every queue of ``task_queues`` (quorum queues and their topic
    exchanges, project/settings/base.py) before the worker's consumer starts.

    Each worker binds every queue to Celery's native delayed-delivery exchange when it
    starts; a queue that nobody had declared yet (its worker not started) cannot be bound,
    which Celery logs as critical, and a countdown retry routed to it would be dropped. A
    broker that is down now is not fatal: the consumer keeps reconnecting and declares its
    own queues when it gets through."""
    with app.connection_for_write() as connection:
        if connection.transport.driver_type != "amqp":
            return
        try:
            channel = connection.default_channel
            for queue in app.amqp.queues.values():
                queue.bind(channel).declare()
        except (BrokerUnavailable, OSError) as exc:
            log.warning("queues not declared before the worker started (broker unavailable): %s", exc)


@worker_process_init.connect
def pool_process_die_with_worker(sender: Any = None, **kwargs: Any) -> None:
    """A pool process outliving its worker (killed with SIGKILL, say) would hold its task
    and its connections while nobody hands it work; the kernel kills it instead. Its task
    goes back to the queue (acks_late). A worker without pool processes (``--pool solo``)
    runs its tasks itself and is left alone: its supervisor is its parent."""
    if os.getpid() == _worker_pid:
        return
    die_with_parent(signal.SIGKILL, parent_pid=_worker_pid)


@worker_process_init.connect
def pool_process_heap_freeze(sender: Any = None, **kwargs: Any) -> None:
    """A pool process starts with the worker's whole setup (Django, the apps, their tasks):
    the collector need not walk it again and again (project/processes/heap.py)."""
    heap_freeze()


@task_postrun.connect
def database_connection_return(sender: Any = None, **kwargs: Any) -> None:
    """After each task, give the database connection back to the process's pool (or drop
    it if it broke) without closing the pool: CELERY_DB_REUSE_MAX keeps Celery's fixup
    from reconnecting for every task (project/settings/base.py). A task run eagerly, in
    its caller's process and maybe inside its transaction, leaves the connection alone."""
    if sender is not None and getattr(sender.request, "is_eager", False):
        return
    close_old_connections()


@worker_ready.connect
def worker_ready_file_write(sender: Any = None, **kwargs: Any) -> None:
    """Write the worker's pid to the file named by ``WORKER_READY_FILE`` once it consumes,
    so that readiness never depends on log levels or formats."""
    # A worker without pool processes (``--pool solo``) runs its tasks itself.
    heap_freeze()
    path = os.environ.get(WORKER_READY_FILE_VARIABLE)
    if path:
        Path(path).write_text(f"{os.getpid()}\n")
