"""Shared fixtures of the gaming tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gaming.services.leaderboard import _key
from realtime.redis_client import redis_sync


@pytest.fixture
def empty_board() -> Iterator[None]:
    """The arena's leaderboard in Redis empty before and after the test (the database's
    rows of a test roll back; Redis keeps what it was told)."""
    redis_sync().delete(_key("arena"))
    yield
    redis_sync().delete(_key("arena"))
