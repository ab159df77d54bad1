"""``python manage.py campaign <id> [--start|--pause|--resume|--cancel] [--follow]``: a
campaign's progress in the terminal, the same figures as its admin page: a bar while it
sends (a line every few seconds without a terminal), then the counts by status and per
variant. The steps are those of the API and the admin (notifications/services/campaigns.py).
"""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from notifications.models import Campaign, CampaignStatus
from notifications.services.campaigns import (
    CampaignRefused,
    campaign_cancel,
    campaign_pause,
    campaign_payload,
    campaign_resume,
    campaign_start,
)
from notifications.services.validation import ValidationFailed

STEPS = {
    "start": campaign_start,
    "pause": campaign_pause,
    "resume": campaign_resume,
    "cancel": campaign_cancel,
}
SETTLED = {CampaignStatus.COMPLETED, CampaignStatus.CANCELLED, CampaignStatus.DRAFT}
PLAIN_PROGRESS_SECONDS = 5.0
WIDTH = 30


class Command(BaseCommand):
    help = "Show a campaign's progress (and start, pause, resume or cancel it)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("campaign_id", type=int)
        steps = parser.add_mutually_exclusive_group()
        for step in STEPS:
            steps.add_argument(f"--{step}", action="store_true", help=f"{step} the campaign first")
        parser.add_argument("--follow", action="store_true", help="show progress until it completes or stops")
        parser.add_argument("--interval", type=float, default=1.0, help="seconds between reads with --follow")

    def handle(self, *args: Any, **options: Any) -> None:
        campaign = (
            Campaign.objects.select_related("notification_type").filter(id=options["campaign_id"]).first()
        )
        if campaign is None:
            raise CommandError(f"no campaign {options['campaign_id']}")
        for step, action in STEPS.items():
            if options[step]:
                try:
                    campaign = action(campaign=campaign)
                except CampaignRefused as exc:
                    raise CommandError(str(exc)) from None
                except ValidationFailed as exc:
                    lines = [f"  {where}: {p}" for where, problems in exc.errors.items() for p in problems]
                    raise CommandError("the campaign cannot start:\n" + "\n".join(lines)) from None
                self.stdout.write(f"{campaign.name}: {campaign.status}")
        payload = campaign_payload(campaign)
        last_line = 0.0
        while (
            options["follow"]
            and payload["status"] not in SETTLED
            and payload["status"] != CampaignStatus.PAUSED
        ):
            if self.stdout.isatty():
                self._bar(payload)
            elif time.monotonic() - last_line >= PLAIN_PROGRESS_SECONDS:
                self.stdout.write(self._line(payload))
                last_line = time.monotonic()
            time.sleep(options["interval"])
            campaign.refresh_from_db()
            payload = campaign_payload(campaign)
        if options["follow"] and self.stdout.isatty():
            self._bar(payload)
            self.stdout.write("")
        self._summary(payload)

    def _line(self, payload: dict[str, Any]) -> str:
        p = payload["progress"]
        return (
            f"{payload['status']}: {p['percent']}% of {p['audience']:,}: {p['sent']:,} sent, "
            f"{p['delivered']:,} delivered, {p['failed']:,} failed, {p['suppressed']:,} suppressed"
            + (f", {p['held']:,} held" if p["held"] else "")
        )

    def _bar(self, payload: dict[str, Any]) -> None:
        filled = int(payload["progress"]["percent"] / 100 * WIDTH)
        self.stdout.write(f"\r[{'#' * filled}{'.' * (WIDTH - filled)}] {self._line(payload)}", ending="")
        self.stdout.flush()

    def _summary(self, payload: dict[str, Any]) -> None:
        self.stdout.write(f"{payload['name']} ({payload['type']}), {self._line(payload)}")
        if len(payload["variants"]) > 1:
            for variant in payload["variants"]:
                v = variant["progress"]
                self.stdout.write(
                    f"  variant {variant['name']}: {v['audience']:,} recipients, {v['sent']:,} sent, "
                    f"{v['delivered']:,} delivered, {v['failed']:,} failed, {v['suppressed']:,} suppressed"
                )
