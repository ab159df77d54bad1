"""Reads of streaming: streams by their public or secret key, followers."""

from __future__ import annotations

from streaming.models import Follow, Stream


def stream_by_key(key: str) -> Stream | None:
    return Stream.objects.select_related("owner").filter(key=key).first()


def followers_of(*, creator_id: int) -> list[str]:
    """The external ids of those who follow ``creator_id``, oldest follow first."""
    return list(
        Follow.objects.filter(creator_id=creator_id)
        .order_by("id")
        .values_list("follower__external_id", flat=True)
    )


def follows(*, follower_id: int, creator_id: int) -> bool:
    return Follow.objects.filter(follower_id=follower_id, creator_id=creator_id).exists()
