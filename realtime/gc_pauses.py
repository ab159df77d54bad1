"""Keep the cyclic garbage collector's pauses short in a web process holding thousands of
sockets.

Each socket keeps some hundreds of objects alive for as long as it is open (its scope and
headers, its consumer, live connection, protocol and their tasks). A full collection walks
every one of them, with the event loop stopped: 200 to 400 ms at 3,000 sockets on the
machine of docs/benchmarks.md, so a broadcast that met one waited for it (P3 broadcast).

Every ``REALTIME_GC_FREEZE_SECONDS`` a thread collects the young generations (cheap) and
freezes what survived (``gc.freeze``): long-lived objects move to the permanent
generation, which collections skip, so a full collection only walks what came since.
Objects freed by reference counting (nearly everything) are freed as before; what a frozen
cycle leaves when it becomes garbage (a closed socket's objects) waits for the thorough
pass every ``REALTIME_GC_FULL_SECONDS``, which unfreezes, collects everything once and
freezes again. The pattern is the one the ``gc.freeze`` documentation describes for
long-lived processes.
"""

from __future__ import annotations

import gc
import logging
import threading
import time

log = logging.getLogger(__name__)

_started = threading.Lock()
_thread: threading.Thread | None = None
_stop = threading.Event()


def _run(freeze_seconds: float, full_seconds: float) -> None:
    last_full = time.monotonic()
    while not _stop.wait(freeze_seconds):
        if full_seconds > 0 and time.monotonic() - last_full >= full_seconds:
            started = time.perf_counter()
            gc.unfreeze()
            collected = gc.collect()
            gc.freeze()
            last_full = time.monotonic()
            log.info(
                "full garbage collection: %d objects collected in %.0f ms",
                collected,
                (time.perf_counter() - started) * 1000,
            )
        else:
            gc.collect(1)
            gc.freeze()


def gc_pauses_bound(*, freeze_seconds: float, full_seconds: float) -> bool:
    """Start the freezing thread of this process (once; False when already started or
    ``freeze_seconds`` is not positive)."""
    global _thread
    if freeze_seconds <= 0:
        return False
    with _started:
        if _thread is not None:
            return False
        _thread = threading.Thread(
            target=_run, args=(freeze_seconds, full_seconds), name="gc-freeze", daemon=True
        )
        _thread.start()
    return True


def gc_pauses_unbound() -> None:
    """Stop the freezing thread and unfreeze (tests)."""
    global _thread
    with _started:
        if _thread is not None:
            _stop.set()
            _thread.join()
            _thread = None
            _stop.clear()
    gc.unfreeze()
