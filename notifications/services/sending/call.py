"""Step 3 of a send: call the providers, one call per target, outside any transaction:
breaker, pacing, failover to the channel's next provider on a transient error."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache, partial
from typing import Any, cast

from django.conf import settings

from notifications.models import Channel
from notifications.services.provider_health import breaker_open_until, provider_gate
from notifications.services.sending.prepare import DEFER, Job
from notifications.transports.base import BatchTransport, OutboundMessage, SendResult, TransportError
from notifications.transports.registry import channel_providers, provider_batch_size, transport_get

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def send_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=settings.SEND_CONCURRENCY, thread_name_prefix="send")


Call = tuple[str, SendResult | TransportError, int, float | None]


def _providers_for(message: OutboundMessage) -> list[str]:
    names = channel_providers(message.channel, message.category)
    if message.channel == Channel.PUSH:
        platform = message.options.get("platform")
        names = [n for n in names if settings.PROVIDERS[n].get("platform") == platform]
    return names


def message_call(message: OutboundMessage, providers: list[str] | None = None) -> Call:
    """Send one message: breaker, pacing, failover (through ``providers``, by default the
    message's own). Returns (provider, result or error, latency ms, defer-until) where
    defer-until is set when no provider could be tried."""
    if providers is None:
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


def batch_call(messages: list[OutboundMessage]) -> list[Call]:
    """Send messages that share their content template (``merge_content``), sender and
    type in one call of the first provider that takes them: breaker and pacing as for one
    message, pacing counting every recipient. On a transient error the batch fails over
    to the next provider, as a batch where it takes batches and message by message where
    it does not. Returns each message's call, in order."""
    providers = _providers_for(messages[0])
    gate = provider_gate()
    last: list[Call] | None = None
    blocked_until: list[float] = []
    for position, name in enumerate(providers):
        if provider_batch_size(name) < 2:
            rest = providers[position:]
            return [message_call(message, rest) for message in messages]
        allowed, probe = gate.allows(name)
        if not allowed:
            blocked_until.append(
                breaker_open_until(provider=name) or time.time() + settings.BREAKER_OPEN_SECONDS
            )
            continue
        wait = gate.pace(name, count=len(messages))
        if wait is None:
            blocked_until.append(time.time() + 1.0)
            continue
        if wait > 0:
            time.sleep(wait)
        started = time.monotonic()
        transport = cast(BatchTransport, transport_get(name))
        try:
            results = transport.send_batch(messages)
        except Exception as exc:  # a transport bug must not lose the deliveries' outcomes
            log.exception("transport %s raised outside its contract", name)
            failure = TransportError(f"unexpected error: {exc.__class__.__name__}: {exc}")
            results = [failure for _ in messages]
        latency = int((time.monotonic() - started) * 1000)
        transient = [r for r in results if isinstance(r, TransportError) and not r.permanent]
        gate.record(
            name, ok=not transient or all(r.rate_limited for r in transient), latency_ms=latency, probe=probe
        )
        last = [(name, result, latency, None) for result in results]
        if len(messages) > 1 and all(isinstance(r, TransportError) and r.permanent for r in results):
            # A batch refused outright (one malformed address is enough): each message on
            # its own, so only those that are at fault fail.
            return [message_call(message, providers[position:]) for message in messages]
        if not transient:
            return last
    if last is not None:
        return last
    failure = TransportError("every provider's breaker is open or saturated")
    return [("", failure, 0, min(blocked_until, default=time.time() + 1.0)) for _ in messages]


def _call_settle(job: Job, message: OutboundMessage, call: Call) -> bool:
    """Add one target's call to the job; False when it was deferred (the rest wait)."""
    provider, result, latency, defer_until = call
    if defer_until is not None:
        job.verdict, job.defer_until, job.reason = (
            DEFER,
            defer_until,
            "providers unavailable (breaker open)",
        )
        return False
    job.results.append((message, provider, result, latency))
    return True


def batch_run(jobs: list[Job]) -> list[Job]:
    """Send one batch: jobs of one message each, grouped by ``jobs_batches``."""
    messages = [job.messages[0] for job in jobs]
    for job, message, call in zip(jobs, messages, batch_call(messages), strict=True):
        _call_settle(job, message, call)
    return jobs


def jobs_batches(jobs: list[Job]) -> tuple[list[list[Job]], list[Job]]:
    """Split jobs into batches for providers that send many recipients in one call and
    jobs sent one by one. A batch holds jobs of one message each with the same content
    template, sender, type and header names, to distinct addresses, at most the first
    provider's batch size; a batch of one is sent on its own."""
    groups: dict[tuple[Any, ...], list[tuple[list[Job], set[str]]]] = defaultdict(list)
    single: list[Job] = []
    for job in jobs:
        message = job.messages[0] if len(job.messages) == 1 else None
        if message is None or message.merge_content is None:
            single.append(job)
            continue
        providers = _providers_for(message)
        size = provider_batch_size(providers[0]) if providers else 1
        if size < 2:
            single.append(job)
            continue
        key = (
            tuple(sorted(message.merge_content.items())),
            message.options.get("from_email"),
            message.category,
            message.notification_type,
            tuple(sorted(message.headers)),
        )
        address = message.to.strip().lower()
        batches = groups[key]
        for batch, addresses in batches:
            if len(batch) < size and address not in addresses:
                batch.append(job)
                addresses.add(address)
                break
        else:
            batches.append(([job], {address}))
    batched: list[list[Job]] = []
    for batches in groups.values():
        for batch, _ in batches:
            if len(batch) > 1:
                batched.append(batch)
            else:
                single.extend(batch)
    return batched, single


def job_run(job: Job) -> Job:
    """Call each of the job's targets in turn. When no provider can be tried for one (every
    breaker open, pacing full), the rest wait: the job is deferred, keeping the results of
    the targets already called, so those are recorded and never called again."""
    for message in job.messages:
        if not _call_settle(job, message, message_call(message)):
            return job
    return job


def jobs_run(jobs: list[Job]) -> None:
    """Run the jobs that have messages, batches of them where their provider takes
    batches (jobs_batches), on the send pool when there are several calls to make."""
    to_send = [job for job in jobs if job.verdict is None and job.messages]
    batches, single = jobs_batches(to_send)
    calls: list[Callable[[], object]] = [partial(batch_run, batch) for batch in batches]
    calls += [partial(job_run, job) for job in single]
    if len(calls) > 1:
        list(send_pool().map(lambda call: call(), calls))
    else:
        for call in calls:
            call()
