"""``make run`` and ``manage.py run_platform`` stop cleanly and leave nothing behind.

Each test starts the real thing (web server, three Celery workers with their pool
processes, beat, provider sandbox) on free ports, against a private Redis and a migrated
temporary database, signals it the way a terminal, ``timeout`` or a process supervisor
would, and then reads /proc: every process that was running must be gone, and the web
port closed, within the stop budget. Whatever happens, the test kills what it started.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.core.management.base import CommandError

from harness.processes import (
    LOCALHOST,
    REPO_ROOT,
    PrivateRedis,
    TemporaryDatabase,
    free_port,
    http_status,
    port_is_open,
    proc_stats,
    wait_until,
)
from notifications.management.commands.run_platform import exclusive_lock, platform_lock_path
from project.processes import die_with_parent

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e-run-platform")]

# What a user (or `docker stop`, or systemd's default) waits before it kills for good.
STOP_BUDGET_SECONDS = 10.0
# A killed run_platform's children are killed by the kernel, not asked: seconds at most.
ORPHAN_BUDGET_SECONDS = 5.0
START_TIMEOUT_SECONDS = 120.0
RUNNING_BANNER = "Press Ctrl-C to stop."
# Variables that a `make test` around pytest sets; the inner make must not inherit its
# parent's jobserver.
MAKE_VARIABLES = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")


@dataclass(frozen=True)
class Proc:
    """A process as /proc showed it; ``started`` (clock ticks after boot) tells it apart
    from a later process that reuses its pid."""

    pid: int
    started: int
    depth: int
    command: str


def _process_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, start time, state) for every process alive right now."""
    return {pid: (int(fields[1]), int(fields[19]), fields[0]) for pid, fields in proc_stats()}


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:160]
    except OSError:
        return "?"


def process_tree(root: int) -> list[Proc]:
    """``root`` and all its descendants, by walking parent pids."""
    table = _process_table()
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(pid)
    tree: list[Proc] = []
    pending = [(root, 0)]
    while pending:
        pid, depth = pending.pop()
        if pid not in table:
            continue
        tree.append(Proc(pid, table[pid][1], depth, _command(pid)))
        pending.extend((child, depth + 1) for child in children.get(pid, []))
    return tree


def still_running(processes: Sequence[Proc]) -> list[Proc]:
    """The processes of ``processes`` that still run (a zombie has stopped running)."""
    table = _process_table()
    return [
        proc
        for proc in processes
        if proc.pid in table and table[proc.pid][1] == proc.started and table[proc.pid][2] != "Z"
    ]


@dataclass
class Launched:
    popen: subprocess.Popen[bytes]
    output: Path
    port: int
    processes: list[Proc]

    def output_tail(self, lines: int = 60) -> str:
        return "\n".join(self.output.read_text(errors="replace").splitlines()[-lines:])

    def survivors(self) -> list[Proc]:
        self.popen.poll()  # reap our own child, or it stays a zombie we would count
        return still_running(self.processes)

    def deeper_than(self, depth: int) -> list[Proc]:
        return [proc for proc in self.processes if proc.depth > depth]


@contextlib.contextmanager
def launched(argv: Sequence[str], env: Mapping[str, str], port: int, directory: Path) -> Iterator[Launched]:
    """Start ``argv`` in a process group of its own (as a shell starts a foreground job),
    wait until the platform is up and yield what runs; on exit SIGKILL anything of it that
    still runs, also when the test failed."""
    output = directory / "output.log"
    with output.open("wb") as sink:
        popen = subprocess.Popen(
            list(argv),
            cwd=REPO_ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # Should pytest itself be killed, make (or run_platform) dies with it, and the
            # platform stops as when make is killed.
            preexec_fn=functools.partial(die_with_parent, signal.SIGKILL, parent_pid=os.getpid()),
        )
    running = Launched(popen, output, port, [])
    try:

        def up() -> bool:
            if popen.poll() is not None:
                raise RuntimeError(f"{argv[0]} exited with {popen.returncode}:\n{running.output_tail()}")
            return RUNNING_BANNER in output.read_text(errors="replace") and (
                http_status(f"http://{LOCALHOST}:{port}/healthz") == 200
            )

        try:
            wait_until(up, START_TIMEOUT_SECONDS, interval=0.2, message="the platform did not start")
        except TimeoutError as error:
            raise TimeoutError(f"{error}:\n{running.output_tail()}") from None
        running.processes = process_tree(popen.pid)
        yield running
    finally:
        leftovers = still_running([*running.processes, *process_tree(popen.pid)])
        for proc in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait(10)
        wait_until(lambda: not still_running(leftovers), 10, message="leftovers did not die")


def assert_everything_gone_within(running: Launched, budget: float) -> float:
    """Wait until every process that was running is gone and the web port is closed;
    return the seconds it took, or fail naming the survivors."""
    started = time.monotonic()

    def gone() -> bool:
        return not running.survivors() and not port_is_open(LOCALHOST, running.port)

    try:
        wait_until(gone, budget, interval=0.05)
    except TimeoutError:
        survivors = "\n".join(f"  {proc.pid} {proc.command}" for proc in running.survivors())
        pytest.fail(
            f"after {budget:.0f}s still running:\n{survivors or '  (none)'}\n"
            f"port {running.port} open: {port_is_open(LOCALHOST, running.port)}\n"
            f"output:\n{running.output_tail()}"
        )
    return time.monotonic() - started


@pytest.fixture(scope="module")
def services() -> Iterator[tuple[PrivateRedis, TemporaryDatabase]]:
    env = {"DJANGO_SETTINGS_MODULE": "project.settings"}
    with PrivateRedis() as redis, TemporaryDatabase(prefix="tmp_run", env=env) as database:
        # seed_demo (part of `make run`) writes var/demo-api-key when it creates the demo
        # key; with one already there a developer's file stays as it is.
        database.run_manage("create_api_key", "demo")
        yield redis, database


@pytest.fixture
def platform_env(
    services: tuple[PrivateRedis, TemporaryDatabase], tmp_path: Path
) -> tuple[dict[str, str], int]:
    """The environment ``make run`` honours, pointing everything at free ports, the private
    Redis, the temporary database and this test's directory; and the web port."""
    redis, database = services
    port = free_port()
    env = {name: value for name, value in os.environ.items() if name not in MAKE_VARIABLES}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "DATABASE_URL": database.url,
            "REDIS_URL": redis.url,
            "CELERY_BROKER_URL": redis.url,
            "PORT": str(port),
            "PROVIDER_SANDBOX_HTTP_PORT": str(free_port()),
            "PROVIDER_SANDBOX_APNS_PORT": str(free_port()),
            "PROVIDER_SANDBOX_SMTP_PORT": str(free_port()),
            "PROVIDER_SANDBOX_DIR": str(tmp_path / "sandbox"),
            "PLATFORM_LOG_DIR": str(tmp_path / "log"),
            "MQTT_PORT": str(free_port()),
            "MQTT_DIR": str(tmp_path / "mqtt"),
            "STREAMING_DIR": str(tmp_path / "streaming"),
            "STREAMING_RTMP_PORT": str(free_port()),
            "STREAMING_HTTP_PORT": str(free_port()),
            "STREAMING_CALLBACK_PORT": str(free_port()),
            # A killed run_platform cannot remove its lock file: it stays in the test's directory.
            "PLATFORM_RUN_DIR": str(tmp_path / "run"),
            "LOG_LEVEL": "WARNING",
            "CELERY_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env, port


# `-o .venv/.installed`: take the virtualenv as installed, so that a requirements file
# touched by someone else does not turn this test into a pip run.
MAKE_RUN = ("make", "--no-print-directory", "-o", ".venv/.installed", "run")
# The same recipe (seed, then exec run_platform) with its prerequisites taken as done: the
# services answer and the module's database is migrated already. Saves a few seconds.
MAKE_RUN_RECIPE = ("make", "--no-print-directory", "-o", "venv", "-o", "services", "-o", "migrate", "run")
RUN_PLATFORM = (sys.executable, str(REPO_ROOT / "manage.py"), "run_platform", "--workers-concurrency", "1")


def test_it_stops_everything_when_make_run_gets_sigterm(
    platform_env: tuple[dict[str, str], int], tmp_path: Path
) -> None:
    env, port = platform_env
    with launched(MAKE_RUN, env, port, tmp_path) as running:
        # make -> run_platform -> worker -> pool process
        assert running.deeper_than(2), running.processes

        running.popen.send_signal(signal.SIGTERM)

        took = assert_everything_gone_within(running, STOP_BUDGET_SECONDS)
        print(f"make run stopped {len(running.processes)} processes in {took:.1f}s after SIGTERM")


def test_it_stops_everything_on_one_ctrl_c(platform_env: tuple[dict[str, str], int], tmp_path: Path) -> None:
    env, port = platform_env
    with launched(MAKE_RUN_RECIPE, env, port, tmp_path) as running:
        assert running.deeper_than(2), running.processes

        # Ctrl-C: the terminal sends SIGINT to the whole foreground process group.
        os.killpg(running.popen.pid, signal.SIGINT)

        took = assert_everything_gone_within(running, STOP_BUDGET_SECONDS)
        print(f"make run stopped {len(running.processes)} processes in {took:.1f}s after Ctrl-C")


def test_it_stops_everything_when_make_is_killed(
    platform_env: tuple[dict[str, str], int], tmp_path: Path
) -> None:
    env, port = platform_env
    with launched(MAKE_RUN_RECIPE, env, port, tmp_path) as running:
        assert running.deeper_than(2), running.processes

        # A supervisor's last resort: make cannot pass SIGKILL on.
        running.popen.send_signal(signal.SIGKILL)

        took = assert_everything_gone_within(running, STOP_BUDGET_SECONDS)
        print(f"{len(running.processes)} processes gone {took:.1f}s after make was killed")


def test_it_stops_everything_when_run_platform_gets_sigterm(
    platform_env: tuple[dict[str, str], int], tmp_path: Path
) -> None:
    env, port = platform_env
    with launched(RUN_PLATFORM, env, port, tmp_path) as running:
        # run_platform -> worker -> pool process
        assert running.deeper_than(1), running.processes

        running.popen.send_signal(signal.SIGTERM)

        took = assert_everything_gone_within(running, STOP_BUDGET_SECONDS)
        assert running.popen.wait(1) == 0, running.output_tail()
        print(f"run_platform stopped {len(running.processes)} processes in {took:.1f}s after SIGTERM")


def test_it_leaves_no_child_when_run_platform_is_killed(
    platform_env: tuple[dict[str, str], int], tmp_path: Path
) -> None:
    env, port = platform_env
    with launched(RUN_PLATFORM, env, port, tmp_path) as running:
        assert running.deeper_than(1), running.processes

        running.popen.send_signal(signal.SIGKILL)

        took = assert_everything_gone_within(running, ORPHAN_BUDGET_SECONDS)
        print(f"{len(running.processes)} processes gone {took:.1f}s after run_platform was killed")


def test_it_refuses_a_second_copy_on_the_same_database_only(tmp_path: Path) -> None:
    # given a run_platform holding the lock of the developer's database
    developers = {"HOST": "127.0.0.1", "PORT": "5432", "NAME": "notifications"}
    a_tests = {**developers, "NAME": "tmp_run_123"}
    held = platform_lock_path(developers, tmp_path)
    with exclusive_lock(held):
        # when a second copy starts on the same database (on any port), then it is refused:
        # a second beat would run every periodic task twice
        with pytest.raises(CommandError, match=f"already running .*pid {os.getpid()}"):
            with exclusive_lock(platform_lock_path(dict(developers), tmp_path)):
                pass
        # and a copy on a temporary database starts beside it
        with exclusive_lock(platform_lock_path(a_tests, tmp_path)):
            pass
    # and no lock file is left behind
    assert list(tmp_path.iterdir()) == []
