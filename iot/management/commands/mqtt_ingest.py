"""``python manage.py mqtt_ingest [--name N]``: one ingest process (iot/services/ingest.py).
Run several under different names to share the load; make run starts one."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand

from iot.services.broker import broker_settings
from iot.services.ingest import Ingest


class Command(BaseCommand):
    help = "Ingest device readings from the platform's MQTT broker (shared subscriptions) until SIGTERM."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--name", default="1", help="the ingest's session name (ingest-<name>); default 1"
        )
        parser.add_argument("--ready-file", default="", help="written with the pid once subscribed")
        parser.add_argument("--batch-max", type=int, default=0, help="messages per batch (IOT_BATCH_MAX)")
        parser.add_argument("--batch-seconds", type=float, default=-1.0, help="batch age (IOT_BATCH_SECONDS)")

    def handle(self, *args: Any, **options: Any) -> None:
        ready_file = options["ready_file"]

        def ready() -> None:
            self.stdout.write(f"mqtt_ingest {options['name']}: subscribed", ending="\n")
            self.stdout.flush()
            if ready_file:
                import os

                Path(ready_file).write_text(str(os.getpid()))

        ingest = Ingest(
            broker_settings(),
            name=options["name"],
            batch_max=options["batch_max"] or None,
            batch_seconds=options["batch_seconds"] if options["batch_seconds"] >= 0 else None,
            on_ready=ready,
        )
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: ingest.stop())
        ingest.run()
        counters = ingest.counters
        self.stdout.write(
            f"mqtt_ingest {options['name']}: {counters.readings} readings stored, "
            f"{counters.duplicates} duplicates, {counters.malformed} malformed"
        )
