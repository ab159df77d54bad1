"""Reads of presence's own tables."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from presence.models import LastSeen


def last_seen_stored(recipient_ids: Sequence[int]) -> dict[int, datetime]:
    """The last-seen moments the database holds for these recipients."""
    if not recipient_ids:
        return {}
    return dict(LastSeen.objects.filter(recipient_id__in=recipient_ids).values_list("recipient_id", "at"))
