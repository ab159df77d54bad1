"""Receipts read from a provider's event log instead of one webhook per event.

At campaign scale a webhook per delivered email is a request per send into the web server
that also serves transactional traffic. Mailgun keeps every event of a domain behind its
events API (``GET /v3/{domain}/events``), in pages of up to 300, and the ``next`` address
of an ascending query keeps bringing the events logged after the last one read: that
address is the cursor (``ProviderCursor``). The providers read this way are those whose
``settings.PROVIDERS`` entry says ``"receipts": "events"`` (the bulk sending domain).

Each page's receipts are stored and applied in bulk (``receipts_track``) in the
transaction that moves the cursor, so a poll killed halfway reads its page again and
changes nothing twice (receipts are kept once per delivery and event id). One poller per
provider at a time (a Redis key); a second poll of the same provider returns at once.

Mailgun's event log is eventually consistent: an event can be logged minutes after later
ones were. Following ``next`` pages alone would pass such a late event by; a trailing
re-read of the last half hour (harmless: receipts are stored once) is not built yet.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from functools import lru_cache
from typing import Any

import redis
import requests
from anymail.webhooks.mailgun import MailgunTrackingWebhookView
from django.conf import settings
from django.utils import timezone

from notifications.models import ProviderCursor
from notifications.services.feedback import Receipt, email_event_receipt, receipts_track
from notifications.transports.http_env import session_tune
from realtime.redis_client import redis_key, redis_sync

log = logging.getLogger(__name__)

# Mailgun's largest page.
PAGE_LIMIT = 300


def polled_providers() -> list[str]:
    """The provider accounts whose receipts are read from their event log."""
    return [
        name
        for name, config in settings.PROVIDERS.items()
        if config.get("kind") == "mailgun" and config.get("receipts") == "events"
    ]


@lru_cache(maxsize=8)
def _session(api_key: str) -> requests.Session:
    session = session_tune(requests.Session())
    session.auth = ("api", api_key)
    return session


@lru_cache(maxsize=1)
def _parser() -> MailgunTrackingWebhookView:
    return MailgunTrackingWebhookView()


@contextmanager
def _poll_lock(provider: str, seconds: float) -> Iterator[bool]:
    """One poller per provider: a Redis key held for the poll (it expires on its own if
    the poller dies). Without Redis, polls go ahead: two of them at once only read the
    same pages twice, and receipts are stored once each."""
    key = redis_key(f"receipts-poll:{provider}")
    token = secrets.token_hex(8)
    try:
        held = bool(redis_sync().set(key, token, nx=True, ex=max(1, int(seconds) + 30)))
    except redis.RedisError:
        yield True
        return
    try:
        yield held
    finally:
        if held:
            try:
                if redis_sync().get(key) == token.encode():
                    redis_sync().delete(key)
            except redis.RedisError:
                pass  # the key expires on its own


def _first_url(config: dict[str, Any]) -> str:
    begin = timezone.now() - timedelta(seconds=settings.RECEIPTS_POLL_LOOKBACK_SECONDS)
    query = f"begin={begin.timestamp():.6f}&ascending=yes&limit={PAGE_LIMIT}"
    return f"{str(config['api_url']).rstrip('/')}/{config['sender_domain']}/events?{query}"


def _receipts(items: list[Any], provider: str) -> list[Receipt]:
    parser = _parser()
    receipts: list[Receipt] = []
    for item in items:
        if not isinstance(item, dict) or "event" not in item:
            continue
        # The events API's item is a webhook's event-data; its id names the event.
        event = parser.esp_to_anymail_event({"event-data": item, "signature": {"token": item.get("id")}})
        receipt = email_event_receipt(event, provider)
        if receipt is not None:
            receipts.append(receipt)
    return receipts


# When each provider's event log was last reported unavailable: a poll every second must
# not log every second while it stays so.
_reported: dict[str, float] = {}
REPORT_EVERY_SECONDS = 60.0


def _unavailable(provider: str, why: str) -> None:
    now = time.monotonic()
    if now - _reported.get(provider, -REPORT_EVERY_SECONDS) >= REPORT_EVERY_SECONDS:
        _reported[provider] = now
        log.warning("%s events API unavailable (receipts wait): %s", provider, why)


def receipts_poll(*, provider: str, budget_seconds: float | None = None) -> int:
    """Read ``provider``'s event log from its cursor, a page at a time, until a page is
    not full or ``budget_seconds`` (RECEIPTS_POLL_BUDGET_SECONDS) have passed. Returns how
    many events were read; 0 as well when another poller holds this provider."""
    config = settings.PROVIDERS[provider]
    budget = settings.RECEIPTS_POLL_BUDGET_SECONDS if budget_seconds is None else budget_seconds
    started = time.monotonic()
    read = 0
    with _poll_lock(provider, budget + settings.SEND_TIMEOUT_SECONDS) as held:
        if not held:
            return 0
        cursor, _ = ProviderCursor.objects.get_or_create(provider=provider)
        url = cursor.next_url or _first_url(config)
        session = _session(str(config["api_key"]))
        while True:
            try:
                response = session.get(url, timeout=settings.SEND_TIMEOUT_SECONDS)
                page = response.json() if response.status_code == 200 else None
            except (requests.RequestException, ValueError) as exc:
                _unavailable(provider, repr(exc))
                break
            if not isinstance(page, dict):
                _unavailable(provider, f"answered {response.status_code}: {response.text[:200]}")
                break
            items = page.get("items") or []
            next_url = str((page.get("paging") or {}).get("next") or url)
            events = cursor.events + read + len(items)

            def advance(next_url: str = next_url, events: int = events) -> None:
                ProviderCursor.objects.filter(id=cursor.id).update(
                    next_url=next_url, events=events, polled_at=timezone.now()
                )

            receipts_track(_receipts(items, provider), also=advance)
            read += len(items)
            url = next_url
            if len(items) < PAGE_LIMIT or time.monotonic() - started > budget:
                break
    return read


def receipts_poll_all() -> int:
    """One poll of every provider read this way (the beat's ``receipts-poll``)."""
    return sum(receipts_poll(provider=name) for name in polled_providers())
