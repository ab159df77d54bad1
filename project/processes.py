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

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Literal, Self, TypeVar
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCALHOST = "127.0.0.1"
# A Celery worker started with this variable writes its pid to the file it names once it
# consumes (project.celery); readiness then never depends on log levels or formats.
WORKER_READY_FILE_VARIABLE = "WORKER_READY_FILE"

T = TypeVar("T")
Server = Literal["uvicorn", "daphne"]


# --- Dying with the parent -----------------------------------------------------------------

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _load_prctl() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.restype = ctypes.c_int
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return prctl


# Loaded once here: in a freshly forked child (a ``preexec_fn``) loading a library could
# block on a lock that another thread of the parent held at fork time.
_PRCTL = _load_prctl()


def die_with_parent(sig: int = signal.SIGKILL, *, parent_pid: int | None = None) -> bool:
    """Have the kernel send ``sig`` to this process when its parent exits, however it
    exits (SIGKILL included). Returns False where that is not available (not Linux).

    The kernel watches the parent *thread* that forked this process, and forgets the
    request across fork() and setuid: every process asks for itself. ``parent_pid`` closes
    the race with a parent that died before the request took effect: if the parent is not
    ``parent_pid`` any more, ``sig`` is sent at once.
    """
    if _PRCTL is None:
        return False
    if _PRCTL(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl(PR_SET_PDEATHSIG): {os.strerror(error)}")
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)
    return True


# --- Waiting ---------------------------------------------------------------------------------


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


def port_is_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Return True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


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


# --- Stop requests from signals ----------------------------------------------------------------


class StopSignals:
    """SIGINT, SIGTERM and SIGHUP as stop requests for a supervisor's main thread.

    ``with StopSignals() as stop:`` installs the handlers (the previous ones come back on
    exit); ``stop.requested`` turns true at the first signal and ``stop.repeated`` at the
    second. The handler only counts: it runs between two bytecodes of the main thread,
    where taking a lock that thread holds (an Event's, stdout's buffer) would deadlock and
    raising would abandon whatever was half done (a fork whose child nobody tracks).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.received: list[str] = []
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return bool(self.received)

    @property
    def repeated(self) -> bool:
        return len(self.received) > 1

    @property
    def first(self) -> str:
        """The name of the first signal received ("" when none was)."""
        return self.received[0] if self.received else ""

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signal.Signals(signum).name)

    def __enter__(self) -> Self:
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class StartInterrupted(Exception):
    """A stop was requested while the platform was starting."""


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


def process_group_members(pgid: int) -> list[int]:
    """Pids in process group ``pgid`` that are not zombies."""
    return [
        pid for pid, fields in proc_stats() if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid
    ]


def process_group_signal(pid: int, sig: int) -> None:
    """Send ``sig`` to the process group led by ``pid``; a group already gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class ManagedProcess:
    """One subprocess in its own process group, writing stdout and stderr to ``log_path``.

    With ``die_with_parent`` (the default) the kernel SIGKILLs it when the process that
    started it exits; that holds for processes started from the main thread only, because
    the kernel ties the request to the thread that forked (a helper thread's end would kill
    the child). It can be started again after it stopped (same command, same log file,
    appended).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path = REPO_ROOT,
        die_with_parent: bool = True,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else dict(os.environ)
        self.cwd = cwd
        self.die_with_parent = die_with_parent
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
        preexec: Callable[[], object] | None = None
        if self.die_with_parent and threading.current_thread() is threading.main_thread():
            preexec = functools.partial(die_with_parent, signal.SIGKILL, parent_pid=os.getpid())
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
                preexec_fn=preexec,
            )
        self.expected_exit = False
        with _live_lock:
            _live.add(self)

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the whole process group (the process and its children)."""
        if self.popen is not None:
            process_group_signal(self.popen.pid, sig)

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

    def group_alive(self) -> bool:
        """True while any process of the group (the leader or a child) is not a zombie."""
        return self.popen is not None and bool(process_group_members(self.popen.pid))

    def wait_for_group_exit(self, timeout: float = 5.0) -> bool:
        """Wait until no process of the group is alive; False when some outlive ``timeout``."""
        if self.popen is None:
            return True
        try:
            wait_until(lambda: not self.group_alive(), timeout, interval=0.02)
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


# --- The platform: web, workers, beat, provider sandbox ----------------------------------------


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

# Of a stop's budget, what is kept back for SIGKILL and for the kernel to tear the
# processes down (at most): the rest is the grace the processes get after SIGTERM.
KILL_RESERVE_SECONDS = 2.0


class PlatformProcesses:
    """The platform's processes: one ASGI web server on ``port``, Celery workers, exactly
    one beat and, for development, the provider sandbox.

    ``env`` is merged over ``os.environ`` (DATABASE_URL, REDIS_URL, ...); ``PORT`` is set to
    the web port so that settings derived from it (PUBLIC_URL, allowed Origins) match.
    Logs go to ``log_dir``, one file per process: ``web.log``, ``worker-<name>.log``,
    ``beat.log``, ``sandbox.log``. ``stop_requested`` (optional) is polled while starting:
    when it turns true, starting stops with ``StartInterrupted``.
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        port: int,
        log_dir: Path | str,
        server: Server = "uvicorn",
        workers: Iterable[WorkerSpec] = DEFAULT_WORKERS,
        python: str = sys.executable,
        cwd: Path = REPO_ROOT,
        loglevel: str | None = None,
        web_timeout: float = 60.0,
        worker_timeout: float = 60.0,
        stop_timeout: float = 15.0,
        stop_requested: Callable[[], bool] | None = None,
        sandbox_address: tuple[str, int] | None = None,
    ) -> None:
        if server not in ("uvicorn", "daphne"):
            raise ValueError(f"server must be 'uvicorn' or 'daphne', not {server!r}")
        self.server: Server = server
        self.port = port
        self.python = python
        self.cwd = cwd
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env: dict[str, str] = {**os.environ, **(env or {})}
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.env["PORT"] = str(self.port)
        self.loglevel = (loglevel or self.env.get("CELERY_LOG_LEVEL") or "INFO").upper()
        self.web_timeout = web_timeout
        self.worker_timeout = worker_timeout
        self.stop_timeout = stop_timeout
        self.stop_requested = stop_requested or (lambda: False)
        self.worker_specs: dict[str, WorkerSpec] = {}
        for spec in workers:
            if spec.name in self.worker_specs:
                raise ValueError(f"two workers are named {spec.name!r}")
            self.worker_specs[spec.name] = spec
        self.processes: dict[str, ManagedProcess] = {}
        self.sandbox_address: tuple[str, int] = sandbox_address or (
            self.env.get("PROVIDER_SANDBOX_HOST") or LOCALHOST,
            int(self.env.get("PROVIDER_SANDBOX_HTTP_PORT") or "8100"),
        )

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
        if self.stop_requested():
            raise StartInterrupted(f"stop requested while {process.name} was starting")
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

        def answered() -> int:
            self._raise_if_exited(process)
            return http_status(f"{self.web_url}/healthz")

        try:
            wait_until(
                answered,
                timeout or self.web_timeout,
                interval=0.1,
                message=f"no HTTP answer from {self.web_url}/healthz",
            )
        except TimeoutError as error:
            raise TimeoutError(f"{error}; log {process.log_path}:\n{process.log_tail(60)}") from None

    def start_worker(self, name: str, *, wait: bool = True) -> ManagedProcess:
        """Start the worker named ``name`` and (by default) wait until it consumes."""
        spec = self.worker_specs[name]
        ready_file = self._ready_file(name)
        ready_file.unlink(missing_ok=True)
        env = {**self.env, WORKER_READY_FILE_VARIABLE: str(ready_file)}
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

    def start_sandbox(self, *, wait: bool = True) -> ManagedProcess:
        """Start ``manage.py provider_sandbox`` (the sandbox app must be installed) on the
        ports of the platform's settings, and (by default) wait until its HTTP port,
        ``sandbox_address`` (default: PROVIDER_SANDBOX_HOST and PROVIDER_SANDBOX_HTTP_PORT
        of the environment), accepts connections. For ``make run``; tests and benchmarks
        use ``harness.sandbox.SandboxProcess`` on free ports."""
        argv = [self.python, str(self.cwd / "manage.py"), "provider_sandbox"]
        process = self._process("sandbox", argv)
        process.start()
        if wait:
            self.wait_for_sandbox()
        return process

    def wait_for_sandbox(self, timeout: float | None = None) -> None:
        process = self.processes["sandbox"]
        host, port = self.sandbox_address

        def listening() -> bool:
            self._raise_if_exited(process)
            return port_is_open(host, port)

        try:
            wait_until(
                listening,
                timeout or self.web_timeout,
                interval=0.1,
                message=f"provider sandbox not listening on {host}:{port}",
            )
        except TimeoutError as error:
            raise TimeoutError(f"{error}; log {process.log_path}:\n{process.log_tail(60)}") from None

    def start_all(self, *, sandbox: bool = False) -> None:
        """Start workers, beat, the web server and (with ``sandbox``) the provider sandbox,
        and wait until all are ready.

        Processes start concurrently (each spends seconds importing Django); if any fails,
        or a stop is requested meanwhile, everything started so far is stopped before the
        error (``StartInterrupted`` for a stop) propagates.
        """
        try:
            for name in self.worker_specs:
                self.start_worker(name, wait=False)
            self.start_beat()
            if sandbox:
                self.start_sandbox(wait=False)
            self.start_web(wait=False)
            for name in self.worker_specs:
                self.wait_for_worker(name)
            if sandbox:
                self.wait_for_sandbox()
            self.wait_for_web()
            # Beat has no readiness signal; it must at least still be running by now.
            self._raise_if_exited(self.processes["beat"])
        except BaseException:
            self.stop_all()
            raise

    # -- watching, faults and stopping --

    def watch(self, interval: float = 0.2) -> list[tuple[str, int]]:
        """Block until a stop is requested or a process exits without being asked to;
        return those exits as (name, exit code), empty when a stop was requested."""
        while not self.stop_requested():
            exited = self.unexpected_exits()
            if exited:
                return exited
            time.sleep(interval)
        return []

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

    def stop_all(
        self, timeout: float | None = None, *, hurry: Callable[[], bool] | None = None
    ) -> dict[str, int | None]:
        """Stop every process and return their exit codes, within ``timeout`` seconds
        (default ``stop_timeout``) in all.

        Every group gets SIGTERM at once and shares one grace period (the budget less
        ``KILL_RESERVE_SECONDS``); what is still alive then, or as soon as ``hurry()`` turns
        true, gets SIGKILL: a worker in the middle of a long task is not waited for, its
        task goes back to the queue (acks_late). Groups whose leader exited get SIGKILL too,
        for children that outlived their leader.
        """
        budget = self.stop_timeout if timeout is None else timeout
        started = time.monotonic()
        deadline = started + budget
        kill_at = deadline - min(KILL_RESERVE_SECONDS, budget / 2)
        running = [process for process in self.processes.values() if process.popen is not None]
        for process in running:
            if process.alive:
                process.terminate()
            else:
                process.expected_exit = True

        def all_exited() -> bool:
            return not any(process.alive for process in running)

        while not all_exited() and time.monotonic() < kill_at and not (hurry is not None and hurry()):
            time.sleep(0.05)
        for process in running:
            process.send_signal(signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            wait_until(
                lambda: all_exited() and not any(process.group_alive() for process in running),
                max(0.0, deadline - time.monotonic()),
                interval=0.02,
            )
        codes: dict[str, int | None] = {}
        for process in running:
            codes[process.name] = process.returncode
            if process.returncode is not None:
                process._forget()
        return codes

    def still_alive(self) -> list[str]:
        """Names of processes whose group still has a live member."""
        return [name for name, process in self.processes.items() if process.group_alive()]

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
