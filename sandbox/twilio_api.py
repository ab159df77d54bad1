"""Twilio's Messages API (``2010-04-01``), its status callbacks and inbound messages.

Accounts and auth tokens are those of ``settings.PROVIDERS`` (kind twilio). Status callbacks
and inbound-message webhooks are signed with ``X-Twilio-Signature`` computed by twilio's own
``RequestValidator``, so the platform's signature check runs exactly as against Twilio.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiohttp import BasicAuth, web
from twilio.request_validator import RequestValidator

from sandbox.context import SandboxContext, TwilioAccount
from sandbox.faults import fault_strike, http_fault_gate
from sandbox.outbound import CallbackQueue

API_VERSION = "2010-04-01"
# Twilio's magic test numbers (https://www.twilio.com/docs/iam/test-credentials) and one of
# the sandbox's own: accepted, then reported undelivered (error 30003) by status callback.
INVALID_NUMBER = "+15005550001"
CANNOT_ROUTE = "+15005550002"
NO_INTERNATIONAL = "+15005550003"
BLOCKED_NUMBER = "+15005550004"
NOT_MOBILE = "+15005550009"
UNDELIVERED_NUMBER = "+15005550010"
STOP_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
START_WORDS = frozenset({"START", "UNSTOP"})

# GSM 03.38 basic character set; the extension table's characters take two septets.
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")

FAULT_CODES = {401: 20003, 404: 20404, 429: 20429, 500: 20500, 503: 20503}


def sms_segments(body: str) -> int:
    """How many SMS parts Twilio bills ``body`` as: GSM-7 160 single / 153 per part,
    otherwise UCS-2 70 single / 67 per part (UTF-16 code units)."""
    if all(char in GSM7_BASIC or char in GSM7_EXTENSION for char in body):
        septets = sum(2 if char in GSM7_EXTENSION else 1 for char in body)
        return 1 if septets <= 160 else math.ceil(septets / 153)
    units = len(body.encode("utf-16-le")) // 2
    return 1 if units <= 70 else math.ceil(units / 67)


def twilio_error(status: int, code: int, message: str) -> web.Response:
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return web.json_response(body, status=status)


def _fault_error(status: int) -> web.Response:
    code = FAULT_CODES.get(status, 20500 if status >= 500 else 20001)
    return twilio_error(status, code, f"Sandbox fault: HTTP {status}")


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


class TwilioApi:
    """``POST /twilio/2010-04-01/Accounts/{AccountSid}/Messages.json`` and the inbound-SMS
    control call."""

    def __init__(self, context: SandboxContext, callbacks: CallbackQueue) -> None:
        self.context = context
        self.state = context.state
        self.callbacks = callbacks

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(f"/twilio/{API_VERSION}/Accounts/{{account_sid}}/Messages.json", self.create_message),
            web.post("/_sandbox/api/twilio/inbound", self.inbound),
        ]

    def _authenticate(self, request: web.Request) -> TwilioAccount | None:
        header = request.headers.get("Authorization", "")
        try:
            credentials = BasicAuth.decode(header)
        except ValueError:
            return None
        account = self.context.twilio_account(credentials.login)
        if account is None or not secrets.compare_digest(account.auth_token, credentials.password):
            return None
        if account.account_sid != request.match_info["account_sid"]:
            return None
        return account

    async def create_message(self, request: web.Request) -> web.Response:
        received_at = time.time()
        form = await request.post()
        to = str(form.get("To", "")).strip()
        # A Messaging Service picks the sender itself.
        from_number = str(form.get("From", "") or form.get("MessagingServiceSid", "")).strip()
        body = str(form.get("Body", ""))
        status_callback = str(form.get("StatusCallback", "")) or None
        key = _key_from_callback(status_callback)
        summary: dict[str, Any] = {"from": from_number, "body": body, "status_callback": status_callback}
        blocked = await http_fault_gate(
            self.state,
            "twilio",
            received_at=received_at,
            key=key,
            to=to,
            summary=summary,
            error_response=_fault_error,
        )
        if blocked is not None:
            return blocked

        account = self._authenticate(request)
        if account is None:
            error: tuple[int, int, str] | None = (401, 20003, "Authenticate")
        else:
            error = self._validate(to=to, from_number=from_number, body=body)
        if account is None or error is not None:
            assert error is not None
            status, code, text = error
            summary["error_code"] = code
            self.state.record(
                "twilio", status=status, key=key, to=to, summary=summary, received_at=received_at
            )
            return twilio_error(status, code, text)

        message_sid = _sid("SM")
        summary["sid"] = message_sid
        segments = sms_segments(body)
        now = formatdate(received_at, usegmt=True).replace("GMT", "+0000")
        resource = {
            "account_sid": account.account_sid,
            "api_version": API_VERSION,
            "body": body,
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": from_number,
            "messaging_service_sid": None,
            "num_media": "0",
            "num_segments": str(segments),
            "price": None,
            "price_unit": "USD",
            "sid": message_sid,
            "status": "queued",
            "subresource_uris": {
                "media": f"/{API_VERSION}/Accounts/{account.account_sid}/Messages/{message_sid}/Media.json"
            },
            "to": to,
            "uri": f"/{API_VERSION}/Accounts/{account.account_sid}/Messages/{message_sid}.json",
        }
        self.state.record("twilio", status=201, key=key, to=to, summary=summary, received_at=received_at)
        if status_callback:
            final = ("undelivered", "30003") if to == UNDELIVERED_NUMBER else ("delivered", None)
            self._schedule_status_callbacks(
                account,
                url=status_callback,
                key=key,
                message_sid=message_sid,
                from_number=from_number,
                to=to,
                statuses=[("sent", None), final],
            )
        return web.json_response(resource, status=201)

    def _validate(self, *, to: str, from_number: str, body: str) -> tuple[int, int, str] | None:
        """(HTTP status, Twilio error code, message) of the first problem, or None."""
        if not to:
            return (400, 21604, "A 'To' phone number is required.")
        if not from_number:
            return (400, 21603, "A 'From' phone number is required.")
        if not body:
            return (400, 21602, "Message body is required.")
        if len(body) > 1600:
            return (400, 21617, "The concatenated message body exceeds the 1600 character limit.")
        if to == INVALID_NUMBER or not to.startswith("+") or not to[1:].isdigit():
            return (400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if to == NOT_MOBILE:
            return (400, 21614, f"'To' number {to} is not a mobile number")
        if to == CANNOT_ROUTE:
            return (400, 21612, f"The 'To' phone number: {to}, is not currently reachable")
        if to == NO_INTERNATIONAL:
            return (
                400,
                21408,
                f"Permission to send an SMS has not been enabled for the region indicated by {to}",
            )
        if to == BLOCKED_NUMBER or to in self.state.opted_out:
            return (400, 21610, "Attempt to send to unsubscribed recipient")
        return None

    def _schedule_status_callbacks(
        self,
        account: TwilioAccount,
        *,
        url: str,
        key: str | None,
        message_sid: str,
        from_number: str,
        to: str,
        statuses: list[tuple[str, str | None]],
    ) -> None:
        delay = self.context.config.callback_delay_ms / 1000
        validator = RequestValidator(account.auth_token)

        async def send_all() -> None:
            for index, (message_status, error_code) in enumerate(statuses):
                if index:
                    await _sleep(delay)
                params = {
                    "MessageSid": message_sid,
                    "SmsSid": message_sid,
                    "AccountSid": account.account_sid,
                    "From": from_number,
                    "To": to,
                    "MessageStatus": message_status,
                    "SmsStatus": message_status,
                    "ApiVersion": API_VERSION,
                }
                if error_code:
                    params["ErrorCode"] = error_code
                await self._post_signed(
                    validator, url=url, params=params, key=key, to=to, kind=f"status:{message_status}"
                )

        def dropped() -> None:
            self.state.record(
                "twilio-callback", status=0, key=key, to=to, summary={"url": url, "dropped": "queue full"}
            )

        self.callbacks.schedule(delay, send_all, on_dropped=dropped)

    async def _post_signed(
        self,
        validator: RequestValidator,
        *,
        url: str,
        params: dict[str, str],
        key: str | None,
        to: str,
        kind: str,
    ) -> int:
        """POST one signed callback (unless a fault drops it); record and return the
        platform's status (0: not sent or no answer)."""
        received_at = time.time()
        summary: dict[str, Any] = {"url": url, "kind": kind, "params": params}
        fault = await fault_strike(
            self.state, "twilio-callback", received_at=received_at, key=key, to=to, summary=summary
        )
        if fault is not None:
            if fault.status != 0:  # a timeout fault was recorded while it held the callback
                self.state.record(
                    "twilio-callback",
                    status=0,
                    key=key,
                    to=to,
                    summary={**summary, "dropped": f"fault {fault.status}"},
                    received_at=received_at,
                )
            return 0
        signature = validator.compute_signature(url, params)
        status, answer = await self.callbacks.post(
            url, data=params, headers={"X-Twilio-Signature": signature}
        )
        summary["answer"] = answer[:200]
        self.state.record(
            "twilio-callback", status=status, key=key, to=to, summary=summary, received_at=received_at
        )
        return status

    async def inbound(self, request: web.Request) -> web.Response:
        """Control call: the sandbox receives an SMS from ``from`` and POSTs Twilio's signed
        inbound-message webhook to the platform; STOP words opt the number out, START words
        opt it back in. Answered with the platform's status (0 and 502 when it did not answer)."""
        try:
            payload = await request.json()
        except ValueError:
            return _control_error("body", "Expected a JSON object.")
        if not isinstance(payload, dict):
            return _control_error("body", "Expected a JSON object.")
        from_number = str(payload.get("from") or "")
        body = str(payload.get("body") or "")
        if not from_number.startswith("+"):
            return _control_error("from", f"Expected an E.164 number, got {from_number!r}.")
        account_name = str(payload.get("account") or "twilio")
        account = self.context.twilio_account_named(account_name)
        if account is None:
            names = [item.name for item in self.context.config.twilio_accounts]
            return _control_error("account", f"Unknown Twilio account {account_name!r}; known: {names}.")
        to = str(payload.get("to") or account.from_number)

        word = body.strip().upper()
        params = {
            "MessageSid": _sid("SM"),
            "SmsSid": "",
            "SmsMessageSid": "",
            "AccountSid": account.account_sid,
            "From": from_number,
            "To": to,
            "Body": body,
            "NumMedia": "0",
            "NumSegments": str(sms_segments(body) if body else 1),
            "SmsStatus": "received",
            "ApiVersion": API_VERSION,
        }
        params["SmsSid"] = params["SmsMessageSid"] = params["MessageSid"]
        if word in STOP_WORDS:
            params["OptOutType"] = "STOP"
            self.state.opted_out.add(from_number)
        elif word in START_WORDS:
            params["OptOutType"] = "START"
            self.state.opted_out.discard(from_number)

        url = f"{self.context.config.platform_base}/providers/twilio/inbound/"
        signature = RequestValidator(account.auth_token).compute_signature(url, params)
        status, answer = await self.callbacks.post(
            url, data=params, headers={"X-Twilio-Signature": signature}
        )
        self.state.record(
            "twilio-callback",
            status=status,
            to=from_number,
            summary={"url": url, "kind": "inbound", "params": params, "answer": answer[:200]},
        )
        body_json = {
            "platform_status": status,
            "message_sid": params["MessageSid"],
            "opted_out": from_number in self.state.opted_out,
        }
        return web.json_response(body_json, status=status if status else 502)


def _key_from_callback(url: str | None) -> str | None:
    if not url:
        return None
    values = parse_qs(urlsplit(url).query).get("key")
    return values[0] if values else None


def _control_error(field: str, message: str) -> web.Response:
    return web.json_response({"errors": {field: [message]}}, status=400)


async def _sleep(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)
