"""The platform's processes: web, Celery workers, one beat and the provider sandbox."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from project.processes.children import REPO_ROOT, ManagedProcess, process_group_members
from project.processes.signals import StartInterrupted
from project.processes.waiting import LOCALHOST, http_status, port_is_open, wait_until

# A Celery worker started with this variable writes its pid to the file it names once it
# consumes (project.celery); readiness then never depends on log levels or formats.
WORKER_READY_FILE_VARIABLE = "WORKER_READY_FILE"

# granian (a Rust ASGI server) is measured beside the others by the benchmarks; make run
# offers uvicorn and daphne (docs/benchmarks.md says why).
Server = Literal["uvicorn", "daphne", "granian"]


# --- The platform: web, workers, beat, provider sandbox ----------------------------------------


@dataclass(frozen=True)
class WorkerSpec:
    """A Celery worker: its node name (``<name>@<host>``), queues and pool size."""

    name: str
    queues: tuple[str, ...]
    concurrency: int = 2
    pool: str = "prefork"
    extra_args: tuple[str, ...] = ()
    # Scheduling priority (nice(1)): above 0, the kernel gives its CPU to the other
    # processes first when they want it.
    nice: int = 0


DEFAULT_WORKERS: tuple[WorkerSpec, ...] = (
    WorkerSpec("fanout", ("fanout", "periodic", "default")),
    WorkerSpec("inapp", ("inapp",)),
    # Provider sends: I/O-bound, each process calls providers from a thread pool.
    WorkerSpec("send", ("push", "sms", "email", "webhook")),
    # Campaign traffic, fan-out pages and sends alike (notifications/services/campaigns.py):
    # its own processes, so a campaign never waits in front of a password reset.
    # Niced: while a campaign takes every core, transactional work still gets its share first.
    WorkerSpec("campaign", ("campaign",), nice=10),
)

# uvicorn processes sharing the web port under make run. Django runs a request's synchronous
# code on one thread per web process, so one process accepts about a hundred single events
# per second on a two-core machine; the kernel spreads connections over the processes
# (project/serve.py, docs/benchmarks.md).
DEFAULT_WEB_PROCESSES = 2

# uvicorn's websocket protocol: websockets-sansio holding less per idle socket (P3: ten
# thousand idle sockets per process at 30 KB each or less; realtime/uvicorn_websocket.py).
# project/serve.py, the Dockerfile and docker-compose.yml start uvicorn with it too.
UVICORN_WS = "realtime.uvicorn_websocket:IdleLightWebSocketProtocol"
# The largest client message a socket takes (uvicorn's default is 16 MiB): client frames
# are small (a presence subscription of 500 ids is about 20 KB), and the bound is what one
# socket may make the server buffer.
UVICORN_WS_MAX_SIZE = 1024 * 1024

# Of a stop's budget, what is kept back for SIGKILL and for the kernel to tear the
# processes down (at most): the rest is the grace the processes get after SIGTERM.
KILL_RESERVE_SECONDS = 2.0

# What a server that could not bind its port logs before it exits: mosquitto "Error: Address
# already in use", uvicorn "[Errno 98] error while attempting to bind ...: address already in use".
ADDRESS_IN_USE = "address already in use"

# Starts of the broker in all when each finds its port taken and another may be chosen
# (``start_mqtt(pick_port=...)``).
MQTT_START_ATTEMPTS = 3

# /proc/net/tcp's "st" column for a listening socket (TCP_LISTEN in include/net/tcp_states.h).
_TCP_LISTEN = "0A"


class PortInUse(RuntimeError):
    """A server exited while starting because another process holds its port."""

    def __init__(self, message: str, *, port: int) -> None:
        super().__init__(message)
        self.port = port


def _listening_socket_inodes(port: int) -> set[str] | None:
    """Inodes of the TCP sockets listening on ``port`` (any address, IPv4 and IPv6), or
    None where /proc/net/tcp cannot be read (not Linux)."""
    inodes: set[str] = set()
    readable = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for row in rows:
            # sl local_address(hex ip:hex port) rem_address st ... uid timeout inode
            fields = row.split()
            if len(fields) > 9 and fields[3] == _TCP_LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes if readable else None


def holds_listener(process: ManagedProcess, port: int) -> bool:
    """True when a process of ``process``'s group holds a socket listening on TCP ``port``:
    the server answering there is this one, not whoever took the port first. True where
    that cannot be told (no /proc)."""
    inodes = _listening_socket_inodes(port)
    if inodes is None:
        return True
    if not inodes or process.pid is None:
        return False
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for pid in process_group_members(process.pid):
        try:
            descriptors = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for descriptor in descriptors:
            try:
                if os.readlink(f"/proc/{pid}/fd/{descriptor}") in wanted:
                    return True
            except OSError:
                continue
    return False


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
        web_processes: int = 1,
    ) -> None:
        if server not in ("uvicorn", "daphne", "granian"):
            raise ValueError(f"server must be 'uvicorn', 'daphne' or 'granian', not {server!r}")
        if web_processes < 1 or (server != "uvicorn" and web_processes > 1):
            raise ValueError(f"web_processes must be 1 for {server} and at least 1, not {web_processes}")
        self.server: Server = server
        # More than one: uvicorn processes sharing the port (project/serve.py).
        self.web_processes = web_processes
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
        if self.server == "granian":
            # One worker process, as the others run one process each.
            return [self.python, "-m", "granian", "--interface", "asgi", "--host", LOCALHOST,
                    "--port", str(self.port), "--workers", "1", "--log-level", "warning",
                    "--no-access-log", "project.asgi:application"]  # fmt: skip
        if self.server == "daphne":
            # -v 0: warnings and errors only, no access log.
            return [self.python, "-m", "daphne", "-b", LOCALHOST, "-p", str(self.port), "-v", "0",
                    "project.asgi:application"]  # fmt: skip
        return [
            self.python, "-m", "uvicorn", "project.asgi:application",
            "--host", LOCALHOST, "--port", str(self.port),
            "--ws", UVICORN_WS, "--ws-max-size", str(UVICORN_WS_MAX_SIZE),
            "--ws-per-message-deflate", "false",
            "--lifespan", "off", "--no-access-log",
            "--log-level", "warning", "--timeout-graceful-shutdown", "5",
        ]  # fmt: skip

    def _worker_argv(self, spec: WorkerSpec) -> list[str]:
        niced = ["nice", "-n", str(spec.nice)] if spec.nice else []
        return [
            *niced, self.python, "-m", "celery", "-A", "project", "worker",
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

    def _raise_if_exited(self, process: ManagedProcess, port: int | None = None) -> None:
        """StartInterrupted when a stop was requested; when ``process`` exited, RuntimeError
        with its log's tail (``PortInUse`` when the log says ``port`` was taken)."""
        if self.stop_requested():
            raise StartInterrupted(f"stop requested while {process.name} was starting")
        if process.alive:
            return
        if port is not None and ADDRESS_IN_USE in process.log_text().lower():
            raise PortInUse(
                f"{process.name} could not listen on port {port}: another process holds it; "
                f"log {process.log_path}:\n{process.log_tail(20)}",
                port=port,
            )
        raise RuntimeError(
            f"{process.name} exited with code {process.returncode} while starting; "
            f"log {process.log_path}:\n{process.log_tail(60)}"
        )

    # -- starting --

    @property
    def web_names(self) -> list[str]:
        """The web processes' names: ``web``, then ``web-2``, ``web-3``..."""
        return ["web", *(f"web-{number}" for number in range(2, self.web_processes + 1))]

    def _serve_argv(self, name: str) -> list[str]:
        return [
            self.python, "-m", "project.serve", "--host", LOCALHOST, "--port", str(self.port),
            "--ready-file", str(self.log_dir / f"{name}.ready"),
        ]  # fmt: skip

    def start_web(self, *, wait: bool = True) -> ManagedProcess:
        """Start the ASGI server (``web_processes`` of them sharing the port) and (by
        default) wait until ``/healthz`` answers and each of them accepts connections.
        Returns the first."""
        for name in self.web_names:
            if self.web_processes > 1:
                (self.log_dir / f"{name}.ready").unlink(missing_ok=True)
                argv = self._serve_argv(name)
            else:
                argv = self._web_argv()
            self._process(name, argv).start()
        if wait:
            self.wait_for_web()
        return self.processes["web"]

    def wait_for_web(self, timeout: float | None = None) -> None:
        process = self.processes["web"]
        others = [self.processes[name] for name in self.web_names[1:]] if self.web_processes > 1 else []

        def answered() -> int:
            for web in (process, *others):
                self._raise_if_exited(web, self.port)
            ready = all((self.log_dir / f"{name}.ready").exists() for name in self.web_names)
            if self.web_processes > 1 and not ready:
                return 0
            # A server that took the port between free_port() and our bind would answer
            # /healthz too; ours exits with "address already in use" meanwhile.
            if not all(holds_listener(web, self.port) for web in (process, *others)):
                return 0
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

    @property
    def mqtt_address(self) -> tuple[str, int]:
        """The platform's own broker (settings MQTT_HOST, MQTT_PORT; iot/services/broker.py)."""
        return (self.env.get("MQTT_HOST") or LOCALHOST, int(self.env.get("MQTT_PORT") or "1884"))

    def start_mqtt(self, *, wait: bool = True, pick_port: Callable[[], int] | None = None) -> ManagedProcess:
        """Start the platform's own Mosquitto (``manage.py mqtt_broker`` writes its config
        under MQTT_DIR and becomes the broker) and (by default) wait until it listens
        (``wait_for_mqtt``, which ``pick_port`` is passed to)."""
        process = self._process("mqtt", [self.python, str(self.cwd / "manage.py"), "mqtt_broker"])
        process.start()
        if wait:
            self.wait_for_mqtt(pick_port=pick_port)
        return process

    def wait_for_mqtt(
        self, timeout: float | None = None, *, pick_port: Callable[[], int] | None = None
    ) -> None:
        """Wait until the broker started by ``start_mqtt`` is the listener on MQTT_PORT: it
        runs and holds the listening socket (something else answering there is not enough).

        When it exits because the port is taken: ``PortInUse`` naming the port; or, with
        ``pick_port`` (for an MQTT_PORT that tests or benchmarks picked as free, never a
        configured one), it starts again on ``pick_port()``'s port, up to
        ``MQTT_START_ATTEMPTS`` starts in all, and MQTT_PORT in ``env`` becomes that port:
        processes started after see it, those started before do not.
        """
        process = self.processes["mqtt"]
        for attempt in range(1, MQTT_START_ATTEMPTS + 1):
            try:
                self._wait_until_listening(process, *self.mqtt_address, timeout or self.web_timeout)
                return
            except PortInUse:
                if pick_port is None or attempt == MQTT_START_ATTEMPTS:
                    raise
            # ManagedProcess keeps the environment it was made with.
            self.env["MQTT_PORT"] = process.env["MQTT_PORT"] = str(pick_port())
            process.start()

    def _wait_until_listening(self, process: ManagedProcess, host: str, port: int, timeout: float) -> None:
        """Wait until ``process`` (its group) holds the socket listening on ``port`` and
        ``host:port`` accepts connections; raise as ``_raise_if_exited`` if it exits."""

        def listening() -> bool:
            self._raise_if_exited(process, port)
            return holds_listener(process, port) and port_is_open(host, port)

        try:
            wait_until(
                listening, timeout, interval=0.1, message=f"{process.name} not listening on {host}:{port}"
            )
        except TimeoutError as error:
            raise TimeoutError(f"{error}; log {process.log_path}:\n{process.log_tail(60)}") from None

    def _start_until_ready(self, process_name: str, command: list[str]) -> ManagedProcess:
        """Start ``manage.py <command> --ready-file <log dir>/<process_name>.ready``."""
        ready = self.log_dir / f"{process_name}.ready"
        ready.unlink(missing_ok=True)
        argv = [self.python, str(self.cwd / "manage.py"), *command, "--ready-file", str(ready)]
        process = self._process(process_name, argv)
        process.start()
        return process

    def _wait_until_ready(self, process_name: str, timeout: float, message: str) -> None:
        """Wait for the ready file of a process started by ``_start_until_ready``."""
        process = self.processes[process_name]
        ready = self.log_dir / f"{process_name}.ready"

        def written() -> bool:
            self._raise_if_exited(process)
            return ready.exists()

        wait_until(written, timeout, interval=0.1, message=message)

    def start_ingest(self, name: str = "1", *, wait: bool = True) -> ManagedProcess:
        """Start ``manage.py mqtt_ingest --name <name>`` and (by default) wait until it has
        subscribed (its ready file)."""
        process = self._start_until_ready(f"ingest-{name}", ["mqtt_ingest", "--name", name])
        if wait:
            self.wait_for_ingest(name)
        return process

    def wait_for_ingest(self, name: str = "1", timeout: float | None = None) -> None:
        self._wait_until_ready(
            f"ingest-{name}", timeout or self.worker_timeout, f"ingest {name} never subscribed"
        )

    def start_iot_demo(self) -> ManagedProcess:
        """Start ``manage.py iot_simulate`` (process ``iot-demo``): make run's demo devices
        publishing to the platform's broker. Nothing to wait for: a device the broker
        refuses is retried, and the simulator runs until it is stopped."""
        process = self._process("iot-demo", [self.python, str(self.cwd / "manage.py"), "iot_simulate"])
        process.start()
        return process

    def start_match_server(self, name: str = "1", *, wait: bool = True) -> ManagedProcess:
        """Start ``manage.py match_server --name <name>`` (process ``match-<name>``) and (by
        default) wait until it beats in Redis and claims matches (its ready file)."""
        process = self._start_until_ready(f"match-{name}", ["match_server", "--name", name])
        if wait:
            self.wait_for_match_server(name)
        return process

    def wait_for_match_server(self, name: str = "1", timeout: float | None = None) -> None:
        self._wait_until_ready(
            f"match-{name}", timeout or self.web_timeout, f"match server {name} never started"
        )

    def start_stream_ingest(self, *, wait: bool = True) -> ManagedProcess:
        """Start ``manage.py stream_ingest`` (process ``streams``: nginx with the RTMP module
        and the transcoders) and (by default) wait until nginx listens (its ready file)."""
        process = self._start_until_ready("streams", ["stream_ingest"])
        if wait:
            self.wait_for_stream_ingest()
        return process

    def wait_for_stream_ingest(self, timeout: float | None = None) -> None:
        self._wait_until_ready("streams", timeout or self.web_timeout, "the stream ingest never started")

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

    def start_all(
        self,
        *,
        sandbox: bool = False,
        iot: bool = False,
        games: bool = False,
        streaming: bool = False,
        mqtt_pick_port: Callable[[], int] | None = None,
    ) -> None:
        """Start workers, beat, the web server and (with ``sandbox``) the provider sandbox,
        (with ``iot``) the MQTT broker and its ingest, (with ``games``) a match server, (with
        ``streaming``) the stream ingest, and wait until all are ready. ``mqtt_pick_port`` (tests and benchmarks whose MQTT_PORT
        was picked as free) moves a broker whose port was taken meanwhile to another
        (``wait_for_mqtt``) before the other processes start.

        Processes start concurrently (each spends seconds importing Django); if any fails,
        or a stop is requested meanwhile, everything started so far is stopped before the
        error (``StartInterrupted`` for a stop) propagates.
        """
        try:
            if iot:
                self.start_mqtt(wait=False)
                if mqtt_pick_port is not None:
                    # A move changes MQTT_PORT, which every Django process reads (workers and
                    # the web publish and provision devices: iot/services/broker.py
                    # broker_settings): settle it before they start.
                    self.wait_for_mqtt(pick_port=mqtt_pick_port)
            for name in self.worker_specs:
                self.start_worker(name, wait=False)
            self.start_beat()
            if sandbox:
                self.start_sandbox(wait=False)
            if iot:
                if mqtt_pick_port is None:
                    self.wait_for_mqtt()
                self.start_ingest(wait=False)
            if games:
                self.start_match_server(wait=False)
            if streaming:
                self.start_stream_ingest(wait=False)
            self.start_web(wait=False)
            for name in self.worker_specs:
                self.wait_for_worker(name)
            if sandbox:
                self.wait_for_sandbox()
            if iot:
                self.wait_for_ingest()
            if games:
                self.wait_for_match_server()
            if streaming:
                self.wait_for_stream_ingest()
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
