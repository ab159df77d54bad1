"""Who opens a socket: an end-user token in the query string, or a logged-in session whose
page is one of ours (the Origin header checked against SOCKET_ALLOWED_ORIGINS)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from django.conf import settings

from realtime.tokens import TokenInvalid, end_user_token_verify

# Close codes (4000-4999 are the application's own).
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN_ORIGIN = 4403
CLOSE_TOO_SLOW = 4008

# Maps a logged-in Django user to the end user (recipient id) they are, or None: each app
# knows its own mapping (realtime/ knows ids, not models).
UserToRecipient = Callable[[Any], Awaitable[int | None]]


def query_token(scope: dict[str, Any]) -> str | None:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
    return values[0] if values else None


def origin(scope: dict[str, Any]) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"origin":
            return value.decode("latin-1")
    return None


async def socket_authenticate(
    scope: dict[str, Any], *, user_to_recipient: UserToRecipient
) -> tuple[int | None, int]:
    """(recipient id, 0) when the socket may open, else (None, the close code)."""
    token = query_token(scope)
    if token is not None:
        # A token is not an ambient credential, so a token socket may come from any origin.
        try:
            return end_user_token_verify(token=token), 0
        except TokenInvalid:
            return None, CLOSE_UNAUTHORIZED
    user = scope.get("user")
    if user is None or not user.is_authenticated:
        return None, CLOSE_UNAUTHORIZED
    # The cookie is sent by any page the browser visits, so only our own pages may use it
    # (cross-site websocket hijacking). A missing Origin is refused too.
    if origin(scope) not in settings.SOCKET_ALLOWED_ORIGINS:
        return None, CLOSE_FORBIDDEN_ORIGIN
    recipient_id = await user_to_recipient(user)
    if recipient_id is None:
        return None, CLOSE_UNAUTHORIZED
    return recipient_id, 0
