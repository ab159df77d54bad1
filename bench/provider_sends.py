"""Provider sends per second, per channel, through the provider sandbox.

For each provider (Mailgun and SMTP email, Twilio SMS, FCM and APNs push, signed generic
webhooks) N recipients are seeded with SQL (``generate_series``) with what that channel
needs (an address, a number, one device, one webhook endpoint) and subscribed to a topic
of their own; a notification type with only that channel is created over HTTP; one event
is POSTed to the topic. The sandbox records every request with the time it arrived:
*accepted/s* is the number of distinct idempotency keys it accepted over the time from its
first to its last acceptance; the run ends when the database holds a settled delivery
for every recipient.

The helpers here (seeding, types, sandbox recordings, pacing settings) are shared by the
P4 and kill -9 benchmarks.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import psycopg

from bench.stack import Progress, Stack, bench_stack, cpu_sample, cpu_seconds
from harness.sandbox import Record, SandboxControl

# Provider pacing is raised far above what two cores can send, so that these benchmarks
# measure the pipeline and not the configured provider rate limits.
UNPACED_ENV: dict[str, str] = {
    "MAILGUN_RATE_PER_SECOND": "1000000",
    "MAILGUN_BULK_RATE_PER_SECOND": "1000000",
    "SMTP_RATE_PER_SECOND": "1000000",
    "TWILIO_RATE_PER_SECOND": "1000000",
    "TWILIO_BACKUP_RATE_PER_SECOND": "1000000",
    "FCM_RATE_PER_SECOND": "1000000",
    "APNS_RATE_PER_SECOND": "1000000",
    "WEBHOOK_RATE_PER_SECOND": "1000000",
}
# SMS abuse limits count per originating IP and per number prefix: one topic event from
# the load generator's address to thousands of numbers in a few prefixes is exactly what
# they refuse. They are lifted for the throughput run (and the daily spend cap raised).
SMS_UNLIMITED_ENV: dict[str, str] = {
    "SMS_LIMIT_PER_IP": "off",
    "SMS_LIMIT_PER_PREFIX": "off",
    "SMS_DAILY_SPEND_CAP": "1000000",
}
SENDS_ENV: dict[str, str] = {**UNPACED_ENV, **SMS_UNLIMITED_ENV}

TEMPLATES: dict[str, dict[str, str]] = {
    "email": {
        "subject": "Benchmark {{ data.n }}",
        "html": "<p>Benchmark event {{ data.n }} for {{ recipient.external_id }}</p>",
        "text": "Benchmark event {{ data.n }} for {{ recipient.external_id }}",
    },
    "sms": {"text": "Benchmark event {{ data.n }}"},
    "push": {"title": "Benchmark", "body": "Event {{ data.n }}"},
    "webhook": {"text": "Benchmark event {{ data.n }}"},
}
# US area codes for seeded numbers: 10,000 numbers (555-0000 to 555-9999) in each.
AREA_CODES = ("415", "212", "202", "646", "718", "312", "617", "305", "213", "404")
WEBHOOK_SECRET = "bench-webhook-signing-secret-0123456789"
IN_PROGRESS = ("pending", "scheduled", "retrying")


# --- Arrangement: recipients, topics, types ----------------------------------------------------


def topic_key(prefix: str, index: int) -> str:
    return f"{prefix}t{index}"


def seed_audience(
    database_url: str,
    *,
    prefix: str,
    count: int,
    topic_size: int | None = None,
    email: bool = False,
    phone: bool = False,
    device: str | None = None,
    webhook_base: str | None = None,
) -> list[str]:
    """Insert recipients ``<prefix>1`` .. ``<prefix><count>`` straight into the database,
    with an ``@example.com`` address (``email``), a US number (``phone``), one active
    device of platform ``device`` whose token is ``bench-<external_id>``, or one signed
    generic webhook under ``webhook_base`` (``/hooks/bench/<external_id>``); subscribe them
    to topics of ``topic_size`` consecutive recipients (default: one topic for all).
    Returns the topic keys, ``topic_key(prefix, 0)`` first."""
    if phone and count > 10_000 * len(AREA_CODES):
        raise ValueError(f"at most {10_000 * len(AREA_CODES):,} seeded phone numbers, not {count:,}")
    size = topic_size or count
    topics = [topic_key(prefix, index) for index in range(math.ceil(count / size))]
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute(
            """INSERT INTO notifications_recipient
                   (external_id, name, email, phone, locale, timezone, created_at, updated_at)
               SELECT %(prefix)s || g, '',
                      CASE WHEN %(email)s THEN %(prefix)s || g || '@example.com' ELSE '' END,
                      CASE WHEN %(phone)s
                           THEN '+1' || (%(areas)s::text[])[g / 10000 + 1] || '555' || lpad((g %% 10000)::text, 4, '0')
                           ELSE '' END,
                      'en', 'UTC', now(), now()
               FROM generate_series(1, %(count)s) AS g""",
            {"prefix": prefix, "email": email, "phone": phone, "areas": list(AREA_CODES), "count": count},
        )
        if device is not None:
            connection.execute(
                """INSERT INTO notifications_device (recipient_id, platform, token, active, created_at, last_seen_at)
                   SELECT r.id, %(platform)s, 'bench-' || r.external_id, true, now(), now()
                   FROM generate_series(1, %(count)s) AS g
                   JOIN notifications_recipient r ON r.external_id = %(prefix)s || g""",
                {"platform": device, "prefix": prefix, "count": count},
            )
        if webhook_base is not None:
            connection.execute(
                """INSERT INTO notifications_webhookendpoint (recipient_id, kind, url, secret, active, created_at)
                   SELECT r.id, 'generic', %(base)s || '/hooks/bench/' || r.external_id, %(secret)s, true, now()
                   FROM generate_series(1, %(count)s) AS g
                   JOIN notifications_recipient r ON r.external_id = %(prefix)s || g""",
                {
                    "base": webhook_base.rstrip("/"),
                    "secret": WEBHOOK_SECRET,
                    "prefix": prefix,
                    "count": count,
                },
            )
        connection.execute(
            "INSERT INTO notifications_topic (key, name, created_at) SELECT unnest(%s::text[]), '', now()",
            [topics],
        )
        connection.execute(
            """INSERT INTO notifications_subscription (topic_id, recipient_id, created_at)
               SELECT t.id, r.id, now()
               FROM generate_series(1, %(count)s) AS g
               JOIN notifications_recipient r ON r.external_id = %(prefix)s || g
               JOIN notifications_topic t ON t.key = %(prefix)s || 't' || ((g - 1) / %(size)s)""",
            {"prefix": prefix, "count": count, "size": size},
        )
        connection.execute("ANALYZE")
    return topics


def create_type(
    client: httpx.Client,
    *,
    key: str,
    channel: str,
    category: str = "transactional",
    template: dict[str, str] | None = None,
) -> None:
    """Create a notification type with ``channel`` as its only channel, over the API, with
    ``template`` (default: the channel's of TEMPLATES)."""
    response = client.post(
        "/api/v1/notification-types/",
        json={
            "key": key,
            "category": category,
            "channels": [channel],
            "templates": {channel: template or TEMPLATES[channel]},
        },
    )
    if response.status_code != 201:
        raise RuntimeError(f"creating type {key} failed: {response.status_code} {response.text}")


def post_event(client: httpx.Client, body: dict[str, Any]) -> str:
    """POST an event that must be accepted; returns its id."""
    response = client.post("/api/v1/events/", json=body)
    if response.status_code != 202:
        raise RuntimeError(f"POST /api/v1/events/ answered {response.status_code}: {response.text}")
    return str(response.json()["id"])


# --- Observation ------------------------------------------------------------------------------


def accepted_records(control: SandboxControl, provider: str, since: float | None = None) -> list[Record]:
    """The sandbox's recordings of ``provider`` that it accepted (2xx, SMTP 250), oldest first."""
    return [record for record in control.messages(provider, since) if 200 <= int(record["status"]) < 300]


def first_acceptances(records: Iterable[Record]) -> dict[str, Record]:
    """The first accepted recording of each idempotency key."""
    first: dict[str, Record] = {}
    for record in records:
        key = record.get("key")
        if key and key not in first:
            first[str(key)] = record
    return first


def delivery_statuses(database_url: str, event_ids: Sequence[str]) -> Counter[str]:
    """Deliveries of the events by status."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT status, count(*) FROM notifications_delivery WHERE event_id = ANY(%s::uuid[]) GROUP BY status",
            [list(event_ids)],
        ).fetchall()
    return Counter({str(status): int(count) for status, count in rows})


def wait_settled(
    stack: Stack,
    event_ids: Sequence[str],
    expected: int,
    *,
    label: str,
    timeout: float,
    progress: bool,
    interval: float = 0.2,
    in_progress: Sequence[str] = IN_PROGRESS,
) -> Counter[str]:
    """Poll (every ``interval`` seconds) until the events have ``expected`` deliveries and
    none is ``in_progress``; returns their statuses. TimeoutError with the log tails
    otherwise."""
    bar = Progress(label, expected, enabled=progress)
    deadline = time.monotonic() + timeout
    while True:
        statuses = delivery_statuses(stack.database.url, event_ids)
        total = sum(statuses.values())
        settled = total - sum(statuses[s] for s in in_progress)
        bar.update(settled)
        if total >= expected and settled == total:
            bar.finish(settled)
            return statuses
        if time.monotonic() > deadline:
            bar.finish(settled)
            raise TimeoutError(
                f"{label}: {settled:,} of {expected:,} deliveries settled after {timeout:.0f}s "
                f"({dict(statuses)})\n{stack.log_tails(30)}"
            )
        stack.check_alive()
        time.sleep(interval)


# --- Sends per second per channel ------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One provider measured: its channel, the sandbox's name for it, and how its
    recipients are seeded."""

    name: str
    slug: str
    channel: str
    provider: str
    env: dict[str, str] = field(default_factory=dict)


VARIANTS: tuple[Variant, ...] = (
    Variant("email (Mailgun HTTP API)", "mailgun", "email", "mailgun"),
    Variant("email (SMTP)", "smtp", "email", "smtp", env={"EMAIL_PROVIDERS": "smtp"}),
    Variant("sms (Twilio)", "twilio", "sms", "twilio"),
    Variant("push (FCM HTTP v1)", "fcm", "push", "fcm"),
    Variant("push (APNs HTTP/2)", "apns", "push", "apns"),
    Variant("webhook (signed generic)", "webhook", "webhook", "webhook"),
)


@dataclass
class SendsResult:
    variant: str
    provider: str
    recipients: int
    accepted: int  # distinct idempotency keys the sandbox accepted
    duplicates: int  # acceptances of a key already accepted
    rejected: int  # requests the sandbox answered with an error
    first_accept_s: float  # seconds after the POST
    last_accept_s: float
    receipts_s: float  # until the sandbox's callbacks to the platform (receipts) were all made
    failed: int  # deliveries that ended failed, dead or suppressed
    statuses: dict[str, int]
    settings: str
    # CPU seconds per part of the stack from the POST until every delivery settled.
    cpu_s: dict[str, float] = field(default_factory=dict)

    @property
    def cpu_ms_per_send(self) -> dict[str, float]:
        """CPU milliseconds per accepted send, by part of the stack."""
        if not self.accepted:
            return {}
        return {name: seconds * 1000 / self.accepted for name, seconds in self.cpu_s.items()}

    @property
    def per_second(self) -> float:
        """Accepted sends per second, first to last acceptance."""
        span = self.last_accept_s - self.first_accept_s
        return self.accepted / span if span > 0 else math.nan

    @property
    def complete(self) -> bool:
        return self.accepted == self.recipients and self.failed == 0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(per_second=self.per_second, complete=self.complete, cpu_ms_per_send=self.cpu_ms_per_send)
        return data

    def summary(self) -> str:
        return (
            f"sends [{self.variant}] {self.recipients:,} recipients: {self.per_second:,.0f} accepted/s "
            f"(first acceptance {self.first_accept_s:.2f}s, last {self.last_accept_s:.2f}s after the POST); "
            f"accepted {self.accepted:,}, duplicates {self.duplicates}, rejected {self.rejected}, "
            f"failed {self.failed}"
        )


def _wait_for_receipts(stack: Stack, *, timeout: float) -> float:
    """Wait until the sandbox has made every callback it scheduled (Mailgun tracking
    webhooks, Twilio status callbacks); returns the time (epoch) they were done."""
    assert stack.sandbox is not None
    control = stack.sandbox.control
    deadline = time.monotonic() + timeout
    while int(control.info()["pending_callbacks"]) > 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"sandbox callbacks still pending after {timeout:.0f}s\n{stack.log_tails(30)}")
        stack.check_alive()
        time.sleep(0.1)
    return time.time()


def measure_variant(
    stack: Stack, variant: Variant, *, recipients: int, timeout: float = 900.0, progress: bool = True
) -> SendsResult:
    """Seed, create the type, POST one topic event and wait until every delivery settled."""
    assert stack.sandbox is not None, "the stack needs a provider sandbox"
    prefix = f"sends-{variant.slug}-"
    (topic,) = seed_audience(
        stack.database.url,
        prefix=prefix,
        count=recipients,
        email=variant.channel == "email",
        phone=variant.channel == "sms",
        device=variant.provider if variant.channel == "push" else None,
        webhook_base=stack.sandbox.http_url if variant.channel == "webhook" else None,
    )
    type_key = f"bench.sends.{variant.slug}"
    control = stack.sandbox.control
    with stack.client() as client:
        create_type(client, key=type_key, channel=variant.channel)
        control.reset()
        cpu_before = cpu_sample()
        posted_at = time.time()
        event_id = post_event(client, {"type": type_key, "topic": topic, "data": {"n": 1}})
    statuses = wait_settled(
        stack,
        [event_id],
        recipients,
        label=f"sends {variant.slug}: deliveries settled",
        timeout=timeout,
        progress=progress,
    )
    receipts_s = _wait_for_receipts(stack, timeout=timeout) - posted_at
    # After the receipts, so that the web server's work on them counts for this provider
    # and not for the next one measured on the same stack.
    cpu = cpu_seconds(stack, cpu_before, cpu_sample())
    records = accepted_records(control, variant.provider, since=posted_at - 1)
    first = first_acceptances(records)
    times = [float(record["received_at"]) for record in first.values()]
    counters = control.stats()["providers"][variant.provider]
    settings = ", ".join(f"{k}={v}" for k, v in sorted(variant.env.items()))
    return SendsResult(
        variant=variant.name,
        provider=variant.provider,
        recipients=recipients,
        accepted=len(first),
        duplicates=int(counters["duplicates"]),
        rejected=int(counters["rejected"]),
        receipts_s=receipts_s,
        first_accept_s=(min(times) - posted_at) if times else math.nan,
        last_accept_s=(max(times) - posted_at) if times else math.nan,
        failed=sum(statuses[s] for s in ("failed", "dead", "suppressed")),
        statuses=dict(statuses),
        settings=settings,
        cpu_s=cpu,
    )


def run(
    *,
    template: str | None,
    per_channel: int = 5_000,
    variants: Sequence[Variant] = VARIANTS,
    timeout: float = 900.0,
    progress: bool = True,
) -> list[SendsResult]:
    """Every variant, on as few stacks as their settings allow (one per distinct ``env``);
    each variant has its own recipients, topic and type, and a freshly reset sandbox."""
    groups: dict[tuple[tuple[str, str], ...], list[Variant]] = {}
    for variant in variants:
        groups.setdefault(tuple(sorted(variant.env.items())), []).append(variant)
    results: list[SendsResult] = []
    for env_items, members in groups.items():
        env = {**SENDS_ENV, **dict(env_items)}
        with bench_stack(template=template, env=env, label="sends", sandbox=True) as stack:
            for variant in members:
                result = measure_variant(
                    stack, variant, recipients=per_channel, timeout=timeout, progress=progress
                )
                print(result.summary(), flush=True)
                results.append(result)
            stack.check_alive()
    order = {variant.name: index for index, variant in enumerate(variants)}
    return sorted(results, key=lambda r: order[r.variant])
