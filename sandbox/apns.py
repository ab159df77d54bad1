"""APNs: ``POST /3/device/{token}`` over HTTP/2 and TLS (ALPN h2).

Provider-token authentication as Apple does it: an ES256 JWT signed with the ``.p8`` key
(here ``apns-key.p8``), header ``kid`` = the key id, claim ``iss`` = the team id, ``iat``
at most an hour old. Answers carry Apple's ``{"reason": ...}`` bodies and echo ``apns-id``.

The HTTP/2 server is a small asyncio protocol on the ``h2`` state machine rather than
hypercorn: hypercorn spent ~0.9 ms of CPU per request here (a task and a priority tree
per stream), about one core at the 1,000 pushes/s the benchmarks drive, while the platform
needs the other core. A request without an active fault or latency knob is answered
synchronously in the ``data_received`` call that completes it: no task per stream.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import socket
import ssl
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import jwt

from sandbox.context import SandboxContext
from sandbox.faults import TIMEOUT_ANSWER_STATUS, fault_strike

logger = logging.getLogger("sandbox.apns")

MAX_PAYLOAD_BYTES = 4096
# Bodies are kept up to this size; larger ones are drained and answered 413.
MAX_KEPT_BODY_BYTES = 65_536
TOKEN_MAX_AGE_SECONDS = 3600
# Provider tokens are reused for up to an hour, so verifying each once saves an ECDSA
# verification per request.
TOKEN_CACHE_SIZE = 10_000
MAX_CONCURRENT_STREAMS = 1000
PATH_PATTERN = re.compile(r"^/3/device/([^/?]+)$")
APNS_ID_PATTERN = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
PUSH_TYPES = frozenset(
    {
        "alert",
        "background",
        "location",
        "voip",
        "complication",
        "fileprovider",
        "mdm",
        "liveactivity",
        "pushtotalk",
    }
)
FAULT_REASONS = {
    400: "BadRequest",
    403: "Forbidden",
    404: "BadPath",
    405: "MethodNotAllowed",
    410: "Unregistered",
    413: "PayloadTooLarge",
    429: "TooManyRequests",
    500: "InternalServerError",
    503: "ServiceUnavailable",
}


class ApnsError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(slots=True)
class ApnsRequest:
    """One HTTP/2 stream's request, as received."""

    method: str
    path: str
    headers: dict[str, str]
    received_at: float
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


@dataclass(slots=True)
class ApnsAnswer:
    status: int
    apns_id: str
    reason: str = ""
    retry_after: int | None = None


class ApnsService:
    """Apple's rules for one request: faults, authentication, validation, magic tokens."""

    def __init__(self, context: SandboxContext) -> None:
        self.context = context
        self.state = context.state
        self._verified_tokens: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def handle(self, connection: ApnsConnection, stream_id: int, request: ApnsRequest) -> None:
        """Answer ``request`` on ``connection``: at once when nothing can delay it, else in a
        task (a fault or the latency knob sleeps)."""
        state = self.state
        if state.faults or state.error_rate > 0 or state.latency_ms > 0:
            # fault_strike may sleep: answer from a task. (Any fault, even another
            # provider's, takes this path; it only costs a task.)
            task = asyncio.get_running_loop().create_task(
                self._handle_delayed(connection, stream_id, request)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        given_id, device_token, summary = self._describe(request)
        answer = self._decide(request, given_id, device_token, summary)
        self._finish(connection, stream_id, request, answer, given_id, device_token, summary)

    async def _handle_delayed(self, connection: ApnsConnection, stream_id: int, request: ApnsRequest) -> None:
        given_id, device_token, summary = self._describe(request)
        fault = await fault_strike(
            self.state,
            "apns",
            received_at=request.received_at,
            key=given_id,
            to=device_token,
            summary=summary,
        )
        apns_id = _answer_id(given_id)
        if fault is not None and fault.status == 0:
            connection.respond(stream_id, ApnsAnswer(TIMEOUT_ANSWER_STATUS, apns_id, "IdleTimeout"))
            connection.flush()
            return
        if fault is not None:
            summary["fault"] = "global-error-rate" if fault.synthetic else "fault"
            answer = ApnsAnswer(
                fault.status, apns_id, FAULT_REASONS.get(fault.status, "BadRequest"), fault.retry_after
            )
        else:
            answer = self._decide(request, given_id, device_token, summary)
        self._finish(connection, stream_id, request, answer, given_id, device_token, summary)
        connection.flush()

    def cancel_pending(self) -> None:
        for task in self._tasks:
            task.cancel()

    def _describe(self, request: ApnsRequest) -> tuple[str | None, str | None, dict[str, Any]]:
        headers = request.headers
        match = PATH_PATTERN.match(request.path)
        summary: dict[str, Any] = {
            "topic": headers.get("apns-topic"),
            "push_type": headers.get("apns-push-type"),
            "priority": headers.get("apns-priority"),
            "expiration": headers.get("apns-expiration"),
            "collapse_id": headers.get("apns-collapse-id"),
            "size": request.size,
        }
        return headers.get("apns-id"), match.group(1) if match else None, summary

    def _decide(
        self, request: ApnsRequest, given_id: str | None, device_token: str | None, summary: dict[str, Any]
    ) -> ApnsAnswer:
        apns_id = _answer_id(given_id)
        try:
            self._check(request, device_token, summary)
        except ApnsError as error:
            return ApnsAnswer(error.status, apns_id, error.reason, 1 if error.status == 429 else None)
        if given_id is not None and apns_id != given_id:
            return ApnsAnswer(400, apns_id, "BadMessageId")
        return ApnsAnswer(200, apns_id)

    def _finish(
        self,
        connection: ApnsConnection,
        stream_id: int,
        request: ApnsRequest,
        answer: ApnsAnswer,
        given_id: str | None,
        device_token: str | None,
        summary: dict[str, Any],
    ) -> None:
        if answer.reason:
            summary["reason"] = answer.reason
        self.state.record(
            "apns",
            status=answer.status,
            key=given_id,
            to=device_token,
            summary=summary,
            received_at=request.received_at,
        )
        connection.respond(stream_id, answer)

    def _check(self, request: ApnsRequest, device_token: str | None, summary: dict[str, Any]) -> None:
        """Raise ApnsError with Apple's status and reason for the first problem found."""
        if device_token is None:
            raise ApnsError(404, "BadPath")
        if request.method != "POST":
            raise ApnsError(405, "MethodNotAllowed")
        headers = request.headers
        self._authenticate(headers.get("authorization"))
        if not headers.get("apns-topic"):
            raise ApnsError(400, "MissingTopic")
        push_type = headers.get("apns-push-type")
        if push_type is not None and push_type not in PUSH_TYPES:
            raise ApnsError(400, "InvalidPushType")
        if headers.get("apns-priority") not in (None, "1", "5", "10"):
            raise ApnsError(400, "BadPriority")
        expiration = headers.get("apns-expiration")
        if expiration is not None and not expiration.isdigit():
            raise ApnsError(400, "BadExpirationDate")
        collapse_id = headers.get("apns-collapse-id")
        if collapse_id is not None and len(collapse_id.encode()) > 64:
            raise ApnsError(400, "BadCollapseId")
        if not request.size:
            raise ApnsError(400, "PayloadEmpty")
        if request.size > MAX_PAYLOAD_BYTES:
            raise ApnsError(413, "PayloadTooLarge")
        try:
            payload = json.loads(request.body)
        except ValueError:
            raise ApnsError(400, "BadPayload")
        if not isinstance(payload, dict) or not isinstance(payload.get("aps"), dict):
            raise ApnsError(400, "BadPayload")
        summary["alert"] = payload["aps"].get("alert")
        if device_token.startswith("sandbox-"):
            self._magic_token(device_token)

    def _magic_token(self, device_token: str) -> None:
        if device_token.startswith("sandbox-unregistered-"):
            raise ApnsError(410, "Unregistered")
        if device_token.startswith("sandbox-baddevice-"):
            raise ApnsError(400, "BadDeviceToken")
        if device_token.startswith("sandbox-ratelimited-") and self.state.attempt("apns", device_token) < 1:
            raise ApnsError(429, "TooManyRequests")
        if device_token.startswith("sandbox-flaky-") and self.state.attempt("apns", device_token) < 2:
            raise ApnsError(503, "ServiceUnavailable")

    def _authenticate(self, authorization: str | None) -> None:
        if not authorization:
            raise ApnsError(403, "MissingProviderToken")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApnsError(403, "InvalidProviderToken")
        issued_at = self._verified_tokens.get(token)
        if issued_at is None:
            issued_at = self._verify(token)
            if len(self._verified_tokens) >= TOKEN_CACHE_SIZE:
                self._verified_tokens.clear()
            self._verified_tokens[token] = issued_at
        if time.time() - issued_at > TOKEN_MAX_AGE_SECONDS:
            raise ApnsError(403, "ExpiredProviderToken")

    def _verify(self, token: str) -> int:
        """Verify a provider token's signature, key id and issuer; return its ``iat``."""
        config = self.context.config
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") != "ES256" or header.get("kid") != config.apns_key_id:
                raise ApnsError(403, "InvalidProviderToken")
            claims = jwt.decode(
                token,
                self.context.apns_public_key,
                algorithms=["ES256"],
                options={"require": ["iss", "iat"], "verify_iat": False, "verify_exp": False},
            )
        except jwt.InvalidTokenError:
            raise ApnsError(403, "InvalidProviderToken")
        if claims.get("iss") != config.apns_team_id:
            raise ApnsError(403, "InvalidProviderToken")
        try:
            return int(claims["iat"])
        except (TypeError, ValueError):
            raise ApnsError(403, "InvalidProviderToken")


def _answer_id(given_id: str | None) -> str:
    """The apns-id to answer with: the client's when well formed, else a new UUID."""
    if given_id and APNS_ID_PATTERN.match(given_id):
        return given_id
    return str(uuid.uuid4())


_H2_CONFIG = h2.config.H2Configuration(
    client_side=False,
    header_encoding=None,
    # Header validation is ~10% of a request's CPU; the clients are real HTTP/2 libraries
    # and the sandbox checks what APNs checks (auth, topic, payload), not HTTP/2 framing.
    validate_inbound_headers=False,
    normalize_inbound_headers=False,
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
)


def _cache_huffman_decoding() -> None:
    """Memoise hpack's (pure Python) Huffman decoder in this process.

    HTTP/2 clients mark ``authorization`` never-indexed, so the same provider token (~250
    bytes, reused for up to an hour) arrives Huffman-coded on every request, and decoding it
    was the largest single cost per request. Decoding is a pure function of the bytes, so
    an LRU cache is exact.
    """
    import hpack.hpack

    original = hpack.hpack.decode_huffman
    if getattr(original, "sandbox_cached", False):
        return
    cached = functools.lru_cache(maxsize=1024)(original)

    def decode_huffman(huffman_string: bytes | bytearray | memoryview | None) -> bytes:
        if huffman_string is None:
            return original(huffman_string)
        return cached(bytes(huffman_string))

    decode_huffman.sandbox_cached = True  # type: ignore[attr-defined]
    hpack.hpack.decode_huffman = decode_huffman


class ApnsConnection(asyncio.Protocol):
    """One client connection: HTTP/2 frames in, answers out, one write per batch."""

    def __init__(self, service: ApnsService, connections: set[ApnsConnection]) -> None:
        self.service = service
        self.connections = connections
        self.h2 = h2.connection.H2Connection(config=_H2_CONFIG)
        self.transport: asyncio.Transport | None = None
        self.requests: dict[int, ApnsRequest] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transports do not subclass asyncio.Transport, hence no isinstance.
        self.transport = cast(asyncio.Transport, transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
            # APNs speaks HTTP/2 only.
            transport.close()
            return
        self.connections.add(self)
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 16_384,
            },
        )
        self.h2.initiate_connection()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        self.transport = None
        self.requests.clear()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as error:
            logger.warning("apns connection closed on an HTTP/2 protocol error: %r", error)
            self.flush()
            if self.transport is not None:
                self.transport.close()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self._request_started(event)
            elif isinstance(event, h2.events.DataReceived):
                self._data(event)
            elif isinstance(event, h2.events.StreamEnded):
                request = self.requests.pop(event.stream_id, None)
                if request is not None:
                    self.service.handle(self, event.stream_id, request)
            elif isinstance(event, h2.events.StreamReset):
                self.requests.pop(event.stream_id, None)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.flush()
                if self.transport is not None:
                    self.transport.close()
                return
        self.flush()

    def _request_started(self, event: h2.events.RequestReceived) -> None:
        # header_encoding=None: names and values arrive as bytes; HTTP/2 names are lowercase.
        headers = {_text(name): _text(value) for name, value in event.headers or ()}
        request = ApnsRequest(
            method=headers.get(":method", ""),
            path=headers.get(":path", ""),
            headers=headers,
            received_at=time.time(),
        )
        if event.stream_ended is not None:
            self.service.handle(self, event.stream_id, request)
        else:
            self.requests[event.stream_id] = request

    def _data(self, event: h2.events.DataReceived) -> None:
        request = self.requests.get(event.stream_id) if event.stream_id is not None else None
        data = event.data or b""
        if request is not None:
            request.size += len(data)
            if request.size <= MAX_KEPT_BODY_BYTES:
                request.chunks.append(data)
        if event.stream_id is not None and event.flow_controlled_length:
            try:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            except h2.exceptions.StreamClosedError:
                pass

    def respond(self, stream_id: int, answer: ApnsAnswer) -> None:
        """Queue the answer on ``stream_id`` (sent by the next ``flush``)."""
        if self.transport is None:
            return
        headers = [(b":status", str(answer.status).encode()), (b"apns-id", answer.apns_id.encode())]
        body = b""
        if answer.status != 200:
            reply: dict[str, Any] = {"reason": answer.reason}
            if answer.status == 410:
                reply["timestamp"] = int(time.time() * 1000)
            body = json.dumps(reply, separators=(",", ":")).encode()
            headers.append((b"content-type", b"application/json"))
        headers.append((b"content-length", str(len(body)).encode()))
        if answer.retry_after is not None:
            headers.append((b"retry-after", str(answer.retry_after).encode()))
        try:
            self.h2.send_headers(stream_id, headers, end_stream=not body)
            if body:
                self.h2.send_data(stream_id, body, end_stream=True)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError) as error:
            # The client reset the stream or went away while the answer was delayed.
            logger.debug("apns stream %s not answered: %r", stream_id, error)

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def goaway(self) -> None:
        if self.transport is None:
            return
        try:
            self.h2.close_connection()
        except h2.exceptions.ProtocolError:
            pass
        self.flush()
        self.transport.close()


class ApnsServer:
    """The listening APNs port and its open connections."""

    def __init__(
        self, server: asyncio.Server, service: ApnsService, connections: set[ApnsConnection]
    ) -> None:
        self.server = server
        self.service = service
        self.connections = connections

    async def close(self) -> None:
        """Stop listening, send GOAWAY on every connection, drop delayed answers."""
        self.server.close()
        for connection in list(self.connections):
            connection.goaway()
        self.service.cancel_pending()
        await self.server.wait_closed()


def apns_tls_context(*, certfile: str, keyfile: str) -> ssl.SSLContext:
    """TLS 1.2+ with ALPN h2 only, as HTTP/2 requires (RFC 7540 section 9.2)."""
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.minimum_version = ssl.TLSVersion.TLSv1_2
    tls.options |= ssl.OP_NO_COMPRESSION
    tls.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20")
    tls.load_cert_chain(certfile=certfile, keyfile=keyfile)
    tls.set_alpn_protocols(["h2"])
    return tls


async def apns_server_start(
    context: SandboxContext, sock: socket.socket, *, certfile: str, keyfile: str
) -> ApnsServer:
    """Serve APNs on the bound, listening ``sock`` on the running loop."""
    _cache_huffman_decoding()
    service = ApnsService(context)
    connections: set[ApnsConnection] = set()
    server = await asyncio.get_running_loop().create_server(
        lambda: ApnsConnection(service, connections),
        sock=sock,
        ssl=apns_tls_context(certfile=certfile, keyfile=keyfile),
    )
    return ApnsServer(server, service, connections)


def _text(value: bytes | str) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value
