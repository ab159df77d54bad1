"""Service API keys: created once, shown once, stored as a SHA-256 digest."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.utils import timezone

from notifications.models import ApiKey
from notifications.services.lookups import api_key_active, lookups_changed

KEY_SCHEME = "nk"
# last_used_at is written at most this often per key, so authentication stays read-only on
# the hot path.
_LAST_USED_RESOLUTION = timedelta(minutes=1)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def api_key_create(*, name: str) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the raw key, which is never stored or shown again."""
    name = name.strip()
    if not name:
        raise ValueError("name must not be empty")
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    raw = f"{KEY_SCHEME}_{prefix}_{secret}"
    key = ApiKey.objects.create(name=name[:100], prefix=prefix, key_hash=_digest(raw))
    return key, raw


def api_key_authenticate(*, raw: str) -> ApiKey | None:
    """The active key matching ``raw``, or None. Constant-time comparison of digests; the
    key comes from this process's cache while no key or type changed (services/lookups.py)."""
    parts = raw.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_SCHEME:
        return None
    key = api_key_active(prefix=parts[1], digest=_digest(raw.strip()))
    if key is None:
        return None
    now = timezone.now()
    if key.last_used_at is None or now - key.last_used_at > _LAST_USED_RESOLUTION:
        ApiKey.objects.filter(id=key.id).update(last_used_at=now)
        key.last_used_at = now
    return key


def api_key_revoke(*, api_key_id: int) -> bool:
    """Revoke a key; True when it was active."""
    revoked = (
        ApiKey.objects.filter(id=api_key_id, revoked_at__isnull=True).update(revoked_at=timezone.now()) == 1
    )
    if revoked:
        lookups_changed()
    return revoked
