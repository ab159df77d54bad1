"""The sandbox's configuration and the context every protocol server shares.

The sandbox never reads Django settings itself: ``config_from_settings`` turns them into a
``SandboxConfig`` once, in the management command, so the servers can also be built in a
plain asyncio program.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox.credentials import (
    FCM_PROJECT_ID,
    apns_public_key_pem,
    fcm_public_key_pem,
    fcm_service_account,
)
from sandbox.state import SandboxState

ACCESS_TOKEN_SECONDS = 3600


@dataclass(frozen=True)
class TwilioAccount:
    """A Twilio account the sandbox accepts (``settings.PROVIDERS`` entries of kind twilio)."""

    name: str
    account_sid: str
    auth_token: str
    from_number: str


@dataclass(frozen=True)
class SandboxConfig:
    """Where the sandbox listens, whom it calls back, and the credentials it checks."""

    directory: Path
    platform_url: str
    host: str = "127.0.0.1"
    http_port: int = 0
    apns_port: int = 0
    smtp_port: int = 0
    latency_ms: int = 0
    error_rate: float = 0.0
    callback_delay_ms: int = 50
    # Callbacks to the platform in flight at once; more wait in a bounded queue, so a
    # campaign at thousands of sends/s cannot flood the platform with webhooks.
    callback_concurrency: int = 32
    twilio_accounts: tuple[TwilioAccount, ...] = ()
    mailgun_api_key: str = "sandbox-mailgun-key"
    mailgun_webhook_signing_key: str = "sandbox-mailgun-signing-key"
    # "user:password" that the platform expects as basic auth on tracking webhooks.
    mailgun_webhook_secret: str = ""
    # Sending domains whose receipts the platform polls from the events API instead of
    # taking tracking webhooks: the sandbox posts none for them, only logs their events.
    mailgun_polled_domains: tuple[str, ...] = ()
    apns_key_id: str = "SANDBOXKEY"
    apns_team_id: str = "SANDBOXTEAM"

    @property
    def platform_base(self) -> str:
        return self.platform_url.rstrip("/")


def config_from_settings(settings: Any, **overrides: Any) -> SandboxConfig:
    """A ``SandboxConfig`` from Django settings (``PROVIDER_SANDBOX_*``, ``PROVIDERS``,
    ``ANYMAIL``, ``PUBLIC_URL``); ``overrides`` that are not None win. A Mailgun account
    with ``"receipts": "events"`` makes its ``sender_domain`` a polled domain."""
    providers: dict[str, dict[str, Any]] = settings.PROVIDERS
    anymail: dict[str, Any] = getattr(settings, "ANYMAIL", {})
    twilio_accounts = tuple(
        TwilioAccount(
            name=name,
            account_sid=str(entry["account_sid"]),
            auth_token=str(entry["auth_token"]),
            from_number=str(entry.get("from_number", "")),
        )
        for name, entry in providers.items()
        if entry.get("kind") == "twilio"
    )
    mailgun = providers.get("mailgun", {})
    polled_domains = tuple(
        sorted(
            {
                str(entry["sender_domain"]).lower()
                for entry in providers.values()
                if entry.get("kind") == "mailgun"
                and entry.get("receipts") == "events"
                and entry.get("sender_domain")
            }
        )
    )
    apns = providers.get("apns", {})
    values: dict[str, Any] = {
        "directory": Path(settings.PROVIDER_SANDBOX_DIR),
        "platform_url": settings.PUBLIC_URL,
        "host": settings.PROVIDER_SANDBOX_HOST,
        "http_port": settings.PROVIDER_SANDBOX_HTTP_PORT,
        "apns_port": settings.PROVIDER_SANDBOX_APNS_PORT,
        "smtp_port": settings.PROVIDER_SANDBOX_SMTP_PORT,
        "twilio_accounts": twilio_accounts,
        "mailgun_api_key": str(mailgun.get("api_key", anymail.get("MAILGUN_API_KEY", ""))),
        "mailgun_webhook_signing_key": str(
            anymail.get("MAILGUN_WEBHOOK_SIGNING_KEY", mailgun.get("webhook_signing_key", ""))
        ),
        "mailgun_webhook_secret": str(anymail.get("WEBHOOK_SECRET", "")),
        "mailgun_polled_domains": polled_domains,
        "apns_key_id": str(apns.get("key_id", "SANDBOXKEY")),
        "apns_team_id": str(apns.get("team_id", "SANDBOXTEAM")),
    }
    values.update({name: value for name, value in overrides.items() if value is not None})
    return SandboxConfig(**values)


@dataclass
class SandboxContext:
    """What every server of one sandbox shares: config, state, the keys it verifies with,
    the OAuth tokens it issued, and the ports it actually listens on."""

    config: SandboxConfig
    state: SandboxState
    http_port: int = 0
    apns_port: int = 0
    smtp_port: int = 0
    fcm_public_key: bytes = b""
    fcm_client_email: str = ""
    fcm_project_id: str = FCM_PROJECT_ID
    fcm_token_uri: str = ""
    apns_public_key: bytes = b""
    # access token -> expiry (unix seconds)
    issued_tokens: dict[str, float] = field(default_factory=dict)

    @property
    def http_base_url(self) -> str:
        return f"http://{_url_host(self.config.host)}:{self.http_port}"

    def load_keys(self) -> None:
        """Read the public keys the sandbox verifies with (after the credentials exist)."""
        directory = self.config.directory
        account = fcm_service_account(directory)
        self.fcm_public_key = fcm_public_key_pem(directory)
        self.fcm_client_email = account["client_email"]
        self.fcm_project_id = account.get("project_id", FCM_PROJECT_ID)
        self.fcm_token_uri = account["token_uri"]
        self.apns_public_key = apns_public_key_pem(directory)

    def twilio_account(self, account_sid: str) -> TwilioAccount | None:
        for account in self.config.twilio_accounts:
            if account.account_sid == account_sid:
                return account
        return None

    def twilio_account_named(self, name: str) -> TwilioAccount | None:
        for account in self.config.twilio_accounts:
            if account.name == name:
                return account
        return None

    def access_token_valid(self, token: str) -> bool | None:
        """True for a live token we issued, False for an expired one, None for a stranger."""
        expires_at = self.issued_tokens.get(token)
        if expires_at is None:
            return None
        return time.time() < expires_at


def _url_host(host: str) -> str:
    """``host`` as it goes into a URL (the FCM token_uri the platform calls): a wildcard
    bind becomes the name the platform reaches the sandbox by (PROVIDER_SANDBOX_HOST, e.g.
    the compose service name) or loopback; IPv6 gets brackets."""
    if host in ("", "0.0.0.0", "::"):
        named = os.environ.get("PROVIDER_SANDBOX_HOST", "")
        if named and named not in ("0.0.0.0", "::"):
            return _url_host(named)
        return "127.0.0.1" if host != "::" else "[::1]"
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host
