"""The platform's processes as children of one supervisor: ``manage.py run_platform`` (what
``make run`` execs) starts, watches and stops them with ``PlatformProcesses``; the test
harness (``harness.processes``) builds on the same classes.

Guarantees:
- each child runs in a process group of its own, so that a signal to the group reaches the
  child's own children too (Celery pool processes), and the supervisor alone decides when
  a child stops;
- a child dies with the process that started it (``PR_SET_PDEATHSIG`` on Linux): a
  supervisor killed with SIGKILL leaves no web server answering on its port and no worker
  taking tasks. Celery's pool processes get the same from ``project.celery``;
- stopping is bounded: SIGTERM to every group at once, SIGKILL to whatever is left when
  most of the budget is spent, and ``stop_all`` returns within its budget;
- every child writes stdout and stderr to its own log file, kept after it stops; an
  ``atexit`` hook SIGKILLs the children still alive when the interpreter exits;
- waiting is polling with a deadline, never a fixed sleep.

Standard library only, and no Django: ``project`` is the lowest layer (it imports no app),
so children are started by their command line and configured by their environment.
"""

from project.processes.children import (
    REPO_ROOT,
    ManagedProcess,
    die_with_parent,
    proc_stats,
    process_group_members,
    process_group_signal,
)
from project.processes.platform import (
    DEFAULT_WEB_PROCESSES,
    DEFAULT_WORKERS,
    KILL_RESERVE_SECONDS,
    WORKER_READY_FILE_VARIABLE,
    PlatformProcesses,
    Server,
    WorkerSpec,
)
from project.processes.signals import StartInterrupted, StopSignals
from project.processes.waiting import LOCALHOST, http_status, port_is_open, wait_for_http, wait_until

__all__ = [
    "DEFAULT_WEB_PROCESSES",
    "DEFAULT_WORKERS",
    "KILL_RESERVE_SECONDS",
    "LOCALHOST",
    "REPO_ROOT",
    "WORKER_READY_FILE_VARIABLE",
    "ManagedProcess",
    "PlatformProcesses",
    "Server",
    "StartInterrupted",
    "StopSignals",
    "WorkerSpec",
    "die_with_parent",
    "http_status",
    "port_is_open",
    "proc_stats",
    "process_group_members",
    "process_group_signal",
    "wait_for_http",
    "wait_until",
]
