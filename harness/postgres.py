"""A PostgreSQL server of a test's own, for tests that stop, crash or restart the database.

Guarantees:
- the cluster is created with ``initdb`` in a new temporary directory, listens on
  127.0.0.1 on a free port (kept across restarts) and its Unix socket lives in that
  directory too, so it never meets the machine's shared server, its port or its socket;
- the postmaster runs in the foreground as a ``ManagedProcess``, so it is stopped with
  the context manager also when the body raises, and SIGKILLed by that module's ``atexit``
  hook if the interpreter exits first; its log is ``<directory>/postgres.log``;
- leaving the context stops the server and removes the directory;
- waiting is polling with a deadline, never a fixed sleep.

PostgreSQL refuses to run as root: when we are root, every server binary runs as the
``postgres`` OS user (``setpriv``, else ``runuser``), which owns the temporary directory.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from harness.processes import LOCALHOST, ManagedProcess, free_port, wait_until

ShutdownMode = Literal["smart", "fast", "immediate"]

SERVER_USER = "postgres"


def postgres_bin_dir() -> Path:
    """The directory of the newest installed PostgreSQL's ``initdb``, ``pg_ctl`` and
    ``postgres``: Debian's ``/usr/lib/postgresql/<major>/bin``, else ``pg_config --bindir``,
    else wherever ``initdb`` is on PATH. FileNotFoundError when there is none."""
    versioned = [path for path in Path("/usr/lib/postgresql").glob("*/bin") if (path / "initdb").exists()]
    if versioned:
        return max(versioned, key=lambda path: [int(part) for part in re.findall(r"\d+", path.parent.name)])
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        bindir = Path(
            subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
        )
        if (bindir / "initdb").exists():
            return bindir
    initdb = shutil.which("initdb")
    if initdb is not None:
        return Path(initdb).parent
    raise FileNotFoundError("no PostgreSQL server binaries (initdb) found")


class PrivatePostgres:
    """A PostgreSQL cluster of our own: ``start()``, ``stop(mode)``, ``kill()``, ``restart()``.

    ``stop()`` and ``kill()`` keep the data directory and the port: ``start()`` brings the
    same cluster back, with its data, after crash recovery when it was killed or stopped
    with ``mode="immediate"`` ("PostgreSQL down, then back"). Connect with
    ``url_for(database)``; the superuser is ``postgres``, trusted without a password.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        bin_dir: Path | None = None,
        start_timeout: float = 30.0,
        stop_timeout: float = 30.0,
    ) -> None:
        self.host = LOCALHOST
        self.port = port if port is not None else free_port()
        self.bin_dir = bin_dir if bin_dir is not None else postgres_bin_dir()
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.directory = Path(tempfile.mkdtemp(prefix=f"private-postgres-{self.port}-"))
        self.data_dir = self.directory / "data"
        self._run_as_server_user = os.geteuid() == 0
        if self._run_as_server_user:
            user = pwd.getpwnam(SERVER_USER)
            os.chown(self.directory, user.pw_uid, user.pw_gid)
        # Durability against an OS crash buys a throwaway cluster nothing; a committed
        # transaction's WAL is still written (to the page cache) before the commit returns,
        # so stop -m immediate and SIGKILL lose nothing that was committed.
        # synchronous_commit=off would lose it: it must stay on.
        server_argv = [
            str(self.bin_dir / "postgres"), "-D", str(self.data_dir),
            "-c", f"listen_addresses={self.host}", "-c", f"port={self.port}",
            "-c", f"unix_socket_directories={self.directory}",
            "-c", "fsync=off", "-c", "full_page_writes=off",
        ]  # fmt: skip
        self.process = ManagedProcess(
            f"postgres-{self.port}",
            self._as_server_user(server_argv),
            log_path=self.directory / "postgres.log",
            env=self._server_env(),
            cwd=self.directory,
        )

    def __repr__(self) -> str:
        return f"<PrivatePostgres {self.host}:{self.port} {self.directory} alive={self.process.alive}>"

    # -- addresses --

    @property
    def url(self) -> str:
        """The URL of the maintenance database ``postgres``."""
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        """The URL of ``database`` on this server, as the superuser."""
        return f"postgres://{SERVER_USER}@{self.host}:{self.port}/{database}"

    # -- state --

    @property
    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def accepts_connections(self) -> bool:
        """True when a new connection can run a query (False while down or recovering)."""
        import psycopg

        try:
            with psycopg.connect(self.url, connect_timeout=2, autocommit=True) as connection:
                connection.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    # -- life cycle --

    def initdb(self) -> None:
        """Create the cluster in the data directory (done by the first ``start()``)."""
        options = [
            "-D", str(self.data_dir), "-U", SERVER_USER, "--auth=trust",
            "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
        ]  # fmt: skip
        self._run_tool("initdb", options)

    def start(self) -> None:
        """Start the server (creating the cluster the first time) and return once it
        answers queries; RuntimeError, carrying its log, if it exits first."""
        if not self.initialised:
            self.initdb()
        self.process.start()

        def ready() -> bool:
            if not self.process.alive:
                raise RuntimeError(
                    f"postgres on port {self.port} exited ({self.process.returncode}):\n{self.process.log_tail()}"
                )
            return self.accepts_connections()

        try:
            wait_until(
                ready, self.start_timeout, interval=0.1, message=f"postgres on port {self.port} not ready"
            )
        except TimeoutError as error:
            raise TimeoutError(f"{error}; log {self.process.log_path}:\n{self.process.log_tail()}") from None

    def stop(self, mode: ShutdownMode = "fast") -> None:
        """Stop the server with ``pg_ctl stop -m <mode>`` and return once it has exited.

        ``immediate`` aborts every backend without a checkpoint, as a crash would; ``fast``
        disconnects clients and shuts down cleanly; ``smart`` waits for clients to leave.
        The process group is SIGKILLed if it is still there after ``stop_timeout``.
        """
        if not self.process.alive:
            return
        try:
            self._run_tool(
                "pg_ctl",
                ["stop", "-D", str(self.data_dir), "-m", mode, "-w", "-t", str(int(self.stop_timeout))],
                timeout=self.stop_timeout + 5,
            )
        finally:
            if self.process.wait(self.stop_timeout) is None:
                self.process.kill(signal.SIGKILL)
            self.process.expected_exit = True

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend at once, as a machine crash would."""
        self.process.kill(signal.SIGKILL)

    def restart(self, mode: ShutdownMode = "fast") -> None:
        """``stop(mode)``, then ``start()``: same port, same data."""
        self.stop(mode)
        self.start()

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._remove()

    # -- internals --

    def _remove(self) -> None:
        try:
            if self.process.alive:
                # Clients (the platform under test) may still hold connections: do not wait
                # for them, the cluster is thrown away.
                try:
                    self.stop("immediate")
                except (subprocess.SubprocessError, RuntimeError):
                    self.kill()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _as_server_user(self, argv: Sequence[str]) -> list[str]:
        if not self._run_as_server_user:
            return list(argv)
        setpriv = shutil.which("setpriv")
        if setpriv is not None:
            # setpriv execs: the postmaster is our own child, reaped by our wait. Under
            # runuser (which forks) a SIGKILLed postmaster is orphaned and stays a zombie
            # until init reaps it, and a start() in that window finds its postmaster.pid
            # naming a "running" postmaster.
            return [setpriv, f"--reuid={SERVER_USER}", f"--regid={SERVER_USER}", "--init-groups", "--", *argv]
        return [shutil.which("runuser") or "runuser", "-u", SERVER_USER, "--", *argv]

    def _server_env(self) -> dict[str, str]:
        # PG* variables of the caller (PGHOST, PGPORT, PGDATA...) must not redirect our tools.
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env["LC_ALL"] = "C.UTF-8"
        return env

    def _run_tool(self, tool: str, args: Sequence[str], timeout: float = 120.0) -> None:
        """Run a PostgreSQL client binary as the server user; RuntimeError with its output
        when it fails."""
        completed = subprocess.run(
            self._as_server_user([str(self.bin_dir / tool), *args]),
            cwd=self.directory,
            env=self._server_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
        if completed.returncode != 0:
            output = completed.stdout.decode("utf-8", errors="replace")
            raise RuntimeError(
                f"{tool} {' '.join(args)} failed (exit {completed.returncode}):\n{output[-3000:]}"
            )
