"""What the sandbox remembers: recorded requests, per-provider counters, faults, opt-outs and
the per-destination attempt counters behind the "N times, then accepted" magic values, and
the providers' own event logs (Mailgun's events API).

Everything lives in memory and is touched only from the sandbox's one event loop, so no
locks are needed; nothing is written to disk per request (the HTTP and APNs servers must
sustain thousands of requests per second on two cores).
"""

from __future__ import annotations

import itertools
import random
import secrets
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

# Providers as they appear in recordings, stats and faults. "mailgun-webhook" and
# "twilio-callback" are the sandbox's own outbound calls to the platform.
PROVIDERS: tuple[str, ...] = (
    "oauth",
    "fcm",
    "apns",
    "twilio",
    "mailgun",
    "mailgun-webhook",
    "twilio-callback",
    "smtp",
    "webhook",
)
OUTBOUND_PROVIDERS = frozenset({"mailgun-webhook", "twilio-callback"})
MAX_RECORDS = 500_000
# Events kept for the events API, all domains together: a million-recipient campaign's
# deliveries (and some bounces) fit; older ones are dropped first.
MAX_EVENTS = 2_000_000
# A domain's dropped events are compacted out of its list once this many have piled up.
COMPACT_AFTER = 4096
# A "timeout" fault (status 0) holds the request this long unless the fault says otherwise.
DEFAULT_TIMEOUT_HOLD_MS = 30_000


@dataclass
class Fault:
    """A scripted failure of one provider: a fraction ``rate`` of its requests is answered
    with ``status`` (0: held for ``latency_ms`` without an answer; below 400: only delayed by
    ``latency_ms``, then handled normally) until ``expires_at`` (None: until cleared)."""

    provider: str
    status: int
    rate: float = 1.0
    latency_ms: int = 0
    seconds: float | None = None
    retry_after: int | None = None
    created_at: float = field(default_factory=time.time)
    expires_at: float | None = None
    synthetic: bool = False

    def active(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at

    @property
    def hold_seconds(self) -> float:
        """How long a timeout fault holds a request."""
        return (self.latency_ms or DEFAULT_TIMEOUT_HOLD_MS) / 1000

    def as_json(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "status": self.status,
            "rate": self.rate,
            "latency_ms": self.latency_ms,
            "seconds": self.seconds,
            "retry_after": self.retry_after,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
        }


@dataclass
class ProviderCounters:
    """What a provider accepted, in figures that survive the capped recordings: a run of a
    million sends is measured by ``keys`` (distinct keys accepted), ``duplicates`` and the
    ``received_at`` of the first and the last first acceptance of a key (its throughput)."""

    requests: int = 0
    accepted: int = 0
    rejected: int = 0
    duplicates: int = 0
    keys: set[str] = field(default_factory=set)
    first_accepted_at: float | None = None
    last_accepted_at: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "keys": len(self.keys),
            "duplicates": self.duplicates,
            "first_accepted_at": self.first_accepted_at,
            "last_accepted_at": self.last_accepted_at,
        }


def is_accepted(status: int) -> bool:
    """2xx for HTTP providers, 250 for SMTP."""
    return 200 <= status < 300


class SandboxState:
    """The sandbox's memory. ``latency_ms`` and ``error_rate`` are the global knobs: a delay
    added to every provider request, and the fraction of them answered 503."""

    def __init__(
        self,
        *,
        latency_ms: int = 0,
        error_rate: float = 0.0,
        max_records: int = MAX_RECORDS,
        max_events: int = MAX_EVENTS,
    ) -> None:
        self.latency_ms = latency_ms
        self.error_rate = error_rate
        self.records: deque[dict[str, Any]] = deque(maxlen=max_records)
        self.seq = 0
        self.counters: dict[str, ProviderCounters] = {name: ProviderCounters() for name in PROVIDERS}
        self.faults: dict[str, Fault] = {}
        self.opted_out: set[str] = set()
        self._attempts: dict[tuple[str, str], int] = {}
        # The longest a request waited between arrival and recording (held by a fault).
        self.max_lag = 0.0
        self.started_at = time.time()
        self.events = EventLog(max_events=max_events)

    # -- recording --

    def record(
        self,
        provider: str,
        *,
        status: int,
        key: str | None = None,
        to: str | None = None,
        summary: dict[str, Any] | None = None,
        received_at: float | None = None,
    ) -> dict[str, Any]:
        """Record one request and what it was answered; return the record.

        An accepted request whose idempotency ``key`` this provider already accepted counts
        as a duplicate: the headline figure of a kill -9 test. The sandbox's own callbacks
        carry their message's key (to find them) and several per message by design, so
        they never count as duplicates.
        """
        self.seq += 1
        now = time.time()
        if received_at is None:
            received_at = now
        elif now - received_at > self.max_lag:
            self.max_lag = now - received_at
        entry: dict[str, Any] = {
            "seq": self.seq,
            "provider": provider,
            "received_at": received_at,
            "status": status,
            "key": key,
            "to": to,
            "summary": summary or {},
        }
        self.records.append(entry)
        counters = self.counters[provider]
        counters.requests += 1
        if is_accepted(status):
            counters.accepted += 1
            if key:
                if key in counters.keys:
                    if provider not in OUTBOUND_PROVIDERS:
                        counters.duplicates += 1
                else:
                    counters.keys.add(key)
                    if counters.first_accepted_at is None:
                        counters.first_accepted_at = received_at
                    counters.last_accepted_at = received_at
        else:
            counters.rejected += 1
        return entry

    def messages(
        self,
        *,
        provider: str | None = None,
        since: float | None = None,
        after: int | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """Records newer than ``since`` (received_at) and ``after`` (seq), oldest first, at
        most ``limit`` of them: the first page after the given point, so a caller pages by
        passing the last seq it saw as ``after``."""
        records = self.records
        begin = 0
        if after is not None and records:
            # seq is contiguous along the deque (every record is appended, none removed
            # but from the left), so the position after ``after`` is arithmetic.
            begin = max(0, after - records[0]["seq"] + 1)
        if since is not None:
            # received_at is taken on arrival but recorded on answer, so a record can
            # follow one received up to max_lag seconds later than itself: walk back from
            # the newest to the first record that cannot be newer than ``since``.
            horizon = since - self.max_lag
            position = len(records)
            for entry in reversed(records):
                if entry["received_at"] <= horizon:
                    break
                position -= 1
            begin = max(begin, position)
        selected: list[dict[str, Any]] = []
        for entry in itertools.islice(records, begin, None):
            if since is not None and entry["received_at"] <= since:
                continue
            if provider is not None and entry["provider"] != provider:
                continue
            selected.append(entry)
            if len(selected) >= limit:
                break
        return selected

    def latest(self, provider: str, count: int) -> list[dict[str, Any]]:
        """The ``count`` newest records of ``provider``, newest last."""
        selected: list[dict[str, Any]] = []
        for entry in reversed(self.records):
            if entry["provider"] == provider:
                selected.append(entry)
                if len(selected) >= count:
                    break
        selected.reverse()
        return selected

    def stats(self) -> dict[str, Any]:
        return {
            "providers": {name: counters.as_json() for name, counters in self.counters.items()},
            "opted_out": sorted(self.opted_out),
            "records": len(self.records),
            "events": len(self.events),
            "started_at": self.started_at,
        }

    # -- magic "N times, then accepted" --

    def attempt(self, provider: str, destination: str) -> int:
        """Count one attempt at ``destination`` and return how many came before it."""
        counter_key = (provider, destination)
        previous = self._attempts.get(counter_key, 0)
        self._attempts[counter_key] = previous + 1
        return previous

    # -- faults --

    def fault_set(self, fault: Fault) -> Fault:
        if fault.seconds is not None:
            fault.expires_at = fault.created_at + fault.seconds
        self.faults[fault.provider] = fault
        return fault

    def faults_clear(self, providers: Iterable[str] | None = None) -> None:
        if providers is None:
            self.faults.clear()
        else:
            for name in providers:
                self.faults.pop(name, None)

    def active_faults(self) -> list[Fault]:
        now = time.time()
        for name in [name for name, fault in self.faults.items() if not fault.active(now)]:
            del self.faults[name]
        return list(self.faults.values())

    def fault_for(self, provider: str) -> Fault | None:
        """The fault that hits this request of ``provider``, if any: a fault set through the
        control API (drawn with its rate), else the global error rate's 503 (which, like the
        global latency, applies to the provider APIs, not to the sandbox's own callbacks)."""
        fault = self.faults.get(provider)
        if fault is not None:
            if not fault.active(time.time()):
                del self.faults[provider]
            elif fault.rate >= 1.0 or random.random() < fault.rate:
                return fault
        if self.error_rate > 0 and provider not in OUTBOUND_PROVIDERS and random.random() < self.error_rate:
            return Fault(provider=provider, status=503, synthetic=True)
        return None

    # -- opt-outs and reset --

    def reset(self) -> None:
        """Forget recordings, counters, faults, opt-outs, attempt counters and logged events
        (whose sequence numbers go on, so a page token taken before still means "after")."""
        self.records.clear()
        self.events.clear()
        self.counters = {name: ProviderCounters() for name in PROVIDERS}
        self.faults.clear()
        self.opted_out.clear()
        self._attempts.clear()


# -- the providers' event logs --


@dataclass(slots=True)
class LoggedEvent:
    """One event as a provider's events API reports it: when it happened, its name (what
    the ``event`` filter matches), its recipient, the fields of its kind (a constant shared
    by every event of that kind) and ``context``, what the events of one message share.
    Nothing per event is copied: about 120 bytes each beside what its message shares."""

    timestamp: float
    event: str
    recipient: str
    fields: dict[str, Any]
    context: Any


class DomainEvents:
    """The events of one domain in the order they happened, numbered by a contiguous
    sequence (from 0, never reused, also across ``clear``).

    A list with a head index rather than a deque: a page from any sequence number is a
    slice (deque indexing walks its blocks). Dropping from the left clears the slot and moves
    the head; the dropped slots are cut off once they are half of the list.
    """

    __slots__ = ("salt", "_items", "_head", "_base")

    def __init__(self) -> None:
        # Event ids are derived from (salt, seq): unique, stable across reads, never stored.
        self.salt = secrets.token_bytes(8)
        self._items: list[LoggedEvent | None] = []
        self._head = 0  # index of the oldest event kept
        self._base = 0  # sequence number of _items[0]

    def __len__(self) -> int:
        return len(self._items) - self._head

    @property
    def first_seq(self) -> int:
        """The sequence number of the oldest event kept."""
        return self._base + self._head

    @property
    def next_seq(self) -> int:
        """The sequence number the next event will get."""
        return self._base + len(self._items)

    def append(self, event: LoggedEvent) -> int:
        self._items.append(event)
        return self._base + len(self._items) - 1

    def drop_oldest(self) -> None:
        if self._head >= len(self._items):
            return
        self._items[self._head] = None
        self._head += 1
        if self._head >= COMPACT_AFTER and self._head * 2 >= len(self._items):
            del self._items[: self._head]
            self._base += self._head
            self._head = 0

    def clear(self) -> None:
        self._base = self.next_seq
        self._items = []
        self._head = 0

    def _index(self, seq: int) -> int:
        """The list index of ``seq``, clamped to the events kept (and one past the newest)."""
        return min(max(seq - self._base, self._head), len(self._items))

    def after(
        self, seq: int, limit: int, names: frozenset[str] | None = None
    ) -> tuple[list[tuple[int, LoggedEvent]], int, int]:
        """Up to ``limit`` events from ``seq`` on (named one of ``names``), oldest first,
        with the sequence number the page started at (``seq`` clamped to what is kept) and
        the one to go on from. Without ``names`` this is a slice; with them it scans forward
        until the page is full or the newest event is passed."""
        start = self._index(seq)
        items = self._items
        if names is None:
            chunk = items[start : start + limit]
            base = self._base + start
            return (
                [(base + offset, event) for offset, event in enumerate(chunk) if event],
                base,
                base + len(chunk),
            )
        selected: list[tuple[int, LoggedEvent]] = []
        index = start
        end = len(items)
        while index < end and len(selected) < limit:
            event = items[index]
            if event is not None and event.event in names:
                selected.append((self._base + index, event))
            index += 1
        return selected, self._base + start, self._base + index

    def before(
        self, seq: int, limit: int, names: frozenset[str] | None = None
    ) -> tuple[list[tuple[int, LoggedEvent]], int, int]:
        """Up to ``limit`` events before ``seq`` (named one of ``names``), newest first, with
        the sequence number the page ended before (``seq`` clamped) and the one to go on
        back from (the oldest scanned)."""
        stop = self._index(seq)
        items = self._items
        selected: list[tuple[int, LoggedEvent]] = []
        index = stop
        head = self._head
        while index > head and len(selected) < limit:
            index -= 1
            event = items[index]
            if event is not None and (names is None or event.event in names):
                selected.append((self._base + index, event))
        return selected, self._base + stop, self._base + index

    def seq_at(self, timestamp: float, *, after: bool = False) -> int:
        """The sequence number of the first event at ``timestamp`` or later (``after``: later
        only): a binary search, events being appended as they happen."""
        items = self._items
        low, high = self._head, len(items)
        while low < high:
            middle = (low + high) // 2
            event = items[middle]
            stamp = event.timestamp if event is not None else float("-inf")
            if stamp < timestamp or (after and stamp == timestamp):
                low = middle + 1
            else:
                high = middle
        return self._base + low


class EventLog:
    """Every domain's events, at most ``max_events`` of them all together: past that the
    oldest event of all domains is dropped (``_order`` remembers whose it is)."""

    def __init__(self, *, max_events: int = MAX_EVENTS) -> None:
        self.max_events = max(1, max_events)
        self.domains: dict[str, DomainEvents] = {}
        self._order: deque[DomainEvents] = deque()

    def __len__(self) -> int:
        return len(self._order)

    def domain(self, name: str) -> DomainEvents | None:
        return self.domains.get(name.lower())

    def append(self, domain: str, event: LoggedEvent) -> tuple[DomainEvents, int]:
        """Log ``event`` of ``domain``; return the domain's log and the event's number."""
        name = domain.lower()
        store = self.domains.get(name)
        if store is None:
            store = self.domains[name] = DomainEvents()
        seq = store.append(event)
        self._order.append(store)
        if len(self._order) > self.max_events:
            self._order.popleft().drop_oldest()
        return store, seq

    def clear(self) -> None:
        """Forget every event; each domain's numbering goes on where it was."""
        for store in self.domains.values():
            store.clear()
        self._order.clear()
