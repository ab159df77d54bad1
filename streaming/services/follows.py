"""Following a creator: their followers hear through the pipeline when they go live."""

from __future__ import annotations

from typing import Any

from streaming.models import Follow
from streaming.services.streams import StreamRefused


def follow(*, follower: Any, creator_id: int) -> bool:
    """``follower`` follows the creator (once however often asked); True when new."""
    if follower.id == creator_id:
        raise StreamRefused("creator", "one does not follow oneself")
    _, created = Follow.objects.get_or_create(follower=follower, creator_id=creator_id)
    return created


def unfollow(*, follower: Any, creator_id: int) -> bool:
    deleted, _ = Follow.objects.filter(follower=follower, creator_id=creator_id).delete()
    return bool(deleted)
