"""The viewer's page of a stream, ``/live/{key}/``: the player (hls.js on the stream's HLS
ladder), its status and viewer count, the chat beside it, and a Follow button.

Anyone may watch: the stream's HLS is public and its chat socket lets a visitor without
credentials in as a reader (streaming/consumers.py), so a link to a stream plays for
whoever opens it, as viewers expect of a live stream. Chatting and following need the
viewer's identity: a signed-in user whose account is linked to a recipient gets an
end-user token from ``/inbox/token/`` (as the other pages' scripts do) and posts, follows
and reads the status API with it; anyone else is offered the login page, which comes back
here. The page itself holds what the server knows when it is read; everything live comes
from streaming/static/streaming/live.js.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_GET

from notifications.models import Recipient
from notifications.selectors import recipient_for_user
from streaming.models import Stream, StreamStatus
from streaming.selectors import follows, stream_by_key
from streaming.services.streams import hls_url


def _follows(*, recipient: Recipient | None, stream: Stream) -> bool:
    """Whether ``recipient`` follows the stream's owner (False for a visitor)."""
    if recipient is None:
        return False
    return follows(follower_id=recipient.id, creator_id=stream.owner_id)


@require_GET
def live_page(request: HttpRequest, key: str) -> HttpResponse:
    """The page of the stream ``key``, for anyone; a key that names no stream gets a 404
    page that says so."""
    stream = stream_by_key(key)
    if stream is None:
        return render(request, "streaming/no_stream.html", {"key": key}, status=404)
    recipient = recipient_for_user(user=request.user)
    is_owner = recipient is not None and recipient.id == stream.owner_id
    page = reverse("live-page", kwargs={"key": stream.key})
    config: dict[str, Any] = {
        "key": stream.key,
        "status": stream.status,
        "hls_url": hls_url(stream),
        "api_url": reverse("stream", kwargs={"stream": stream.key}),
        "follow_url": reverse("stream-follow", kwargs={"stream": stream.key}),
        "chat_socket": f"/ws/streams/{stream.key}/chat/",
        "token_url": reverse("inbox-token") if recipient is not None else None,
        "me": recipient.external_id if recipient is not None else None,
        "following": _follows(recipient=recipient, stream=stream),
    }
    context = {
        "stream": stream,
        "owner_name": stream.owner.name or stream.owner.external_id,
        "live": stream.status == StreamStatus.LIVE,
        "config": config,
        "signed_in": request.user.is_authenticated,
        "can_chat": recipient is not None,
        "is_owner": is_owner,
        "login_url": f"{reverse('login')}?{urlencode({'next': page})}",
    }
    return render(request, "streaming/live.html", context)
