"""Push to Apple devices through the APNs HTTP/2 provider API, with token (JWT) auth.

Each sending thread keeps one HTTP/2 connection (an ``httpx.Client``) open to APNs and
reuses it for every push, as Apple asks providers to do; the ES256 provider token is
shared by all threads.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx
import jwt
from django.conf import settings

from notifications.transports.base import Feedback, OutboundMessage, SendResult, TransportError
from notifications.transports.retry_after import retry_after_parse

APNS_PAYLOAD_LIMIT_BYTES = 4096
APNS_COLLAPSE_ID_LIMIT_BYTES = 64
# Apple rejects a provider token older than an hour and refuses a new one more often than
# every 20 minutes (TooManyProviderTokenUpdates): refresh in between.
APNS_TOKEN_REFRESH_SECONDS = 50 * 60
# How long APNs stores an alert for an offline device, unless options["ttl_seconds"] says.
APNS_DEFAULT_TTL_SECONDS = 24 * 3600
# apns-id must be a UUID; keys that are not one are mapped into this namespace.
APNS_ID_NAMESPACE = uuid.UUID("0f4c6f7e-2f4a-4b8e-9d3e-4a1b9c5d7e21")

BAD_TOKEN_REASONS = frozenset({"BadDeviceToken", "DeviceTokenNotForTopic"})


def apns_id(idempotency_key: str) -> str:
    """The apns-id for a delivery: its idempotency key when that is a UUID, else a UUID5
    derived from it (deterministic, so a resend carries the same apns-id)."""
    try:
        return str(uuid.UUID(idempotency_key))
    except ValueError:
        return str(uuid.uuid5(APNS_ID_NAMESPACE, idempotency_key))


def apns_payload(message: OutboundMessage) -> bytes:
    """The JSON body for ``message``; raises a permanent TransportError when it exceeds
    APNs' 4 KB limit."""
    data = {key: value for key, value in message.data.items() if key != "aps"}
    alert = {"title": message.content.get("title", ""), "body": message.content.get("body", "")}
    body = json.dumps(
        {"aps": {"alert": alert, "sound": "default"}, **data}, separators=(",", ":"), ensure_ascii=False
    ).encode()
    if len(body) > APNS_PAYLOAD_LIMIT_BYTES:
        raise TransportError(
            f"payload too large ({len(body)} bytes, limit {APNS_PAYLOAD_LIMIT_BYTES})",
            permanent=True,
            code="payload_too_large",
        )
    return body


class _ProviderToken:
    """The ES256 provider JWT, shared by all threads and rebuilt every 50 minutes."""

    def __init__(self, *, key_file: str, key_id: str, team_id: str) -> None:
        self._key_file = key_file
        self._key_id = key_id
        self._team_id = team_id
        self._lock = threading.Lock()
        self._key: str | None = None
        self._token: str | None = None
        self._issued_at = 0.0

    def get(self) -> str:
        with self._lock:
            now = time.time()
            if self._token is None or now - self._issued_at >= APNS_TOKEN_REFRESH_SECONDS:
                if self._key is None:
                    with open(self._key_file, encoding="utf-8") as file:
                        self._key = file.read()
                self._token = jwt.encode(
                    {"iss": self._team_id, "iat": int(now)},
                    self._key,
                    algorithm="ES256",
                    headers={"kid": self._key_id},
                )
                self._issued_at = now
            return self._token

    def expire(self, used: str) -> None:
        """Rebuild on next use, after Apple called ``used`` expired (unless another thread
        already replaced it)."""
        with self._lock:
            if self._token == used:
                self._token = None


class ApnsTransport:
    """Sends one alert per call to an APNs device token."""

    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        self.name = name
        self.channel = str(config.get("channel", "push"))
        self._url = str(config["url"]).rstrip("/")
        self._topic = str(config["topic"])
        self._ca_file = str(config["ca_file"]) if config.get("ca_file") else None
        self._timeout = float(settings.SEND_TIMEOUT_SECONDS)
        self._token = _ProviderToken(
            key_file=str(config["key_file"]), key_id=str(config["key_id"]), team_id=str(config["team_id"])
        )
        self._lock = threading.Lock()
        self._verify: ssl.SSLContext | bool | None = None
        self._local = threading.local()
        self._clients: list[httpx.Client] = []

    def _client(self) -> httpx.Client:
        """This thread's HTTP/2 client.

        One per thread, not one shared: httpcore's synchronous HTTP/2 connection allocates
        stream ids and HPACK-encodes headers without a lock, so two threads sending on one
        connection can reuse a stream id or corrupt the header table (the server then ends
        the connection with PROTOCOL_ERROR, failing every stream on it). Each thread keeps
        its own TLS connection instead; Apple allows a provider several.
        """
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is not None:
            return client
        with self._lock:
            if self._verify is None:
                # Loaded on first use: the sandbox writes its CA after the settings are
                # read, and a missing CA must be a classified failure.
                try:
                    self._verify = ssl.create_default_context(cafile=self._ca_file) if self._ca_file else True
                except OSError as error:
                    raise TransportError(
                        f"APNs CA file {self._ca_file!r} unusable: {error!r}", code="credentials"
                    ) from error
            client = httpx.Client(
                http2=True,
                verify=self._verify,
                timeout=self._timeout,
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            )
            self._clients.append(client)
        self._local.client = client
        return client

    def close(self) -> None:
        """Close every thread's connection (threads that send again get new ones)."""
        with self._lock:
            clients, self._clients = self._clients, []
            self._local = threading.local()
        for client in clients:
            client.close()

    def send(self, message: OutboundMessage) -> SendResult:
        body = apns_payload(message)
        headers = {
            "apns-topic": self._topic,
            "apns-push-type": "alert",
            "apns-priority": "10",
            "apns-id": apns_id(message.idempotency_key),
            "apns-expiration": str(
                int(time.time()) + int(message.options.get("ttl_seconds", APNS_DEFAULT_TTL_SECONDS))
            ),
            "content-type": "application/json",
        }
        if message.collapse_key:
            size = len(message.collapse_key.encode())
            if size > APNS_COLLAPSE_ID_LIMIT_BYTES:
                raise TransportError(
                    f"collapse key too long ({size} bytes, limit {APNS_COLLAPSE_ID_LIMIT_BYTES})",
                    permanent=True,
                    code="collapse_key_too_long",
                )
            headers["apns-collapse-id"] = message.collapse_key
        try:
            token = self._token.get()
        except Exception as error:  # unreadable key file, not an EC key
            raise TransportError(
                f"APNs provider token cannot be made: {error!r}", code="credentials"
            ) from error
        headers["authorization"] = f"bearer {token}"
        client = self._client()
        try:
            response = client.post(
                f"{self._url}/3/device/{quote(message.to, safe='')}", content=body, headers=headers
            )
        except httpx.TimeoutException as error:
            raise TransportError(f"APNs timed out: {error!r}", code="timeout") from error
        except (httpx.HTTPError, OSError, ssl.SSLError) as error:
            raise TransportError(f"APNs unreachable: {error!r}", code="connection") from error
        except Exception as error:  # h2 protocol errors surface as their own types
            raise TransportError(f"APNs send failed: {error!r}", code="unexpected") from error
        if response.status_code == 200:
            return SendResult(
                provider=self.name,
                provider_message_id=response.headers.get("apns-id", headers["apns-id"]),
                detail={"status": 200},
            )
        refused = apns_error(
            response.status_code, _json_or_none(response), response.headers.get("retry-after")
        )
        if refused.code == "ExpiredProviderToken":
            self._token.expire(token)
        raise refused


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def apns_error(status: int, body: Any, retry_after_header: str | None) -> TransportError:
    """Classify an APNs error answer (``{"reason": ..., "timestamp": ms}``)."""
    reason_code = str(body.get("reason", "")) if isinstance(body, dict) else ""
    reason = f"APNs answered {status} {reason_code}".rstrip()
    detail: dict[str, Any] = {"http_status": status, "apns_reason": reason_code}
    code = reason_code or str(status)
    if status == 410:
        if isinstance(body, dict) and body.get("timestamp") is not None:
            detail["unregistered_at"] = body["timestamp"]
        return TransportError(
            reason, permanent=True, code=code, feedback=Feedback.UNREGISTERED, detail=detail
        )
    if status == 429:
        return TransportError(
            reason,
            rate_limited=True,
            retry_after=retry_after_parse(retry_after_header),
            code=code,
            detail=detail,
        )
    if status >= 500:
        return TransportError(
            reason, retry_after=retry_after_parse(retry_after_header), code=code, detail=detail
        )
    if status == 403:
        # ExpiredProviderToken, InvalidProviderToken, MissingProviderToken: our credentials,
        # the same for every message; transient, for the breaker.
        return TransportError(reason, code=code, detail=detail)
    if status == 400 and reason_code in BAD_TOKEN_REASONS:
        return TransportError(reason, permanent=True, code=code, feedback=Feedback.BAD_TOKEN, detail=detail)
    return TransportError(reason, permanent=True, code=code, detail=detail)
