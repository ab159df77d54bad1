"""End-user tokens: short-lived, signed with SECRET_KEY, naming one recipient."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.core import signing
from django.utils import timezone

_SALT = "notifications.end-user-token.v1"


class TokenInvalid(Exception):
    """The token is forged, malformed or expired; the message says which."""


def end_user_token_issue(*, recipient_id: int, ttl_seconds: int | None = None) -> tuple[str, datetime]:
    """A token for ``recipient_id`` and the moment it expires."""
    ttl = ttl_seconds or settings.END_USER_TOKEN_TTL_SECONDS
    expires_at = timezone.now() + timedelta(seconds=ttl)
    token = signing.dumps({"r": recipient_id, "e": int(expires_at.timestamp())}, salt=_SALT, compress=True)
    return token, expires_at


def end_user_token_verify(*, token: str) -> int:
    """The recipient id the token names; raises TokenInvalid."""
    try:
        payload = signing.loads(token, salt=_SALT)
    except signing.BadSignature as exc:
        raise TokenInvalid("token signature is invalid") from exc
    if (
        not isinstance(payload, dict)
        or not isinstance(payload.get("r"), int)
        or not isinstance(payload.get("e"), int)
    ):
        raise TokenInvalid("token payload is malformed")
    if payload["e"] < timezone.now().timestamp():
        raise TokenInvalid("token has expired")
    return int(payload["r"])
