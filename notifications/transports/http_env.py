"""Reading the environment once per session instead of on every request.

requests looks for proxy settings, netrc and CA bundles in the environment on each request
of a session with ``trust_env`` (the default): that scan was a third of the CPU of an FCM
send here. Without proxy variables or a netrc file there is nothing in it but a CA bundle
(REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE), which is read once and set on the session; with a
proxy configured, requests keeps its per-request lookup (``no_proxy`` is per host).
"""

from __future__ import annotations

import os
from functools import lru_cache

import requests

_PROXY_NAMES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@lru_cache(maxsize=1)
def _environment() -> tuple[bool, str | None]:
    """(requests must keep reading the environment, CA bundle to verify with)."""
    names = {name.lower() for name in os.environ}
    proxied = any(name in names for name in _PROXY_NAMES) or os.path.exists(os.path.expanduser("~/.netrc"))
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or None
    return proxied, bundle


def session_tune(session: requests.Session) -> requests.Session:
    """Turn off the per-request environment scan when the environment holds no proxy
    settings, keeping a CA bundle it names. Idempotent and cheap."""
    proxied, bundle = _environment()
    if not proxied and session.trust_env:
        session.trust_env = False
        if bundle and session.verify is True:
            session.verify = bundle
    return session
