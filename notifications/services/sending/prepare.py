"""Step 2 of a send: read what a chunk of claimed deliveries needs in a few bulk queries
and build each one's messages (one per target), settling what cannot be sent: no
address, suppressed, over an SMS abuse limit, no template, a template that fails.

The number of queries depends on the channels in the chunk, never on its size.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db.models import Exists, OuterRef

from notifications.models import (
    AttemptOutcome,
    Channel,
    Delivery,
    DeliveryAttempt,
    Device,
    Event,
    InboxItem,
    NotificationType,
    Recipient,
    Suppression,
    SuppressionKind,
    WebhookEndpoint,
    delivery_idempotency_key,
    target_idempotency_key,
)
from notifications.services.aggregation import aggregation_context
from notifications.services.catalog import type_channel_templates
from notifications.services.channel_checks import email_with_text, push_problem, sms_problem
from notifications.services.planning import ACTIVE_IN_APP
from notifications.services.sending.claim import Claimed
from notifications.services.sms_guard import SmsVerdict, sms_guard_check
from notifications.services.templating import (
    TemplateRenderError,
    aggregate_context,
    locale_pick,
    merge_placeholders,
    merge_substitute,
    merge_values,
    template_merge_exact,
    template_render,
)
from notifications.services.unsubscribe import unsubscribe_headers
from notifications.states import DeliveryStatus
from notifications.transports.base import OutboundMessage, SendResult, TransportError
from notifications.transports.registry import channel_providers, provider_batch_size
from notifications.transports.sms import InvalidPhoneNumber, sms_normalise

# Channels whose delivery calls several targets: each of a user's devices, each webhook.
MULTI_TARGET = (Channel.PUSH, Channel.WEBHOOK)
# A verdict that sends nothing now and tries again later (SMS spend cap, breakers open).
DEFER = "defer"


@dataclass
class Job:
    """One claimed delivery on its way: the messages to send (one per target) and, as it
    goes, each target's outcome."""

    claimed: Claimed
    notification_type: str = ""
    category: str = ""
    # The number of the type's template version rendered (Delivery.template_version).
    template_version: int | None = None
    messages: list[OutboundMessage] = field(default_factory=list)
    # Set when the delivery is settled without (more) provider calls: a DeliveryStatus
    # value, or DEFER.
    verdict: str | None = None
    reason: str = ""
    defer_until: float | None = None
    results: list[tuple[OutboundMessage, str, SendResult | TransportError, int]] = field(default_factory=list)


@dataclass
class _Chunk:
    """Everything the chunk's deliveries need, read in bulk."""

    events: dict[Any, dict[str, Any]]
    types: dict[int, NotificationType]
    recipients: dict[int, dict[str, Any]]
    devices: dict[int, list[tuple[str, str]]]
    webhooks: dict[int, list[tuple[str, str, str]]]
    done_targets: dict[int, set[str]]
    suppressed_emails: set[str]
    suppressed_phones: dict[str, str]
    aggregates: dict[int, dict[str, Any]]
    # Deliveries held back while their user was active in the app (a type's
    # ``when_active: delay``) whose in-app copy has been read since: not sent.
    read_in_app: set[int] = field(default_factory=set)


READ_IN_APP = "read in the app while held back"


def _by_channel(claimed: Iterable[Claimed]) -> dict[str, list[Claimed]]:
    grouped: dict[str, list[Claimed]] = defaultdict(list)
    for c in claimed:
        grouped[c.channel].append(c)
    return grouped


def _e164(phone: str) -> str | None:
    try:
        return sms_normalise(phone)[0]
    except InvalidPhoneNumber:
        return None


def _read_chunk(claimed: list[Claimed]) -> _Chunk:
    events: dict[Any, dict[str, Any]] = {
        e["id"]: dict(e)
        for e in Event.objects.filter(id__in={c.event_id for c in claimed}).values(
            "id", "data", "notification_type_id", "origin_ip", "template_version"
        )
    }
    types = {
        t.id: t
        for t in NotificationType.objects.filter(id__in={e["notification_type_id"] for e in events.values()})
    }
    recipients: dict[int, dict[str, Any]] = {
        r["id"]: dict(r)
        for r in Recipient.objects.filter(id__in={c.recipient_id for c in claimed}).values(
            "id", "external_id", "name", "email", "phone", "locale", "timezone"
        )
    }
    by_channel = _by_channel(claimed)
    devices: dict[int, list[tuple[str, str]]] = defaultdict(list)
    if by_channel.get(Channel.PUSH):
        for d in (
            Device.objects.filter(
                recipient_id__in=[c.recipient_id for c in by_channel[Channel.PUSH]], active=True
            )
            .order_by("id")
            .values_list("recipient_id", "platform", "token")
        ):
            devices[d[0]].append((d[1], d[2]))
    webhooks: dict[int, list[tuple[str, str, str]]] = defaultdict(list)
    if by_channel.get(Channel.WEBHOOK):
        for w in (
            WebhookEndpoint.objects.filter(
                recipient_id__in=[c.recipient_id for c in by_channel[Channel.WEBHOOK]], active=True
            )
            .order_by("id")
            .values_list("recipient_id", "kind", "url", "secret")
        ):
            webhooks[w[0]].append((w[1], w[2], w[3]))
    # Targets that accepted in any earlier attempt are never called again. Looked up for
    # every multi-target delivery, not only those with attempts > 1: an attempt deferred
    # after some targets accepted (breaker open, pacing full) leaves accepted targets
    # behind whatever the attempt counter says.
    done_targets: dict[int, set[str]] = defaultdict(set)
    multi = [c.id for c in claimed if c.channel in MULTI_TARGET]
    if multi:
        for delivery_id, target in DeliveryAttempt.objects.filter(
            delivery_id__in=multi, outcome=AttemptOutcome.SUCCESS
        ).values_list("delivery_id", "target"):
            done_targets[delivery_id].add(target)
    emails = [
        str(recipients[c.recipient_id]["email"]).strip().lower()
        for c in by_channel.get(Channel.EMAIL, [])
        if c.recipient_id in recipients
    ]
    suppressed_emails = (
        set(
            Suppression.objects.filter(kind=SuppressionKind.EMAIL, address__in=emails).values_list(
                "address", flat=True
            )
        )
        if emails
        else set()
    )
    phones = {
        e164
        for c in by_channel.get(Channel.SMS, [])
        if c.recipient_id in recipients and (e164 := _e164(recipients[c.recipient_id]["phone"] or ""))
    }
    suppressed_phones = (
        dict(
            Suppression.objects.filter(kind=SuppressionKind.PHONE, address__in=phones).values_list(
                "address", "reason"
            )
        )
        if phones
        else {}
    )
    leaders = [c.id for c in claimed if c.aggregate_count > 1]
    read_in_app = set(
        Delivery.objects.filter(id__in=[c.id for c in claimed if c.attempts == 1], reason=ACTIVE_IN_APP)
        .filter(
            Exists(
                InboxItem.objects.filter(
                    event_id=OuterRef("event_id"),
                    recipient_id=OuterRef("recipient_id"),
                    read_at__isnull=False,
                )
            )
        )
        .values_list("id", flat=True)
    )
    return _Chunk(
        events=events,
        types=types,
        recipients=recipients,
        devices=devices,
        webhooks=webhooks,
        done_targets=done_targets,
        suppressed_emails=suppressed_emails,
        suppressed_phones=suppressed_phones,
        aggregates=aggregation_context(delivery_ids=leaders) if leaders else {},
        read_in_app=read_in_app,
    )


def _render(content: dict[str, str], context: dict[str, Any], channel: str) -> dict[str, str]:
    rendered = {
        name: template_render(
            source=source, context=context, html=(channel == Channel.EMAIL and name == "html")
        )
        for name, source in content.items()
    }
    return email_with_text(rendered) if channel == Channel.EMAIL else rendered


@dataclass(frozen=True)
class _Skeleton:
    """An email rendered once for a batch send: recipient fields as the placeholders the
    provider fills in per recipient."""

    fields: dict[str, str]
    # The placeholders' text (what merge_values looks for).
    used: str
    # Filling in a recipient's values is exactly their rendering, by the templates' shape
    # (templating.template_merge_exact) and a text part of their own: no need to render
    # each recipient's email to check it.
    exact: bool


def _merge_skeleton(content: dict[str, str], context: dict[str, Any]) -> _Skeleton | None:
    """None when the content does not render with placeholders."""
    fields: dict[str, str] = {}
    for name, source in content.items():
        html = name == "html"
        placeholders = {**context["recipient"], **merge_placeholders(html=html)}
        try:
            fields[name] = template_render(
                source=source, context={**context, "recipient": placeholders}, html=html
            )
        except TemplateRenderError:
            return None
    own_text = merge_substitute(fields.get("text", ""), {}).strip() != ""
    # A placeholder written in the template or the event data would be filled in by the
    # provider too: such an email is checked against each recipient's rendering (and sent
    # on its own).
    quoted = "%recipient." in json.dumps(context["data"]) or any("%recipient." in v for v in content.values())
    exact = own_text and not quoted and all(template_merge_exact(source) for source in content.values())
    completed = email_with_text(fields)
    return _Skeleton(fields=completed, used="".join(completed.values()), exact=exact)


def _merge(skeleton: _Skeleton | None, rendered: dict[str, str], recipient: dict[str, Any]) -> dict[str, Any]:
    """The message fields that let it go out in a batch send, when the skeleton filled in
    with this recipient's values gives exactly what was rendered for them (a template that
    does more with a recipient field than print it, ``{% if recipient.name %}`` or
    ``|upper``, does not: that recipient's email is sent on its own)."""
    if skeleton is None or skeleton.fields.keys() != rendered.keys():
        return {}
    values = merge_values(recipient, skeleton.used)
    if any(merge_substitute(skeleton.fields[name], values) != text for name, text in rendered.items()):
        return {}
    return {"merge_content": skeleton.fields, "merge_values": values}


def _settle_sms(job: Job, verdict: SmsVerdict) -> None:
    job.reason = verdict.reason
    if verdict.defer_until is not None:
        job.verdict, job.defer_until = DEFER, verdict.defer_until
    elif verdict.suppress:
        job.verdict = DeliveryStatus.SUPPRESSED
    else:
        job.verdict = DeliveryStatus.FAILED


def _email(
    job: Job, chunk: _Chunk, recipient: dict[str, Any], ntype: NotificationType, common: dict[str, Any]
) -> None:
    c = job.claimed
    address = (recipient["email"] or "").strip()
    if not address:
        job.verdict, job.reason = DeliveryStatus.FAILED, "recipient has no email address"
    elif address.lower() in chunk.suppressed_emails:
        job.verdict, job.reason = DeliveryStatus.SUPPRESSED, "suppression list: address bounced or complained"
    else:
        headers = unsubscribe_headers(
            recipient_id=c.recipient_id, category=ntype.category, notification_type=ntype.key
        )
        job.messages.append(OutboundMessage(to=address, headers=headers, **common))


def _sms(
    job: Job,
    chunk: _Chunk,
    recipient: dict[str, Any],
    event: dict[str, Any],
    ntype: NotificationType,
    rendered: dict[str, str],
    common: dict[str, Any],
) -> None:
    c = job.claimed
    too_long = sms_problem(rendered.get("text", ""))
    if too_long is not None:
        job.verdict, job.reason = DeliveryStatus.FAILED, too_long
        return
    verdict = sms_guard_check(
        phone=recipient["phone"],
        text=rendered.get("text", ""),
        origin_ip=event["origin_ip"],
        critical=ntype.is_critical,
        suppressed=chunk.suppressed_phones,
    )
    if not verdict.allowed:
        _settle_sms(job, verdict)
        return
    key = common["idempotency_key"]
    callback = f"{settings.PUBLIC_URL}/providers/twilio/status/?key={key}&d={c.id}"
    job.messages.append(OutboundMessage(to=verdict.e164, options={"status_callback": callback}, **common))


def _push(
    job: Job, chunk: _Chunk, event: dict[str, Any], ntype: NotificationType, common: dict[str, Any]
) -> None:
    c = job.claimed
    devices = chunk.devices.get(c.recipient_id, [])
    if not devices:
        job.verdict, job.reason = DeliveryStatus.FAILED, "no active device"
        return
    data = event["data"] if isinstance(event["data"], dict) else {}
    collapse = data.get("collapse_key")
    # APNs allows 64 bytes of collapse id; cut on a character boundary.
    collapse_id = str(collapse).encode()[:64].decode(errors="ignore") if collapse else None
    payload = {"event_id": str(c.event_id), "type": ntype.key, "delivery_id": str(c.id)}
    too_large = push_problem(common["content"], payload)
    if too_large is not None:
        job.verdict, job.reason = DeliveryStatus.FAILED, too_large
        return
    key = common["idempotency_key"]
    for platform, token in devices:
        if token in chunk.done_targets[c.id]:
            continue
        job.messages.append(
            OutboundMessage(
                to=token,
                options={"platform": platform},
                collapse_key=collapse_id,
                data=payload,
                **{**common, "idempotency_key": str(target_idempotency_key(key, f"{platform}:{token}"))},
            )
        )


def _webhook(
    job: Job,
    chunk: _Chunk,
    event: dict[str, Any],
    ntype: NotificationType,
    rendered: dict[str, str],
    common: dict[str, Any],
) -> None:
    c = job.claimed
    endpoints = chunk.webhooks.get(c.recipient_id, [])
    if not endpoints:
        job.verdict, job.reason = DeliveryStatus.FAILED, "no webhook endpoint"
        return
    if "text" not in rendered:
        common = {**common, "content": {**rendered, "text": f"{ntype.key}: {event['data']}"}}
    key = common["idempotency_key"]
    for kind, url, secret in endpoints:
        if url in chunk.done_targets[c.id]:
            continue
        job.messages.append(
            OutboundMessage(
                to=url,
                options={"kind": kind, "secret": secret},
                data=event["data"],
                **{**common, "idempotency_key": str(target_idempotency_key(key, url))},
            )
        )


def jobs_prepare(claimed: list[Claimed]) -> list[Job]:
    """One job per claimed delivery, with its messages built or its verdict set."""
    chunk = _read_chunk(claimed)
    jobs: list[Job] = []
    # Email content rendered for batch sends, by event, template locale and the
    # recipient's locale and timezone (all the context holds besides the merge fields).
    skeletons: dict[tuple[Any, ...], _Skeleton | None] = {}
    batching: dict[str, bool] = {}
    for c in claimed:
        job = Job(claimed=c)
        jobs.append(job)
        event = chunk.events.get(c.event_id)
        recipient = chunk.recipients.get(c.recipient_id)
        if event is None or recipient is None:
            job.verdict, job.reason = DeliveryStatus.FAILED, "event or recipient no longer exists"
            continue
        if c.id in chunk.read_in_app:
            job.verdict, job.reason = DeliveryStatus.SUPPRESSED, READ_IN_APP
            continue
        ntype = chunk.types[event["notification_type_id"]]
        job.notification_type, job.category = ntype.key, ntype.category
        job.template_version, templates = type_channel_templates(
            notification_type=ntype, channel=c.channel, version=event["template_version"]
        )
        picked = locale_pick(templates, recipient["locale"] or "", ntype.default_locale)
        content = picked[1] if picked is not None else None
        if content is None and c.channel != Channel.WEBHOOK:
            job.verdict, job.reason = DeliveryStatus.FAILED, f"no {c.channel} template for this type"
            continue
        context = {
            "data": event["data"],
            "recipient": {
                "external_id": recipient["external_id"],
                "name": recipient["name"],
                "locale": recipient["locale"],
                "timezone": recipient["timezone"],
            },
            "aggregate": chunk.aggregates.get(c.id) or aggregate_context(1, [event["data"]]),
        }
        merge: dict[str, Any] = {}
        skeleton: _Skeleton | None = None
        if c.channel == Channel.EMAIL and c.id not in chunk.aggregates and picked is not None:
            if ntype.category not in batching:
                providers = channel_providers(Channel.EMAIL, ntype.category)
                batching[ntype.category] = bool(providers) and provider_batch_size(providers[0]) > 1
            if batching[ntype.category]:
                shape = (c.event_id, picked[0], recipient["locale"], recipient["timezone"])
                if shape not in skeletons:
                    skeletons[shape] = _merge_skeleton(content or {}, context)
                skeleton = skeletons[shape]
        try:
            if skeleton is not None and skeleton.exact:
                # The template only prints the merge fields: filling them in is rendering.
                values = merge_values(recipient, skeleton.used)
                rendered = {name: merge_substitute(text, values) for name, text in skeleton.fields.items()}
                merge = {"merge_content": skeleton.fields, "merge_values": values}
            else:
                rendered = _render(content or {}, context, c.channel)
                merge = _merge(skeleton, rendered, recipient)
        except TemplateRenderError as exc:
            job.verdict, job.reason = DeliveryStatus.FAILED, str(exc)[:200]
            continue
        key = str(delivery_idempotency_key(c.event_id, c.recipient_id, c.channel))
        common: dict[str, Any] = {
            "delivery_id": c.id,
            "idempotency_key": key,
            "channel": c.channel,
            "category": ntype.category,
            "notification_type": ntype.key,
            "content": rendered,
            **merge,
        }
        if c.channel == Channel.EMAIL:
            _email(job, chunk, recipient, ntype, common)
        elif c.channel == Channel.SMS:
            _sms(job, chunk, recipient, event, ntype, rendered, common)
        elif c.channel == Channel.PUSH:
            _push(job, chunk, event, ntype, common)
        elif c.channel == Channel.WEBHOOK:
            _webhook(job, chunk, event, ntype, rendered, common)
        if job.verdict is None and not job.messages:
            # Every target accepted in an earlier attempt whose result was recorded.
            job.verdict, job.reason = (
                DeliveryStatus.SENT if c.channel == Channel.PUSH else DeliveryStatus.DELIVERED,
                "",
            )
    return jobs
