"""Imported into Celery workers that harness.processes starts (``celery worker --include``).

When the worker is ready to consume, it writes its pid to the file named by
``HARNESS_WORKER_READY_FILE``. This tells the harness a worker is ready whatever the log
level or log format, so readiness never depends on parsing log lines.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from celery.signals import worker_ready

READY_FILE_VARIABLE = "HARNESS_WORKER_READY_FILE"


@worker_ready.connect
def mark_worker_ready(sender: Any = None, **kwargs: Any) -> None:
    path = os.environ.get(READY_FILE_VARIABLE)
    if path:
        Path(path).write_text(f"{os.getpid()}\n")
