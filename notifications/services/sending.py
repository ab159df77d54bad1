"""Sending deliveries through the providers of email, SMS, push and webhooks.

The order of every send (DESIGN.md section 3):

1. **Claim** a chunk of deliveries by compare-and-set (pending or retrying, due, not
   claimed by a live sender) and commit the claim *before* any provider call. The claim's
   exact expiry time is its token.
2. **Check and render** outside any transaction: suppression list, SMS abuse limits,
   addresses, devices, templates. What cannot be sent fails or is suppressed here.
3. **Call** the providers from a thread pool: breaker, pacing, one call per target,
   failover to the channel's next provider on transient errors or an open breaker.
4. **Record** every outcome in one transaction, guarded by the claim token: attempts,
   status, durable retry rows, dead letters, feedback (dead tokens, bounces).

The duplicate window is step 3 to step 4: a sender killed after a provider accepted and
before the record commits leaves a claimed delivery that is sent again once the claim
expires. It is measured by the kill -9 test and reported in docs/benchmarks.md.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from notifications.models import (
    DeadLetter,
    Delivery,
    DeliveryAttempt,
    DeliveryStatus,
    Device,
    DispatchBatch,
    Event,
    FallbackCheck,
    NotificationType,
    Recipient,
    Suppression,
    SuppressionKind,
    WebhookEndpoint,
    target_idempotency_key,
)
from notifications.services.aggregation import aggregation_context
from notifications.services.catalog import channel_templates
from notifications.services.dispatch import dispatch_lease
from notifications.services.feedback import feedback_apply, receipts_apply_early
from notifications.services.metrics import metrics_increment
from notifications.services.provider_health import breaker_open_until, provider_gate
from notifications.services.scheduling import deliveries_schedule
from notifications.services.sms_guard import SmsVerdict, sms_guard_check
from notifications.services.templating import TemplateRenderError, template_render
from notifications.services.unsubscribe import unsubscribe_headers
from notifications.transports.base import OutboundMessage, SendResult, TransportError
from notifications.transports.registry import transport_get

log = logging.getLogger(__name__)

PROVIDER_CHANNELS = ("email", "sms", "push", "webhook")
RECEIPT_CHANNELS = ("email", "sms")
_SENDABLE = (DeliveryStatus.PENDING, DeliveryStatus.RETRYING)


@lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=settings.SEND_CONCURRENCY, thread_name_prefix="send")


# --- backoff ---------------------------------------------------------------------------


def retry_delay(*, attempt: int, retry_after: float | None = None) -> float:
    """Seconds until retry number ``attempt`` (1-based): exponential backoff with full
    jitter, capped; a provider's Retry-After is a floor, with jitter on top so a crowd told
    "1 second" does not come back in the same millisecond."""
    base = settings.SEND_BACKOFF_BASE_SECONDS
    ceiling = min(settings.SEND_BACKOFF_CAP_SECONDS, base * (2 ** max(0, attempt - 1)))
    delay = random.uniform(base / 2, max(base / 2, ceiling))
    if retry_after is not None:
        delay = max(retry_after, 0.0) + random.uniform(0, base / 2)
    return min(delay, settings.SEND_BACKOFF_CAP_SECONDS)


# --- claim -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    event_id: Any
    recipient_id: int
    channel: str
    attempts: int
    retry_base: int
    aggregate_count: int


def deliveries_claim(*, delivery_ids: list[int], now: datetime) -> tuple[datetime, list[Claimed]]:
    """Compare-and-set claim, committed before returning. Returns the claim token (the
    ``claimed_until`` written) and the rows this sender now owns."""
    token = now + timedelta(seconds=settings.SEND_CLAIM_SECONDS, microseconds=random.randrange(1000))
    with transaction.atomic(), connection.cursor() as db:
        db.execute("SET LOCAL enable_seqscan TO OFF")
        db.execute(
            f"""UPDATE {Delivery._meta.db_table}
                SET claimed_until = %s, attempts = attempts + 1, updated_at = %s
                WHERE id = ANY(%b) AND status = ANY(%b)
                  AND (due_at IS NULL OR due_at <= %s)
                  AND (claimed_until IS NULL OR claimed_until < %s)
                RETURNING id, event_id, recipient_id, channel, attempts, retry_base, aggregate_count""",
            [token, now, delivery_ids, list(_SENDABLE), now, now],
        )
        rows = [Claimed(*row) for row in db.fetchall()]
    return token, rows


# --- prepare ---------------------------------------------------------------------------


@dataclass
class Job:
    """One claimed delivery on its way: the messages to send (one per target) and, as it
    goes, each target's outcome."""

    claimed: Claimed
    notification_type: str = ""
    category: str = ""
    messages: list[OutboundMessage] = field(default_factory=list)
    # Set when the delivery is settled without a provider call.
    verdict: str | None = None  # DeliveryStatus value, or "defer"
    reason: str = ""
    defer_until: float | None = None
    results: list[tuple[OutboundMessage, str, SendResult | TransportError, int]] = field(default_factory=list)


def _render(content: dict[str, str], context: dict[str, Any], channel: str) -> dict[str, str]:
    return {
        name: template_render(source=source, context=context, html=(channel == "email" and name == "html"))
        for name, source in content.items()
    }


def _prepare(claimed: list[Claimed]) -> list[Job]:
    """Read everything the chunk needs in a few bulk queries and build each job's messages,
    settling what cannot be sent (no address, suppressed, abuse limits, bad template)."""
    events = {
        e["id"]: e
        for e in Event.objects.filter(id__in={c.event_id for c in claimed}).values(
            "id", "data", "notification_type_id", "origin_ip"
        )
    }
    types = {
        t.id: t
        for t in NotificationType.objects.filter(id__in={e["notification_type_id"] for e in events.values()})
    }
    recipients = {
        r["id"]: r
        for r in Recipient.objects.filter(id__in={c.recipient_id for c in claimed}).values(
            "id", "external_id", "name", "email", "phone", "locale", "timezone"
        )
    }
    by_channel: dict[str, list[Claimed]] = defaultdict(list)
    for c in claimed:
        by_channel[c.channel].append(c)
    devices: dict[int, list[tuple[str, str]]] = defaultdict(list)
    if "push" in by_channel:
        for d in Device.objects.filter(
            recipient_id__in=[c.recipient_id for c in by_channel["push"]], active=True
        ).values_list("recipient_id", "platform", "token"):
            devices[d[0]].append((d[1], d[2]))
    webhooks: dict[int, list[tuple[str, str, str]]] = defaultdict(list)
    if "webhook" in by_channel:
        for w in WebhookEndpoint.objects.filter(
            recipient_id__in=[c.recipient_id for c in by_channel["webhook"]], active=True
        ).values_list("recipient_id", "kind", "url", "secret"):
            webhooks[w[0]].append((w[1], w[2], w[3]))
    # Targets that already accepted in an earlier attempt are not called again.
    done_targets: dict[int, set[str]] = defaultdict(set)
    retried = [c.id for c in claimed if c.attempts > 1 and c.channel in ("push", "webhook")]
    if retried:
        for delivery_id, target in DeliveryAttempt.objects.filter(
            delivery_id__in=retried, outcome="success"
        ).values_list("delivery_id", "target"):
            done_targets[delivery_id].add(target)
    suppressed_emails = (
        set(
            Suppression.objects.filter(
                kind=SuppressionKind.EMAIL,
                address__in=[
                    str(recipients[c.recipient_id]["email"]).strip().lower()
                    for c in by_channel["email"]
                    if c.recipient_id in recipients
                ],
            ).values_list("address", flat=True)
        )
        if by_channel.get("email")
        else set()
    )
    leaders = [c.id for c in claimed if c.aggregate_count > 1]
    aggregates = aggregation_context(delivery_ids=leaders) if leaders else {}

    jobs: list[Job] = []
    for c in claimed:
        job = Job(claimed=c)
        jobs.append(job)
        event = events.get(c.event_id)
        recipient = recipients.get(c.recipient_id)
        if event is None or recipient is None:
            job.verdict, job.reason = DeliveryStatus.FAILED, "event or recipient no longer exists"
            continue
        ntype = types[event["notification_type_id"]]
        job.notification_type, job.category = ntype.key, ntype.category
        templates = channel_templates(type_id=ntype.id, channel=c.channel)
        content = templates.get(recipient["locale"]) or templates.get(ntype.default_locale)
        if content is None and c.channel != "webhook":
            job.verdict, job.reason = DeliveryStatus.FAILED, f"no {c.channel} template for this type"
            continue
        context = {
            "data": event["data"],
            "recipient": {
                "external_id": recipient["external_id"],
                "name": recipient["name"],
                "locale": recipient["locale"],
            },
            "aggregate": aggregates.get(c.id) or {"count": 1, "others": 0, "samples": [event["data"]]},
        }
        try:
            rendered = _render(content or {}, context, c.channel)
        except TemplateRenderError as exc:
            job.verdict, job.reason = DeliveryStatus.FAILED, str(exc)[:200]
            continue
        key = str(
            Delivery(event_id=c.event_id, recipient_id=c.recipient_id, channel=c.channel).idempotency_key
        )
        common: dict[str, Any] = {
            "delivery_id": c.id,
            "idempotency_key": key,
            "channel": c.channel,
            "category": ntype.category,
            "notification_type": ntype.key,
            "content": rendered,
        }
        if c.channel == "email":
            address = (recipient["email"] or "").strip()  # as suppression_add normalises
            if not address:
                job.verdict, job.reason = DeliveryStatus.FAILED, "recipient has no email address"
            elif address.lower() in suppressed_emails:
                job.verdict, job.reason = (
                    DeliveryStatus.SUPPRESSED,
                    "suppression list: address bounced or complained",
                )
            else:
                headers = unsubscribe_headers(
                    recipient_id=c.recipient_id, category=ntype.category, notification_type=ntype.key
                )
                job.messages.append(OutboundMessage(to=address, headers=headers, **common))
        elif c.channel == "sms":
            verdict = sms_guard_check(
                phone=recipient["phone"],
                text=rendered.get("text", ""),
                origin_ip=event["origin_ip"],
                critical=ntype.is_critical,
            )
            if not verdict.allowed:
                _settle_sms(job, verdict)
            else:
                callback = f"{settings.PUBLIC_URL}/providers/twilio/status/?key={key}&d={c.id}"
                job.messages.append(
                    OutboundMessage(to=verdict.e164, options={"status_callback": callback}, **common)
                )
        elif c.channel == "push":
            targets = [d for d in devices.get(c.recipient_id, []) if d[1] not in done_targets[c.id]]
            if not devices.get(c.recipient_id):
                job.verdict, job.reason = DeliveryStatus.FAILED, "no active device"
            collapse = (event["data"] or {}).get("collapse_key") if isinstance(event["data"], dict) else None
            data = {"event_id": str(c.event_id), "type": ntype.key, "delivery_id": str(c.id)}
            # APNs allows 64 bytes of collapse id; cut on a character boundary.
            collapse_id = str(collapse).encode()[:64].decode(errors="ignore") if collapse else None
            for platform, token in targets:
                job.messages.append(
                    OutboundMessage(
                        to=token,
                        options={"platform": platform},
                        collapse_key=collapse_id,
                        data=data,
                        **{
                            **common,
                            "idempotency_key": str(target_idempotency_key(key, f"{platform}:{token}")),
                        },
                    )
                )
        elif c.channel == "webhook":
            endpoints = webhooks.get(c.recipient_id, [])
            if not endpoints:
                job.verdict, job.reason = DeliveryStatus.FAILED, "no webhook endpoint"
            if "text" not in rendered:
                common["content"] = {**rendered, "text": f"{ntype.key}: {event['data']}"}
            for kind, url, secret in endpoints:
                if url in done_targets[c.id]:
                    continue
                job.messages.append(
                    OutboundMessage(
                        to=url,
                        options={"kind": kind, "secret": secret},
                        data=event["data"],
                        **{**common, "idempotency_key": str(target_idempotency_key(key, url))},
                    )
                )
        if job.verdict is None and not job.messages:
            # Every target accepted in an earlier attempt whose result was recorded.
            job.verdict, job.reason = DeliveryStatus.SENT, ""
    return jobs


def _settle_sms(job: Job, verdict: SmsVerdict) -> None:
    job.reason = verdict.reason
    if verdict.defer_until is not None:
        job.verdict, job.defer_until = "defer", verdict.defer_until
    elif verdict.suppress:
        job.verdict = DeliveryStatus.SUPPRESSED
    else:
        job.verdict = DeliveryStatus.FAILED


# --- call ------------------------------------------------------------------------------


def _providers_for(message: OutboundMessage) -> list[str]:
    names = list(settings.CHANNEL_PROVIDERS.get(message.channel, []))
    if message.channel == "push":
        platform = message.options.get("platform")
        names = [n for n in names if settings.PROVIDERS[n].get("platform") == platform]
    return names


def _call(message: OutboundMessage) -> tuple[str, SendResult | TransportError, int, float | None]:
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


def _run(job: Job) -> Job:
    for message in job.messages:
        provider, result, latency, defer_until = _call(message)
        if defer_until is not None:
            job.verdict, job.defer_until, job.reason = (
                "defer",
                defer_until,
                "providers unavailable (breaker open)",
            )
            return job
        job.results.append((message, provider, result, latency))
    return job


# --- record ----------------------------------------------------------------------------


@dataclass
class _Outcome:
    status: str
    reason: str = ""
    due: datetime | None = None
    provider: str = ""
    counted: bool = True  # False: the attempt made no provider call and does not count


def _decide(job: Job, now: datetime) -> _Outcome:
    c = job.claimed
    if job.verdict == "defer":
        due = datetime.fromtimestamp(job.defer_until or time.time() + 1, tz=UTC)
        jitter = timedelta(seconds=random.uniform(0, settings.SEND_BACKOFF_BASE_SECONDS))
        return _Outcome(DeliveryStatus.RETRYING, job.reason, due=max(due, now) + jitter, counted=False)
    if job.verdict is not None:
        return _Outcome(job.verdict, job.reason)
    successes = [(p, r) for _, p, r, _ in job.results if isinstance(r, SendResult)]
    errors = [r for _, _, r, _ in job.results if isinstance(r, TransportError)]
    retryable = [e for e in errors if not e.permanent]
    provider = successes[-1][0] if successes else ""
    if retryable:
        used = c.attempts - c.retry_base
        if used < settings.SEND_MAX_ATTEMPTS:
            hint = max((e.retry_after for e in retryable if e.retry_after is not None), default=None)
            delay = retry_delay(attempt=used, retry_after=hint)
            return _Outcome(
                DeliveryStatus.RETRYING, retryable[0].reason[:200], due=now + timedelta(seconds=delay)
            )
        if not successes:
            return _Outcome(DeliveryStatus.DEAD, f"retries exhausted: {retryable[0].reason}"[:200])
    if successes:
        # Webhooks answer for the receiver itself: a 2xx means it arrived.
        status = DeliveryStatus.DELIVERED if c.channel == "webhook" else DeliveryStatus.SENT
        return _Outcome(status, "", provider=provider)
    reason = errors[0].reason if errors else "not sent"
    return _Outcome(DeliveryStatus.FAILED, reason[:200])


def _record(jobs: list[Job], token: datetime) -> Counter[str]:
    now = timezone.now()
    outcomes = {job.claimed.id: _decide(job, now) for job in jobs}
    channels = {job.claimed.id: job.claimed.channel for job in jobs}
    counts: Counter[str] = Counter()
    with transaction.atomic():
        ids = list(outcomes)
        with connection.cursor() as db:
            db.execute("SET LOCAL enable_seqscan TO OFF")
            db.execute(
                f"""UPDATE {Delivery._meta.db_table} AS d
                    SET status = u.status, reason = u.reason, due_at = u.due, provider = u.provider,
                        sent_at = CASE WHEN u.status IN ('sent', 'delivered') THEN %s ELSE d.sent_at END,
                        attempts = d.attempts - u.uncount, claimed_until = NULL, updated_at = %s
                    FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::timestamptz[], %b::text[], %b::int[])
                         AS u(id, status, reason, due, provider, uncount)
                    WHERE d.id = u.id AND d.claimed_until = %s
                    RETURNING d.id""",
                [
                    now,
                    now,
                    ids,
                    [outcomes[i].status for i in ids],
                    [outcomes[i].reason for i in ids],
                    [outcomes[i].due for i in ids],
                    [outcomes[i].provider for i in ids],
                    [0 if outcomes[i].counted else 1 for i in ids],
                    token,
                ],
            )
            owned = {row[0] for row in db.fetchall()}
        lost = len(ids) - len(owned)
        if lost:
            # Our claim expired and another sender took these over: its result stands.
            log.warning("send results of %d deliveries dropped: claim expired", lost)
        attempts: list[DeliveryAttempt] = []
        feedback: list[tuple[OutboundMessage, TransportError]] = []
        dead: list[DeadLetter] = []
        for job in jobs:
            c = job.claimed
            if c.id not in owned:
                continue
            outcome = outcomes[c.id]
            counts[f"deliveries:{c.channel}:{outcome.status}"] += 1
            for message, provider, result, latency in job.results:
                if isinstance(result, SendResult):
                    attempts.append(
                        DeliveryAttempt(
                            delivery_id=c.id,
                            number=c.attempts,
                            outcome="success",
                            provider=provider,
                            provider_message_id=result.provider_message_id[:200],
                            latency_ms=latency,
                            target=message.to[:512],
                            detail=result.detail,
                        )
                    )
                    counts[f"sends:{provider}:success"] += 1
                else:
                    attempts.append(
                        DeliveryAttempt(
                            delivery_id=c.id,
                            number=c.attempts,
                            outcome=result.outcome,
                            error=result.reason[:2000],
                            provider=provider,
                            latency_ms=latency,
                            target=message.to[:512],
                            detail={"code": result.code, **result.detail} if result.code else result.detail,
                        )
                    )
                    counts[f"sends:{provider}:{result.outcome}"] += 1
                    if result.feedback:
                        feedback.append((message, result))
            if outcome.status == DeliveryStatus.DEAD:
                dead.append(
                    DeadLetter(
                        delivery_id=c.id,
                        channel=c.channel,
                        notification_type=job.notification_type,
                        reason=outcome.reason,
                        attempts=c.attempts,
                        created_at=now,
                    )
                )
        DeliveryAttempt.objects.bulk_create(attempts, ignore_conflicts=True)
        if dead:
            DeadLetter.objects.bulk_create(
                dead,
                update_conflicts=True,
                unique_fields=["delivery"],
                update_fields=["reason", "attempts", "created_at", "replayed_at"],
            )
        retrying = [(i, outcomes[i].due) for i in owned if outcomes[i].status == DeliveryStatus.RETRYING]
        deliveries_schedule(retrying)
        finished = [
            i
            for i in owned
            if outcomes[i].status in (DeliveryStatus.FAILED, DeliveryStatus.DEAD, DeliveryStatus.SUPPRESSED)
        ]
        if finished:
            # A delivery that failed for good need not wait for its fallback's deadline.
            FallbackCheck.objects.filter(delivery_id__in=finished).update(due_at=now)
        for message, error in feedback:
            feedback_apply(message=message, error=error)
        # Only email and SMS providers report back; push and webhook receipts never come.
        receipts_apply_early(
            delivery_ids=[
                i
                for i in owned
                if outcomes[i].status == DeliveryStatus.SENT and channels[i] in RECEIPT_CHANNELS
            ],
            now=now,
        )
    return counts


# --- entry points ----------------------------------------------------------------------


def _claimed_elsewhere(delivery_ids: list[int], now: datetime) -> datetime | None:
    """The latest live claim another sender holds on sendable deliveries among
    ``delivery_ids`` (None when there is none). Such a sender may have died: its claim
    expiring is the only sign, so whoever runs the batch must look again after it."""
    with connection.cursor() as db:
        db.execute(
            f"""SELECT max(claimed_until) FROM {Delivery._meta.db_table}
                WHERE id = ANY(%b) AND status = ANY(%b) AND claimed_until >= %s""",
            [delivery_ids, list(_SENDABLE), now],
        )
        row = db.fetchone()
    return row[0] if row else None


def deliveries_send(*, delivery_ids: list[int]) -> tuple[int, datetime | None]:
    """Claim, send and record one chunk. Returns how many deliveries this call settled
    (any outcome) and, when some are claimed by another sender, until when: the caller
    must try those again after that (the other sender may be dead). Deliveries not due
    yet are skipped: their schedule row releases them."""
    if not delivery_ids:
        return 0, None
    now = timezone.now()
    token, claimed = deliveries_claim(delivery_ids=delivery_ids, now=now)
    busy_until = _claimed_elsewhere(delivery_ids, now) if len(claimed) < len(delivery_ids) else None
    if not claimed:
        return 0, busy_until
    jobs = _prepare(claimed)
    to_send = [job for job in jobs if job.verdict is None and job.messages]
    if len(to_send) > 1:
        list(_pool().map(_run, to_send))
    else:
        for job in to_send:
            _run(job)
    provider_gate().flush()
    counts = _record(jobs, token)
    metrics_increment(counts)
    for job in jobs:
        if job.results or job.verdict:
            log.debug(
                "delivery settled",
                extra={"event_id": str(job.claimed.event_id), "delivery_ids": [job.claimed.id]},
            )
    return len(claimed), busy_until


def provider_dispatch_batch(*, batch_id: int, channel: str) -> int:
    """Send an open dispatch batch in chunks, renewing its lease as it goes; marks it done
    at the end, unless some of its deliveries are claimed by a sender that may have died:
    then the batch stays open until that claim expires and the sweep runs it again.
    Running a batch twice, or at once on two workers, sends nothing twice: each chunk is
    claimed delivery by delivery."""
    with transaction.atomic():
        ids = (
            DispatchBatch.objects.select_for_update(skip_locked=True)
            .filter(id=batch_id, channel=channel, done_at__isnull=True)
            .values_list("delivery_ids", flat=True)
            .first()
        )
        if ids is None:
            return 0
        DispatchBatch.objects.filter(id=batch_id).update(leased_until=timezone.now() + dispatch_lease())
    settled = 0
    recheck_at: datetime | None = None
    size = settings.SEND_CHUNK
    for start in range(0, len(ids), size):
        count, busy_until = deliveries_send(delivery_ids=list(ids[start : start + size]))
        settled += count
        if busy_until is not None:
            recheck_at = max(recheck_at or busy_until, busy_until)
        DispatchBatch.objects.filter(id=batch_id, done_at__isnull=True).update(
            leased_until=timezone.now() + dispatch_lease()
        )
    if recheck_at is not None:
        DispatchBatch.objects.filter(id=batch_id, done_at__isnull=True).update(
            leased_until=recheck_at + timedelta(seconds=1)
        )
    else:
        DispatchBatch.objects.filter(id=batch_id).update(done_at=timezone.now())
    return settled
