"""The live inbox over a websocket (``/ws/inbox/``), on the shared socket plumbing
(realtime/consumers.py: authentication, heartbeat, the bounded queue and the slow-client
cut-off). Sequencing lives in services/live_inbox.py, shared with the SSE stream
(views.py); this consumer says who a logged-in user is and handles ``resume``.
"""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async

from notifications import selectors
from notifications.services.live_inbox import LiveInbox
from notifications.services.realtime import NOTIFICATION_MESSAGE, UNREAD_MESSAGE
from realtime.consumers import RealtimeConsumer


def _parse_after(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _recipient_id_for_user(user: Any) -> int | None:
    recipient = selectors.recipient_for_user(user=user)
    return recipient.id if recipient is not None else None


class InboxConsumer(RealtimeConsumer):
    """``/ws/inbox/``: the live inbox of one recipient. Client frames: ``ping`` and
    ``{"type": "resume", "after": n}`` (every item after seq n, in order)."""

    # What the channel layer sends an inbox socket (services/realtime.py).
    layer_messages = frozenset({NOTIFICATION_MESSAGE, UNREAD_MESSAGE})
    frame_types = ("resume",)

    live: LiveInbox | None = None

    async def user_to_recipient(self, user: Any) -> int | None:
        return await database_sync_to_async(_recipient_id_for_user)(user)

    def live_connection(self, recipient_id: int) -> LiveInbox:
        return LiveInbox(recipient_id=recipient_id, layer=self.channel_layer, channel=self.channel_name)

    async def handle_frame(self, frame_type: Any, content: dict[str, Any]) -> bool:
        if frame_type != "resume" or self.live is None:
            return False
        after = _parse_after(content.get("after"))
        if after is None:
            self.send_error("after", f"Expected a non-negative integer, got {content.get('after')!r}.")
        else:
            self.live.resume(after=after)
        return True
