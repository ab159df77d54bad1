"""Google's OAuth token endpoint (JWT-bearer grant) and FCM HTTP v1 ``messages:send``.

google-auth's service-account credentials sign an RS256 assertion with the key of
``fcm-service-account.json`` and POST it to the file's ``token_uri`` (this server); the
access token it receives authorises FCM calls. Error bodies follow Google's shapes, so
pyfcm and the platform classify them as they would the real ones.
"""

from __future__ import annotations

import itertools
import json
import secrets
import time
from typing import Any

import jwt
from aiohttp import web

from sandbox.context import ACCESS_TOKEN_SECONDS, SandboxContext
from sandbox.faults import http_fault_gate

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
FCM_MAX_MESSAGE_BYTES = 4096
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"

GRPC_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
FCM_ERROR_CODES = {
    400: "INVALID_ARGUMENT",
    403: "SENDER_ID_MISMATCH",
    404: "UNREGISTERED",
    429: "QUOTA_EXCEEDED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
FCM_DEFAULT_MESSAGES = {
    400: "Request contains an invalid argument.",
    401: "Request had invalid authentication credentials.",
    403: "The caller does not have permission",
    404: "Requested entity was not found.",
    429: "Quota exceeded for quota metric 'Send requests'.",
    500: "Internal error encountered.",
    503: "The service is currently unavailable.",
}


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def fcm_error(
    status: int,
    message: str | None = None,
    *,
    error_code: str | None = None,
    details: list[dict[str, Any]] | None = None,
    retry_after: int | None = None,
) -> web.Response:
    """An FCM v1 error response: ``{"error": {"code", "message", "status", "details"}}``."""
    if details is None:
        code = error_code or FCM_ERROR_CODES.get(status)
        details = [{"@type": FCM_ERROR_TYPE, "errorCode": code}] if code else []
    error: dict[str, Any] = {
        "code": status,
        "message": message or FCM_DEFAULT_MESSAGES.get(status, "Unknown error."),
        "status": GRPC_STATUS.get(status, "UNKNOWN"),
    }
    if details:
        error["details"] = details
    response = web.json_response({"error": error}, status=status, dumps=_dumps)
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def oauth_error(status: int, error: str = "internal_failure", description: str = "") -> web.Response:
    body = {"error": error, "error_description": description or f"sandbox fault {status}"}
    return web.json_response(body, status=status, dumps=_dumps)


class GoogleApi:
    """``POST /oauth2/token`` and ``POST /fcm/v1/projects/{project}/messages:send``."""

    def __init__(self, context: SandboxContext) -> None:
        self.context = context
        self.state = context.state
        self._message_ids = itertools.count(1)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/oauth2/token", self.token),
            web.post("/fcm/v1/projects/{project}/messages:send", self.send),
        ]

    # -- OAuth --

    async def token(self, request: web.Request) -> web.Response:
        received_at = time.time()
        form = await request.post()
        grant_type = str(form.get("grant_type", ""))
        assertion = str(form.get("assertion", ""))
        summary: dict[str, Any] = {"grant_type": grant_type}
        blocked = await http_fault_gate(
            self.state,
            "oauth",
            received_at=received_at,
            key=None,
            to=None,
            summary=summary,
            error_response=oauth_error,
        )
        if blocked is not None:
            return blocked

        if grant_type != JWT_BEARER_GRANT:
            response = oauth_error(
                400, "unsupported_grant_type", f"Invalid grant_type: {grant_type or '(missing)'}"
            )
            self.state.record("oauth", status=400, summary=summary, received_at=received_at)
            return response
        context = self.context
        audiences = [
            # google-auth always signs for Google's own token endpoint, whatever token_uri
            # the file names (google/oauth2/service_account.py), and Google accepts that.
            "https://oauth2.googleapis.com/token",
            context.fcm_token_uri,
            f"{request.scheme}://{request.host}/oauth2/token",
            f"{context.http_base_url}/oauth2/token",
        ]
        try:
            claims = jwt.decode(
                assertion,
                context.fcm_public_key,
                algorithms=["RS256"],
                audience=audiences,
                issuer=context.fcm_client_email,
                options={"require": ["iss", "aud", "exp", "iat"]},
            )
        except jwt.InvalidTokenError as error:
            self.state.record(
                "oauth", status=400, summary={**summary, "error": str(error)}, received_at=received_at
            )
            return oauth_error(400, "invalid_grant", f"Invalid JWT: {error}")
        access_token = f"sandbox-{secrets.token_urlsafe(24)}"
        context.issued_tokens[access_token] = time.time() + ACCESS_TOKEN_SECONDS
        self.state.record(
            "oauth",
            status=200,
            to=str(claims.get("iss")),
            summary={**summary, "scope": claims.get("scope")},
            received_at=received_at,
        )
        return web.json_response(
            {"access_token": access_token, "expires_in": ACCESS_TOKEN_SECONDS, "token_type": "Bearer"},
            dumps=_dumps,
        )

    # -- FCM --

    async def send(self, request: web.Request) -> web.Response:
        received_at = time.time()
        project = request.match_info["project"]
        body = await request.read()
        message: Any = None
        validate_only = False
        try:
            payload = json.loads(body)
            message = payload.get("message") if isinstance(payload, dict) else None
            validate_only = bool(payload.get("validate_only", False)) if isinstance(payload, dict) else False
        except ValueError:
            payload = None
        if not isinstance(message, dict):
            message = {}
        data = message.get("data")
        notification = message.get("notification")
        raw_key = data.get("idempotency_key") if isinstance(data, dict) else None
        key = str(raw_key) if raw_key is not None else None
        target = message.get("token") or message.get("topic") or message.get("condition")
        to = str(target) if target is not None else None
        summary: dict[str, Any] = {"project": project}
        if isinstance(notification, dict):
            summary["title"] = notification.get("title")
            summary["body"] = notification.get("body")
        if isinstance(data, dict):
            summary["data"] = data
        if validate_only:
            summary["validate_only"] = True

        blocked = await http_fault_gate(
            self.state,
            "fcm",
            received_at=received_at,
            key=key,
            to=to,
            summary=summary,
            error_response=fcm_error,
        )
        if blocked is not None:
            return blocked

        response = self._send_checked(
            request, project=project, payload=payload, message=message, body_size=len(body)
        )
        status = response.status
        self.state.record(
            "fcm",
            status=status,
            # A dry run delivers nothing: its key must not count as delivered.
            key=None if validate_only else key,
            to=to,
            summary=summary,
            received_at=received_at,
        )
        return response

    def _send_checked(
        self,
        request: web.Request,
        *,
        project: str,
        payload: Any,
        message: dict[str, Any],
        body_size: int,
    ) -> web.Response:
        """Authorise, validate and apply the magic tokens; the response to answer with."""
        authorization = request.headers.get("Authorization", "")
        scheme, _, access_token = authorization.partition(" ")
        valid = self.context.access_token_valid(access_token) if scheme.lower() == "bearer" else None
        if valid is None:
            return fcm_error(
                401,
                "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                "login cookie or other valid authentication credential.",
                details=[],
            )
        if valid is False:
            return fcm_error(
                401,
                "Request had invalid authentication credentials.",
                details=[
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "ACCESS_TOKEN_EXPIRED",
                        "domain": "googleapis.com",
                    }
                ],
            )
        if project != self.context.fcm_project_id:
            return fcm_error(
                403,
                f"Permission 'cloudmessaging.messages.create' denied on resource "
                f"'//cloudresourcemanager.googleapis.com/projects/{project}' (or it may not exist).",
                details=[],
            )
        if not isinstance(payload, dict) or not isinstance(payload.get("message"), dict):
            return fcm_error(400, "Invalid JSON payload received. Expected a 'message' object.")
        targets = [name for name in ("token", "topic", "condition") if message.get(name)]
        if len(targets) != 1:
            return fcm_error(400, "Exactly one of token, topic or condition must be set.")
        data = message.get("data")
        if data is not None and (
            not isinstance(data, dict) or not all(isinstance(value, str) for value in data.values())
        ):
            return fcm_error(400, "Invalid value at 'message.data': every value must be a string.")
        if body_size > FCM_MAX_MESSAGE_BYTES:
            # The raw body is a bound on the message's size; measure exactly only near it.
            size = len(json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode())
            if size > FCM_MAX_MESSAGE_BYTES:
                return fcm_error(
                    400, f"Request contains an invalid argument: message too big ({size} bytes)."
                )

        token = str(message.get("token") or "")
        if token.startswith("sandbox-"):
            magic = self._magic_token_response(token)
            if magic is not None:
                return magic
        if payload.get("validate_only"):
            return web.json_response({"name": f"projects/{project}/messages/fake_message_id"}, dumps=_dumps)
        message_id = f"0:{time.time_ns() // 1000}%{next(self._message_ids):016x}"
        return web.json_response({"name": f"projects/{project}/messages/{message_id}"}, dumps=_dumps)

    def _magic_token_response(self, token: str) -> web.Response | None:
        if token.startswith("sandbox-unregistered-"):
            return fcm_error(404, "Requested entity was not found.", error_code="UNREGISTERED")
        if token.startswith("sandbox-invalid-"):
            return fcm_error(
                400,
                "The registration token is not a valid FCM registration token",
                error_code="INVALID_ARGUMENT",
            )
        if token.startswith("sandbox-ratelimited-") and self.state.attempt("fcm", token) < 1:
            return fcm_error(
                429,
                "Quota exceeded for quota metric 'Send requests'.",
                error_code="QUOTA_EXCEEDED",
                retry_after=1,
            )
        if token.startswith("sandbox-flaky-") and self.state.attempt("fcm", token) < 2:
            return fcm_error(503, "The service is currently unavailable.", error_code="UNAVAILABLE")
        return None
