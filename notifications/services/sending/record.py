"""Step 4 of a send: decide each claimed delivery's outcome and record it, with its
attempts, retry row, dead letter and feedback, in one transaction guarded by the claim.

A result whose claim expired and was taken over by another sender is dropped: the new
owner's result stands. Every provider call made is recorded as an attempt row, numbered
by the claim that made it, so an accepted target is known to be done on the next try.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from notifications.models import AttemptOutcome, Channel, DeadLetter, Delivery, DeliveryAttempt, FallbackCheck
from notifications.services.backoff import deferred_until, retry_at
from notifications.services.feedback import feedback_apply, receipts_apply_early
from notifications.services.scheduling import deliveries_schedule
from notifications.services.sending.prepare import DEFER, Job
from notifications.services.sql import join_unnest_by_hash
from notifications.states import FINAL, SEND_OUTCOMES, SENDABLE, DeliveryStatus
from notifications.transports.base import OutboundMessage, SendResult, TransportError

log = logging.getLogger(__name__)

# Only email and SMS providers report back; push and webhook receipts never come.
RECEIPT_CHANNELS = (Channel.EMAIL, Channel.SMS)
# Statuses that mean the provider took the message.
_HANDED_OVER = [DeliveryStatus.SENT, DeliveryStatus.DELIVERED]


@dataclass
class Outcome:
    status: str
    reason: str = ""
    due: datetime | None = None
    provider: str = ""
    # False: this attempt made no provider call at all and does not count against the
    # retry budget (a deferral before any target was tried).
    counted: bool = True


def outcome_decide(job: Job, now: datetime) -> Outcome:
    c = job.claimed
    successes = [(p, r) for _, p, r, _ in job.results if isinstance(r, SendResult)]
    provider = successes[-1][0] if successes else ""
    if job.verdict == DEFER:
        blocked = datetime.fromtimestamp(job.defer_until or time.time() + 1, tz=UTC)
        return Outcome(
            DeliveryStatus.RETRYING,
            job.reason,
            due=deferred_until(now=now, blocked_until=blocked),
            provider=provider,
            counted=bool(job.results),
        )
    if job.verdict is not None:
        return Outcome(job.verdict, job.reason)
    errors = [r for _, _, r, _ in job.results if isinstance(r, TransportError)]
    retryable = [e for e in errors if not e.permanent]
    if retryable:
        used = c.attempts - c.retry_base
        if used < settings.SEND_MAX_ATTEMPTS:
            hint = max((e.retry_after for e in retryable if e.retry_after is not None), default=None)
            return Outcome(
                DeliveryStatus.RETRYING,
                retryable[0].reason[:200],
                due=retry_at(now=now, attempt=used, retry_after=hint),
                provider=provider,
            )
        if not successes:
            return Outcome(DeliveryStatus.DEAD, f"retries exhausted: {retryable[0].reason}"[:200])
    if successes:
        # Webhooks answer for the receiver itself: a 2xx means it arrived.
        status = DeliveryStatus.DELIVERED if c.channel == Channel.WEBHOOK else DeliveryStatus.SENT
        return Outcome(status, "", provider=provider)
    reason = errors[0].reason if errors else "not sent"
    return Outcome(DeliveryStatus.FAILED, reason[:200])


class _Attempt(NamedTuple):
    """One provider call of a delivery, as DeliveryAttempt stores it."""

    delivery_id: int
    number: int
    outcome: str
    error: str
    provider: str
    provider_message_id: str
    latency_ms: int
    target: str
    detail: dict[str, Any]


def _attempt(
    job: Job, message: OutboundMessage, provider: str, result: SendResult | TransportError, latency: int
) -> _Attempt:
    c = job.claimed
    if isinstance(result, SendResult):
        return _Attempt(
            c.id,
            c.attempts,
            AttemptOutcome.SUCCESS,
            "",
            provider,
            result.provider_message_id[:200],
            latency,
            message.to[:512],
            result.detail,
        )
    return _Attempt(
        c.id,
        c.attempts,
        result.outcome,
        result.reason[:2000],
        provider,
        "",
        latency,
        message.to[:512],
        {"code": result.code, **result.detail} if result.code else result.detail,
    )


def _attempts_insert(attempts: list[_Attempt], now: datetime) -> None:
    """One statement for every attempt of the chunk (the ORM's bulk_create spent longer
    preparing the rows than the database spent storing them). No ON CONFLICT: each claim
    numbers its attempts anew (claim.py), so a conflict would be a bug, and silently
    dropping the row would hide that a target was called."""
    if not attempts:
        return
    columns = list(zip(*attempts, strict=True))
    with connection.cursor() as db:
        db.execute(
            f"""INSERT INTO {DeliveryAttempt._meta.db_table}
                    (delivery_id, number, outcome, error, provider, provider_message_id, latency_ms, target,
                     detail, created_at)
                SELECT d, n, o, e, p, m, l, t, x::jsonb, %s
                FROM unnest(%b::bigint[], %b::int[], %b::text[], %b::text[], %b::text[], %b::text[], %b::int[],
                            %b::text[], %b::text[]) AS u(d, n, o, e, p, m, l, t, x)""",
            [now, *[list(column) for column in columns[:8]], [json.dumps(detail) for detail in columns[8]]],
        )


def _update(
    outcomes: dict[int, Outcome], versions: dict[int, int | None], token: datetime, now: datetime
) -> set[int]:
    """Write every outcome whose claim is still ours; returns the ids written."""
    ids = list(outcomes)
    for delivery_id in ids:
        status = outcomes[delivery_id].status
        if status not in SEND_OUTCOMES:
            raise ValueError(
                f"delivery {delivery_id}: a send cannot end in {status!r} (notifications/states.py)"
            )
    with connection.cursor() as db:
        join_unnest_by_hash(db)
        db.execute(
            f"""UPDATE {Delivery._meta.db_table} AS d
                SET status = u.status, reason = u.reason, due_at = u.due, provider = u.provider,
                    sent_at = CASE WHEN u.status = ANY(%b) THEN %s ELSE d.sent_at END,
                    attempts = d.attempts - u.uncount, claimed_until = NULL, updated_at = %s,
                    template_version = COALESCE(u.version, d.template_version)
                FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::timestamptz[], %b::text[], %b::int[],
                            %b::int[])
                     AS u(id, status, reason, due, provider, uncount, version)
                WHERE d.id = u.id AND d.id = ANY(%b) AND d.claimed_until = %s AND d.status = ANY(%b)
                RETURNING d.id""",
            [
                _HANDED_OVER,
                now,
                now,
                ids,
                [outcomes[i].status for i in ids],
                [outcomes[i].reason for i in ids],
                [outcomes[i].due for i in ids],
                [outcomes[i].provider for i in ids],
                [0 if outcomes[i].counted else 1 for i in ids],
                [versions.get(i) for i in ids],
                ids,
                token,
                list(SENDABLE),
            ],
        )
        return {row[0] for row in db.fetchall()}


def jobs_record(jobs: list[Job], token: datetime) -> Counter[str]:
    """Record the outcome of every job whose claim (``token``) is still this sender's.
    Returns metric counts (deliveries by channel and status, sends by provider)."""
    now = timezone.now()
    outcomes = {job.claimed.id: outcome_decide(job, now) for job in jobs}
    channels = {job.claimed.id: job.claimed.channel for job in jobs}
    counts: Counter[str] = Counter()
    with transaction.atomic():
        owned = _update(outcomes, {job.claimed.id: job.template_version for job in jobs}, token, now)
        lost = len(outcomes) - len(owned)
        if lost:
            # Our claim expired and another sender took these over: its result stands.
            log.warning("send results of %d deliveries dropped: claim expired", lost)
        attempts: list[_Attempt] = []
        feedback: list[tuple[OutboundMessage, TransportError]] = []
        dead: list[DeadLetter] = []
        for job in jobs:
            c = job.claimed
            if c.id not in owned:
                continue
            outcome = outcomes[c.id]
            counts[f"deliveries:{c.channel}:{outcome.status}"] += 1
            for message, provider, result, latency in job.results:
                attempts.append(_attempt(job, message, provider, result, latency))
                counts[
                    f"sends:{provider}:{'success' if isinstance(result, SendResult) else result.outcome}"
                ] += 1
                if isinstance(result, TransportError) and result.feedback:
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
        _attempts_insert(attempts, now)
        if dead:
            DeadLetter.objects.bulk_create(
                dead,
                update_conflicts=True,
                unique_fields=["delivery"],
                update_fields=["reason", "attempts", "created_at", "replayed_at"],
            )
        deliveries_schedule(
            [(i, outcomes[i].due) for i in owned if outcomes[i].status == DeliveryStatus.RETRYING]
        )
        finished = [i for i in owned if outcomes[i].status in FINAL]
        if finished:
            # A delivery that failed for good need not wait for its fallback's deadline.
            FallbackCheck.objects.filter(delivery_id__in=finished).update(due_at=now)
        for message, error in feedback:
            feedback_apply(message=message, error=error)
        awaiting = [
            i for i in owned if outcomes[i].status == DeliveryStatus.SENT and channels[i] in RECEIPT_CHANNELS
        ]
        receipts_apply_early(delivery_ids=awaiting, now=now)
    if awaiting:
        # A page of receipts stored while this transaction was in flight was invisible
        # to it, and could not move these deliveries either (they were not sent yet when
        # it looked): whichever of the two looks again after its commit sees the other's
        # (feedback.receipts_track does the same on its side).
        with transaction.atomic():
            receipts_apply_early(delivery_ids=awaiting, now=timezone.now())
    return counts
