"""Mailgun's send API (``POST /v3/{domain}/messages``), its tracking webhooks and its events
API (``GET /v3/{domain}/events``).

django-anymail's Mailgun backend posts the message as form fields (multipart when it has
attachments); the sandbox answers like Mailgun and then reports each recipient's fate to
the platform's anymail tracking webhook, JSON-signed with the webhook signing key
(HMAC-SHA256 over timestamp + token) and with the basic auth anymail checks. A send with
``recipient-variables`` is a batch: one message per recipient, ``%recipient.NAME%``
resolved in its subject, bodies, headers and custom variables.

Every event is also logged per domain, as it happens, for the events API; a domain whose
receipts the platform polls (``SandboxConfig.mailgun_polled_domains``) gets no webhooks.
The events API pages by tokens holding an absolute position in the domain's log, so
following ``paging.next`` of an ascending query is a cursor: polled again later, it
returns what happened since.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import math
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any

from aiohttp import BasicAuth, encode_basic_auth, web
from multidict import MultiDictProxy

from sandbox.context import SandboxContext
from sandbox.faults import fault_strike, http_fault_gate
from sandbox.outbound import CallbackQueue
from sandbox.state import DomainEvents, LoggedEvent

FLAKY_DOMAIN = "flaky.sandbox.test"
BOUNCE_DOMAIN = "bounce.sandbox.test"
COMPLAINT_DOMAIN = "complaint.sandbox.test"
SOFTBOUNCE_DOMAIN = "softbounce.sandbox.test"
IDEMPOTENCY_VARIABLE = "idempotency_key"
# Mailgun's limit on the recipients of one batch send.
MAX_BATCH_RECIPIENTS = 1000
# Recordings are kept in memory (up to 500k of them): bodies are cut short.
RECORDED_BODY_CHARS = 500
# Form fields one send may have: a full batch is 1,000 ``to`` fields plus its headers and
# variables, past aiohttp's default of 1,000 (which answers 413).
MAX_FORM_FIELDS = 10_000
EVENTS_PAGE_DEFAULT = 100
EVENTS_PAGE_MAX = 300
# ``%recipient.NAME%``; NAME as anymail writes it, e.g. ``v:delivery_id``, ``h:List-Unsubscribe``.
RECIPIENT_REFERENCE = re.compile(r"%recipient\.([^%\s]+)%")


def mailgun_error(status: int, message: str | None = None) -> web.Response:
    if status == 401:
        return web.Response(status=401, text="Forbidden")
    return web.json_response({"message": message or f"Sandbox fault: HTTP {status}"}, status=status)


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


# The fields of each kind of event, shared by every event of that kind (never mutated:
# ``_event_data`` copies what it changes).
_DELIVERED: dict[str, Any] = {
    "event": "delivered",
    "delivery-status": {
        "code": 250,
        "message": "OK",
        "description": "",
        "attempt-no": 1,
        "tls": True,
        "certificate-verified": True,
        "session-seconds": 0.1,
    },
}
_BOUNCED: dict[str, Any] = {
    "event": "failed",
    "severity": "permanent",
    "reason": "bounce",
    "delivery-status": {
        "code": 550,
        "message": "5.1.1 mailbox does not exist",
        "description": "",
        "attempt-no": 1,
        "session-seconds": 0.1,
    },
}
_SOFT_BOUNCED: dict[str, Any] = {
    "event": "failed",
    "severity": "temporary",
    "reason": "generic",
    "delivery-status": {
        "code": 452,
        "message": "4.2.2 mailbox full",
        "description": "",
        "attempt-no": 1,
        "retry-seconds": 600,
    },
}
_COMPLAINED: dict[str, Any] = {"event": "complained"}


def _events_for(address: str) -> tuple[dict[str, Any], ...]:
    """The tracking events Mailgun would report for ``address``, in order."""
    domain = _domain(address)
    if domain == BOUNCE_DOMAIN:
        return (_BOUNCED,)
    if domain == SOFTBOUNCE_DOMAIN:
        return (_SOFT_BOUNCED,)
    if domain == COMPLAINT_DOMAIN:
        return (_DELIVERED, _COMPLAINED)
    return (_DELIVERED,)


def _variable_text(value: Any) -> str:
    """A recipient variable as it is put into the message: a missing one is empty."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value)


class _Template:
    """A value with ``%recipient.NAME%`` references, split once per send, so that each of a
    batch's recipients costs a join rather than a regex pass over the value."""

    __slots__ = ("parts",)

    def __init__(self, value: str) -> None:
        # re.split with a group: literal, name, literal, name, ..., literal.
        self.parts = RECIPIENT_REFERENCE.split(value) if "%recipient." in value else [value]

    def render(self, variables: dict[str, Any], limit: int | None = None) -> str:
        """The value for one recipient; with ``limit``, only its first ``limit`` characters
        (a long HTML body is not built whole just to be cut)."""
        parts = self.parts
        if len(parts) == 1:
            return parts[0] if limit is None else parts[0][:limit]
        pieces: list[str] = []
        size = 0
        for index, part in enumerate(parts):
            piece = part if index % 2 == 0 else _variable_text(variables.get(part))
            pieces.append(piece)
            if limit is not None:
                size += len(piece)
                if size >= limit:
                    break
        text = "".join(pieces)
        return text if limit is None else text[:limit]


def _substitute(value: str, variables: dict[str, Any]) -> str:
    """Resolve every ``%recipient.NAME%`` reference in ``value`` (what anymail's batch sends
    use); a NAME the recipient has no variable for resolves to the empty string."""
    return _Template(value).render(variables)


def _render_all(templates: dict[str, _Template], variables: dict[str, Any]) -> dict[str, str]:
    return {name: template.render(variables) for name, template in templates.items()}


def _recipient_variables(raw: str) -> dict[str, Any] | None:
    """``recipient-variables`` as Mailgun takes it: a JSON object keyed by address; None
    when it is anything else."""
    try:
        parsed = json.loads(raw)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _own_variables(recipient_variables: dict[str, Any], address: str) -> dict[str, Any]:
    own = recipient_variables.get(address)
    if own is None and address.lower() != address:
        own = recipient_variables.get(address.lower())
    return own if isinstance(own, dict) else {}


def _addresses(values: list[str]) -> list[str]:
    return [address for _, address in getaddresses(values) if address]


@dataclass(frozen=True, slots=True)
class _Delivery:
    """What every event of one recipient's message reports: logged once per recipient and
    shared by its events in the log and by its webhooks."""

    message_id: str
    sender: str
    subject: str
    user_variables: dict[str, Any]
    tags: list[str]

    @property
    def key(self) -> str | None:
        key = self.user_variables.get(IDEMPOTENCY_VARIABLE)
        return str(key) if key else None


def _event_data(events: DomainEvents, seq: int, logged: LoggedEvent) -> dict[str, Any]:
    """Mailgun's ``event-data`` of a logged event: what the tracking webhook carries and the
    events API lists. Its id and storage key derive from the event's place in the log, so
    the webhook and every read of the events API agree without storing them."""
    delivery: _Delivery = logged.context
    address = logged.recipient
    identity = hashlib.blake2b(events.salt + seq.to_bytes(8, "big"), digest_size=28).digest()
    event_name = logged.event
    event_data: dict[str, Any] = {
        **logged.fields,
        "id": base64.urlsafe_b64encode(identity[:16]).rstrip(b"=").decode(),
        "timestamp": logged.timestamp,
        "log-level": "error"
        if event_name == "failed"
        else ("warn" if event_name == "complained" else "info"),
        "recipient": address,
        "recipient-domain": _domain(address),
        "envelope": {"sender": delivery.sender, "targets": address, "transport": "smtp"},
        "flags": {"is-authenticated": True, "is-test-mode": False},
        "message": {
            "headers": {
                "message-id": delivery.message_id,
                "to": address,
                "from": delivery.sender,
                "subject": delivery.subject,
            },
            "attachments": [],
            "size": 0,
        },
        "user-variables": delivery.user_variables,
        "tags": delivery.tags,
        "storage": {
            "key": identity[16:].hex(),
            "url": f"https://storage.sandbox.test/{delivery.message_id}",
        },
    }
    if "delivery-status" in event_data:
        event_data["delivery-status"] = dict(event_data["delivery-status"])
    return event_data


class _BadParameter(ValueError):
    """An events API query parameter Mailgun would refuse (the message names it)."""


@dataclass(frozen=True)
class _PagePosition:
    """Where a page of the events API starts, as its token carries it: an absolute sequence
    number in the domain's log (None: the newest end), the direction, the ``event`` filter
    (Mailgun's ``a OR b`` syntax) and the page size."""

    seq: int | None
    ascending: bool
    event: str | None
    limit: int

    def token(self) -> str:
        payload = {"seq": self.seq, "asc": self.ascending, "event": self.event, "limit": self.limit}
        raw = json.dumps(payload, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    @classmethod
    def from_token(cls, token: str) -> _PagePosition:
        try:
            payload = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        except (ValueError, binascii.Error):
            raise _BadParameter("Invalid page token") from None
        if not isinstance(payload, dict):
            raise _BadParameter("Invalid page token")
        seq, ascending, event, limit = (payload.get(name) for name in ("seq", "asc", "event", "limit"))
        if (
            not (seq is None or (isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0))
            or not isinstance(ascending, bool)
            or not (event is None or isinstance(event, str))
            or not isinstance(limit, int)
            or isinstance(limit, bool)
            or not 1 <= limit <= EVENTS_PAGE_MAX
        ):
            raise _BadParameter("Invalid page token")
        return cls(seq=seq, ascending=ascending, event=event, limit=limit)

    @property
    def names(self) -> frozenset[str] | None:
        if not self.event:
            return None
        return frozenset(name.strip() for name in self.event.split(" OR ") if name.strip())


def _timestamp_param(value: str) -> float:
    """``begin`` as Mailgun takes it: epoch seconds, or an RFC 2822 date."""
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        if math.isfinite(number):
            return number
        raise _BadParameter(f"Invalid 'begin': expected epoch seconds or an RFC 2822 date, got {value!r}")
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        raise _BadParameter(f"Invalid 'begin': expected epoch seconds or an RFC 2822 date, got {value!r}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


class MailgunApi:
    """``POST /mailgun/v3/{domain}/messages`` and ``GET /mailgun/v3/{domain}/events[/{token}]``."""

    def __init__(self, context: SandboxContext, callbacks: CallbackQueue) -> None:
        self.context = context
        self.state = context.state
        self.callbacks = callbacks
        config = context.config
        user, _, password = config.mailgun_webhook_secret.partition(":")
        # A header rather than aiohttp's ``auth=BasicAuth(...)``, which is deprecated.
        self.webhook_headers = (
            {"Authorization": encode_basic_auth(user, password)} if config.mailgun_webhook_secret else None
        )
        self.signing_key = config.mailgun_webhook_signing_key.encode()
        self.polled_domains = frozenset(domain.lower() for domain in config.mailgun_polled_domains)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/mailgun/v3/{domain}/messages", self.send),
            web.get("/mailgun/v3/{domain}/events", self.events),
            web.get("/mailgun/v3/{domain}/events/{page_token}", self.events),
        ]

    def _authenticated(self, request: web.Request) -> bool:
        try:
            credentials = BasicAuth.decode(request.headers.get("Authorization", ""))
        except ValueError:
            return False
        return credentials.login == "api" and secrets.compare_digest(
            credentials.password, self.context.config.mailgun_api_key
        )

    # -- sending --

    async def send(self, request: web.Request) -> web.Response:
        received_at = time.time()
        domain = request.match_info["domain"]
        form = await request.clone(client_max_fields=MAX_FORM_FIELDS).post()
        fields = _string_fields(form)
        to_addresses = _addresses(fields.get("to", []))
        recipients = to_addresses + _addresses(fields.get("cc", []) + fields.get("bcc", []))
        variables = {name[2:]: values[-1] for name, values in fields.items() if name.startswith("v:")}
        headers = {name[2:]: values[-1] for name, values in fields.items() if name.startswith("h:")}
        tags = fields.get("o:tag", [])
        recipient_variables: dict[str, Any] | None = None
        if "recipient-variables" in fields:
            recipient_variables = _recipient_variables(fields["recipient-variables"][-1])
        sender = fields.get("from", [""])[-1]
        subject = fields.get("subject", [""])[-1]
        text = fields.get("text", [""])[-1]
        html = fields.get("html", [""])[-1]
        summary: dict[str, Any] = {
            "domain": domain,
            "from": sender,
            "subject": subject,
            "recipients": recipients,
            "variables": variables,
            "headers": headers,
            "tags": tags,
            "text": text[:RECORDED_BODY_CHARS],
            "html": html[:RECORDED_BODY_CHARS],
            "attachments": _attachment_names(form),
        }
        key = variables.get(IDEMPOTENCY_VARIABLE)
        to = ", ".join(recipients)
        blocked = await http_fault_gate(
            self.state,
            "mailgun",
            received_at=received_at,
            key=key,
            to=to,
            summary=summary,
            error_response=mailgun_error,
        )
        if blocked is not None:
            return blocked

        error: tuple[int, str] | None = None
        if not self._authenticated(request):
            error = (401, "Forbidden")
        elif not sender:
            error = (400, "from parameter is missing")
        elif not recipients:
            error = (400, "to parameter is missing")
        elif not subject and "template" not in fields:
            error = (400, "subject parameter is missing")
        elif not any(name in fields for name in ("text", "html", "template")):
            error = (400, "Need at least one of 'text', 'html' or 'template' parameters specified")
        elif "recipient-variables" in fields and recipient_variables is None:
            error = (400, "recipient-variables parameter is not a valid JSON object")
        elif len(to_addresses) > MAX_BATCH_RECIPIENTS:
            error = (
                400,
                f"Too many recipients: at most {MAX_BATCH_RECIPIENTS} per message, got {len(to_addresses)}",
            )
        else:
            flaky = [address for address in recipients if _domain(address) == FLAKY_DOMAIN]
            # Every flaky recipient counts the attempt, so each fails twice whatever the batch.
            if flaky and min(self.state.attempt("mailgun", address) for address in flaky) < 2:
                error = (500, "Internal Server Error (sandbox flaky recipient)")
        if error is not None:
            status, message = error
            self.state.record(
                "mailgun", status=status, key=key, to=to, summary=summary, received_at=received_at
            )
            return mailgun_error(status, message)

        stamp = datetime.fromtimestamp(received_at, UTC).strftime("%Y%m%d%H%M%S")
        message_id = f"{stamp}.{secrets.token_hex(8)}@{domain}"
        summary["message_id"] = message_id
        if recipient_variables is None:
            self.state.record("mailgun", status=200, key=key, to=to, summary=summary, received_at=received_at)
            delivery = _Delivery(message_id, sender, subject, variables, tags)
            for address in recipients:
                self._schedule_tracking(domain, address, delivery)
        else:
            self._send_batch(
                domain,
                recipients,
                recipient_variables,
                summary=summary,
                text=text,
                html=html,
                received_at=received_at,
            )
        return web.json_response({"id": f"<{message_id}>", "message": "Queued. Thank you."})

    def _send_batch(
        self,
        domain: str,
        recipients: list[str],
        recipient_variables: dict[str, Any],
        *,
        summary: dict[str, Any],
        text: str,
        html: str,
        received_at: float,
    ) -> None:
        """A batch send is one message per recipient: each is recorded with its own key and
        its own subject, bodies, headers and variables (references resolved), and tracked
        with its own user-variables. The references are parsed once for the whole batch."""
        subject_template = _Template(summary["subject"])
        text_template = _Template(text)
        html_template = _Template(html)
        header_templates = {name: _Template(value) for name, value in summary["headers"].items()}
        variable_templates = {name: _Template(value) for name, value in summary["variables"].items()}
        message_id: str = summary["message_id"]
        sender: str = summary["from"]
        tags: list[str] = summary["tags"]
        record = self.state.record
        for address in recipients:
            own = _own_variables(recipient_variables, address)
            resolved = _render_all(variable_templates, own)
            subject = subject_template.render(own)
            key = resolved.get(IDEMPOTENCY_VARIABLE) or None
            record(
                "mailgun",
                status=200,
                key=key,
                to=address,
                summary={
                    **summary,
                    "recipients": [address],
                    "subject": subject,
                    "text": text_template.render(own, RECORDED_BODY_CHARS),
                    "html": html_template.render(own, RECORDED_BODY_CHARS),
                    "headers": _render_all(header_templates, own),
                    "variables": resolved,
                    "batch": True,
                },
                received_at=received_at,
            )
            self._schedule_tracking(domain, address, _Delivery(message_id, sender, subject, resolved, tags))

    # -- tracking: the event log and the webhooks --

    def _schedule_tracking(self, domain: str, address: str, delivery: _Delivery) -> None:
        """After ``callback_delay_ms`` (and as long again between a recipient's events), log
        each of its events and, unless the domain is polled, post it as a tracking webhook."""
        delay = self.context.config.callback_delay_ms / 1000
        url = f"{self.context.config.platform_base}/anymail/mailgun/tracking/"
        polled = domain.lower() in self.polled_domains
        kinds = _events_for(address)

        async def send_all() -> None:
            for index, fields in enumerate(kinds):
                if index and delay > 0:
                    await asyncio.sleep(delay)
                events, seq, logged = self._log_event(domain, address, fields, delivery)
                if not polled:
                    await self._post_event(url, _event_data(events, seq, logged), delivery.key)

        def dropped() -> None:
            # The events happened at Mailgun all the same: only their webhooks are lost.
            for fields in kinds:
                self._log_event(domain, address, fields, delivery)
            if not polled:
                self.state.record(
                    "mailgun-webhook",
                    status=0,
                    key=delivery.key,
                    to=address,
                    summary={"url": url, "dropped": "queue full"},
                )

        self.callbacks.schedule(delay, send_all, on_dropped=dropped)

    def _log_event(
        self, domain: str, address: str, fields: dict[str, Any], delivery: _Delivery
    ) -> tuple[DomainEvents, int, LoggedEvent]:
        logged = LoggedEvent(
            timestamp=time.time(),
            event=str(fields["event"]),
            recipient=address,
            fields=fields,
            context=delivery,
        )
        events, seq = self.state.events.append(domain, logged)
        return events, seq, logged

    def signature_block(self) -> dict[str, str]:
        """Mailgun's webhook signature: HMAC-SHA256(signing key, timestamp + token)."""
        timestamp = str(int(time.time()))
        token = secrets.token_hex(25)
        signature = hmac.new(self.signing_key, f"{timestamp}{token}".encode(), hashlib.sha256).hexdigest()
        return {"timestamp": timestamp, "token": token, "signature": signature}

    async def _post_event(self, url: str, event_data: dict[str, Any], key: str | None) -> None:
        received_at = time.time()
        address = str(event_data["recipient"])
        message_id = str(event_data["message"]["headers"]["message-id"])
        summary: dict[str, Any] = {"url": url, "event": event_data["event"], "message_id": message_id}
        fault = await fault_strike(
            self.state, "mailgun-webhook", received_at=received_at, key=key, to=address, summary=summary
        )
        if fault is not None:
            if fault.status != 0:  # a timeout fault was recorded while it held the webhook
                self.state.record(
                    "mailgun-webhook",
                    status=0,
                    key=key,
                    to=address,
                    summary={**summary, "dropped": f"fault {fault.status}"},
                    received_at=received_at,
                )
            return
        body = {"signature": self.signature_block(), "event-data": event_data}
        status, answer = await self.callbacks.post(url, json_body=body, headers=self.webhook_headers)
        summary["answer"] = answer[:200]
        self.state.record(
            "mailgun-webhook", status=status, key=key, to=address, summary=summary, received_at=received_at
        )

    # -- the events API --

    async def events(self, request: web.Request) -> web.Response:
        """``GET /v3/{domain}/events`` (``begin``, ``ascending``, ``limit``, ``event``) and
        its pages ``GET /v3/{domain}/events/{page_token}``, answered like Mailgun:
        ``{"items": [event-data, ...], "paging": {"next", "previous", "first", "last"}}``."""
        if not self._authenticated(request):
            return mailgun_error(401)
        domain = request.match_info["domain"]
        # A domain that has logged nothing yet pages like an empty log numbered from 0.
        events = self.state.events.domain(domain) or DomainEvents()
        token = request.match_info.get("page_token")
        try:
            if token is not None:
                position = _PagePosition.from_token(token)
            else:
                position = self._query_position(request, events)
        except _BadParameter as error:
            return mailgun_error(400, str(error))

        names = position.names
        if position.ascending:
            seq = 0 if position.seq is None else position.seq
            page, start, end = events.after(seq, position.limit, names)
            next_position = _PagePosition(end, True, position.event, position.limit)
            previous_position = _PagePosition(start, False, position.event, position.limit)
        else:
            seq = events.next_seq if position.seq is None else position.seq
            page, start, end = events.before(seq, position.limit, names)
            next_position = _PagePosition(end, False, position.event, position.limit)
            previous_position = _PagePosition(start, True, position.event, position.limit)
        base = f"{request.url.origin()}/mailgun/v3/{domain}/events/"
        paging = {
            "next": base + next_position.token(),
            "previous": base + previous_position.token(),
            "first": base + _PagePosition(0, True, position.event, position.limit).token(),
            "last": base + _PagePosition(None, False, position.event, position.limit).token(),
        }
        items = [_event_data(events, number, logged) for number, logged in page]
        return web.json_response({"items": items, "paging": paging})

    def _query_position(self, request: web.Request, events: DomainEvents) -> _PagePosition:
        """The first page's position from the query parameters (``_BadParameter`` naming a
        bad one)."""
        query = request.query
        raw_limit = query.get("limit", str(EVENTS_PAGE_DEFAULT))
        try:
            limit = int(raw_limit)
        except ValueError:
            limit = 0
        if not 1 <= limit <= EVENTS_PAGE_MAX:
            raise _BadParameter(
                f"Invalid 'limit': expected a whole number from 1 to {EVENTS_PAGE_MAX}, got {raw_limit!r}"
            )
        raw_ascending = query.get("ascending", "no").lower()
        if raw_ascending not in ("yes", "no"):
            raise _BadParameter(f"Invalid 'ascending': expected 'yes' or 'no', got {raw_ascending!r}")
        ascending = raw_ascending == "yes"
        event = query.get("event") or None
        raw_begin = query.get("begin")
        if raw_begin:
            # Ascending: from the first event at ``begin`` on; descending: back from the last.
            seq = events.seq_at(_timestamp_param(raw_begin), after=not ascending)
        else:
            # The oldest event kept, or (descending) the newest at the time of this query.
            seq = 0 if ascending else events.next_seq
        return _PagePosition(seq, ascending, event, limit)


def _string_fields(form: MultiDictProxy[Any]) -> dict[str, list[str]]:
    """Form fields that are not files, by name, every value kept (``to`` may repeat)."""
    fields: dict[str, list[str]] = {}
    for name, value in form.items():
        if isinstance(value, str):
            fields.setdefault(name, []).append(value)
    return fields


def _attachment_names(form: MultiDictProxy[Any]) -> list[str]:
    return [
        str(getattr(value, "filename", "") or name)
        for name, value in form.items()
        if not isinstance(value, str)
    ]
