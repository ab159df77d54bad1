"""Step 3 of a send: call the providers, one call per target, outside any transaction:
breaker, pacing, failover to the channel's next provider on a transient error."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

from django.conf import settings

from notifications.models import Channel
from notifications.services.provider_health import breaker_open_until, provider_gate
from notifications.services.sending.prepare import DEFER, Job
from notifications.transports.base import OutboundMessage, SendResult, TransportError
from notifications.transports.registry import transport_get

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def send_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=settings.SEND_CONCURRENCY, thread_name_prefix="send")


def _providers_for(message: OutboundMessage) -> list[str]:
    names = list(settings.CHANNEL_PROVIDERS.get(message.channel, []))
    if message.channel == Channel.PUSH:
        platform = message.options.get("platform")
        names = [n for n in names if settings.PROVIDERS[n].get("platform") == platform]
    return names


def message_call(message: OutboundMessage) -> tuple[str, SendResult | TransportError, int, float | None]:
    """Send one message: breaker, pacing, failover. Returns (provider, result or error,
    latency ms, defer-until) where defer-until is set when no provider could be tried."""
    providers = _providers_for(message)
    if not providers:
        return "", TransportError(f"no provider configured for {message.channel}", permanent=True), 0, None
    last: tuple[str, SendResult | TransportError, int] | None = None
    blocked_until: list[float] = []
    gate = provider_gate()
    for name in providers:
        allowed, probe = gate.allows(name)
        if not allowed:
            blocked_until.append(
                breaker_open_until(provider=name) or time.time() + settings.BREAKER_OPEN_SECONDS
            )
            continue
        wait = gate.pace(name)
        if wait is None:
            blocked_until.append(time.time() + 1.0)
            continue
        if wait > 0:
            time.sleep(wait)  # pacing: keep this provider under its rate limit
        started = time.monotonic()
        try:
            result: SendResult | TransportError = transport_get(name).send(message)
        except TransportError as exc:
            result = exc
        except Exception as exc:  # a transport bug must not lose the delivery's outcome
            log.exception("transport %s raised outside its contract", name)
            result = TransportError(f"unexpected error: {exc.__class__.__name__}: {exc}")
        latency = int((time.monotonic() - started) * 1000)
        healthy = not isinstance(result, TransportError) or result.permanent or result.rate_limited
        gate.record(name, ok=healthy, latency_ms=latency, probe=probe)
        last = (name, result, latency)
        if not isinstance(result, TransportError) or result.permanent:
            return name, result, latency, None
        # Transient or rate-limited: fail over to the next provider of the channel.
    if last is not None:
        return last[0], last[1], last[2], None
    return "", TransportError("every provider's breaker is open or saturated"), 0, min(blocked_until)


def job_run(job: Job) -> Job:
    """Call each of the job's targets in turn. When no provider can be tried for one (every
    breaker open, pacing full), the rest wait: the job is deferred, keeping the results of
    the targets already called, so those are recorded and never called again."""
    for message in job.messages:
        provider, result, latency, defer_until = message_call(message)
        if defer_until is not None:
            job.verdict, job.defer_until, job.reason = (
                DEFER,
                defer_until,
                "providers unavailable (breaker open)",
            )
            return job
        job.results.append((message, provider, result, latency))
    return job


def jobs_run(jobs: list[Job]) -> None:
    """Run the jobs that have messages, on the send pool when there are several."""
    to_send = [job for job in jobs if job.verdict is None and job.messages]
    if len(to_send) > 1:
        list(send_pool().map(job_run, to_send))
    else:
        for job in to_send:
            job_run(job)
