"""``python manage.py stream_ingest``: nginx with the RTMP module, its callbacks, and an
ffmpeg ladder per live stream (streaming/services/ingest.py). make run starts it."""

from __future__ import annotations

import asyncio
import shutil
import signal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from streaming.services.ingest import IngestSupervisor
from streaming.services.media import MediaSettings


class Command(BaseCommand):
    help = "Take RTMP publishers (nginx-rtmp), check their stream keys and transcode each live stream to HLS."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--ready-file", default=None, help="a file to write once nginx listens")

    def handle(self, *args: Any, **options: Any) -> None:
        for name, setting in (("nginx", "STREAMING_NGINX"), ("ffmpeg", "STREAMING_FFMPEG")):
            if shutil.which(getattr(settings, setting)) is None:
                raise CommandError(
                    f"{setting}: {getattr(settings, setting)!r} is not installed "
                    f"(bash scripts/ensure_streaming.sh installs Debian's {name})"
                )
        if not Path(settings.STREAMING_RTMP_MODULE).exists():
            raise CommandError(
                f"STREAMING_RTMP_MODULE: {settings.STREAMING_RTMP_MODULE} is missing "
                "(Debian's libnginx-mod-rtmp; bash scripts/ensure_streaming.sh installs it)"
            )
        media = MediaSettings(
            directory=Path(settings.STREAMING_DIR).resolve(),
            bind=settings.STREAMING_BIND,
            rtmp_port=settings.STREAMING_RTMP_PORT,
            http_port=settings.STREAMING_HTTP_PORT,
            callback_port=settings.STREAMING_CALLBACK_PORT,
            segment_seconds=settings.STREAMING_SEGMENT_SECONDS,
            rtmp_module=settings.STREAMING_RTMP_MODULE,
        )
        ready = Path(options["ready_file"]) if options["ready_file"] else None
        asyncio.run(self._serve(media, ready))

    async def _serve(self, media: MediaSettings, ready_file: Path | None) -> None:
        supervisor = IngestSupervisor(
            media,
            nginx=settings.STREAMING_NGINX,
            ffmpeg=settings.STREAMING_FFMPEG,
            grace_seconds=settings.STREAMING_GRACE_SECONDS,
            redis_url=settings.REDIS_URL,
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, supervisor.stopping.set)
        started = asyncio.Event()

        async def announce() -> None:
            await started.wait()
            self.stdout.write(
                f"stream ingest: RTMP on {media.bind}:{media.rtmp_port}, HLS on {media.bind}:{media.http_port}"
            )
            self.stdout.flush()
            if ready_file is not None:
                ready_file.write_text("ready\n")

        announcing = asyncio.create_task(announce())
        await supervisor.run(ready=started)
        announcing.cancel()
