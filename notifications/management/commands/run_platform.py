"""``manage.py run_platform``: the whole platform in the foreground, as ``make run`` starts it.

One ASGI web server (uvicorn or daphne), the Celery workers, and exactly one beat, each in
its own process group with its log in ``var/log/<process>.log``. One Ctrl-C (SIGINT) or
SIGTERM stops everything and exits 0; a child that exits on its own stops everything and
exits 1. A lock file keeps a second copy (and with it a second beat) from starting.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import IO, Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from harness.processes import DEFAULT_WORKERS, PlatformProcesses, Server, WorkerSpec

SERVERS: tuple[Server, ...] = ("uvicorn", "daphne")


def sandboxed_providers() -> list[str]:
    """Providers that point at the sandbox (no real credentials in the environment)."""
    return [name for name, config in settings.PROVIDERS.items() if config.get("sandbox")]


class StopRequested(Exception):
    """Raised by the SIGINT/SIGTERM handler to leave whatever the command was waiting on."""


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


@contextmanager
def exclusive_lock(path: Path) -> Iterator[IO[str]]:
    """Hold an exclusive ``flock`` on ``path`` for the block; CommandError if another holds it.

    The kernel drops the lock when the process dies, so a crash never leaves a stale lock.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.seek(0)
            holder = lock_file.read().strip() or "unknown"
            raise CommandError(
                f"another run_platform is already running (pid {holder}, lock {path}). "
                "Stop it first (Ctrl-C in its terminal) or use `make test`, which needs no platform."
            ) from None
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(f"{os.getpid()}\n")
        lock_file.flush()
        try:
            yield lock_file
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


class Command(BaseCommand):
    help = "Run the platform in the foreground: ASGI web server, Celery workers and one beat."

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
            "--workers-concurrency",
            type=int,
            default=2,
            help="Pool processes per Celery worker (default: 2).",
        )
        parser.add_argument(
            "--log-dir",
            default=None,
            help="Directory for the processes' logs (default: var/log).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        chosen = options["server"] or os.environ.get("ASGI_SERVER") or "uvicorn"
        if chosen not in SERVERS:
            raise CommandError(f"ASGI_SERVER must be one of {', '.join(SERVERS)}, not {chosen!r}")
        server: Server = "daphne" if chosen == "daphne" else "uvicorn"
        port: int = options["port"] or settings.PORT
        concurrency: int = options["workers_concurrency"]
        if concurrency < 1:
            raise CommandError(f"--workers-concurrency must be at least 1, not {concurrency}")
        base_dir = Path(settings.BASE_DIR)
        log_dir = Path(options["log_dir"]) if options["log_dir"] else base_dir / "var" / "log"

        with exclusive_lock(base_dir / "var" / "run" / "platform.lock"):
            if not port_is_free(port):
                raise CommandError(
                    f"port {port} on 127.0.0.1 is already in use. Stop what holds it, "
                    f"or choose another port: PORT=8001 make run"
                )
            workers = [
                WorkerSpec(spec.name, spec.queues, concurrency=concurrency) for spec in DEFAULT_WORKERS
            ]
            platform = PlatformProcesses(
                {"PORT": str(port)},
                server=server,
                port=port,
                workers=workers,
                log_dir=log_dir,
            )
            code = self.run(platform, server)
        if code:
            sys.exit(code)

    def run(self, platform: PlatformProcesses, server: str) -> int:
        """Start, watch and stop the platform; return the process exit code."""
        stopping = threading.Event()

        def request_stop(signum: int, frame: FrameType | None) -> None:
            if stopping.is_set():
                self.stdout.write("Still stopping; give the processes a few seconds.")
                return
            stopping.set()
            raise StopRequested(signal.Signals(signum).name)

        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.stdout.write(
                f"Starting {server} on port {platform.port}, {len(platform.worker_specs)} Celery "
                f"workers and one beat; logs in {platform.log_dir}/"
            )
            try:
                if sandboxed_providers():
                    self.stdout.write(
                        "Providers without real credentials use the provider sandbox: "
                        + ", ".join(sandboxed_providers())
                    )
                    platform.start_sandbox()
                platform.start_all()
            except (RuntimeError, TimeoutError) as error:
                self.stderr.write(f"The platform did not start: {error}")
                return 1
            self.print_urls(platform)
            while True:
                exited = platform.unexpected_exits()
                if exited:
                    stopping.set()
                    for name, code in exited:
                        self.stderr.write(
                            f"{name} exited unexpectedly (code {code}); stopping everything. "
                            f"Log: {platform.processes[name].log_path}\n"
                            f"{platform.processes[name].log_tail(20)}"
                        )
                    platform.stop_all()
                    return 1
                time.sleep(0.5)
        except StopRequested as reason:
            self.stdout.write(f"\n{reason}: stopping web, workers and beat...")
            platform.stop_all()
            self.stdout.write("Stopped.")
            return 0
        finally:
            # A stop_all above may have been cut short; this one is then a no-op or finishes it.
            stopping.set()
            platform.stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

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
        lines = [
            "",
            "The platform is running:",
            f"  app            {web}/",
            f"  admin          {web}/admin/",
            f"  API docs       {web}/api/docs/",
            f"  inbox          {web}/inbox/",
            f"  health         {web}/healthz",
            f"  metrics        {web}/metrics",
            f"  provider health {web}/admin/notifications/delivery/provider-health/",
            f"  delivery charts {web}/admin/notifications/delivery/charts/",
            *sandbox,
            f"  inbox socket   {ws}/ws/inbox/?token=…  (token: POST /api/v1/recipients/<external_id>/token/)",
            f"  logs           {platform.log_dir}/ "
            f"({', '.join(path.name for path in platform.log_paths().values())})",
            "",
            "Press Ctrl-C to stop.",
        ]
        self.stdout.write("\n".join(lines))
