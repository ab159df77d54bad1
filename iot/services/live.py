"""What the ingest tells the ``/iot/`` page: one Redis message per stored batch on the
channel ``live_channel()``, not one per reading; the page's sockets (iot/consumers.py)
pick out the devices they show.

The message: ``{"readings": {device_key: {metric: [[ts_ms, value], ...]}},
"status": {device_key: "online" | "offline" | "revoked"}, "alerts": [alert ids changed]}``,
every part optional.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis

from realtime.redis_client import redis_key, redis_sync

logger = logging.getLogger(__name__)


def live_channel() -> str:
    return redis_key("iot:live")


def live_publish(message: dict[str, Any]) -> None:
    """Publish ``message`` if it holds anything; a Redis outage costs the live view only."""
    if not any(message.values()):
        return
    try:
        redis_sync().publish(live_channel(), json.dumps(message, separators=(",", ":")))
    except redis.RedisError as error:
        logger.warning("live IoT view not told: %s", error)
