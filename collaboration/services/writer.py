"""One web process's writer of document updates: a group commit across its sockets.

Each socket already gathers what its client sent while its previous batch was being
stored (collaboration/consumers.py). Storing each socket's batch in a transaction of its
own still cost a commit, and a wait for the WAL to reach the disk, per batch; on one
database thread per process those waits queued behind each other and made edits late
under load (docs/benchmarks.md, P7). Here the batches that sockets hand in while the
previous group is being stored are stored together, in one transaction
(collaboration/services/updates.py ``updates_store_many``), and each socket gets its own
result back. A quiet document still costs one commit per edit; a busy process, one per
group.
"""

from __future__ import annotations

import asyncio
import weakref

from asgiref.sync import sync_to_async

from collaboration.services.updates import Batch, Stored, UpdateRefused, updates_store_many


class Writer:
    def __init__(self) -> None:
        self.waiting: list[tuple[Batch, asyncio.Future[Stored]]] = []
        self.task: asyncio.Task[None] | None = None

    async def store(self, batch: Batch) -> Stored:
        """Store one socket's batch with whatever others wait; raises ``UpdateRefused``
        as ``updates_store`` does, or the database's error."""
        future: asyncio.Future[Stored] = asyncio.get_running_loop().create_future()
        self.waiting.append((batch, future))
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        while self.waiting:
            group, self.waiting = self.waiting, []
            try:
                results = await sync_to_async(updates_store_many)([batch for batch, _ in group])
            except Exception as error:  # the database: every batch of the group is refused
                for _, future in group:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), result in zip(group, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, UpdateRefused):
                    future.set_exception(result)
                else:
                    future.set_result(result)


_writers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Writer] = weakref.WeakKeyDictionary()


def writer() -> Writer:
    """The writer of the running event loop."""
    loop = asyncio.get_running_loop()
    found = _writers.get(loop)
    if found is None:
        found = _writers[loop] = Writer()
    return found
