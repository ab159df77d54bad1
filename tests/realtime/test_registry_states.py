"""The registry's answer to presence (``connection_states``), read inside Redis by a script
in chunks of recipients: the same answer whatever the chunk size."""

from __future__ import annotations

import random

import pytest
from asgiref.sync import async_to_sync

from realtime import registry
from realtime.redis_client import redis_async
from realtime.registry import (
    connection_activity,
    connection_register,
    connection_states,
    connection_unregister,
)


async def _arrange(tab: int, lingering: int) -> None:
    client = redis_async()
    await connection_register(client, recipient_id=tab, connection="tab-1")
    await connection_register(client, recipient_id=tab, connection="tab-2")
    await connection_activity(client, recipient_id=tab, connection="tab-2", state=registry.IDLE)
    await connection_register(client, recipient_id=lingering, connection="closed")
    await connection_activity(client, recipient_id=lingering, connection="closed", state=registry.IDLE)
    await connection_unregister(client, recipient_id=lingering, connection="closed", linger_seconds=30)


@pytest.mark.parametrize("chunk", [1, 2, registry.STATES_CHUNK])
def test_it_answers_live_lingering_and_absent_recipients_alike_in_any_chunks(
    chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "STATES_CHUNK", chunk)
    tab, lingering, absent = (random.randint(10**12, 2**62) for _ in range(3))
    async_to_sync(_arrange)(tab, lingering)

    states, seen = connection_states([tab, lingering, absent])

    assert sorted(states[tab]) == [registry.ACTIVE, registry.IDLE]
    assert states[lingering] == [registry.IDLE]
    assert absent not in states
    assert set(seen) == {tab, lingering}
