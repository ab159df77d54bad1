"""Web pages (landing page, live inbox) and the SSE fallback of the inbox socket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

import redis
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse, StreamingHttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt, ensure_csrf_cookie
from django.views.decorators.http import require_GET

from notifications import selectors
from notifications.consumers import REGISTRATION_REFRESH_SECONDS, InboxSequencer
from notifications.services.connections import connection_register, connection_unregister
from notifications.services.inbox import inbox_item_payload
from notifications.services.realtime import NOTIFICATION_MESSAGE, UNREAD_MESSAGE, inbox_group
from notifications.services.redis_client import redis_async
from notifications.services.tokens import TokenInvalid, end_user_token_verify
from notifications.services.unsubscribe import unsubscribe_apply, unsubscribe_parse

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
    rows = selectors.inbox_items(recipient_id=recipient.id, limit=INBOX_PAGE_ITEMS)
    items = [inbox_item_payload(row) for row in rows]
    context = {
        "recipient": recipient,
        "items": items,
        "last_seq": max((item["seq"] for item in items), default=0),
        "unread_count": selectors.inbox_unread_count(recipient_id=recipient.id),
    }
    return render(request, "notifications/inbox.html", context)


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
    live ones, each once and in seq order, with keepalive comments while idle. Leaves the
    group and the connection registry when the client goes away (close or cancel)."""
    keepalive = settings.SSE_KEEPALIVE_SECONDS if keepalive_seconds is None else keepalive_seconds
    layer = get_channel_layer()
    assert layer is not None, "CHANNEL_LAYERS is not configured"
    client = redis_async()
    channel = await layer.new_channel()
    group = inbox_group(recipient_id)
    sequencer = InboxSequencer(recipient_id=recipient_id)
    receiving: asyncio.Future[dict[str, Any]] | None = None
    try:
        # Subscribe before reading the database so nothing committed meanwhile is missed;
        # the sequencer drops what the catch-up already sent.
        await layer.group_add(group, channel)
        await _sse_register(client, recipient_id=recipient_id, channel=channel)
        registered_at = time.monotonic()
        yield "retry: 3000\n\n"
        count = await sync_to_async(selectors.inbox_unread_count)(recipient_id=recipient_id)
        yield _sse_event("unread_count", {"type": "unread_count", "count": count})
        if after is not None:
            async for seq, item in sequencer.resume(after=after):
                yield _notification_event(seq, item)
        while True:
            if time.monotonic() - registered_at >= REGISTRATION_REFRESH_SECONDS:
                await _sse_register(client, recipient_id=recipient_id, channel=channel)
                registered_at = time.monotonic()
            # The pub/sub layer unsubscribes a channel whose receive() is cancelled, so a
            # timed-out wait keeps the same receive pending instead of cancelling it.
            if receiving is None:
                receiving = asyncio.ensure_future(layer.receive(channel))
            done, _ = await asyncio.wait({receiving}, timeout=keepalive)
            if not done:
                yield ": keepalive\n\n"
                continue
            message, receiving = receiving.result(), None
            if message.get("type") == NOTIFICATION_MESSAGE:
                async for seq, item in sequencer.live(seq=message["seq"], item=message["item"]):
                    yield _notification_event(seq, item)
            elif message.get("type") == UNREAD_MESSAGE:
                yield _sse_event("unread_count", {"type": "unread_count", "count": message["count"]})
    finally:
        await _release_channel(layer, channel, receiving)
        try:
            await layer.group_discard(group, channel)
            await connection_unregister(client, recipient_id=recipient_id, connection=channel)
        except redis.RedisError as exc:
            # The registration expires on its own within CONNECTION_TTL_SECONDS.
            log.warning("SSE connection not unregistered: %s", exc)


async def _release_channel(layer: Any, channel: str, receiving: asyncio.Future[Any] | None) -> None:
    """Free the channel's subscription and queue. The pub/sub layer does that only when a
    pending receive() on the channel is cancelled, so cancel one (starting it if needed)."""
    while receiving is None or receiving.done():
        receiving = asyncio.ensure_future(layer.receive(channel))
        # One turn of the loop lets it reach its wait (or take a message still queued).
        await asyncio.sleep(0)
    receiving.cancel()
    with contextlib.suppress(BaseException):
        await receiving


async def _sse_register(client: Any, *, recipient_id: int, channel: str) -> None:
    try:
        await connection_register(client, recipient_id=recipient_id, connection=channel)
    except redis.RedisError as exc:
        log.warning("SSE connection not registered: %s", exc)


# --- one-click unsubscribe (RFC 8058) ---------------------------------------------------


@csrf_exempt
def unsubscribe(request: HttpRequest, token: str) -> HttpResponse:
    """GET shows a confirmation form; POST unsubscribes. The POST needs no cookie and no
    CSRF token: mail providers send it as ``List-Unsubscribe=One-Click`` from their
    servers, and the signed token in the URL is the authority. Link scanners only GET."""
    scope = unsubscribe_parse(token)
    if scope is None:
        return render(request, "notifications/unsubscribe.html", {"invalid": True}, status=404)
    context = {"scope": scope, "category": scope.category, "token": token}
    if request.method == "GET":
        return render(request, "notifications/unsubscribe.html", context)
    if request.method != "POST":
        return HttpResponse(status=405, headers={"Allow": "GET, POST"})
    if not unsubscribe_apply(scope=scope):
        return render(request, "notifications/unsubscribe.html", {"invalid": True}, status=404)
    return render(request, "notifications/unsubscribe.html", {**context, "done": True})
