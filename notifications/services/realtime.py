"""The one door for live frames: services send them only through here, and only after
commit.

Frames go out through the process hub of realtime/hub.py: one Redis publish carries the
frames of many recipients (a page of a broadcast is one publish, not one per recipient),
and each web process hands them straight to the live connections it holds. Frames are a
nudge, at-most-once: a failure to publish is logged, never raised, because the inbox rows
are already committed and clients resume by seq.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import redis

from realtime.hub import Entry, hub_publish

log = logging.getLogger(__name__)

# Message types; services/live_inbox.py turns each into frames.
# New items: one message for many recipients, the item they share and each one's id, seq
# and unread count (services/inbox.py _push_frames).
NOTIFICATIONS_MESSAGE = "inbox.notifications"
UNREAD_MESSAGE = "inbox.unread"
# An item changed (read, unread, archived, snoozed, woke) and the read-all of a user: other
# tabs and devices follow (services/inbox.py).
ITEM_MESSAGE = "inbox.item"
READ_ALL_MESSAGE = "inbox.read_all"
# A frame of another app for the user's inbox sockets, sent as it is (a match found:
# gaming/services/matchmaking.py).
APP_FRAME_MESSAGE = "app.frame"


def realtime_publish(messages: Sequence[tuple[int, dict[str, Any]]]) -> None:
    """Publish (recipient_id, message) pairs now."""
    realtime_publish_entries([([recipient_id], message) for recipient_id, message in messages])


def realtime_publish_entries(entries: Sequence[Entry]) -> None:
    """Publish (recipient ids, message) entries now: each message reaches the live
    connections of each of its recipients. At-most-once: a failure is logged, never raised."""
    if not entries:
        return
    try:
        hub_publish(entries)
    except (redis.RedisError, OSError) as exc:
        log.warning("realtime frames not published (clients will resume): %s", exc)


def app_frames_publish(entries: Sequence[tuple[Sequence[int], dict[str, Any]]]) -> None:
    """Frames of other apps (``{"type": ..., ...}``) for these recipients' inbox sockets,
    delivered as they are. Call after commit; at-most-once like every live frame."""
    realtime_publish_entries([(ids, {"type": APP_FRAME_MESSAGE, "frame": frame}) for ids, frame in entries])
