"""Where senders get their transports: one per provider account and process, built from
``settings.PROVIDERS``."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from notifications.transports.base import Transport

Builder = Callable[[str, Mapping[str, Any]], Transport]

_lock = threading.Lock()
_transports: dict[tuple[str, str], Transport] = {}


def _builder(kind: str) -> Builder:
    # Imported on demand: a process that only sends email need not import twilio or pyfcm.
    if kind == "mailgun":
        from notifications.transports.email import MailgunTransport

        return MailgunTransport
    if kind == "smtp":
        from notifications.transports.email import SmtpTransport

        return SmtpTransport
    if kind == "twilio":
        from notifications.transports.sms import TwilioTransport

        return TwilioTransport
    if kind == "fcm":
        from notifications.transports.push_fcm import FcmTransport

        return FcmTransport
    if kind == "apns":
        from notifications.transports.push_apns import ApnsTransport

        return ApnsTransport
    if kind == "webhook":
        from notifications.transports.webhook import WebhookTransport

        return WebhookTransport
    raise ImproperlyConfigured(f"settings.PROVIDERS: unknown transport kind {kind!r}")


def transport_get(name: str) -> Transport:
    """Return the transport for provider account ``name``, built on first use and then
    shared by every thread of this process.

    The cache key includes the account's whole configuration and the send timeout, so a
    changed ``PROVIDERS`` (``override_settings`` in tests) gets a fresh transport.
    Raises ImproperlyConfigured for a name or kind that ``settings.PROVIDERS`` lacks.
    """
    providers: Mapping[str, Mapping[str, Any]] = settings.PROVIDERS
    config = providers.get(name)
    if config is None:
        raise ImproperlyConfigured(
            f"settings.PROVIDERS has no provider {name!r} (known: {', '.join(sorted(providers))})"
        )
    key = (name, repr((sorted(config.items()), settings.SEND_TIMEOUT_SECONDS)))
    transport = _transports.get(key)
    if transport is not None:
        return transport
    with _lock:
        transport = _transports.get(key)
        if transport is None:
            transport = _builder(str(config.get("kind", "")))(name, config)
            # One live configuration per name: drop the transports of earlier ones.
            for stale in [cached for cached in _transports if cached[0] == name]:
                del _transports[stale]
            _transports[key] = transport
        return transport


def transports_reset() -> None:
    """Forget every cached transport; the next transport_get builds anew."""
    with _lock:
        _transports.clear()


def channel_providers(channel: str, category: str = "") -> list[str]:
    """The provider accounts of ``channel`` for messages of ``category``, in failover
    order: ``settings.CATEGORY_PROVIDERS`` where it names the channel for the category,
    otherwise ``settings.CHANNEL_PROVIDERS``."""
    by_category: Mapping[str, Mapping[str, list[str]]] = getattr(settings, "CATEGORY_PROVIDERS", {})
    chosen = by_category.get(category, {}).get(channel)
    return list(chosen if chosen else settings.CHANNEL_PROVIDERS.get(channel, []))


def provider_batch_size(name: str) -> int:
    """How many recipients provider account ``name`` takes in one batch call (1: none)."""
    config: Mapping[str, Any] = settings.PROVIDERS.get(name, {})
    return max(1, int(config.get("batch_size", 1) or 1))
