"""Mailgun's send API (``POST /v3/{domain}/messages``) and its tracking webhooks.

django-anymail's Mailgun backend posts the message as form fields (multipart when it has
attachments); the sandbox answers like Mailgun and then reports each recipient's fate to
the platform's anymail tracking webhook, JSON-signed with the webhook signing key
(HMAC-SHA256 over timestamp + token) and with the basic auth anymail checks.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
from datetime import UTC, datetime
from email.utils import getaddresses
from typing import Any

from aiohttp import BasicAuth, web
from multidict import MultiDictProxy

from sandbox.context import SandboxContext
from sandbox.faults import fault_strike, http_fault_gate
from sandbox.outbound import CallbackQueue

FLAKY_DOMAIN = "flaky.sandbox.test"
BOUNCE_DOMAIN = "bounce.sandbox.test"
COMPLAINT_DOMAIN = "complaint.sandbox.test"
SOFTBOUNCE_DOMAIN = "softbounce.sandbox.test"
IDEMPOTENCY_VARIABLE = "idempotency_key"


def mailgun_error(status: int, message: str | None = None) -> web.Response:
    if status == 401:
        return web.Response(status=401, text="Forbidden")
    return web.json_response({"message": message or f"Sandbox fault: HTTP {status}"}, status=status)


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


def _events_for(address: str) -> list[dict[str, Any]]:
    """The tracking events Mailgun would report for ``address``, in order."""
    domain = _domain(address)
    if domain == BOUNCE_DOMAIN:
        return [
            {
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
        ]
    if domain == SOFTBOUNCE_DOMAIN:
        return [
            {
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
        ]
    delivered = {
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
    if domain == COMPLAINT_DOMAIN:
        return [delivered, {"event": "complained"}]
    return [delivered]


def _substitute(value: str, variables: dict[str, Any]) -> str:
    """Resolve one ``%recipient.NAME%`` reference (what anymail's batch sends use)."""
    if value.startswith("%recipient.") and value.endswith("%"):
        resolved = variables.get(value[len("%recipient.") : -1])
        return "" if resolved is None else str(resolved)
    return value


class MailgunApi:
    """``POST /mailgun/v3/{domain}/messages``."""

    def __init__(self, context: SandboxContext, callbacks: CallbackQueue) -> None:
        self.context = context
        self.state = context.state
        self.callbacks = callbacks
        config = context.config
        user, _, password = config.mailgun_webhook_secret.partition(":")
        self.webhook_auth = BasicAuth(user, password) if config.mailgun_webhook_secret else None
        self.signing_key = config.mailgun_webhook_signing_key.encode()

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/mailgun/v3/{domain}/messages", self.send)]

    def _authenticated(self, request: web.Request) -> bool:
        try:
            credentials = BasicAuth.decode(request.headers.get("Authorization", ""))
        except ValueError:
            return False
        return credentials.login == "api" and secrets.compare_digest(
            credentials.password, self.context.config.mailgun_api_key
        )

    async def send(self, request: web.Request) -> web.Response:
        received_at = time.time()
        domain = request.match_info["domain"]
        form = await request.post()
        fields = _string_fields(form)
        recipients = [
            address
            for _, address in getaddresses(
                [value for name in ("to", "cc", "bcc") for value in fields.get(name, [])]
            )
            if address
        ]
        variables = {name[2:]: values[-1] for name, values in fields.items() if name.startswith("v:")}
        headers = {name[2:]: values[-1] for name, values in fields.items() if name.startswith("h:")}
        tags = fields.get("o:tag", [])
        recipient_variables: dict[str, dict[str, Any]] | None = None
        if "recipient-variables" in fields:
            try:
                parsed = json.loads(fields["recipient-variables"][-1])
                recipient_variables = parsed if isinstance(parsed, dict) else {}
            except ValueError:
                recipient_variables = {}
        sender = fields.get("from", [""])[-1]
        subject = fields.get("subject", [""])[-1]
        summary: dict[str, Any] = {
            "domain": domain,
            "from": sender,
            "subject": subject,
            "recipients": recipients,
            "variables": variables,
            "headers": headers,
            "tags": tags,
            # Recordings are kept in memory (up to 500k of them): bodies are cut short.
            "text": fields.get("text", [""])[-1][:500],
            "html": fields.get("html", [""])[-1][:500],
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
            personal = {address: variables for address in recipients}
        else:
            # A batch send is one message per recipient: record each with its own key.
            personal = {}
            for address in recipients:
                own = recipient_variables.get(address, {})
                resolved = {name: _substitute(str(value), own) for name, value in variables.items()}
                personal[address] = resolved
                self.state.record(
                    "mailgun",
                    status=200,
                    key=resolved.get(IDEMPOTENCY_VARIABLE),
                    to=address,
                    summary={**summary, "variables": resolved, "batch": True},
                    received_at=received_at,
                )
        for address in recipients:
            self._schedule_tracking(
                address,
                message_id=message_id,
                sender=sender,
                subject=subject,
                user_variables=personal[address],
                tags=tags,
            )
        return web.json_response({"id": f"<{message_id}>", "message": "Queued. Thank you."})

    def _schedule_tracking(
        self,
        address: str,
        *,
        message_id: str,
        sender: str,
        subject: str,
        user_variables: dict[str, Any],
        tags: list[str],
    ) -> None:
        delay = self.context.config.callback_delay_ms / 1000
        url = f"{self.context.config.platform_base}/anymail/mailgun/tracking/"
        key = user_variables.get(IDEMPOTENCY_VARIABLE)

        async def send_all() -> None:
            for index, event in enumerate(_events_for(address)):
                if index and delay > 0:
                    await asyncio.sleep(delay)
                await self._post_event(
                    url,
                    address=address,
                    event=event,
                    message_id=message_id,
                    sender=sender,
                    subject=subject,
                    user_variables=user_variables,
                    tags=tags,
                    key=key,
                )

        def dropped() -> None:
            self.state.record(
                "mailgun-webhook",
                status=0,
                key=key,
                to=address,
                summary={"url": url, "dropped": "queue full"},
            )

        self.callbacks.schedule(delay, send_all, on_dropped=dropped)

    def signature_block(self) -> dict[str, str]:
        """Mailgun's webhook signature: HMAC-SHA256(signing key, timestamp + token)."""
        timestamp = str(int(time.time()))
        token = secrets.token_hex(25)
        signature = hmac.new(self.signing_key, f"{timestamp}{token}".encode(), hashlib.sha256).hexdigest()
        return {"timestamp": timestamp, "token": token, "signature": signature}

    async def _post_event(
        self,
        url: str,
        *,
        address: str,
        event: dict[str, Any],
        message_id: str,
        sender: str,
        subject: str,
        user_variables: dict[str, Any],
        tags: list[str],
        key: str | None,
    ) -> None:
        received_at = time.time()
        event_name = str(event["event"])
        summary: dict[str, Any] = {"url": url, "event": event_name, "message_id": message_id}
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
        now = time.time()
        event_data: dict[str, Any] = {
            **event,
            "id": secrets.token_urlsafe(16),
            "timestamp": now,
            "log-level": "error"
            if event_name == "failed"
            else ("warn" if event_name == "complained" else "info"),
            "recipient": address,
            "recipient-domain": _domain(address),
            "envelope": {"sender": sender, "targets": address, "transport": "smtp"},
            "flags": {"is-authenticated": True, "is-test-mode": False},
            "message": {
                "headers": {"message-id": message_id, "to": address, "from": sender, "subject": subject},
                "attachments": [],
                "size": 0,
            },
            "user-variables": user_variables,
            "tags": tags,
            "storage": {"key": secrets.token_hex(12), "url": f"https://storage.sandbox.test/{message_id}"},
        }
        body = {"signature": self.signature_block(), "event-data": event_data}
        status, answer = await self.callbacks.post(url, json_body=body, auth=self.webhook_auth)
        summary["answer"] = answer[:200]
        self.state.record(
            "mailgun-webhook", status=status, key=key, to=address, summary=summary, received_at=received_at
        )


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
