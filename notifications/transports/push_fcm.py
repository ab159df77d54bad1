"""Push to Android (and FCM-registered iOS) devices through the FCM HTTP v1 API with pyfcm.

pyfcm's own send path does three things a transport must not: it sleeps for the
Retry-After a 429/503 carries and calls again, its default adapter retries 502/503, and it
turns errors into generic exceptions that lose FCM's error code. ``_Fcm`` keeps pyfcm's
payload building, endpoint and OAuth plumbing and replaces the send with one POST whose
response this module classifies itself.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from typing import Any

import google.auth.exceptions
import google.auth.transport.requests
import requests
from django.conf import settings
from google.auth.credentials import TokenState
from pyfcm import FCMNotification
from requests.adapters import HTTPAdapter

from notifications.transports.base import Feedback, OutboundMessage, SendResult, TransportError
from notifications.transports.http_env import session_tune
from notifications.transports.retry_after import retry_after_parse

FCM_PAYLOAD_LIMIT_BYTES = 4096
COLLAPSE_ID_LIMIT_BYTES = 64
# A token that Google says is near its end is refreshed, but not more often than this: a
# short-lived token would otherwise be exchanged on every send.
TOKEN_STALE_REFRESH_SECONDS = 60.0


class _TimedRequest(google.auth.transport.requests.Request):
    """google-auth's requests transport with our timeout instead of its 120 s default
    (the token exchange never passes one)."""

    def __init__(self, session: requests.Session, timeout: float) -> None:
        super().__init__(session=session)
        self._timeout = timeout

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: Any = None,
        headers: Any = None,
        timeout: Any = None,
        **kwargs: Any,
    ) -> Any:
        return super().__call__(
            url, method=method, body=body, headers=headers, timeout=timeout or self._timeout, **kwargs
        )


class _Fcm(FCMNotification):
    """pyfcm without sleeping, without retries, with one shared access token.

    pyfcm refreshes the OAuth token per thread (each new thread session and every 30
    minutes); here one token serves all threads and is exchanged under a lock only when it
    is (nearly) expired or FCM said ACCESS_TOKEN_EXPIRED.
    """

    def __init__(
        self, *, service_account_file: str, project_id: str, endpoint_base: str, timeout: float
    ) -> None:
        adapter = HTTPAdapter(max_retries=0, pool_maxsize=32, pool_connections=4)
        super().__init__(service_account_file=service_account_file, project_id=project_id, adapter=adapter)
        # pyfcm reads the class attribute once and caches the endpoint; set it on the
        # instance before anything asks for the endpoint.
        self.FCM_END_POINT_BASE = endpoint_base
        self._token_lock = threading.Lock()
        self._token_refreshed_at = 0.0
        token_session = session_tune(requests.Session())
        token_session.mount("http://", adapter)
        token_session.mount("https://", adapter)
        self._token_request = _TimedRequest(token_session, timeout)
        # Loads the service-account file (no network) and fixes the endpoint now, while one
        # thread holds this object: pyfcm's lazy initialisation is not thread-safe.
        self._initialize_credentials()
        _ = self.fcm_end_point

    def _get_access_token(self) -> str:
        with self._token_lock:
            state = self.credentials.token_state
            stale_long_enough = (
                state == TokenState.STALE
                and time.monotonic() - self._token_refreshed_at > TOKEN_STALE_REFRESH_SECONDS
            )
            if state == TokenState.INVALID or stale_long_enough:
                # google-auth's real service-account flow: a signed JWT to the token_uri.
                self.credentials.refresh(self._token_request)
                self._token_refreshed_at = time.monotonic()
            return str(self.credentials.token)

    def token_invalidate(self, used_token: str) -> None:
        """Forget the access token after FCM refused ``used_token`` as expired (only if
        no other thread has replaced it meanwhile)."""
        with self._token_lock:
            if self.credentials.token == used_token:
                self.credentials.token = None

    def send_request(self, payload: Any = None, timeout: Any = None) -> requests.Response:
        """One POST (two when the access token had expired); never sleeps, never retries."""
        response, used_token = self._post(payload, timeout)
        if self._is_access_token_expired(response):
            self.token_invalidate(used_token)
            response, _ = self._post(payload, timeout)
        return response

    def _post(self, payload: Any, timeout: Any) -> tuple[requests.Response, str]:
        token = self._get_access_token()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        # requests_session is pyfcm's per-thread session; our adapter (shared pool) is
        # mounted on it. Its own token headers are overridden per request here.
        session = session_tune(self.requests_session)
        response = session.post(self.fcm_end_point, data=payload, timeout=timeout, headers=headers)
        return response, token

    def request_headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json", "Authorization": f"Bearer {self._get_access_token()}"}


def _data_payload(message: OutboundMessage) -> dict[str, str]:
    """FCM data values must be strings: non-strings are sent as JSON."""
    data = {
        str(key): value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        for key, value in message.data.items()
    }
    data["idempotency_key"] = message.idempotency_key
    return data


class FcmTransport:
    """Sends one push per call to an FCM registration token."""

    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        self.name = name
        self.channel = str(config.get("channel", "push"))
        self._service_account_file = str(config["service_account_file"])
        self._endpoint_base = str(config["endpoint_base"])
        self._timeout = float(settings.SEND_TIMEOUT_SECONDS)
        self._fcm: _Fcm | None = None
        self._lock = threading.Lock()

    def _client(self) -> _Fcm:
        # Built on first use, not in __init__: the service-account file may be written by
        # the sandbox after the settings are read, and a missing file must be a classified
        # failure, not a crash of whoever asked for the transport.
        with self._lock:
            if self._fcm is None:
                try:
                    with open(self._service_account_file, encoding="utf-8") as file:
                        project_id = str(json.load(file)["project_id"])
                    self._fcm = _Fcm(
                        service_account_file=self._service_account_file,
                        project_id=project_id,
                        endpoint_base=self._endpoint_base,
                        timeout=self._timeout,
                    )
                except Exception as error:
                    raise TransportError(
                        f"FCM service account file {self._service_account_file!r} unusable: {error!r}",
                        code="credentials",
                    ) from error
            return self._fcm

    def payload(self, message: OutboundMessage) -> bytes:
        """The request body for ``message``; raises a permanent TransportError when FCM
        would refuse it for its size."""
        android: dict[str, Any] | None = None
        apns: dict[str, Any] | None = None
        if message.collapse_key:
            if len(message.collapse_key.encode()) > COLLAPSE_ID_LIMIT_BYTES:
                raise TransportError(
                    f"collapse key too long ({len(message.collapse_key.encode())} bytes, limit {COLLAPSE_ID_LIMIT_BYTES})",
                    permanent=True,
                    code="collapse_key_too_long",
                )
            android = {"collapse_key": message.collapse_key, "priority": "high"}
            apns = {"headers": {"apns-collapse-id": message.collapse_key}}
        body: bytes = self._client().parse_payload(
            fcm_token=message.to,
            notification_title=message.content.get("title") or None,
            notification_body=message.content.get("body") or None,
            data_payload=_data_payload(message),
            android_config=android,
            apns_config=apns,
        )
        # FCM's limit is on the message object, not on the request envelope around it.
        size = len(
            json.dumps(json.loads(body)["message"], separators=(",", ":"), ensure_ascii=False).encode()
        )
        if size > FCM_PAYLOAD_LIMIT_BYTES:
            raise TransportError(
                f"payload too large ({size} bytes, limit {FCM_PAYLOAD_LIMIT_BYTES})",
                permanent=True,
                code="payload_too_large",
            )
        return body

    def send(self, message: OutboundMessage) -> SendResult:
        body = self.payload(message)
        fcm = self._client()
        try:
            response = fcm.send_request(body, self._timeout)
        except requests.Timeout as error:
            raise TransportError(f"FCM timed out: {error!r}", code="timeout") from error
        except requests.RequestException as error:
            raise TransportError(f"FCM unreachable: {error!r}", code="connection") from error
        except google.auth.exceptions.GoogleAuthError as error:
            # Token exchange failed (refused, unreachable): the account's problem.
            raise TransportError(
                f"FCM access token exchange failed: {error!r}", code="credentials"
            ) from error
        except Exception as error:
            raise TransportError(f"FCM send failed: {error!r}", code="unexpected") from error
        if response.status_code == 200:
            try:
                name = str(response.json().get("name", ""))
            except ValueError:
                name = ""
            return SendResult(provider=self.name, provider_message_id=name, detail={"status": 200})
        raise fcm_error(response.status_code, _json_or_none(response), response.headers.get("Retry-After"))


def _json_or_none(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def fcm_error(status: int, body: Any, retry_after_header: str | None) -> TransportError:
    """Classify an FCM v1 error answer (``{"error": {"code", "status", "message",
    "details": [{"errorCode"}...]}}``)."""
    error = body.get("error", {}) if isinstance(body, dict) else {}
    if not isinstance(error, dict):
        error = {}
    details = error.get("details") or []
    if not isinstance(details, list):
        details = []
    error_code = ""
    bad_fields: list[str] = []
    for item in details:
        if not isinstance(item, dict):
            continue
        if item.get("errorCode") and not error_code:
            error_code = str(item["errorCode"])
        for violation in item.get("fieldViolations") or []:
            if isinstance(violation, dict) and violation.get("field"):
                bad_fields.append(str(violation["field"]))
    error_code = error_code or str(error.get("status") or "")
    reason = f"FCM answered {status} {error_code}: {error.get('message', '')}".rstrip(": ")
    detail = {"http_status": status, "error_code": error_code}
    code = error_code or str(status)
    retry_after = retry_after_parse(retry_after_header)
    if status == 404 or error_code in ("UNREGISTERED", "NOT_FOUND"):
        return TransportError(
            reason, permanent=True, code=code, feedback=Feedback.UNREGISTERED, detail=detail
        )
    if status == 429 or error_code in ("QUOTA_EXCEEDED", "RESOURCE_EXHAUSTED"):
        return TransportError(reason, rate_limited=True, retry_after=retry_after, code=code, detail=detail)
    if status >= 500 or error_code in ("UNAVAILABLE", "INTERNAL"):
        return TransportError(reason, retry_after=retry_after, code=code, detail=detail)
    if status == 401 or error_code == "THIRD_PARTY_AUTH_ERROR":
        # Our credentials (or the APNs/web-push ones registered in Firebase): the breaker's
        # problem, not this token's.
        return TransportError(reason, retry_after=retry_after, code=code, detail=detail)
    if error_code == "SENDER_ID_MISMATCH":
        return TransportError(reason, permanent=True, code=code, feedback=Feedback.BAD_TOKEN, detail=detail)
    if status == 400 or error_code == "INVALID_ARGUMENT":
        # INVALID_ARGUMENT covers a malformed token and a malformed message alike; only
        # blame the token when FCM does not point at another field.
        if any(field != "message.token" for field in bad_fields):
            return TransportError(reason, permanent=True, code=code, detail={**detail, "fields": bad_fields})
        return TransportError(reason, permanent=True, code=code, feedback=Feedback.BAD_TOKEN, detail=detail)
    if status == 403:
        # PERMISSION_DENIED: the service account may not send for this project.
        return TransportError(reason, retry_after=retry_after, code=code, detail=detail)
    return TransportError(reason, permanent=True, code=code, detail=detail)
