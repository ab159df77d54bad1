"""The Celery signal handlers of project/celery.py, in processes of their own."""

from __future__ import annotations

import os
import subprocess
import sys

from harness.processes import REPO_ROOT

SOLO_WORKER = """
import os
import project.celery as c
c._worker_pid = os.getpid()   # a --pool solo worker runs its tasks in its own process
c.pool_process_die_with_worker()
print("alive", flush=True)
"""


def test_a_worker_without_pool_processes_does_not_kill_itself_at_start() -> None:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings.test"}
    done = subprocess.run(
        [sys.executable, "-c", SOLO_WORKER],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert (done.returncode, done.stdout.strip()) == (0, "alive"), done.stderr[-2000:]
