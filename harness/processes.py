"""Real processes for end-to-end tests, benchmarks and ``manage.py run_platform``.

Guarantees:
- every process is started in its own session (process group), so stopping or killing it
  also reaches its children (Celery prefork pool processes, uvicorn reloaders);
- every process writes to its own log file, which is kept after the process stops;
- context managers stop what they started, also when the body raises, and an ``atexit``
  hook SIGKILLs whatever is still alive when the interpreter exits;
- waiting is polling with a deadline, never a fixed sleep.

Only the standard library and psycopg are used.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self, TypeVar
from urllib.parse import urlsplit, urlunsplit

from harness.celery_ready import READY_FILE_VARIABLE

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCALHOST = "127.0.0.1"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/notifications"

T = TypeVar("T")
Server = Literal["uvicorn", "daphne"]


# --- Waiting -------------------------------------------------------------------------------


def free_port(host: str = LOCALHOST) -> int:
    """Return a TCP port on ``host`` that nothing listens on right now.

    The kernel picks it; another process could take it before ours binds, which is rare
    enough for tests (ports are not reused immediately).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float,
    interval: float = 0.05,
    message: str = "condition not met",
) -> T:
    """Call ``predicate`` until it returns a truthy value, and return that value.

    Raises ``TimeoutError(message)`` when ``timeout`` seconds pass first. Exceptions from the
    predicate propagate at once, so a predicate can abort the wait (a process died).
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{message} (after {timeout:.1f}s)")
        time.sleep(min(interval, remaining))


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


def port_is_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Return True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float) -> None:
    """Return once ``host:port`` accepts TCP connections; TimeoutError otherwise."""
    wait_until(
        lambda: port_is_open(host, port),
        timeout,
        message=f"nothing listening on {host}:{port}",
    )


def http_status(url: str, timeout: float = 2.0) -> int:
    """GET ``url`` once and return the HTTP status, or 0 when nothing answered.

    Uses http.client rather than httpx so that polling writes no "HTTP Request" log lines
    into the output of whoever is waiting.
    """
    parts = urlsplit(url)
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_class(parts.hostname or LOCALHOST, parts.port, timeout=timeout)
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    except (OSError, http.client.HTTPException):
        return 0
    finally:
        connection.close()


def wait_for_http(
    url: str,
    timeout: float,
    *,
    alive: Callable[[], bool] | None = None,
) -> int:
    """Poll ``url`` with GET until it answers with any HTTP status, and return the status.

    ``alive`` (optional) is checked between attempts: when it returns False the wait stops
    with RuntimeError instead of running into the timeout (the server process died).
    """

    def answered() -> int:
        if alive is not None and not alive():
            raise RuntimeError(f"the process serving {url} exited before it answered")
        return http_status(url)

    return wait_until(answered, timeout, interval=0.1, message=f"no HTTP answer from {url}")


# --- One process -----------------------------------------------------------------------------

_live_lock = threading.Lock()
_live: set[ManagedProcess] = set()


def _kill_leftovers() -> None:
    with _live_lock:
        leftovers = list(_live)
    for process in leftovers:
        process.send_signal(signal.SIGKILL)


atexit.register(_kill_leftovers)


def proc_stats() -> Iterator[tuple[int, list[str]]]:
    """(pid, fields of /proc/<pid>/stat after the command name: state ppid pgrp ...) for
    every process that is still there when read (Linux)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        yield int(entry.name), stat[stat.rfind(")") + 2 :].split()


def _live_group_members(pgid: int) -> list[int]:
    """Pids in process group ``pgid`` that are not zombies."""
    return [
        pid for pid, fields in proc_stats() if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid
    ]


def _signal_group(pid: int, sig: int) -> None:
    """Send ``sig`` to the process group led by ``pid``; a group already gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class ManagedProcess:
    """One subprocess in its own process group, writing stdout and stderr to ``log_path``.

    It can be started again after it stopped (same command, same log file, appended).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path = REPO_ROOT,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else dict(os.environ)
        self.cwd = cwd
        self.popen: subprocess.Popen[bytes] | None = None
        # Where this run's output starts in the (appended) log file.
        self.log_offset = 0
        self.expected_exit = False

    def __repr__(self) -> str:
        return f"<ManagedProcess {self.name} pid={self.pid} alive={self.alive}>"

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll() if self.popen is not None else None

    def start(self) -> None:
        """Start the process; RuntimeError when it is already running."""
        if self.alive:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.log_offset = log.tell()
            log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.expected_exit = False
        with _live_lock:
            _live.add(self)

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the whole process group (the process and its children)."""
        if self.popen is not None:
            _signal_group(self.popen.pid, sig)

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the process to exit and return its code, or None after ``timeout``."""
        if self.popen is None:
            return None
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._forget()
        return code

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 10.0) -> int | None:
        """Send ``sig`` to the group and wait for the process to exit; return its code."""
        self.expected_exit = True
        self.send_signal(sig)
        code = self.wait(timeout)
        # Children that outlive the leader (orphaned pool processes) die with it.
        self.send_signal(signal.SIGKILL)
        if sig == signal.SIGKILL:
            self.wait_for_group_exit(timeout)
        return code

    def wait_for_group_exit(self, timeout: float = 5.0) -> bool:
        """Wait until no process of the group is alive; False when some outlive ``timeout``."""
        if self.popen is None:
            return True
        pgid = self.popen.pid
        try:
            wait_until(lambda: not _live_group_members(pgid), timeout, interval=0.02)
        except TimeoutError:
            return False
        return True

    def terminate(self) -> None:
        """Ask the process group to stop (SIGTERM) without waiting."""
        self.expected_exit = True
        self.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM the group, wait up to ``timeout`` seconds, then SIGKILL; return the code."""
        if self.popen is None:
            return None
        self.terminate()
        code = self.wait(timeout)
        if code is None:
            code = self.kill(signal.SIGKILL)
        else:
            self.send_signal(signal.SIGKILL)
            self.wait_for_group_exit(2.0)
        return code

    def log_text(self, *, this_run_only: bool = True) -> str:
        """Return the log (by default only what this run wrote), decoded leniently."""
        try:
            with self.log_path.open("rb") as log:
                if this_run_only:
                    log.seek(self.log_offset)
                return log.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        """Return the last ``lines`` lines of the log file."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(0, os.SEEK_END)
                size = log.tell()
                log.seek(max(0, size - 256 * lines))
                data = log.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(data.splitlines()[-lines:])

    def _forget(self) -> None:
        with _live_lock:
            _live.discard(self)


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


@dataclass(frozen=True)
class WorkerSpec:
    """A Celery worker: its node name (``<name>@<host>``), queues and pool size."""

    name: str
    queues: tuple[str, ...]
    concurrency: int = 2
    pool: str = "prefork"
    extra_args: tuple[str, ...] = ()


DEFAULT_WORKERS: tuple[WorkerSpec, ...] = (
    WorkerSpec("fanout", ("fanout", "periodic", "default")),
    WorkerSpec("inapp", ("inapp",)),
    # Provider sends: I/O-bound, each process calls providers from a thread pool.
    WorkerSpec("send", ("push", "sms", "email", "webhook")),
)


class PlatformProcesses:
    """The platform's processes: one ASGI web server, Celery workers, exactly one beat.

    ``env`` is merged over ``os.environ`` (DATABASE_URL, REDIS_URL, ...); ``PORT`` is set to
    the web port so that settings derived from it (PUBLIC_URL, allowed Origins) match.
    Logs go to ``log_dir`` (default: a new temporary directory, kept for debugging), one
    file per process: ``web.log``, ``worker-<name>.log``, ``beat.log``.
    """

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
    ) -> None:
        if server not in ("uvicorn", "daphne"):
            raise ValueError(f"server must be 'uvicorn' or 'daphne', not {server!r}")
        self.server: Server = server
        self.port = port if port is not None else free_port()
        self.python = python
        self.cwd = cwd
        self.log_dir = (
            Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="platform-logs-"))
        )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env: dict[str, str] = {**os.environ, **(env or {})}
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.env["PORT"] = str(self.port)
        self.loglevel = (loglevel or self.env.get("CELERY_LOG_LEVEL") or "INFO").upper()
        self.web_timeout = web_timeout
        self.worker_timeout = worker_timeout
        self.stop_timeout = stop_timeout
        self.worker_specs: dict[str, WorkerSpec] = {}
        for spec in workers:
            if spec.name in self.worker_specs:
                raise ValueError(f"two workers are named {spec.name!r}")
            self.worker_specs[spec.name] = spec
        self.processes: dict[str, ManagedProcess] = {}

    # -- addresses --

    @property
    def web_url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{LOCALHOST}:{self.port}"

    # -- commands --

    def _web_argv(self) -> list[str]:
        if self.server == "daphne":
            # -v 0: warnings and errors only, no access log.
            return [self.python, "-m", "daphne", "-b", LOCALHOST, "-p", str(self.port), "-v", "0",
                    "project.asgi:application"]  # fmt: skip
        return [
            self.python, "-m", "uvicorn", "project.asgi:application",
            "--host", LOCALHOST, "--port", str(self.port),
            "--ws", "websockets-sansio", "--lifespan", "off", "--no-access-log",
            "--log-level", "warning", "--timeout-graceful-shutdown", "5",
        ]  # fmt: skip

    def _worker_argv(self, spec: WorkerSpec) -> list[str]:
        return [
            self.python, "-m", "celery", "-A", "project", "worker",
            "-Q", ",".join(spec.queues), "-c", str(spec.concurrency), "-n", f"{spec.name}@%h",
            "--pool", spec.pool, "-O", "fair",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "--include", "harness.celery_ready",
            "-l", self.loglevel, *spec.extra_args,
        ]  # fmt: skip

    def _beat_argv(self) -> list[str]:
        return [
            self.python, "-m", "celery", "-A", "project", "beat",
            "-S", "django_celery_beat.schedulers:DatabaseScheduler",
            # An empty pidfile disables it, so a crashed beat never blocks the next one.
            "--pidfile=", "--schedule", str(self.log_dir / "celerybeat-schedule"),
            "-l", self.loglevel,
        ]  # fmt: skip

    def _ready_file(self, name: str) -> Path:
        return self.log_dir / f"worker-{name}.ready"

    def _process(self, key: str, argv: list[str], env: Mapping[str, str] | None = None) -> ManagedProcess:
        process = self.processes.get(key)
        if process is None:
            process = ManagedProcess(
                key, argv, log_path=self.log_dir / f"{key}.log", env=env or self.env, cwd=self.cwd
            )
            self.processes[key] = process
        return process

    def _raise_if_exited(self, process: ManagedProcess) -> None:
        if not process.alive:
            raise RuntimeError(
                f"{process.name} exited with code {process.returncode} while starting; "
                f"log {process.log_path}:\n{process.log_tail(60)}"
            )

    # -- starting --

    def start_web(self, *, wait: bool = True) -> ManagedProcess:
        """Start the ASGI server and (by default) wait until ``/healthz`` answers at all."""
        process = self._process("web", self._web_argv())
        process.start()
        if wait:
            self.wait_for_web()
        return process

    def wait_for_web(self, timeout: float | None = None) -> None:
        process = self.processes["web"]
        try:
            wait_for_http(f"{self.web_url}/healthz", timeout or self.web_timeout, alive=lambda: process.alive)
        except RuntimeError:
            self._raise_if_exited(process)
            raise
        except TimeoutError as error:
            raise TimeoutError(f"{error}; log {process.log_path}:\n{process.log_tail(60)}") from None

    def start_worker(self, name: str, *, wait: bool = True) -> ManagedProcess:
        """Start the worker named ``name`` and (by default) wait until it consumes."""
        spec = self.worker_specs[name]
        ready_file = self._ready_file(name)
        ready_file.unlink(missing_ok=True)
        env = {**self.env, READY_FILE_VARIABLE: str(ready_file)}
        process = self._process(f"worker-{name}", self._worker_argv(spec), env)
        process.start()
        if wait:
            self.wait_for_worker(name)
        return process

    def wait_for_worker(self, name: str, timeout: float | None = None) -> None:
        process = self.processes[f"worker-{name}"]
        ready_file = self._ready_file(name)

        def ready() -> bool:
            self._raise_if_exited(process)
            return ready_file.exists()

        try:
            wait_until(
                ready, timeout or self.worker_timeout, interval=0.1, message=f"worker {name} not ready"
            )
        except TimeoutError as error:
            raise TimeoutError(f"{error}; log {process.log_path}:\n{process.log_tail(60)}") from None

    def start_beat(self) -> ManagedProcess:
        """Start the one beat process (RuntimeError if it already runs)."""
        process = self._process("beat", self._beat_argv())
        process.start()
        return process

    def start_sandbox(self) -> ManagedProcess:
        """Start ``manage.py provider_sandbox`` on the ports of the platform's settings
        (PROVIDER_SANDBOX_*_PORT) and wait until its HTTP port answers. For ``make run``;
        tests and benchmarks use ``harness.sandbox.SandboxProcess`` on free ports."""
        argv = [self.python, str(self.cwd / "manage.py"), "provider_sandbox"]
        process = self._process("sandbox", argv)
        process.start()
        host = self.env.get("PROVIDER_SANDBOX_HOST", LOCALHOST)
        port = int(self.env.get("PROVIDER_SANDBOX_HTTP_PORT", "8100"))

        def listening() -> bool:
            self._raise_if_exited(process)
            return port_is_open(host, port)

        wait_until(
            listening,
            self.web_timeout,
            interval=0.1,
            message=f"provider sandbox not listening on {host}:{port}",
        )
        return process

    def start_all(self) -> None:
        """Start workers and beat, then the web server, and wait until all are ready.

        Processes start concurrently (each spends seconds importing Django); if any fails,
        everything started so far is stopped before the error propagates.
        """
        try:
            for name in self.worker_specs:
                self.start_worker(name, wait=False)
            self.start_beat()
            self.start_web(wait=False)
            for name in self.worker_specs:
                self.wait_for_worker(name)
            self.wait_for_web()
            # Beat has no readiness signal; it must at least still be running by now.
            self._raise_if_exited(self.processes["beat"])
        except BaseException:
            self.stop_all()
            raise

    # -- faults and stopping --

    def worker(self, name: str) -> ManagedProcess:
        return self.processes[f"worker-{name}"]

    def kill_worker(self, name: str, sig: int = signal.SIGKILL) -> int | None:
        """Send ``sig`` to the worker's whole process group (pool children included)."""
        return self.worker(name).kill(sig)

    def restart_worker(self, name: str, *, wait: bool = True) -> ManagedProcess:
        """Stop the worker if it runs (SIGTERM, then SIGKILL), start it again."""
        process = self.processes.get(f"worker-{name}")
        if process is not None and process.alive:
            process.stop(self.stop_timeout)
        return self.start_worker(name, wait=wait)

    def unexpected_exits(self) -> list[tuple[str, int]]:
        """Processes that exited without being asked to, as (name, exit code)."""
        exited = []
        for process in self.processes.values():
            code = process.returncode
            if code is not None and not process.expected_exit:
                exited.append((process.name, code))
        return exited

    def stop_all(self, timeout: float | None = None) -> dict[str, int | None]:
        """SIGTERM every process group at once, wait, SIGKILL what remains; return exit codes."""
        timeout = self.stop_timeout if timeout is None else timeout
        running = [process for process in self.processes.values() if process.alive]
        for process in running:
            process.terminate()
        deadline = time.monotonic() + timeout
        codes: dict[str, int | None] = {}
        for process in running:
            code = process.wait(max(0.0, deadline - time.monotonic()))
            if code is None:
                code = process.kill(signal.SIGKILL)
            else:
                process.send_signal(signal.SIGKILL)
                process.wait_for_group_exit(2.0)
            codes[process.name] = code
        return codes

    # -- logs --

    def log_paths(self) -> dict[str, Path]:
        return {name: process.log_path for name, process in self.processes.items()}

    def log_tail(self, name: str, lines: int = 40) -> str:
        """The last lines of one process's log (``web``, ``beat``, ``worker-<name>``)."""
        return self.processes[name].log_tail(lines)

    def log_tails(self, lines: int = 40) -> str:
        """Every process's log tail, headed by its name: for assertion messages."""
        return "\n".join(
            f"----- {name} ({process.log_path}) -----\n{process.log_tail(lines)}"
            for name, process in self.processes.items()
        )

    def __enter__(self) -> Self:
        self.start_all()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()
