"""Whether requests sessions should read the environment on every call.

requests looks for proxy settings, netrc and CA bundles in the environment on each
request of a session with ``trust_env`` (the default): that scan was a sixth of the CPU
of an FCM send here. Deployments that route through a proxy or pin a CA bundle with
environment variables keep it; everyone else skips it.
"""

from __future__ import annotations

import os
from functools import lru_cache

import requests

_ENV_NAMES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "requests_ca_bundle", "curl_ca_bundle")


@lru_cache(maxsize=1)
def environment_matters() -> bool:
    return any(name.lower() in _ENV_NAMES for name in os.environ) or os.path.exists(
        os.path.expanduser("~/.netrc")
    )


def session_tune(session: requests.Session) -> requests.Session:
    """Turn off the per-request environment scan when the environment sets nothing it
    would find."""
    session.trust_env = environment_matters()
    return session
