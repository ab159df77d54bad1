"""The question channel fallback asks presence: "is this user active in the app right now?"

Until the presence app answers it (online/idle/offline with heartbeats), a user with an
open inbox socket or SSE stream counts as active: they will see the in-app copy, so no SMS
needs to chase them. The presence issue replaces the body of this one function.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis

from notifications.services.connections import recipients_connected


def recipients_active_in_app(recipient_ids: Iterable[int]) -> set[int]:
    """The subset of ``recipient_ids`` currently active in the app. Fails towards "not
    active" (send the fallback) when Redis does not answer."""
    try:
        return recipients_connected(recipient_ids)
    except redis.RedisError:
        return set()
