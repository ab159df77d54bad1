"""Cross-origin access for the embeddable inbox (docs/inbox-embed.md): another product's
frontend calls the end user's inbox API and SSE stream from its own origin with an
end-user token. Only those paths answer CORS, and never with credentials: the token in
the Authorization header (or ``?token=``) is the authority, not a cookie, so a page of a
foreign origin gains nothing it was not given. Websockets need no CORS (a token socket
is not checked against an Origin; cookie sockets are, in realtime/auth.py)."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase

EMBED_PATHS = ("/api/v1/inbox/", "/sse/inbox/")
ALLOWED_METHODS = "GET, POST, DELETE, OPTIONS"
ALLOWED_HEADERS = "Authorization, Content-Type, Accept, Last-Event-ID"
PREFLIGHT_MAX_AGE = "600"


class EmbedCorsMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        origin = request.headers.get("Origin")
        if origin is None or not request.path.startswith(EMBED_PATHS):
            return self.get_response(request)
        allowed = _allowed_origin(origin)
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            preflight = HttpResponse(status=204)
            if allowed:
                preflight["Access-Control-Allow-Methods"] = ALLOWED_METHODS
                preflight["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
                preflight["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
                _allow(preflight, allowed)
            return preflight
        response = self.get_response(request)
        if allowed:
            _allow(response, allowed)
        return response


def _allowed_origin(origin: str) -> str | None:
    origins = settings.INBOX_EMBED_ORIGINS
    if "*" in origins:
        return "*"
    return origin if origin in origins else None


def _allow(response: HttpResponseBase, origin: str) -> None:
    response["Access-Control-Allow-Origin"] = origin
    if origin != "*":
        response["Vary"] = "Origin"
