"""What gaming tells players through the notification pipeline (so preferences, quiet
hours and channels apply): a match found while the player was not on the page (they had
not joined its socket a few seconds after it began), and a place in the top ten of a
leaderboard won or improved by a match."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from notifications.services.catalog import notification_type_ensure
from notifications.services.ingest import event_ingest

MATCH_FOUND_TYPE = "game.match_found"
RANK_TYPE = "game.rank"
TOP_PLACES = 10

_TYPES: dict[str, dict[str, Any]] = {
    MATCH_FOUND_TYPE: {
        "fields": {"name": "Match found", "category": "transactional", "channels": ["inapp", "push"]},
        "templates": {
            "inapp": {
                "title": "Your {{ data.mode_title }} match is ready",
                "body": "{{ data.players }} players are waiting for you. Join within {{ data.grace }} seconds.",
                "url": "{{ data.url }}",
            },
            "push": {
                "title": "Your {{ data.mode_title }} match is ready",
                "body": "Join within {{ data.grace }} seconds.",
            },
        },
    },
    RANK_TYPE: {
        "fields": {"name": "Leaderboard place", "category": "social", "channels": ["inapp"]},
        "templates": {
            "inapp": {
                "title": "You are #{{ data.rank }} in {{ data.mode_title }}",
                "body": "Up from {{ data.before }}. Rating {{ data.rating }}.",
                "url": "{{ data.url }}",
            }
        },
    },
}


def _ensure(key: str) -> None:
    notification_type_ensure(key=key, note="created for gaming", **_TYPES[key])


def match_found_notify(*, match_id: str, mode_title: str, players: int, absent: list[str]) -> None:
    """Tell ``absent`` (external ids) that their match began without them."""
    if not absent:
        return
    _ensure(MATCH_FOUND_TYPE)
    event_ingest(
        api_key=None,
        type_key=MATCH_FOUND_TYPE,
        recipients=absent,
        data={
            "match": match_id,
            "mode_title": mode_title,
            "players": players,
            "grace": int(settings.GAMING_GRACE_SECONDS),
            "url": f"{settings.PUBLIC_URL}/play/",
        },
        idempotency_key=f"game-found-{match_id}",
    )


def rank_changes_notify(
    *, mode: str, mode_title: str, changes: dict[str, tuple[int | None, int, float]]
) -> None:
    """``changes``: external id -> (place before or None, place now, rating). Those now in
    the top ten who were lower (or unranked) are told."""
    risen = {p: c for p, c in changes.items() if c[1] <= TOP_PLACES and (c[0] is None or c[1] < c[0])}
    if not risen:
        return
    _ensure(RANK_TYPE)
    for player, (before, now, rating) in risen.items():
        event_ingest(
            api_key=None,
            type_key=RANK_TYPE,
            recipients=[player],
            data={
                "mode": mode,
                "mode_title": mode_title,
                "rank": now,
                "before": f"#{before}" if before is not None else "unranked",
                "rating": f"{rating:.1f}",
                "url": f"{settings.PUBLIC_URL}/play/",
            },
        )
