"""Small events fanned out by the process that accepted them, right after its commit.

The broker hop (publish, a worker picking the task up, a task per event) cost more than
the fan-out of a one-recipient event itself. With FANOUT_NEARBY on, a web process hands
the outbox rows it has just committed to a fan-out thread of its own, which takes every
row waiting at once (up to FANOUT_MANY_MAX) and fans them out with
``events_fanout_many``: one row alone goes at once; under load the rows waiting are
stored together, so the per-commit cost is paid once per batch.

Nothing is given up for it. The outbox row is the truth and keeps its lease
(OUTBOX_LEASE_SECONDS): if the process dies with rows in hand, the sweep enqueues them when
the lease runs out, as it does for a lost broker message. Rows go to the fan-out queue
instead when the thread has FANOUT_NEARBY_BACKLOG rows waiting already, when the fan-out
fails, when the process stops with rows waiting, and for events larger than a page
(``events_fanout_many`` relays those). Two fan-outs of one row are harmless, as ever:
small events are claimed before they are planned (services/fanout.py).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections import deque
from collections.abc import Mapping, Sequence

from django.conf import settings
from django.db import close_old_connections, connections

from notifications.models import Event
from notifications.services.fanout import events_fanout_many, fanout_is_small
from notifications.services.outbox import outbox_relay, outbox_relay_many
from notifications.services.queues import CAMPAIGN_QUEUE

log = logging.getLogger(__name__)


class _Nearby:
    """The fan-out thread of one process and the rows waiting for it (a forked process
    makes its own: threads do not survive a fork)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.waiting: deque[int] = deque()
        self.events: dict[int, Event] = {}  # the events of waiting rows, by outbox id
        self.busy = 0  # rows the thread has taken and not yet finished
        self.stopped = False
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="fanout-nearby", daemon=True)
        self.thread.start()

    def offer(self, outbox_ids: Sequence[int], events: Mapping[int, Event] | None = None) -> bool:
        """Take the rows (and the events of some, by outbox id, so that the fan-out need
        not read them) unless the backlog is full, the process is stopping or the thread
        is gone."""
        with self.changed:
            if (
                self.stopped
                or not self.thread.is_alive()
                or len(self.waiting) + len(outbox_ids) > settings.FANOUT_NEARBY_BACKLOG
            ):
                return False
            self.waiting.extend(outbox_ids)
            self.events.update(events or {})
            self.changed.notify_all()
            return True

    def _take(self) -> tuple[list[int], dict[int, Event]] | None:
        """The next batch of waiting rows and the events known of them; None once the
        process is stopping."""
        with self.changed:
            while not self.waiting and not self.stopped:
                self.changed.wait()
            if self.stopped:
                return None
            size = min(len(self.waiting), settings.FANOUT_MANY_MAX)
            batch = [self.waiting.popleft() for _ in range(size)]
            known = {i: event for i in batch if (event := self.events.pop(i, None)) is not None}
            self.busy = len(batch)
            return batch, known

    def _run(self) -> None:
        try:
            while (taken := self._take()) is not None:
                self._fanout(*taken)
        finally:
            connections.close_all()

    def _fanout(self, batch: list[int], events: dict[int, Event]) -> None:
        try:
            close_old_connections()
            events_fanout_many(outbox_ids=batch, events=events)
        except Exception:  # noqa: BLE001 - the fan-out workers take the rows over
            log.exception("fan-out nearby failed; %d events go to the fan-out queue", len(batch))
            connections.close_all()
            try:
                _relay(batch)
            except Exception:  # noqa: BLE001 - the sweep takes them when their lease runs out
                log.exception("%d events not handed to the fan-out queue", len(batch))
        finally:
            with self.changed:
                self.busy = 0
                self.changed.notify_all()

    def idle(self, timeout: float) -> bool:
        """Wait until nothing is waiting or in hand; False if ``timeout`` ran out first."""
        with self.changed:
            return self.changed.wait_for(lambda: not self.waiting and not self.busy, timeout)

    def stop(self, timeout: float) -> None:
        """Refuse new rows, hand those waiting to the fan-out queue, and give the batch in
        hand up to ``timeout`` seconds to finish (if it does not, its rows wait for their
        lease to run out, as when the process is killed)."""
        with self.changed:
            self.stopped = True
            rest = list(self.waiting)
            self.waiting.clear()
            self.events.clear()
            self.changed.notify_all()
        if rest:
            try:
                _relay(rest)
            except Exception:  # noqa: BLE001 - the sweep takes them when their lease runs out
                log.exception("%d waiting events not handed to the fan-out queue", len(rest))
        self.thread.join(timeout)


_nearby: _Nearby | None = None
_nearby_lock = threading.Lock()
STOP_SECONDS = 5.0


def _instance() -> _Nearby:
    global _nearby
    with _nearby_lock:
        if _nearby is None or _nearby.pid != os.getpid():
            _nearby = _Nearby()
        return _nearby


def fanout_nearby_stop(timeout: float = STOP_SECONDS) -> None:
    """Stop this process's fan-out thread, if it has one (at exit, and in tests): rows
    waiting go to the fan-out queue; a later ``fanout_soon`` starts a new thread."""
    global _nearby
    with _nearby_lock:
        nearby, _nearby = _nearby, None
    if nearby is not None and nearby.pid == os.getpid():
        nearby.stop(timeout)


atexit.register(fanout_nearby_stop)


def fanout_soon(*, outbox_ids: Sequence[int], events: Mapping[int, Event] | None = None) -> None:
    """After commit: fan the rows out in this process (FANOUT_NEARBY) or through the
    fan-out queue; ``events``: the events of some, by outbox id, with their types, as just
    stored. Never raises: the rows are stored, and the sweep backs both ways up."""
    if not outbox_ids:
        return
    if settings.FANOUT_NEARBY and _instance().offer(list(outbox_ids), events):
        return
    _relay(outbox_ids)


def event_fanout_soon(*, outbox_id: int, event: Event) -> None:
    """After the commit of one accepted event: a small one (``fanout_is_small``) is fanned
    out nearby, any other goes straight to a fan-out task of its own (the nearby thread
    would only read it to hand it on)."""
    if fanout_is_small(event, 0):
        fanout_soon(outbox_ids=[outbox_id], events={outbox_id: event})
    else:
        outbox_relay(outbox_id=outbox_id, queue=CAMPAIGN_QUEUE if event.campaign_id else None)


def _relay(outbox_ids: Sequence[int]) -> None:
    # One row goes to a task of its own, which takes along other small events waiting.
    if len(outbox_ids) == 1:
        outbox_relay(outbox_id=outbox_ids[0])
    else:
        outbox_relay_many(outbox_ids=outbox_ids)


def fanout_nearby_idle(timeout: float = 10.0) -> bool:
    """Wait until this process's fan-out thread has nothing waiting or in hand (tests)."""
    nearby = _nearby
    return nearby is None or nearby.pid != os.getpid() or nearby.idle(timeout)
