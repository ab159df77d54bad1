"""``python manage.py match_server --name N --region R``: a match server process
(gaming/services/server.py). make run starts one; more processes or hosts add capacity."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from gaming.services.server import MatchServer


def schedule(*, nice: int, realtime: int) -> None:
    """Put this process at scheduling priority ``nice`` and, when ``realtime`` is not 0, on
    the kernel's real-time policy (SCHED_FIFO) at that priority; CommandError naming the
    option when a value is out of range or not allowed."""
    if not -20 <= nice <= 19:
        raise CommandError(f"--nice: {nice} is not between -20 and 19")
    if not 0 <= realtime <= 99:
        raise CommandError(f"--realtime: {realtime} is not between 0 (off) and 99")
    if nice != os.getpriority(os.PRIO_PROCESS, 0):
        try:
            # On a host shared with web processes, the clocks go first when both are
            # runnable (GAMING_SERVER_NICE; docs/gaming.md, "Performance (P8)", has what it
            # did under P8's load).
            os.setpriority(os.PRIO_PROCESS, 0, nice)
        except PermissionError:
            raise CommandError(f"--nice: {nice} needs root (CAP_SYS_NICE) to raise the priority") from None
    if realtime:
        try:
            # A clock that comes due preempts the web processes at once instead of waiting
            # for its turn behind them (docs/gaming.md, "Performance (P8)"); the threads
            # started later inherit the policy.
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(realtime))
        except PermissionError:
            raise CommandError(f"--realtime: {realtime} needs root (CAP_SYS_NICE)") from None


class Command(BaseCommand):
    help = "Hold and tick matches at their mode's rate, placed here by matchmaking."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--name", default="1", help="this server's name, unique in the deployment")
        parser.add_argument(
            "--region", default=None, help="its region (one of GAMING_REGIONS; the first by default)"
        )
        parser.add_argument("--capacity", type=int, default=200, help="matches it holds at most")
        parser.add_argument(
            "--realtime",
            type=int,
            default=None,
            help="real-time scheduling (SCHED_FIFO) at this priority, 1-99; 0 off (default GAMING_SERVER_REALTIME); needs root",
        )
        parser.add_argument("--ready-file", default=None, help="a file to write once it beats and claims")
        parser.add_argument(
            "--nice",
            type=int,
            default=None,
            help="its scheduling priority, -20 (first) to 19 (default GAMING_SERVER_NICE); below 0 needs root",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        region = options["region"] or settings.GAMING_REGIONS[0]
        if region not in settings.GAMING_REGIONS:
            raise CommandError(
                f"--region: {region!r} is not one of GAMING_REGIONS ({', '.join(settings.GAMING_REGIONS)})"
            )
        if options["capacity"] < 1:
            raise CommandError("--capacity: must be at least 1")
        ready = Path(options["ready_file"]) if options["ready_file"] else None
        nice = settings.GAMING_SERVER_NICE if options["nice"] is None else options["nice"]
        realtime = settings.GAMING_SERVER_REALTIME if options["realtime"] is None else options["realtime"]
        schedule(nice=nice, realtime=realtime)
        # What Django and the modules made at start lives as long as the process: out of the
        # collector's way, so its passes over the young objects of the ticks stay short.
        gc.collect()
        gc.freeze()
        asyncio.run(self._serve(f"match-{options['name']}", region, options["capacity"], ready))

    async def _serve(self, name: str, region: str, capacity: int, ready_file: Path | None) -> None:
        server = MatchServer(
            name=name, region=region, capacity=capacity, grace_seconds=settings.GAMING_GRACE_SECONDS
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, server.stopping.set)
        started = asyncio.Event()

        async def announce() -> None:
            await started.wait()
            self.stdout.write(f"match server {name}: region {region}, up to {capacity} matches")
            self.stdout.flush()
            if ready_file is not None:
                ready_file.write_text("ready\n")

        announcing = asyncio.create_task(announce())
        await server.run(ready=started)
        announcing.cancel()
