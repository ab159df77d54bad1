"""``python manage.py seed_demo_streams``: the demo stream ``demo`` of the demo user, followed
by the staff user's recipient if there is one; prints where to publish and with which key
(kept in STREAMING_DIR/demo-stream-key, var/streaming/ by default). make run calls it after seed_demo. Idempotent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from notifications.models import Recipient
from streaming.models import Follow, Stream
from streaming.services.streams import rtmp_ingest_url, stream_create

DEMO_RECIPIENT = "demo-user"
DEMO_STREAM = "demo"


class Command(BaseCommand):
    help = "Seed the live-streaming demo: the stream 'demo' of demo-user (run seed_demo first). Idempotent."

    def handle(self, *args: Any, **options: Any) -> None:
        owner = Recipient.objects.filter(external_id=DEMO_RECIPIENT).first()
        if owner is None:
            raise CommandError(f"no recipient {DEMO_RECIPIENT}: run `python manage.py seed_demo` first")
        stream = Stream.objects.filter(key=DEMO_STREAM).first()
        if stream is None:
            stream = stream_create(key=DEMO_STREAM, title="The demo stream", owner=DEMO_RECIPIENT)
        for fan in Recipient.objects.exclude(pk=owner.pk).filter(user__is_staff=True)[:5]:
            Follow.objects.get_or_create(follower=fan, creator=owner)
        saved = Path(settings.STREAMING_DIR) / "demo-stream-key"
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(stream.stream_key + "\n")
        shown = saved.relative_to(settings.BASE_DIR) if saved.is_relative_to(settings.BASE_DIR) else saved
        self.stdout.write(
            f"Demo stream '{DEMO_STREAM}' of {DEMO_RECIPIENT}: /live/{DEMO_STREAM}/; publish with\n"
            f"  ffmpeg -re -f lavfi -i testsrc2=size=1280x720:rate=30 -f lavfi -i sine=frequency=440 "
            f"-c:v libx264 -preset veryfast -g 30 -pix_fmt yuv420p -c:a aac -f flv "
            f"{rtmp_ingest_url()}/$(cat {shown})\n"
            f"  (OBS: Server {rtmp_ingest_url()}, Stream Key in {shown})"
        )
