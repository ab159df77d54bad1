"""``python manage.py seed_demo_iot``: the demo devices of /iot/ (iot/services/demo.py),
a day of their readings and a rule that alerts the demo user. make run calls it after
seed_demo, before the broker starts (which then lets the devices in). Idempotent."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from iot.services.demo import DEMO_DEVICES, DEMO_RECIPIENT, demo_seed
from notifications.models import Recipient


class Command(BaseCommand):
    help = "Seed the IoT demo: three devices, a day of readings and a rule (run seed_demo first). Idempotent."

    def handle(self, *args: Any, **options: Any) -> None:
        if not Recipient.objects.filter(external_id=DEMO_RECIPIENT).exists():
            raise CommandError(f"no recipient {DEMO_RECIPIENT}: run `python manage.py seed_demo` first")
        started = time.monotonic()
        seeded = demo_seed(now=timezone.now())
        keys = ", ".join(spec.key for spec in DEMO_DEVICES)
        self.stdout.write(
            f"Demo devices ready ({keys}): {len(seeded.devices_created)} new, {seeded.readings} readings "
            f"of history stored{', the demo rule made' if seeded.rule_created else ''} "
            f"in {time.monotonic() - started:.1f}s. /iot/ (log in as admin); `manage.py iot_simulate` "
            "makes them publish."
        )
