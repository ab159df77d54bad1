"""Chat and generic webhooks: Slack and Microsoft Teams incoming webhooks, and JSON
webhooks signed the Standard Webhooks way (https://www.standardwebhooks.com/).

A generic webhook carries three headers: ``webhook-id`` (the delivery's idempotency key,
which receivers use to drop duplicates), ``webhook-timestamp`` (Unix seconds) and
``webhook-signature`` (``v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx
from django.conf import settings

from notifications.transports.base import OutboundMessage, SendResult, TransportError
from notifications.transports.retry_after import retry_after_parse

WEBHOOK_KINDS = ("slack", "teams", "generic")
SIGNATURE_VERSION = "v1"
SECRET_PREFIX = "whsec_"


class WebhookSignatureError(Exception):
    """A webhook request whose signature does not hold; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _secret_key(secret: str) -> bytes:
    """The HMAC key: a Standard Webhooks secret (``whsec_`` + base64) is decoded, so that
    receivers using a Standard Webhooks library verify our signatures; any other secret
    is used as its UTF-8 bytes."""
    if secret.startswith(SECRET_PREFIX):
        try:
            return base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            pass
    return secret.encode()


def webhook_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Return the ``webhook-signature`` header value for one request:
    ``v1,<base64 HMAC-SHA256(secret, f"{msg_id}.{timestamp}.{body}")>``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_secret_key(secret), signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def webhook_signature_verify(
    *,
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    tolerance_seconds: int,
    now: float | None = None,
) -> None:
    """Check a signed webhook request; return None when it is authentic and fresh.

    Raises WebhookSignatureError when a webhook-* header is missing, the timestamp is
    not an integer or lies more than ``tolerance_seconds`` from ``now`` (a replay of an old
    request, or a forged time), or no ``v1`` signature in the header matches (compared in
    constant time). A replay inside the tolerance passes this check: receivers drop it by
    its ``webhook-id``.
    """
    lowered = {key.lower(): value for key, value in headers.items()}
    values: dict[str, str] = {}
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        value = lowered.get(name, "").strip()
        if not value:
            raise WebhookSignatureError(f"missing header {name}")
        values[name] = value
    try:
        timestamp = int(values["webhook-timestamp"])
    except ValueError:
        raise WebhookSignatureError(f"webhook-timestamp {values['webhook-timestamp']!r} is not Unix seconds")
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        raise WebhookSignatureError(
            f"webhook-timestamp {timestamp} is {current - timestamp:+.0f}s from now, beyond the {tolerance_seconds}s tolerance"
        )
    expected = webhook_signature(secret, values["webhook-id"], timestamp, body).encode()
    # The header may carry several space-separated signatures (secret rotation).
    for candidate in values["webhook-signature"].split():
        if hmac.compare_digest(candidate.encode(), expected):
            return
    raise WebhookSignatureError("no signature matches")


def webhook_body(message: OutboundMessage, kind: str) -> bytes:
    """The JSON body sent for ``message`` to a webhook of ``kind``."""
    text = message.content.get("text", "")
    document: dict[str, Any]
    if kind == "slack":
        document = {"text": text}
    elif kind == "teams":
        document = {
            "@type": "MessageCard",
            "@context": "https://schema.org/extensions",
            "summary": message.content.get("title") or text[:80],
            "text": text,
        }
    else:
        document = {
            "id": message.idempotency_key,
            "type": message.notification_type,
            "category": message.category,
            "text": text,
            "data": message.data,
        }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False, default=str).encode()


class WebhookTransport:
    """Posts one JSON document per call to the URL in ``message.to``."""

    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        self.name = name
        self.channel = str(config.get("channel", "webhook"))
        send_timeout = float(settings.SEND_TIMEOUT_SECONDS)
        self._timeout = min(float(config.get("timeout_seconds") or send_timeout), send_timeout)
        self._lock = threading.Lock()
        self._http: httpx.Client | None = None

    def _client(self) -> httpx.Client:
        with self._lock:
            if self._http is None:
                # Redirects are not followed: a webhook URL that moved is the owner's to fix,
                # and following one could lead the signed body anywhere.
                self._http = httpx.Client(
                    timeout=self._timeout,
                    follow_redirects=False,
                    limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
                    headers={"user-agent": "notification-platform-webhooks/1"},
                )
            return self._http

    def close(self) -> None:
        with self._lock:
            if self._http is not None:
                self._http.close()
                self._http = None

    def send(self, message: OutboundMessage) -> SendResult:
        url = message.to
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TransportError(
                f"webhook URL {url!r} is not an http(s) URL with a host", permanent=True, code="bad_url"
            )
        kind = str(message.options.get("kind") or "generic")
        if kind not in WEBHOOK_KINDS:
            raise TransportError(
                f"webhook kind {kind!r} is not one of {', '.join(WEBHOOK_KINDS)}",
                permanent=True,
                code="bad_kind",
            )
        body = webhook_body(message, kind)
        # Slack and Teams ignore it; it lets anything in between (proxies, the sandbox) tell
        # a resend from a new message.
        headers = {
            **message.headers,
            "content-type": "application/json",
            "idempotency-key": message.idempotency_key,
        }
        if kind == "generic":
            secret = message.options.get("secret")
            if not secret:
                raise TransportError(
                    "generic webhook has no signing secret", permanent=True, code="missing_secret"
                )
            timestamp = int(time.time())
            headers["webhook-id"] = message.idempotency_key
            headers["webhook-timestamp"] = str(timestamp)
            headers["webhook-signature"] = webhook_signature(
                str(secret), message.idempotency_key, timestamp, body
            )
        try:
            response = self._client().post(url, content=body, headers=headers)
        except httpx.TimeoutException as error:
            raise TransportError(f"webhook {url} timed out: {error!r}", code="timeout") from error
        except (httpx.HTTPError, OSError) as error:
            raise TransportError(f"webhook {url} unreachable: {error!r}", code="connection") from error
        except Exception as error:
            raise TransportError(f"webhook {url} failed: {error!r}", code="unexpected") from error
        status = response.status_code
        if 200 <= status < 300:
            return SendResult(
                provider=self.name, provider_message_id=message.idempotency_key, detail={"status": status}
            )
        raise webhook_error(status, response.headers.get("retry-after"), url, response.text[:300])


def webhook_error(status: int, retry_after_header: str | None, url: str, text: str = "") -> TransportError:
    """Classify a webhook endpoint's non-2xx answer."""
    reason = f"webhook {url} answered {status}" + (f": {text}" if text else "")
    detail = {"http_status": status}
    if status == 429:
        return TransportError(
            reason,
            rate_limited=True,
            retry_after=retry_after_parse(retry_after_header),
            code="429",
            detail=detail,
        )
    if status == 408 or status >= 500:
        return TransportError(
            reason, retry_after=retry_after_parse(retry_after_header), code=str(status), detail=detail
        )
    if status == 410:
        return TransportError(f"{reason} (endpoint gone)", permanent=True, code="410", detail=detail)
    return TransportError(reason, permanent=True, code=str(status), detail=detail)
