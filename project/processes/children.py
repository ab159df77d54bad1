"""One child process: its own process group, its own log file, dying with its parent."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from project.processes.waiting import wait_until

# The repository root: children run from here.
REPO_ROOT = Path(__file__).resolve().parents[2]


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
