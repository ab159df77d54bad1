"""Test settings: the same real services, faster hashing, quieter logs."""

import os

# One Redis namespace per test run, inherited by the processes end-to-end tests start, so
# parallel runs and a running `make run` never hear each other's frames or counters. Each
# pytest-xdist worker gets one of its own (workers inherit the run's): tests that count
# or wipe shared keys (breakers, metrics) never race across workers.
os.environ.setdefault("REDIS_NAMESPACE", f"t{os.getpid()}:")
_worker = os.environ.get("PYTEST_XDIST_WORKER", "")
if _worker and not os.environ["REDIS_NAMESPACE"].endswith(f"-{_worker}:"):
    os.environ["REDIS_NAMESPACE"] = f"{os.environ['REDIS_NAMESPACE'].rstrip(':')}-{_worker}:"

from project.settings.base import *  # noqa: E402, F403
from project.settings.env import env_bool, env_float, env_str  # noqa: E402

# The package's __init__ may have evaluated base before the namespace was set above.
REDIS_NAMESPACE = os.environ["REDIS_NAMESPACE"]
CHANNEL_LAYERS["default"]["CONFIG"]["prefix"] = f"{REDIS_NAMESPACE}rt"  # type: ignore[index]  # noqa: F405
CACHES["default"]["KEY_PREFIX"] = f"{REDIS_NAMESPACE}cache"  # noqa: F405

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
LOG_LEVEL = env_str("LOG_LEVEL", "WARNING")
LOGGING["root"]["level"] = LOG_LEVEL  # type: ignore[index]  # noqa: F405

# In-process tests run Celery tasks eagerly, so an event is fanned out before its POST
# returns; processes that tests start opt in to fanning out nearby (harness/).
FANOUT_NEARBY = env_bool("FANOUT_NEARBY", False)

# The test process imports project.asgi without holding thousands of sockets: no freezing
# thread there (realtime/gc_pauses.py has its own test); processes tests start keep it.
REALTIME_GC_FREEZE_SECONDS = env_float("REALTIME_GC_FREEZE_SECONDS", 0.0)
