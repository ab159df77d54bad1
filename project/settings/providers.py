"""The provider accounts, built from the environment.

Without a provider's real credentials its client is pointed at the provider sandbox;
``build_providers`` is also what tests call to point the transports at a sandbox of their
own (free ports, a temporary key directory).
"""

from __future__ import annotations

from pathlib import Path

from project.settings.env import env_bool, env_float, env_int, env_str


def build_providers(
    *, sandbox_host: str, http_port: int, apns_port: int, smtp_port: int, sandbox_dir: Path
) -> dict[str, dict[str, object]]:
    """Every provider account by name: its client kind, channel, endpoint, credentials and
    pacing rate; ``sandbox`` is true when it points at the sandbox."""
    sandbox_http = f"http://{sandbox_host}:{http_port}"

    mailgun_key = env_str("MAILGUN_API_KEY", "")
    twilio_sid = env_str("TWILIO_ACCOUNT_SID", "")
    fcm_file = env_str("FCM_SERVICE_ACCOUNT_FILE", "")
    apns_key = env_str("APNS_KEY_FILE", "")

    mailgun_account: dict[str, object] = {
        "kind": "mailgun",
        "channel": "email",
        "sandbox": not mailgun_key,
        "api_url": env_str(
            "MAILGUN_API_URL", "https://api.mailgun.net/v3" if mailgun_key else f"{sandbox_http}/mailgun/v3"
        ),
        "api_key": mailgun_key or "sandbox-mailgun-key",
        "webhook_signing_key": env_str("MAILGUN_WEBHOOK_SIGNING_KEY", "sandbox-mailgun-signing-key"),
    }
    providers: dict[str, dict[str, object]] = {
        "mailgun": {
            **mailgun_account,
            "sender_domain": env_str("MAILGUN_SENDER_DOMAIN", "mg.sandbox.test"),
            "rate_per_second": env_float("MAILGUN_RATE_PER_SECOND", 1000.0),
            # Receipts come as tracking webhooks, one request per event.
            "receipts": "webhooks",
            "batch_size": 1,
        },
        # The same Mailgun account's bulk sending domain: marketing mail goes out from a
        # domain of its own, so its reputation never drags transactional mail down. Sent
        # in batches (one API call per up to 1,000 recipients, personalised by recipient
        # variables) and tracked by reading the events API in pages instead of one
        # webhook per event (notifications/services/receipts_poll.py).
        "mailgun-bulk": {
            **mailgun_account,
            "sender_domain": env_str("MAILGUN_BULK_SENDER_DOMAIN", "news.mg.sandbox.test"),
            "rate_per_second": env_float("MAILGUN_BULK_RATE_PER_SECOND", 10000.0),
            "receipts": "events",
            "batch_size": env_int("MAILGUN_BULK_BATCH_SIZE", 1000, minimum=1, maximum=1000),
        },
        "smtp": {
            "kind": "smtp",
            "channel": "email",
            "sandbox": not env_str("SMTP_HOST", ""),
            "host": env_str("SMTP_HOST", sandbox_host),
            "port": env_int("SMTP_PORT", smtp_port, minimum=1),
            "username": env_str("SMTP_USERNAME", ""),
            "password": env_str("SMTP_PASSWORD", ""),
            "use_tls": env_bool("SMTP_USE_TLS", False),
            "rate_per_second": env_float("SMTP_RATE_PER_SECOND", 200.0),
        },
        "twilio": {
            "kind": "twilio",
            "channel": "sms",
            "sandbox": not twilio_sid,
            "api_url": env_str(
                "TWILIO_API_URL", "https://api.twilio.com" if twilio_sid else f"{sandbox_http}/twilio"
            ),
            "account_sid": twilio_sid or "ACsandbox00000000000000000000000001",
            "auth_token": env_str("TWILIO_AUTH_TOKEN", "sandbox-twilio-auth-token-1"),
            "from_number": env_str("TWILIO_FROM_NUMBER", "+15005550006"),
            "rate_per_second": env_float("TWILIO_RATE_PER_SECOND", 100.0),
        },
        "twilio-backup": {
            "kind": "twilio",
            "channel": "sms",
            "sandbox": not env_str("TWILIO_BACKUP_ACCOUNT_SID", ""),
            "api_url": env_str("TWILIO_BACKUP_API_URL", f"{sandbox_http}/twilio"),
            "account_sid": env_str("TWILIO_BACKUP_ACCOUNT_SID", "ACsandbox00000000000000000000000002"),
            "auth_token": env_str("TWILIO_BACKUP_AUTH_TOKEN", "sandbox-twilio-auth-token-2"),
            "from_number": env_str("TWILIO_BACKUP_FROM_NUMBER", "+15005550006"),
            "rate_per_second": env_float("TWILIO_BACKUP_RATE_PER_SECOND", 100.0),
        },
        "fcm": {
            "kind": "fcm",
            "channel": "push",
            "platform": "fcm",
            "sandbox": not fcm_file,
            "endpoint_base": env_str(
                "FCM_END_POINT_BASE",
                "https://fcm.googleapis.com/v1/projects" if fcm_file else f"{sandbox_http}/fcm/v1/projects",
            ),
            # Without a real file the sandbox's own service account is used; its token_uri is
            # the sandbox's OAuth endpoint, so the real google-auth JWT flow runs against it.
            "service_account_file": fcm_file or str(sandbox_dir / "fcm-service-account.json"),
            "rate_per_second": env_float("FCM_RATE_PER_SECOND", 2000.0),
        },
        "apns": {
            "kind": "apns",
            "channel": "push",
            "platform": "apns",
            "sandbox": not apns_key,
            "url": env_str(
                "APNS_URL",
                "https://api.push.apple.com" if apns_key else f"https://{sandbox_host}:{apns_port}",
            ),
            "key_file": apns_key or str(sandbox_dir / "apns-key.p8"),
            "key_id": env_str("APNS_KEY_ID", "SANDBOXKEY"),
            "team_id": env_str("APNS_TEAM_ID", "SANDBOXTEAM"),
            "topic": env_str("APNS_TOPIC", "com.example.notifications"),
            # The sandbox's self-signed CA; None (the system store) for the real service.
            "ca_file": None if apns_key else str(sandbox_dir / "tls" / "ca.pem"),
            "rate_per_second": env_float("APNS_RATE_PER_SECOND", 2000.0),
        },
        "webhook": {
            "kind": "webhook",
            "channel": "webhook",
            "sandbox": False,
            "timeout_seconds": env_float("WEBHOOK_TIMEOUT_SECONDS", 5.0),
            "rate_per_second": env_float("WEBHOOK_RATE_PER_SECOND", 500.0),
        },
    }
    return providers
