"""``manage.py run_platform``: the whole platform in the foreground, as ``make run`` starts it.

One ASGI web server (uvicorn or daphne), the Celery workers, exactly one beat and, while a
provider has no real credentials and the sandbox app is installed, the provider sandbox:
each a child process with its log in ``PLATFORM_LOG_DIR`` (default ``var/log``), started,
watched and stopped through ``project.processes``.

Stopping: one Ctrl-C (SIGINT), SIGTERM or SIGHUP stops every child and exits 0 within
``STOP_SECONDS``; a second signal skips what is left of the grace period. A child that
exits on its own stops everything and exits 1. If this process is killed outright the
kernel kills its children, and if the process that started it (make, a supervisor) is
killed, the kernel sends this one SIGTERM.

A lock per database (a file in ``PLATFORM_RUN_DIR``, default ``var/run``) keeps a second
copy, and with it a second beat, from starting against the same database; copies on
different databases (a test beside a developer's ``make run``) run side by side.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from project.processes import (
    DEFAULT_WEB_PROCESSES,
    DEFAULT_WORKERS,
    PlatformProcesses,
    Server,
    StartInterrupted,
    StopSignals,
    WorkerSpec,
    die_with_parent,
)

SERVERS: tuple[Server, ...] = ("uvicorn", "daphne")
# The whole stop, SIGKILL of the stragglers included: under the 10 s that `docker stop`
# and systemd wait before they kill, with room for this process's own exit.
STOP_SECONDS = 8.0


def sandboxed_providers() -> list[str]:
    """Providers that point at the sandbox (no real credentials in the environment)."""
    return [name for name, config in settings.PROVIDERS.items() if config.get("sandbox")]


def port_is_free(port: int) -> bool:
    """True when 127.0.0.1:``port`` can be bound (nothing, not even 0.0.0.0, holds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def platform_lock_path(database: Mapping[str, Any], run_dir: Path) -> Path:
    """The lock file in ``run_dir`` for ``database`` (a ``DATABASES`` entry): beat's
    schedule lives in the database, so two copies on one database would run every periodic
    task twice, while copies on different databases never meet."""
    identity = f"{database.get('HOST') or ''}:{database.get('PORT') or ''}/{database.get('NAME') or ''}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:12]
    readable = re.sub(r"[^A-Za-z0-9_.-]", "_", str(database.get("NAME") or "default"))[:40]
    return run_dir / f"platform-{readable}-{digest}.lock"


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` for the block; CommandError if another holds it.

    The kernel drops the lock when the process dies, so a crash never leaves a stale lock.
    The file is removed on release (one per temporary test database would pile up): a
    copy that opened it just before then finds it unlinked after locking it, and locks
    the file at ``path`` afresh.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        lock_file = path.open("a+")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.seek(0)
            holder = lock_file.read().strip() or "unknown"
            lock_file.close()
            raise CommandError(
                f"another run_platform is already running on this database (pid {holder}, lock "
                f"{path}). Stop it first (Ctrl-C in its terminal) or use `make test`, which needs "
                "no platform."
            ) from None
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(lock_file.fileno()).st_ino:
            break
        lock_file.close()
    try:
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(f"{os.getpid()}\n")
        lock_file.flush()
        yield
    finally:
        # Unlinked while still locked, so nobody can lock this file and then have it vanish.
        path.unlink(missing_ok=True)
        lock_file.close()


def web_processes_choice(given: int | None, server: Server) -> int:
    """--web-processes, else $WEB_PROCESSES, else the default; daphne always runs one."""
    if server == "daphne":
        return 1
    raw = given if given is not None else os.environ.get("WEB_PROCESSES") or DEFAULT_WEB_PROCESSES
    try:
        count = int(raw)
    except ValueError:
        raise CommandError(f"WEB_PROCESSES must be a whole number, not {raw!r}") from None
    if not 1 <= count <= 16:
        raise CommandError(f"--web-processes must be between 1 and 16, not {count}")
    return count


def streaming_tools_missing() -> list[str]:
    """What live streaming needs and this host lacks (scripts/ensure_streaming.sh)."""
    missing = [
        name
        for name, command in (("nginx", settings.STREAMING_NGINX), ("ffmpeg", settings.STREAMING_FFMPEG))
        if shutil.which(command) is None
    ]
    if not Path(settings.STREAMING_RTMP_MODULE).exists():
        missing.append("nginx's RTMP module (libnginx-mod-rtmp)")
    return missing


class Command(BaseCommand):
    help = (
        "Run the platform in the foreground: ASGI web server, Celery workers, one beat and the "
        "provider sandbox. Ctrl-C or SIGTERM stops everything."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--server",
            choices=SERVERS,
            default=None,
            help="ASGI server (default: $ASGI_SERVER, else uvicorn).",
        )
        parser.add_argument(
            "--port", type=int, default=None, help="Port on 127.0.0.1 (default: settings.PORT)."
        )
        parser.add_argument(
            "--web-processes",
            type=int,
            default=None,
            help="uvicorn processes sharing the port (default: $WEB_PROCESSES, else 2; daphne runs one).",
        )
        parser.add_argument(
            "--workers-concurrency",
            type=int,
            default=2,
            help="Pool processes per Celery worker (default: 2).",
        )
        parser.add_argument(
            "--log-dir",
            default=None,
            help="Directory for the processes' logs (default: settings.PLATFORM_LOG_DIR, var/log).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        # make (or a supervisor) killed outright cannot pass that on: the kernel sends
        # SIGTERM instead, and the children are stopped the usual way.
        die_with_parent(signal.SIGTERM, parent_pid=os.getppid())
        chosen = options["server"] or os.environ.get("ASGI_SERVER") or "uvicorn"
        if chosen not in SERVERS:
            raise CommandError(f"ASGI_SERVER must be one of {', '.join(SERVERS)}, not {chosen!r}")
        server: Server = "daphne" if chosen == "daphne" else "uvicorn"
        port: int = options["port"] or settings.PORT
        concurrency: int = options["workers_concurrency"]
        if concurrency < 1:
            raise CommandError(f"--workers-concurrency must be at least 1, not {concurrency}")
        log_dir = Path(options["log_dir"]) if options["log_dir"] else Path(settings.PLATFORM_LOG_DIR)
        web_processes = web_processes_choice(options["web_processes"], server)

        lock = platform_lock_path(settings.DATABASES["default"], Path(settings.PLATFORM_RUN_DIR))
        with StopSignals() as stop, exclusive_lock(lock):
            if not port_is_free(port):
                raise CommandError(
                    f"port {port} on 127.0.0.1 is already in use. Stop what holds it, "
                    f"or choose another port: PORT=8001 make run"
                )
            if not port_is_free(settings.MQTT_PORT):
                raise CommandError(
                    f"port {settings.MQTT_PORT} on 127.0.0.1 (the platform's own MQTT broker) is already "
                    f"in use. Stop what holds it, or choose another port: MQTT_PORT=1885 make run"
                )
            workers = [
                WorkerSpec(spec.name, spec.queues, concurrency=concurrency) for spec in DEFAULT_WORKERS
            ]
            platform = PlatformProcesses(
                {"PORT": str(port)},
                port=port,
                log_dir=log_dir,
                server=server,
                workers=workers,
                stop_timeout=STOP_SECONDS,
                stop_requested=lambda: stop.requested,
                sandbox_address=(settings.PROVIDER_SANDBOX_HOST, settings.PROVIDER_SANDBOX_HTTP_PORT),
                web_processes=web_processes,
            )
            try:
                code = self.run(platform, stop)
            finally:
                # Whatever went wrong above, no child outlives this command (a no-op after a
                # stop that finished).
                platform.stop_all(STOP_SECONDS, hurry=lambda: stop.repeated)
        if code:
            sys.exit(code)

    def run(self, platform: PlatformProcesses, stop: StopSignals) -> int:
        """Start, watch and stop the platform; return the process exit code."""
        sandboxed = sandboxed_providers()
        with_sandbox = bool(sandboxed) and apps.is_installed("sandbox")
        self.stdout.write(
            f"Starting {platform.server} ({platform.web_processes} web process"
            f"{'es' if platform.web_processes > 1 else ''}) on port {platform.port}, {len(platform.worker_specs)} Celery "
            f"workers, one beat, the MQTT broker on {settings.MQTT_PORT} and its ingest, a match server, the stream ingest; logs in "
            f"{platform.log_dir}/"
        )
        if with_sandbox:
            self.stdout.write(
                "Providers without real credentials use the provider sandbox: " + ", ".join(sandboxed)
            )
        elif sandboxed:
            self.stderr.write(
                "These providers have no real credentials and the provider sandbox is not installed, "
                "so their sends will fail: " + ", ".join(sandboxed)
            )
        streaming_missing = streaming_tools_missing()
        if streaming_missing:
            self.stderr.write(
                "Live streaming is off: " + ", ".join(streaming_missing) + " missing "
                "(bash scripts/ensure_streaming.sh installs them as root)"
            )
        if stop.requested:
            return 0
        try:
            platform.start_all(sandbox=with_sandbox, iot=True, games=True, streaming=not streaming_missing)
        except StartInterrupted:
            # start_all has stopped what it had started.
            self.stdout.write(f"\n{stop.first} while starting: stopped.")
            return 0
        except (RuntimeError, TimeoutError) as error:
            self.stderr.write(f"The platform did not start: {error}")
            return 1
        if settings.IOT_DEMO_DEVICES:
            platform.start_iot_demo()
        self.print_urls(platform)
        exited = platform.watch()
        if exited:
            for name, code in exited:
                self.stderr.write(
                    f"{name} exited unexpectedly (code {code}); stopping everything. "
                    f"Log: {platform.processes[name].log_path}\n"
                    f"{platform.processes[name].log_tail(20)}"
                )
            self.stop(platform, stop)
            return 1
        self.stdout.write(
            f"\n{stop.first}: stopping web, workers, beat, sandbox, broker, ingest, match server and stream ingest..."
        )
        return 0 if self.stop(platform, stop) else 1

    def stop(self, platform: PlatformProcesses, stop: StopSignals) -> bool:
        """Stop every process within STOP_SECONDS; False (reported) when one survived."""
        started = time.monotonic()
        platform.stop_all(STOP_SECONDS, hurry=lambda: stop.repeated)
        survivors = platform.still_alive()
        if survivors:
            self.stderr.write(f"Still running after {STOP_SECONDS:.0f}s: {', '.join(survivors)}")
            return False
        self.stdout.write(f"Stopped in {time.monotonic() - started:.1f}s.")
        return True

    def print_urls(self, platform: PlatformProcesses) -> None:
        web, ws = platform.web_url, platform.ws_url
        sandbox = (
            [
                "  provider sandbox "
                f"http://{settings.PROVIDER_SANDBOX_HOST}:{settings.PROVIDER_SANDBOX_HTTP_PORT}/_sandbox/"
            ]
            if "sandbox" in platform.processes
            else []
        )
        iot_demo = (
            [
                "  IoT demo       seed_demo_iot's devices publish every second and answer commands "
                "(manage.py iot_simulate; IOT_DEMO_DEVICES=false turns it off)"
            ]
            if "iot-demo" in platform.processes
            else []
        )
        streams = (
            [
                f"  live streams   {web}/live/demo/  (publish to rtmp://{settings.STREAMING_BIND}:"
                f"{settings.STREAMING_RTMP_PORT}/live with the key in {settings.STREAMING_DIR}/demo-stream-key; "
                f"HLS on http://{settings.STREAMING_BIND}:{settings.STREAMING_HTTP_PORT}/hls/)"
            ]
            if "streams" in platform.processes
            else []
        )
        lines = [
            "",
            "The platform is running:",
            f"  app            {web}/",
            f"  admin          {web}/admin/",
            f"  API docs       {web}/api/docs/",
            f"  inbox          {web}/inbox/",
            f"  preferences    {web}/preferences/",
            f"  documents      {web}/docs/",
            f"  IoT            {web}/iot/  (devices: POST /api/v1/iot/devices/ or admin)",
            *streams,
            f"  MQTT broker    mqtt://{settings.MQTT_HOST}:{settings.MQTT_PORT}  "
            f"(mosquitto, dynamic security; files in {settings.MQTT_DIR}/)",
            *iot_demo,
            f"  health         {web}/healthz",
            f"  metrics        {web}/metrics",
            f"  provider health {web}/admin/notifications/delivery/provider-health/",
            f"  delivery charts {web}/admin/notifications/delivery/charts/",
            *sandbox,
            f"  inbox socket   {ws}/ws/inbox/?token=…  (token: POST /api/v1/recipients/<external_id>/token/)",
            f"  document socket {ws}/ws/docs/<key>?token=…  (y-websocket; OT: {ws}/ws/docs/<key>/ot)",
            f"  logs           {platform.log_dir}/ "
            f"({', '.join(path.name for path in platform.log_paths().values())})",
            "",
            "Press Ctrl-C to stop.",
        ]
        self.stdout.write("\n".join(lines))
