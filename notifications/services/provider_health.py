"""Shared per-provider state in Redis: a circuit breaker, a pacing token bucket and health
figures (calls, failures, latency per minute) for admin.

Shared because every worker process calls the same provider account: a breaker or a rate
limit kept per process would let N workers hit a failing provider N times as hard.
Everything here fails open: when Redis does not answer, sends go ahead unpaced rather than
stopping every channel.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import redis
from django.conf import settings

from realtime.redis_client import redis_key, redis_sync

log = logging.getLogger(__name__)

HEALTH_MINUTES = 120

# Generic cell rate algorithm: the bucket is one "theoretical arrival time". A caller
# reserves its slot and learns how long to wait for it; a wait beyond ``max_wait`` reserves
# nothing (the caller defers the send instead of holding a worker).
_PACE = """
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local max_wait = tonumber(ARGV[4])
local count = tonumber(ARGV[5] or '1')
if tat < now then tat = now end
local wait = tat - now - burst * interval
if wait < 0 then wait = 0 end
if wait > max_wait then return tostring(wait) end
local new_tat = tat + count * interval
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1000)
return tostring(-wait)
"""

# Record one outcome and decide the breaker's state in one round trip. Buckets of one
# second over the window; the breaker opens when the window holds at least ``min_calls``
# calls and the failed share reaches ``ratio``. A half-open breaker lets one probe through;
# its result closes or re-opens it.
_RECORD = """
local now = tonumber(ARGV[1])
local oks = tonumber(ARGV[2])
local fails = tonumber(ARGV[8])
local window = tonumber(ARGV[3])
local min_calls = tonumber(ARGV[4])
local ratio = tonumber(ARGV[5])
local open_seconds = tonumber(ARGV[6])
local latency_ms = tonumber(ARGV[7])
local minute = tostring(math.floor(now / 60))
local second = math.floor(now)
if oks > 0 then
  redis.call('HINCRBY', KEYS[2], 'ok:' .. second, oks)
  redis.call('HINCRBY', KEYS[3], minute .. ':ok', oks)
end
if fails > 0 then
  redis.call('HINCRBY', KEYS[2], 'fail:' .. second, fails)
  redis.call('HINCRBY', KEYS[3], minute .. ':fail', fails)
end
redis.call('EXPIRE', KEYS[2], window + 5)
redis.call('HINCRBY', KEYS[3], minute .. ':latency_ms', latency_ms)
redis.call('EXPIRE', KEYS[3], 7200)
local ok = (fails == 0) and 1 or 0
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
if state == 'half_open' then
  if ok == 1 then
    redis.call('HSET', KEYS[1], 'state', 'closed', 'changed_at', tostring(now))
    redis.call('DEL', KEYS[2])
    return 'closed'
  end
  redis.call('HSET', KEYS[1], 'state', 'open', 'open_until', tostring(now + open_seconds), 'changed_at', tostring(now))
  redis.call('HINCRBY', KEYS[1], 'opened', 1)
  return 'open'
end
if state == 'open' or ok == 1 then return state end
local calls, fails = 0, 0
local fields = redis.call('HGETALL', KEYS[2])
for i = 1, #fields, 2 do
  local kind, sec = string.match(fields[i], '(%a+):(%d+)')
  if tonumber(sec) > now - window then
    local n = tonumber(fields[i + 1])
    calls = calls + n
    if kind == 'fail' then fails = fails + n end
  end
end
if calls >= min_calls and fails >= ratio * calls then
  redis.call('HSET', KEYS[1], 'state', 'open', 'open_until', tostring(now + open_seconds), 'changed_at', tostring(now))
  redis.call('HINCRBY', KEYS[1], 'opened', 1)
  return 'open'
end
return state
"""

# An open breaker whose time is up lets exactly one caller through as the probe.
_ALLOW = """
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
if state == 'closed' then return 2 end
local now = tonumber(ARGV[1])
if state == 'open' then
  local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
  if now < open_until then return 0 end
  redis.call('HSET', KEYS[1], 'state', 'half_open', 'changed_at', tostring(now), 'probe_until', tostring(now + tonumber(ARGV[2])))
  return 1
end
-- half-open: a probe is out; if it never reported, allow another after its deadline
local probe_until = tonumber(redis.call('HGET', KEYS[1], 'probe_until') or '0')
if now >= probe_until then
  redis.call('HSET', KEYS[1], 'probe_until', tostring(now + tonumber(ARGV[2])))
  return 1
end
return 0
"""


@lru_cache(maxsize=1)
def _scripts() -> tuple[Any, Any, Any]:
    client = redis_sync()
    return client.register_script(_PACE), client.register_script(_RECORD), client.register_script(_ALLOW)


def _breaker_key(provider: str) -> str:
    return redis_key(f"provider:{provider}:breaker")


def provider_rate(provider: str) -> float:
    config = settings.PROVIDERS.get(provider, {})
    return float(config.get("rate_per_second", 0) or 0)  # type: ignore[arg-type]


def provider_pace(*, provider: str, max_wait: float = 2.0, count: int = 1) -> float | None:
    """Reserve ``count`` calls' slots under the provider's rate. Returns the seconds the
    caller must wait before calling (0 when at once), or None when the wait would exceed
    ``max_wait``: then nothing is reserved and the caller should defer the send."""
    rate = provider_rate(provider)
    if rate <= 0:
        return 0.0
    pace, _, _ = _scripts()
    try:
        answer = float(
            pace(
                keys=[redis_key(f"provider:{provider}:pace")],
                args=[time.time(), 1.0 / rate, max(1.0, rate / 10), max_wait, count],
            )
        )
    except redis.RedisError as exc:
        log.warning("pacing unavailable for %s: %s", provider, exc)
        return 0.0
    return -answer if answer <= 0 else None


def _allow(provider: str) -> int:
    """2: closed; 1: this caller is the half-open probe; 0: open."""
    _, _, allow = _scripts()
    try:
        return int(
            allow(keys=[_breaker_key(provider)], args=[time.time(), settings.SEND_TIMEOUT_SECONDS + 5])
        )
    except redis.RedisError as exc:
        log.warning("breaker unavailable for %s: %s", provider, exc)
        return 2


def breaker_allows(*, provider: str) -> bool:
    """Whether a call to the provider may go ahead now (closed, or this caller is the
    half-open probe)."""
    return _allow(provider) > 0


def _record(provider: str, *, oks: int, fails: int, latency_ms: int) -> str:
    _, record, _ = _scripts()
    try:
        state = record(
            keys=[
                _breaker_key(provider),
                redis_key(f"provider:{provider}:window"),
                redis_key(f"provider:{provider}:health"),
            ],
            args=[
                time.time(),
                oks,
                settings.BREAKER_WINDOW_SECONDS,
                settings.BREAKER_MIN_CALLS,
                settings.BREAKER_FAILURE_RATIO,
                settings.BREAKER_OPEN_SECONDS,
                max(0, int(latency_ms)),
                fails,
            ],
        )
    except redis.RedisError as exc:
        log.warning("breaker not updated for %s: %s", provider, exc)
        return "unknown"
    state = state.decode() if isinstance(state, bytes) else str(state)
    if state == "open" and fails:
        log.warning("breaker open for provider %s", provider)
    return state


def breaker_record(*, provider: str, ok: bool, latency_ms: int) -> str:
    """Count one call's outcome; returns the breaker's state afterwards. Rate limiting is
    recorded as a success for the breaker: the provider is up, only busy."""
    return _record(provider, oks=1 if ok else 0, fails=0 if ok else 1, latency_ms=latency_ms)


class ProviderGate:
    """The breaker and the pacing bucket as one sender process uses them, with the Redis
    round trips amortised: three per call cost a third of a push's CPU.

    - A closed breaker is believed for ``ALLOW_CACHE_SECONDS``; an open or half-open one is
      asked every time (then calls are few anyway).
    - Pacing slots are reserved ``PACE_BATCH`` at a time and handed out locally.
    - Successes are counted locally and flushed with ``flush()`` (once per chunk) or every
      ``FLUSH_EVERY`` calls; a failure, or a half-open probe's result, is written at once so
      the breaker opens (or closes) without delay.
    """

    ALLOW_CACHE_SECONDS = 0.25
    PACE_BATCH = 10
    FLUSH_EVERY = 100

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed_until: dict[str, float] = {}
        self._slots: dict[str, int] = {}
        self._pending: dict[str, list[int]] = {}  # provider -> [successes, latency ms]

    def allows(self, provider: str) -> tuple[bool, bool]:
        """(may call, is the half-open probe)."""
        now = time.monotonic()
        with self._lock:
            if self._closed_until.get(provider, 0.0) > now:
                return True, False
        verdict = _allow(provider)
        if verdict == 2:
            with self._lock:
                self._closed_until[provider] = now + self.ALLOW_CACHE_SECONDS
        return verdict > 0, verdict == 1

    def pace(self, provider: str, count: int = 1) -> float | None:
        """Seconds to wait before calling (0: at once), None: defer the send. ``count``:
        the messages the call carries (a batch send reserves a slot for each)."""
        if provider_rate(provider) <= 0:
            return 0.0
        if count > 1:
            return provider_pace(provider=provider, count=count)
        with self._lock:
            if self._slots.get(provider, 0) > 0:
                self._slots[provider] -= 1
                return 0.0
        wait = provider_pace(provider=provider, count=self.PACE_BATCH)
        if wait is not None:
            with self._lock:
                self._slots[provider] = self._slots.get(provider, 0) + self.PACE_BATCH - 1
        return wait

    def record(self, provider: str, *, ok: bool, latency_ms: int, probe: bool = False) -> None:
        if not ok or probe:
            with self._lock:
                self._closed_until.pop(provider, None)
            breaker_record(provider=provider, ok=ok, latency_ms=latency_ms)
            return
        with self._lock:
            pending = self._pending.setdefault(provider, [0, 0])
            pending[0] += 1
            pending[1] += max(0, int(latency_ms))
            full = pending[0] >= self.FLUSH_EVERY
        if full:
            self.flush(provider)

    def flush(self, provider: str | None = None) -> None:
        with self._lock:
            names = [provider] if provider else list(self._pending)
            batches = [(name, self._pending.pop(name, [0, 0])) for name in names]
        for name, (oks, latency) in batches:
            if oks:
                _record(name, oks=oks, fails=0, latency_ms=latency)


_gate = ProviderGate()


def provider_gate() -> ProviderGate:
    """This process's gate (shared by its sending threads)."""
    return _gate


def breaker_open_until(*, provider: str) -> float | None:
    """When an open breaker lets a probe through (unix time), or None when it is not open."""
    try:
        raw = redis_sync().hmget(_breaker_key(provider), ["state", "open_until"])
    except redis.RedisError:
        return None
    state, until = raw
    if state != b"open" or until is None:
        return None
    return float(until)


def breaker_reset(*, provider: str) -> None:
    redis_sync().delete(_breaker_key(provider), redis_key(f"provider:{provider}:window"))


@dataclass(frozen=True)
class ProviderHealth:
    provider: str
    channel: str
    state: str
    opened_times: int
    calls: int
    failures: int
    error_rate: float
    latency_ms: float | None
    # Per minute, oldest first: (minute start unix time, calls, failures, mean latency ms).
    minutes: list[tuple[int, int, int, float | None]]


def provider_health(*, minutes: int = 60, now: float | None = None) -> list[ProviderHealth]:
    """Breaker state and the last ``minutes`` of calls, failures and latency per provider."""
    now = time.time() if now is None else now
    client = redis_sync()
    current = int(now // 60)
    names = list(settings.PROVIDERS)
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(_breaker_key(name))
        pipe.hgetall(redis_key(f"provider:{name}:health"))
    raw = pipe.execute()
    result: list[ProviderHealth] = []
    for index, name in enumerate(names):
        breaker = {k.decode(): v.decode() for k, v in raw[2 * index].items()}
        health = {k.decode(): int(v) for k, v in raw[2 * index + 1].items()}
        series: list[tuple[int, int, int, float | None]] = []
        for minute in range(current - minutes + 1, current + 1):
            ok = health.get(f"{minute}:ok", 0)
            fail = health.get(f"{minute}:fail", 0)
            calls = ok + fail
            latency = health.get(f"{minute}:latency_ms", 0) / calls if calls else None
            series.append((minute * 60, calls, fail, latency))
        calls = sum(s[1] for s in series)
        failures = sum(s[2] for s in series)
        latency_total = sum((s[3] or 0) * s[1] for s in series)
        state = breaker.get("state", "closed")
        if state == "open" and float(breaker.get("open_until", "0")) <= now:
            state = "half_open"
        result.append(
            ProviderHealth(
                provider=name,
                channel=str(settings.PROVIDERS[name].get("channel", "")),
                state=state,
                opened_times=int(breaker.get("opened", "0")),
                calls=calls,
                failures=failures,
                error_rate=failures / calls if calls else 0.0,
                latency_ms=latency_total / calls if calls else None,
                minutes=series,
            )
        )
    return result
