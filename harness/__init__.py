"""Start and stop real processes for end-to-end tests and benchmarks.

Everything here talks to real services and real subprocesses: private Redis instances for
fault tests, throwaway PostgreSQL databases, and the platform's own web server, Celery
workers and beat (started the way ``manage.py run_platform`` starts them, through
``project.processes``). The platform's own code never imports this package.
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
