"""Start and stop real processes for end-to-end tests, benchmarks and ``manage.py run_platform``.

Everything here talks to real services and real subprocesses (DESIGN.md section 2 and 6):
private Redis instances for fault tests, throwaway PostgreSQL databases, and the platform's
own web server, Celery workers and beat.
"""

from harness.processes import (
    DEFAULT_WORKERS,
    ManagedProcess,
    PlatformProcesses,
    PrivateRedis,
    TemporaryDatabase,
    WorkerSpec,
    free_port,
    wait_for_http,
    wait_for_port,
    wait_until,
)

__all__ = [
    "DEFAULT_WORKERS",
    "ManagedProcess",
    "PlatformProcesses",
    "PrivateRedis",
    "TemporaryDatabase",
    "WorkerSpec",
    "free_port",
    "wait_for_http",
    "wait_for_port",
    "wait_until",
]
