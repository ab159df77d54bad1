"""What streaming tells people through the notification pipeline (so preferences, quiet
hours and channels apply): a creator they follow went live, once per live session."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from notifications.services.catalog import notification_type_ensure
from notifications.services.ingest import event_ingest
from streaming.selectors import followers_of

WENT_LIVE_TYPE = "stream.went_live"
# Followers per event: a creator with many followers makes several events, each with an
# idempotency key of its own, so a retry sends none of them twice.
FOLLOWERS_PER_EVENT = 5_000

_FIELDS: dict[str, Any] = {"name": "Went live", "category": "social", "channels": ["inapp", "push", "email"]}
_TEMPLATES: dict[str, dict[str, str]] = {
    "inapp": {
        "title": "{{ data.creator }} is live",
        "body": "{{ data.title }}",
        "url": "{{ data.url }}",
    },
    "push": {"title": "{{ data.creator }} is live", "body": "{{ data.title }}"},
    "email": {
        "subject": "{{ data.creator }} is live: {{ data.title }}",
        "html": "<p>{{ data.creator }} just went live: <strong>{{ data.title }}</strong></p>"
        '<p><a href="{{ data.url }}">Watch now</a></p>',
        "text": "{{ data.creator }} just went live: {{ data.title }}\n\nWatch: {{ data.url }}",
    },
}


def went_live_notify(*, stream: Any, session_id: int, hls: str) -> int:
    """Tell the followers of ``stream``'s owner that it is live; returns how many were told."""
    followers = followers_of(creator_id=stream.owner_id)
    if not followers:
        return 0
    notification_type_ensure(
        key=WENT_LIVE_TYPE, note="created for streaming", fields=_FIELDS, templates=_TEMPLATES
    )
    data = {
        "stream": stream.key,
        "title": stream.title,
        "creator": stream.owner.external_id,
        "url": f"{settings.PUBLIC_URL}/live/{stream.key}/",
        "hls": hls,
    }
    for start in range(0, len(followers), FOLLOWERS_PER_EVENT):
        event_ingest(
            api_key=None,
            type_key=WENT_LIVE_TYPE,
            recipients=followers[start : start + FOLLOWERS_PER_EVENT],
            data=data,
            idempotency_key=f"stream-live-{session_id}-{start // FOLLOWERS_PER_EVENT}",
        )
    return len(followers)
