"""``python manage.py mqtt_broker``: write the platform's Mosquitto config under MQTT_DIR,
its clients rebuilt from the database (iot/services/broker.py), and become that broker
(exec). make run starts it; ``--write-only`` writes the files and exits."""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from iot.services.broker import broker_files_write, broker_settings, mosquitto_binary
from iot.services.devices import device_credentials_active


class Command(BaseCommand):
    help = "Run the platform's own Mosquitto on MQTT_PORT with its dynamic-security clients."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--write-only", action="store_true", help="write the files and exit")

    def handle(self, *args: Any, **options: Any) -> None:
        broker = broker_settings()
        config = broker_files_write(
            settings.MQTT_DIR, broker, device_credentials_active(), bind=settings.MQTT_BIND
        )
        self.stdout.write(f"mqtt_broker: {config} (port {broker.port})")
        if options["write_only"]:
            return
        self.stdout.flush()
        binary = mosquitto_binary()
        os.execv(binary, [binary, "-c", str(config)])
