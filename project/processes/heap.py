"""The garbage collector in long-running processes.

CPython's cyclic collector runs every few hundred allocations and, in its older
generations, walks every object the process holds: in a web or worker process that is
the whole of Django, the apps and their modules, over a hundred thousand objects that live
as long as the process. Loading a few hundred rows allocates enough to trigger a dozen
collections, and walking the startup heap made a third of the time it took (measured on
the fan-out's outbox load, docs/benchmarks.md). ``heap_freeze`` moves everything alive
once the process has started into the permanent generation, which collections skip (the
approach CPython's ``gc.freeze`` documents for forking servers); what requests and tasks
allocate afterwards is collected as before.
"""

from __future__ import annotations

import gc


def heap_freeze() -> None:
    """Collect what is garbage now, then freeze the rest: call once a process has
    imported and set up what it will use."""
    gc.collect()
    gc.freeze()
