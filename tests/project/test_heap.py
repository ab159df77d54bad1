"""project/processes/heap.py: a started process's heap is frozen out of the collector's
walks, after its garbage is collected. Each check runs in a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys

from harness.processes import REPO_ROOT

FREEZE = """
import gc, weakref
from project.processes.heap import heap_freeze

class Node:
    pass

garbage = Node(); garbage.me = garbage          # a cycle only the collector frees
gone = weakref.ref(garbage); del garbage
kept = [Node() for _ in range(1000)]
gc.disable()                                     # nothing but heap_freeze collects
heap_freeze()
print(gone() is None, gc.get_freeze_count() > 1000, flush=True)
"""

POOL_PROCESS = """
import gc
import project.celery as c
assert gc.get_freeze_count() == 0
c.pool_process_heap_freeze()
print(gc.get_freeze_count() > 10000, flush=True)
"""


def _run(code: str) -> str:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings.test"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_heap_freeze_collects_the_garbage_then_freezes_what_is_left():
    assert _run(FREEZE) == "True True"


def test_a_celery_pool_process_freezes_the_heap_it_starts_with():
    assert _run(POOL_PROCESS) == "True"
