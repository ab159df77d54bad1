"""Leaderboards per mode: a Redis sorted set (member: the player's external id, score: the
rating's ordinal) kept by ``match_result_record`` and rebuilt from the ratings table when
it is missing (Redis flushed, a new deployment), so the database stays the truth."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gaming.models import Rating
from realtime.redis_client import redis_key, redis_sync


def _key(mode: str) -> str:
    return redis_key(f"gaming:board:{mode}")


@dataclass(frozen=True)
class Place:
    rank: int  # 1 is the best
    player: str
    ordinal: float


def leaderboard_update(mode: str, ordinals: dict[str, float]) -> dict[str, tuple[int | None, int]]:
    """Set these players' ratings (after the change has committed); returns each one's
    place (1 the best) before (None: unranked) and after. A board that was missing is
    rebuilt from the database, and then nothing is returned: the places before are unknown."""
    if not ordinals:
        return {}
    client = redis_sync()
    key = _key(mode)
    if not client.exists(key):
        leaderboard_rebuild(mode)
        return {}
    players = list(ordinals)
    pipe = client.pipeline(transaction=True)
    for player in players:
        pipe.zrevrank(key, player)
    pipe.zadd(key, ordinals)
    for player in players:
        pipe.zrevrank(key, player)
    answers: Any = pipe.execute()
    before, after = answers[: len(players)], answers[len(players) + 1 :]
    return {
        player: (None if was is None else int(was) + 1, int(now) + 1)
        for player, was, now in zip(players, before, after, strict=True)
        if now is not None
    }


def leaderboard_rebuild(mode: str) -> int:
    """The sorted set of ``mode`` rebuilt from the ratings table; returns its size."""
    client = redis_sync()
    key = _key(mode)
    rows = (
        Rating.objects.filter(mode=mode)
        .values_list("recipient__external_id", "ordinal")
        .iterator(chunk_size=5000)
    )
    staging = f"{key}:rebuild"
    client.delete(staging)
    size = 0
    batch: dict[str, float] = {}
    for external_id, ordinal in rows:
        batch[external_id] = ordinal
        if len(batch) >= 5000:
            client.zadd(staging, batch)
            size += len(batch)
            batch = {}
    if batch:
        client.zadd(staging, batch)
        size += len(batch)
    if size:
        client.rename(staging, key)
    else:
        client.delete(key)
    return size


def _ensure(mode: str) -> None:
    if not redis_sync().exists(_key(mode)):
        leaderboard_rebuild(mode)


def leaderboard_page(mode: str, *, offset: int = 0, limit: int = 50) -> tuple[int, list[Place]]:
    """The total number of ranked players and ``limit`` places from ``offset``."""
    _ensure(mode)
    client = redis_sync()
    total = int(client.zcard(_key(mode)))
    rows: Any = client.zrevrange(_key(mode), offset, offset + limit - 1, withscores=True)
    return total, [
        Place(offset + n + 1, _text(member), float(score)) for n, (member, score) in enumerate(rows)
    ]


def leaderboard_around(mode: str, player: str, *, span: int = 5) -> tuple[int, list[Place]] | None:
    """The places around ``player`` (``span`` above and below), or None when unranked."""
    _ensure(mode)
    client = redis_sync()
    found: Any = client.zrevrank(_key(mode), player)
    if found is None:
        return None
    rank = int(found)
    start = max(0, rank - span)
    total = int(client.zcard(_key(mode)))
    rows: Any = client.zrevrange(_key(mode), start, rank + span, withscores=True)
    return total, [
        Place(start + n + 1, _text(member), float(score)) for n, (member, score) in enumerate(rows)
    ]


def _text(member: bytes | str) -> str:
    return member.decode() if isinstance(member, bytes) else member
