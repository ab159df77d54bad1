"""``python manage.py seed_demo_documents``: two documents the demo user owns (make run
calls it after seed_demo), so /docs/ has something to open. Idempotent."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from collaboration.selectors import document_by_key
from collaboration.services.documents import document_create
from notifications.models import Recipient

DEMO_DOCUMENTS = [
    {"key": "welcome", "title": "Welcome to collaborative documents", "kind": "rich"},
    {"key": "release-notes", "title": "Release notes", "kind": "text"},
]


class Command(BaseCommand):
    help = "Seed two demo documents owned by the demo user (run seed_demo first). Idempotent."

    def handle(self, *args: Any, **options: Any) -> None:
        owner = Recipient.objects.filter(external_id="demo-user").first()
        if owner is None:
            raise CommandError("no recipient demo-user: run `python manage.py seed_demo` first")
        editor = Recipient.objects.filter(external_id="demo-subscriber-000").first()
        members = [{"recipient": owner.external_id, "role": "owner"}]
        if editor is not None:
            members.append({"recipient": editor.external_id, "role": "editor"})
        for spec in DEMO_DOCUMENTS:
            if document_by_key(spec["key"]) is None:
                document_create(**spec, members=members)
        keys = ", ".join(f"/docs/{spec['key']}/" for spec in DEMO_DOCUMENTS)
        self.stdout.write(f"Demo documents ready (log in as demo): {keys}")
