"""What P3's benchmarks share: many recipients seeded with SQL, an end-user token for each
minted in one process (not one HTTP request each), the inbox socket paths, the resident
memory of a process, and Redis's own figures.

Tokens come from ``manage.py shell`` against the stack's database with the web process's
environment (the same SECRET_KEY), through ``realtime.tokens.end_user_token_issue``: the
very tokens ``POST /api/v1/recipients/<id>/token/`` hands out, 10,000 in a second or two
instead of a minute of requests.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from bench.stack import Stack, rss_kib_tree

# The inbox socket; a token names its recipient.
INBOX_PATH = "/ws/inbox/?token="

_MINT = """
from notifications.models import Recipient
from realtime.tokens import end_user_token_issue
rows = Recipient.objects.filter(external_id__startswith={prefix!r}).values_list("external_id", "id")
for external_id, recipient_id in rows:
    print("TOKEN", external_id, end_user_token_issue(recipient_id=recipient_id)[0])
"""


def seed_recipients(stack: Stack, prefix: str, count: int) -> None:
    """Insert recipients ``<prefix>1`` .. ``<prefix><count>``."""
    with stack.db_connect() as connection:
        connection.execute(
            """INSERT INTO notifications_recipient
                   (external_id, name, email, phone, locale, timezone, created_at, updated_at)
               SELECT %s || g, '', '', '', 'en', 'UTC', now(), now() FROM generate_series(1, %s) AS g""",
            [prefix, count],
        )
        connection.execute("ANALYZE notifications_recipient")


def mint_tokens(stack: Stack, prefix: str) -> dict[str, str]:
    """{external_id: end-user token} of every recipient whose external_id starts with
    ``prefix``."""
    output = stack.database.run_manage("shell", "-c", _MINT.format(prefix=prefix), timeout=600)
    tokens = {}
    for line in output.splitlines():
        if line.startswith("TOKEN "):
            _, external_id, token = line.split(" ", 2)
            tokens[external_id] = token
    return tokens


def inbox_paths(tokens: dict[str, str], external_ids: Sequence[str]) -> list[str]:
    return [f"{INBOX_PATH}{tokens[external_id]}" for external_id in external_ids]


def settled_rss_kib(pid: int, seconds: float = 5.0) -> int:
    """Resident memory of ``pid`` and its children once it stops moving (three equal
    readings half a second apart), or after ``seconds``."""
    readings = [rss_kib_tree(pid)]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.5)
        readings.append(rss_kib_tree(pid))
        if len(readings) >= 3 and readings[-1] == readings[-2] == readings[-3]:
            break
    return readings[-1]


def redis_figures(stack: Stack) -> dict[str, Any]:
    """Redis's memory, keys, clients and pub/sub channels and patterns now."""
    import redis

    client = redis.Redis.from_url(stack.redis.url)
    try:
        memory: dict[str, Any] = client.info("memory")
        clients: dict[str, Any] = client.info("clients")
        stats: dict[str, Any] = client.info("stats")
        channels = client.execute_command("PUBSUB", "NUMPAT"), len(client.pubsub_channels())
        return {
            "used_memory": int(memory["used_memory"]),
            "keys": int(client.dbsize()),
            "clients": int(clients["connected_clients"]),
            "pubsub_channels": int(channels[1]),
            "pubsub_patterns": int(channels[0]),
            "commands": int(stats["total_commands_processed"]),
        }
    finally:
        client.close()
