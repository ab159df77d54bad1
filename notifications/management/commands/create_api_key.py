from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from notifications.services.api_keys import api_key_create


class Command(BaseCommand):
    help = "Create a service API key. The key is printed alone on the last line and never shown again."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="Who uses the key, e.g. 'billing-service'")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            key, raw = api_key_create(name=options["name"])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stderr.write(
            f"Created API key {key.prefix}… for {key.name!r}. Store it now: only its hash is kept."
        )
        self.stdout.write(raw)
