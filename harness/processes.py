"""Real processes for end-to-end tests and benchmarks.

The platform's own processes (web, workers, beat, sandbox) are started, watched and
stopped by ``project.processes``, which ``manage.py run_platform`` uses too; this module
re-exports its names and adds what only tests and benchmarks need: a private Redis, a
throwaway PostgreSQL database, free ports, test-friendly defaults and more waiting
helpers.

Guarantees (with ``project.processes``):
- every process is started in its own session (process group), so stopping or killing it
  also reaches its children (Celery prefork pool processes), and it dies with the process
  that started it (a killed pytest leaves no server behind);
- every process writes to its own log file, which is kept after the process stops;
- context managers stop what they started, also when the body raises, and an ``atexit``
  hook SIGKILLs whatever is still alive when the interpreter exits;
- waiting is polling with a deadline, never a fixed sleep.

Only the standard library and psycopg are used.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar
from urllib.parse import urlsplit, urlunsplit

from project import processes
from project.processes import (
    DEFAULT_WORKERS,
    LOCALHOST,
    REPO_ROOT,
    ManagedProcess,
    Server,
    StartInterrupted,
    WorkerSpec,
    http_status,
    port_is_open,
    proc_stats,
    process_group_members,
    process_group_signal,
    wait_for_http,
    wait_until,
)

__all__ = [
    "DEFAULT_DATABASE_URL",
    "DEFAULT_WORKERS",
    "LOCALHOST",
    "REPO_ROOT",
    "ManagedProcess",
    "PlatformProcesses",
    "PrivateRedis",
    "Server",
    "StartInterrupted",
    "TemporaryDatabase",
    "WorkerSpec",
    "assert_steady",
    "free_port",
    "http_status",
    "port_is_open",
    "proc_stats",
    "wait_for_http",
    "wait_for_port",
    "wait_until",
]

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/notifications"

T = TypeVar("T")

# The names these helpers had before they moved to project.processes.
_live_group_members = process_group_members
_signal_group = process_group_signal


# --- Waiting -------------------------------------------------------------------------------


# Ports for the servers tests start are drawn from below the kernel's ephemeral range
# (net.ipv4.ip_local_port_range, 32768 and up by default): every outgoing connection of
# every process takes its local port from that range, so a port picked there could be
# taken by a Redis or PostgreSQL client between the pick and the server's bind (a run
# once lost a web server to it: "address already in use").
_PORT_FLOOR = 20_000


def _ephemeral_floor() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
            return int(ranges.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_port(host: str = LOCALHOST) -> int:
    """Return a TCP port on ``host`` that nothing is bound to right now, below the
    ephemeral range, picked at random (parallel test processes rarely draw the same one,
    and the bind check skips one that is taken). Falls back to a kernel-chosen port."""
    ceiling = _ephemeral_floor() - 1
    for _ in range(100):
        port = random.randint(_PORT_FLOOR, ceiling) if ceiling > _PORT_FLOOR else 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            chosen: int = sock.getsockname()[1]
            return chosen
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        fallback: int = sock.getsockname()[1]
        return fallback


def assert_steady(
    read: Callable[[], T], seconds: float, interval: float = 0.5, message: str = "changed"
) -> T:
    """Poll ``read`` for ``seconds`` and fail as soon as its value differs from the first:
    proves that nothing more happens (no late duplicate), which waiting for a condition
    cannot. Returns the steady value."""
    first = read()
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        time.sleep(min(interval, remaining))
        current = read()
        if current != first:
            raise AssertionError(f"{message}: {first!r} -> {current!r}")
    return first


def wait_for_port(host: str, port: int, timeout: float) -> None:
    """Return once ``host:port`` accepts TCP connections; TimeoutError otherwise."""
    wait_until(
        lambda: port_is_open(host, port),
        timeout,
        message=f"nothing listening on {host}:{port}",
    )


# --- Private Redis ---------------------------------------------------------------------------


def _redis_ping(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class PrivateRedis:
    """A redis-server of our own on a free port, for tests that stop or flush Redis.

    ``stop()`` and ``kill()`` leave the port reserved in this object: ``start()`` brings a
    fresh, empty server back on the same port ("Redis down, then back"). Never touches the
    machine's shared Redis.
    """

    def __init__(self, port: int | None = None, *, start_timeout: float = 10.0) -> None:
        self.host = LOCALHOST
        self.port = port if port is not None else free_port()
        self.start_timeout = start_timeout
        self.directory = Path(tempfile.mkdtemp(prefix=f"private-redis-{self.port}-"))
        self.process = ManagedProcess(
            f"redis-{self.port}",
            [
                shutil.which("redis-server") or "redis-server",
                "--port",
                str(self.port),
                "--bind",
                self.host,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            log_path=self.directory / "redis.log",
            cwd=self.directory,
        )

    @property
    def url(self) -> str:
        return self.url_for(0)

    def url_for(self, db: int) -> str:
        """The URL of logical database ``db`` on this server."""
        return f"redis://{self.host}:{self.port}/{db}"

    def ping(self) -> bool:
        """True when the server answers PING."""
        return _redis_ping(self.host, self.port)

    def start(self) -> None:
        """Start the server (again, on the same port) and return once it answers PING."""
        self.process.start()

        def answers() -> bool:
            if not self.process.alive:
                raise RuntimeError(f"redis-server on port {self.port} exited:\n{self.process.log_tail()}")
            return self.ping()

        wait_until(
            answers, self.start_timeout, message=f"private redis on port {self.port} did not answer PING"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server with SIGTERM (SIGKILL after ``timeout``); its data is gone."""
        self.process.stop(timeout)

    def kill(self) -> None:
        """Kill the server with SIGKILL, as a crash would."""
        self.process.kill(signal.SIGKILL)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.process.stop(5.0)
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


# --- Temporary PostgreSQL database -------------------------------------------------------------


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


class TemporaryDatabase:
    """A uniquely named PostgreSQL database, migrated, dropped (WITH (FORCE)) on exit.

    The server comes from ``server_url`` (default: the server in ``DATABASE_URL``, else
    postgres@127.0.0.1:5432). ``template`` clones an already migrated database instead of
    migrating, which is much faster for benchmarks that need many databases.
    """

    def __init__(
        self,
        *,
        prefix: str = "tmp_e2e",
        server_url: str | None = None,
        migrate: bool = True,
        template: str | None = None,
        env: Mapping[str, str] | None = None,
        migrate_timeout: float = 300.0,
    ) -> None:
        base = server_url or os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
        self.name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:10]}"
        self.url = _with_database(base, self.name)
        self.admin_url = _with_database(base, "postgres")
        self.migrate = migrate and template is None
        self.template = template
        self.env = dict(env) if env is not None else {}
        self.migrate_timeout = migrate_timeout
        self.created = False

    def _admin(self, statement: str, *identifiers: str) -> None:
        import psycopg
        from psycopg import sql

        query = sql.SQL(statement).format(*(sql.Identifier(identifier) for identifier in identifiers))
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10) as connection:
            connection.execute(query)

    def create(self) -> None:
        """Create (and migrate, unless a template is given) the database."""
        if self.template is not None:
            self._admin("CREATE DATABASE {} TEMPLATE {}", self.name, self.template)
        else:
            self._admin("CREATE DATABASE {}", self.name)
        self.created = True
        if self.migrate:
            self.run_manage("migrate", "--noinput", timeout=self.migrate_timeout)

    def run_manage(self, *args: str, timeout: float = 300.0) -> str:
        """Run ``manage.py <args>`` against this database; return its output.

        RuntimeError, carrying the output, when the command fails.
        """
        env = {**os.environ, **self.env, "DATABASE_URL": self.url}
        completed = subprocess.run(
            [sys.executable, str(REPO_ROOT / "manage.py"), *args],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
        output = completed.stdout.decode("utf-8", errors="replace")
        if completed.returncode != 0:
            raise RuntimeError(
                f"manage.py {' '.join(args)} failed on database {self.name} "
                f"(exit {completed.returncode}):\n{output[-5000:]}"
            )
        return output

    def drop(self) -> None:
        """Drop the database, disconnecting anyone still connected."""
        if self.created:
            self._admin("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)
            self.created = False

    def __enter__(self) -> Self:
        try:
            self.create()
        except BaseException:
            self.drop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.drop()


# --- The platform: web, workers, beat ------------------------------------------------------------


class PlatformProcesses(processes.PlatformProcesses):
    """``project.processes.PlatformProcesses`` with defaults for tests: a free port, logs
    in a new temporary directory (kept for debugging) unless ``log_dir`` is given, and web
    processes that fan out nearby as in production (FANOUT_NEARBY) unless ``env`` says;
    ``uvicorn_ws`` replaces the platform's uvicorn websocket protocol (one process)."""

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        server: Server = "uvicorn",
        port: int | None = None,
        workers: Iterable[WorkerSpec] = DEFAULT_WORKERS,
        log_dir: Path | str | None = None,
        python: str = sys.executable,
        cwd: Path = REPO_ROOT,
        loglevel: str | None = None,
        web_timeout: float = 60.0,
        worker_timeout: float = 60.0,
        stop_timeout: float = 15.0,
        web_processes: int = 1,
        uvicorn_ws: str | None = None,
    ) -> None:
        # uvicorn's websocket protocol instead of the platform's (benchmarks measure the
        # one uvicorn ships beside it).
        self.uvicorn_ws = uvicorn_ws
        super().__init__(
            {"FANOUT_NEARBY": "1", **(env or {})},
            port=port if port is not None else free_port(),
            log_dir=log_dir if log_dir is not None else tempfile.mkdtemp(prefix="platform-logs-"),
            server=server,
            workers=workers,
            python=python,
            cwd=cwd,
            loglevel=loglevel,
            web_timeout=web_timeout,
            worker_timeout=worker_timeout,
            stop_timeout=stop_timeout,
            web_processes=web_processes,
        )

    def _web_argv(self) -> list[str]:
        argv = super()._web_argv()
        if self.uvicorn_ws is not None and self.server == "uvicorn":
            argv[argv.index("--ws") + 1] = self.uvicorn_ws
        return argv
