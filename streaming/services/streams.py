"""Streams and their time on air: creating a stream, rotating its secret key, the checks
behind nginx-rtmp's callbacks (streaming/services/ingest.py), going live and offline.

A stream is ``live`` once its ladder has playlists to play (the ingest supervisor says so),
not when the publisher merely connected; it goes ``offline`` when the publisher has been
gone longer than ``STREAMING_GRACE_SECONDS``. A publisher back within that time continues
the open ``LiveSession``: its followers were told once and are not told again.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from notifications.models import Recipient
from realtime.redis_client import redis_sync
from streaming.models import LiveSession, Stream, StreamStatus, new_stream_key
from streaming.services.notify import went_live_notify

# The ingest supervisor drops the publisher of a stream named on this channel.
DROP_CHANNEL = "streaming:drop"
KEY_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{1,62}[a-z0-9])$")


class StreamRefused(Exception):
    """A request about a stream that cannot be done; ``field`` names what was wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def rtmp_ingest_url() -> str:
    """Where publishers send (OBS's "Server"; the stream key goes in "Stream Key")."""
    if settings.STREAMING_PUBLIC_RTMP_URL:
        return settings.STREAMING_PUBLIC_RTMP_URL.rstrip("/")
    host = urlsplit(settings.PUBLIC_URL).hostname or settings.STREAMING_BIND
    return f"rtmp://{host}:{settings.STREAMING_RTMP_PORT}/live"


def hls_url(stream: Stream) -> str:
    """The stream's HLS master playlist (the ladder)."""
    if settings.STREAMING_PUBLIC_HLS_URL:
        base = settings.STREAMING_PUBLIC_HLS_URL.rstrip("/")
    else:
        host = urlsplit(settings.PUBLIC_URL).hostname or settings.STREAMING_BIND
        base = f"http://{host}:{settings.STREAMING_HTTP_PORT}/hls"
    return f"{base}/{stream.key}/master.m3u8"


def stream_create(*, key: str, title: str, owner: str, record: bool = False) -> Stream:
    """A new stream of ``owner`` (a recipient's external id, made if new); StreamRefused
    naming the field otherwise."""
    if not isinstance(key, str) or not KEY_PATTERN.match(key):
        raise StreamRefused(
            "key", "must be 3-64 lowercase letters, digits and dashes, not starting or ending with a dash"
        )
    title = title.strip() if isinstance(title, str) else ""
    if not title:
        raise StreamRefused("title", "must not be empty")
    if len(title) > 200:
        raise StreamRefused("title", "must be at most 200 characters")
    if not isinstance(owner, str) or not owner.strip() or len(owner) > 255:
        raise StreamRefused("owner", "must be a recipient's external id")
    try:
        with transaction.atomic():
            recipient, _ = Recipient.objects.get_or_create(external_id=owner.strip())
            return Stream.objects.create(key=key, title=title, owner=recipient, record=record)
    except IntegrityError:
        raise StreamRefused("key", f"{key!r} is taken") from None


def stream_key_rotate(stream: Stream) -> str:
    """A new secret key for ``stream``; the old one publishes no more (a publisher on it now
    is cut off by ``stream_cut_off``)."""
    stream.stream_key = new_stream_key()
    stream.key_rotated_at = timezone.now()
    stream.save(update_fields=["stream_key", "key_rotated_at"])
    return stream.stream_key


def stream_cut_off(stream: Stream) -> str:
    """Take ``stream`` off the air from the admin: its key is rotated (the publisher cannot
    come back with it) and the ingest drops the publisher now; the stream goes offline at
    once, with no grace period. Returns the new key."""
    new_key = stream_key_rotate(stream)
    redis_sync().publish(DROP_CHANNEL, json.dumps({"stream": str(stream.id)}))
    return new_key


@dataclass(frozen=True)
class Publish:
    stream_id: str
    key: str
    record: bool
    session_id: int
    continued: bool  # the publisher came back within the grace period


def publish_authorize(stream_key: str) -> Publish | None:
    """nginx-rtmp's ``on_publish``: the stream this secret key publishes to, with its live
    session opened (or continued, when one is still open: a publisher back within the
    grace period), or None when no stream has that key."""
    if not isinstance(stream_key, str) or not stream_key or len(stream_key) > 64:
        return None
    with transaction.atomic():
        stream = Stream.objects.select_for_update().filter(stream_key=stream_key).first()
        if stream is None:
            return None
        session = LiveSession.objects.filter(stream=stream, ended_at__isnull=True).first()
        continued = session is not None
        if session is None:
            session = LiveSession.objects.create(stream=stream)
        else:
            session.publishes += 1
            session.save(update_fields=["publishes"])
    return Publish(str(stream.id), stream.key, stream.record, session.id, continued)


def stream_went_live(*, stream_id: Any, session_id: int) -> bool:
    """The ladder has playlists: the stream is ``live``. Its followers are told once per
    session (``notified_at`` set by whoever gets there first); True when this call told them."""
    with transaction.atomic():
        Stream.objects.filter(pk=stream_id).update(status=StreamStatus.LIVE)
        first = LiveSession.objects.filter(pk=session_id, notified_at__isnull=True).update(
            notified_at=timezone.now()
        )
        if first:
            # In the same transaction: if the events cannot be stored, the session is not
            # marked as told either, and the ingest's next try tells them.
            stream = Stream.objects.select_related("owner").get(pk=stream_id)
            went_live_notify(stream=stream, session_id=session_id, hls=hls_url(stream))
    return bool(first)


def stream_went_offline(*, stream_id: Any, reason: str, recording: str = "") -> None:
    """The publisher has been gone past the grace period (or was cut off): ``offline``,
    and its open session ends."""
    with transaction.atomic():
        Stream.objects.filter(pk=stream_id).update(status=StreamStatus.OFFLINE)
        LiveSession.objects.filter(stream_id=stream_id, ended_at__isnull=True).update(
            ended_at=timezone.now(), end_reason=reason[:200], recording=recording[:300]
        )


def streams_offline_all(reason: str) -> int:
    """An ingest supervisor starting holds no publisher: whatever was left live or open by
    one that stopped ends now. Returns how many streams were live."""
    with transaction.atomic():
        live = Stream.objects.filter(status=StreamStatus.LIVE).update(status=StreamStatus.OFFLINE)
        LiveSession.objects.filter(ended_at__isnull=True).update(
            ended_at=timezone.now(), end_reason=reason[:200]
        )
    return live
