from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from notifications.models import ApiKey, Device, Recipient
from notifications.services.api_keys import api_key_create
from notifications.services.catalog import notification_type_save
from notifications.services.recipients import recipient_upsert, topic_subscribe

DEMO_PASSWORD = "demo-password"
DEMO_TYPES: dict[str, dict[str, Any]] = {
    "order.shipped": {
        "fields": {"name": "Order shipped", "category": "transactional", "channels": ["inapp"]},
        "templates": {
            "inapp": {
                "title": "Order {{ data.order_id }} has shipped",
                "body": "It should arrive {{ data.eta | default('soon') }}.",
                "url": "/orders/{{ data.order_id }}",
            }
        },
    },
    "login.suspicious": {
        # A critical account event: push first, SMS if the push has not reached the user
        # within a minute, and an email record every time.
        "fields": {
            "name": "Suspicious login",
            "category": "critical",
            "channels": ["inapp", "push", "email"],
            "fallbacks": [{"from": "push", "to": "sms", "after_seconds": 60}],
        },
        "templates": {
            "inapp": {
                "title": "New sign-in from {{ data.city | default('a new place') }}",
                "body": "",
                "url": "",
            },
            "push": {"title": "New sign-in", "body": "Was this you? {{ data.city | default('') }}"},
            "sms": {"text": "New sign-in to your account from {{ data.city | default('a new place') }}."},
            "email": {
                "subject": "New sign-in to your account",
                "html": "<p>Someone signed in from <b>{{ data.city | default('a new place') }}</b>.</p>",
                "text": "Someone signed in from {{ data.city | default('a new place') }}.",
            },
        },
    },
    "newsletter.weekly": {
        "fields": {"name": "Weekly newsletter", "category": "marketing", "channels": ["email"]},
        "templates": {
            "email": {
                "subject": "This week: {{ data.headline }}",
                "html": "<h1>{{ data.headline }}</h1><p>{{ data.body | default('') }}</p>",
                "text": "{{ data.headline }}\n\n{{ data.body | default('') }}",
            }
        },
    },
    "post.liked": {
        "fields": {"name": "Post liked", "category": "social", "channels": ["inapp"]},
        "templates": {
            "inapp": {"title": "{{ data.actor }} liked your post", "body": "{{ data.excerpt }}", "url": ""}
        },
    },
}


class Command(BaseCommand):
    help = "Seed a demo: an API key, a demo end user, two notification types, a topic with subscribers. Idempotent."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--subscribers", type=int, default=25, help="Extra recipients subscribed to 'news'"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        with transaction.atomic():
            for key, spec in DEMO_TYPES.items():
                from notifications.models import NotificationType

                instance = NotificationType.objects.filter(key=key).first()
                notification_type_save(
                    key=key, fields=spec["fields"], templates=spec["templates"], instance=instance
                )

            user_model = get_user_model()
            user, created = user_model.objects.get_or_create(
                username="demo", defaults={"email": "demo@example.com"}
            )
            if created:
                user.set_password(DEMO_PASSWORD)
                user.save()
            demo, _ = recipient_upsert(
                external_id="demo-user",
                fields={
                    "name": "Demo User",
                    "email": "demo@example.com",
                    "phone": "+14155550100",
                    "timezone": "UTC",
                    "locale": "en",
                },
            )
            # A push token the provider sandbox accepts (make run points FCM at it).
            Device.objects.get_or_create(platform="fcm", token="demo-fcm-token", defaults={"recipient": demo})
            if demo.user_id != user.id:
                Recipient.objects.filter(id=demo.id).update(user=user)
            admin, admin_created = user_model.objects.get_or_create(
                username="admin",
                defaults={"is_staff": True, "is_superuser": True, "email": "admin@example.com"},
            )
            if admin_created:
                admin.set_password(DEMO_PASSWORD)
                admin.save()

            subscribers = [demo]
            for n in range(options["subscribers"]):
                recipient, _ = recipient_upsert(
                    external_id=f"demo-subscriber-{n:03d}", fields={"name": f"Subscriber {n}"}
                )
                subscribers.append(recipient)
            topic_subscribe(topic_key="news", recipients=subscribers)

            raw = None
            if not ApiKey.objects.filter(name="demo", revoked_at__isnull=True).exists():
                _, raw = api_key_create(name="demo")

        out = self.stdout.write
        out("Demo data ready:")
        out(
            "  notification types: order.shipped (transactional), post.liked (social), "
            "login.suspicious (critical: in-app, push, email; SMS fallback), newsletter.weekly (marketing email)"
        )
        out(f"  topic 'news' with {len(subscribers)} subscribers (demo-user and demo-subscriber-000…)")
        out(f"  end user: log in at /accounts/login/ as demo / {DEMO_PASSWORD}, then open /inbox/")
        out(f"  staff:    log in at /admin/ as admin / {DEMO_PASSWORD}")
        if raw:
            out(f"  API key (shown once; saved to var/demo-api-key): {raw}")
            from pathlib import Path

            from django.conf import settings

            path = Path(settings.BASE_DIR) / "var" / "demo-api-key"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(raw + "\n")
        else:
            out("  API key: created on the first run and saved in var/demo-api-key")
