from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from sandbox.context import config_from_settings
from sandbox.server import SandboxStartError, sandbox_run


def _fraction(value: str) -> float:
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise ValueError(value)
    return number


def _non_negative(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(value)
    return number


class Command(BaseCommand):
    help = (
        "Run the provider sandbox: local FCM (+ OAuth), APNs, Twilio, Mailgun, SMTP and webhook "
        "servers speaking the real protocols, with scripted faults and a control API under "
        "/_sandbox/. Prints one JSON line with the actual ports once every server listens."
    )
    # Needs no database and no app checks: starting fast matters to tests and benchmarks.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", help="Address to bind (default PROVIDER_SANDBOX_HOST)")
        parser.add_argument("--http-port", type=_non_negative, help="HTTP APIs; 0 picks a free port")
        parser.add_argument("--apns-port", type=_non_negative, help="APNs HTTP/2 + TLS; 0 picks a free port")
        parser.add_argument("--smtp-port", type=_non_negative, help="SMTP; 0 picks a free port")
        parser.add_argument("--dir", type=Path, help="Keys and certificates (default PROVIDER_SANDBOX_DIR)")
        parser.add_argument("--platform-url", help="Where callbacks go (default PUBLIC_URL)")
        parser.add_argument(
            "--latency-ms", type=_non_negative, default=0, help="Delay added to every request"
        )
        parser.add_argument(
            "--error-rate", type=_fraction, default=0.0, help="Fraction of requests answered 503 (0-1)"
        )
        parser.add_argument(
            "--callback-delay-ms", type=_non_negative, default=50, help="Delay before status callbacks"
        )
        parser.add_argument(
            "--callback-concurrency",
            type=_non_negative,
            default=32,
            help="Callbacks to the platform in flight at once",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        config = config_from_settings(
            settings,
            host=options["host"],
            http_port=options["http_port"],
            apns_port=options["apns_port"],
            smtp_port=options["smtp_port"],
            directory=options["dir"].resolve() if options["dir"] is not None else None,
            platform_url=options["platform_url"],
            latency_ms=options["latency_ms"],
            error_rate=options["error_rate"],
            callback_delay_ms=options["callback_delay_ms"],
            callback_concurrency=max(1, options["callback_concurrency"]),
        )

        def ready(info: dict[str, Any]) -> None:
            # One line, flushed: harness.sandbox reads it to learn the ports.
            sys.stdout.write(json.dumps(info) + "\n")
            sys.stdout.flush()

        try:
            sandbox_run(config, ready=ready)
        except SandboxStartError as error:
            raise CommandError(str(error)) from error
