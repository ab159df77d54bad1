"""The question channel fallback asks presence: "is this user active in the app right now?"

Yes when presence says online (presence/services.py): a live connection whose client has
not reported itself idle. Such a user sees the in-app copy, so no SMS needs to chase them;
a user whose every tab is idle, or who has none, gets the fallback.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis

from presence.services import recipients_online


def recipients_active_in_app(recipient_ids: Iterable[int]) -> set[int]:
    """The subset of ``recipient_ids`` currently active in the app. Fails towards "not
    active" (send the fallback) when Redis does not answer."""
    try:
        return recipients_online(recipient_ids)
    except redis.RedisError:
        return set()
