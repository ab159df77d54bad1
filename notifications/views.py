"""Web pages (landing page, live inbox) and the SSE fallback of the inbox socket."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse, StreamingHttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt, ensure_csrf_cookie
from django.views.decorators.http import require_GET

from notifications import selectors
from notifications.services.inbox import inbox_item_payload
from notifications.services.live_inbox import LiveInbox
from notifications.services.preference_center import unsubscribe_landing
from notifications.services.unsubscribe import unsubscribe_apply, unsubscribe_parse
from realtime.connection import ConnectionTooSlow
from realtime.tokens import TokenInvalid, end_user_token_issue, end_user_token_verify

log = logging.getLogger(__name__)

INBOX_PAGE_ITEMS = 50


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    return render(request, "notifications/home.html")


@require_GET
@login_required
@ensure_csrf_cookie
def inbox_page(request: HttpRequest) -> HttpResponse:
    """The live inbox of the logged-in user; 404 when the account has no recipient."""
    recipient = selectors.recipient_for_user(user=request.user)
    if recipient is None:
        return render(request, "notifications/no_inbox.html", status=404)
    # The resume point, read first: every item up to it was committed before the page is
    # read, so it is in the page or listed below it; anything later the socket resumes.
    last_seq = selectors.inbox_last_seq(recipient_id=recipient.id)
    rows = selectors.inbox_items(recipient_id=recipient.id, limit=INBOX_PAGE_ITEMS)
    items = [inbox_item_payload(row) for row in rows]
    context = {
        "recipient": recipient,
        "items": items,
        "page_size": INBOX_PAGE_ITEMS,
        "last_seq": last_seq,
        "unread_count": selectors.inbox_unread_count(recipient_id=recipient.id),
    }
    return render(request, "notifications/inbox.html", context)


@require_GET
def inbox_token(request: HttpRequest) -> HttpResponse:
    """``/inbox/token/``: an end-user token for the logged-in user's own inbox, for the
    page's inbox client (static/notifications/inbox-client.js), which speaks to the
    socket, the SSE stream and the API with a token as any embedding frontend does.
    JSON errors rather than a login redirect: a script asks."""
    if not request.user.is_authenticated:
        return _errors(401, "session", "Log in first.")
    recipient = selectors.recipient_for_user(user=request.user)
    if recipient is None:
        return _errors(404, "recipient", "This account has no inbox.")
    token, expires_at = end_user_token_issue(recipient_id=recipient.id)
    response = JsonResponse({"token": token, "expires_at": expires_at.isoformat()})
    response["Cache-Control"] = "no-store"
    return response


# --- SSE ------------------------------------------------------------------------------


def _errors(status: int, field: str, message: str) -> JsonResponse:
    return JsonResponse({"errors": {field: [message]}}, status=status)


def _sse_event(event: str, data: dict[str, Any], event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _notification_event(seq: int, item: dict[str, Any]) -> str:
    return _sse_event("notification", {"type": "notification", "seq": seq, "item": item}, event_id=seq)


def _parse_seq(raw: str | None) -> int | None:
    """The seq in a Last-Event-ID header or ``?after=``; ValueError if it is not one."""
    if raw is None or raw.strip() == "":
        return None
    value = int(raw.strip())
    if value < 0:
        raise ValueError(raw)
    return value


async def sse_inbox(request: HttpRequest) -> HttpResponseBase:
    """``/sse/inbox/?token=``: the inbox socket's frames as server-sent events.

    ``id:`` is the item's seq, so a browser's EventSource resumes by itself through
    ``Last-Event-ID`` (or ``?after=``) after a reconnect.
    """
    if request.method != "GET":
        return _errors(405, "method", f"Use GET, not {request.method}.")
    token = request.GET.get("token", "")
    if not token:
        return _errors(401, "token", "A token is required (?token=...).")
    try:
        recipient_id = end_user_token_verify(token=token)
    except TokenInvalid as exc:
        return _errors(401, "token", f"The token is not valid: {exc}.")
    header = request.headers.get("Last-Event-ID")
    source, raw = ("Last-Event-ID", header) if header else ("after", request.GET.get("after"))
    try:
        after = _parse_seq(raw)
    except ValueError:
        return _errors(400, source, f"Expected a non-negative integer, got {raw!r}.")
    response = StreamingHttpResponse(
        sse_inbox_stream(recipient_id=recipient_id, after=after), content_type="text/event-stream"
    )
    response["Cache-Control"] = "no-cache"
    # Tells nginx-style proxies to pass each event on at once instead of buffering.
    response["X-Accel-Buffering"] = "no"
    return response


async def sse_inbox_stream(
    *, recipient_id: int, after: int | None, keepalive_seconds: float | None = None
) -> AsyncGenerator[str, None]:
    """The event stream of one SSE client: stored items after ``after`` (when given), then
    live ones, each once and in seq order, with keepalive comments while idle. A client
    that falls SOCKET_SEND_QUEUE_LIMIT frames behind is cut off (the stream ends; its
    EventSource reconnects with Last-Event-ID and resumes). Leaves the group and the
    connection registry when the client goes away (close or cancel)."""
    keepalive = settings.SSE_KEEPALIVE_SECONDS if keepalive_seconds is None else keepalive_seconds
    layer = get_channel_layer()
    assert layer is not None, "CHANNEL_LAYERS is not configured"
    live = LiveInbox(recipient_id=recipient_id, layer=layer, channel=await layer.new_channel())
    try:
        await live.open()
        live.listen()
        yield "retry: 3000\n\n"
        if after is not None:
            live.resume(after=after)
        try:
            async for frame in live.frames(idle_seconds=keepalive):
                if frame is None:
                    yield ": keepalive\n\n"
                elif frame["type"] == "notification":
                    yield _notification_event(frame["seq"], frame["item"])
                else:
                    yield _sse_event(frame["type"], frame)
        except ConnectionTooSlow:
            log.info("SSE stream of recipient %s cut off: the client fell behind", recipient_id)
    finally:
        await live.close()


# --- one-click unsubscribe (RFC 8058) ---------------------------------------------------


@csrf_exempt
def unsubscribe(request: HttpRequest, token: str) -> HttpResponse:
    """GET shows a confirmation form; POST unsubscribes and shows what was turned off, with
    an Undo and a link to the preference center bound to the same token. The POST needs no
    cookie and no CSRF token: mail providers send it as ``List-Unsubscribe=One-Click`` from
    their servers, and the signed token in the URL is the authority. Link scanners only GET."""
    scope = unsubscribe_parse(token)
    if scope is None:
        return render(request, "notifications/unsubscribe.html", {"invalid": True}, status=404)
    if request.method not in ("GET", "POST"):
        return HttpResponse(status=405, headers={"Allow": "GET, POST"})
    if request.method == "POST" and not unsubscribe_apply(scope=scope):
        return render(request, "notifications/unsubscribe.html", {"invalid": True}, status=404)
    landing = unsubscribe_landing(token=token)
    if landing is None:
        return render(request, "notifications/unsubscribe.html", {"invalid": True}, status=404)
    context = {
        "scope": scope,
        "landing": landing,
        "category": landing.category_label,
        "token": token,
        "done": request.method == "POST",
    }
    return render(request, "notifications/unsubscribe.html", context)
