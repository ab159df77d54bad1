"""Streaming's admin (streaming/admin.py): every list and row page renders with rows in it;
staff rotate a stream's key and cut a live stream off (the key rotated and the ingest asked
to drop the publisher)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from django.contrib import admin
from django.test import Client
from django.urls import reverse

from notifications.models import Recipient
from project.processes.waiting import wait_until
from realtime.redis_client import redis_sync
from streaming.models import ChatMessage, LiveSession, ModerationAction, Moderator, Sanction, Stream
from streaming.services.streams import DROP_CHANNEL, publish_authorize, stream_create

pytestmark = pytest.mark.django_db
MODELS = [Stream, ChatMessage, Sanction, ModerationAction]


@pytest.fixture
def rows() -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    stream = stream_create(key=f"show-{tag}", title="Show", owner=f"owner-{tag}")
    viewer = Recipient.objects.create(external_id=f"viewer-{tag}")
    LiveSession.objects.create(stream=stream)
    Moderator.objects.create(stream=stream, recipient=viewer)
    message = ChatMessage.objects.create(stream=stream, author=viewer, text="<b>hi</b>")
    Sanction.objects.create(stream=stream, recipient=viewer, kind="ban")
    ModerationAction.objects.create(stream=stream, moderator=stream.owner, action="ban", target=viewer)
    return {"stream": stream, "viewer": viewer, "message": message}


def test_every_streaming_model_with_a_page_is_registered() -> None:
    assert [m for m in MODELS if m not in admin.site._registry] == []


@pytest.mark.parametrize("query", ["", "?q=show"])
def test_every_list_and_row_page_renders(admin_client: Client, rows: dict[str, Any], query: str) -> None:
    for model in MODELS:
        name = model._meta.model_name
        listing = admin_client.get(reverse(f"admin:streaming_{name}_changelist") + query)
        assert listing.status_code == 200, name
        row = model._default_manager.first()
        assert row is not None
        page = admin_client.get(reverse(f"admin:streaming_{name}_change", args=[row.pk]))
        assert page.status_code == 200, name
    page = admin_client.get(reverse("admin:streaming_stream_change", args=[rows["stream"].pk]))
    assert rows["stream"].stream_key not in page.content.decode()  # the secret is not shown


def test_staff_rotate_a_key_and_the_old_one_publishes_no_more(
    admin_client: Client, rows: dict[str, Any]
) -> None:
    stream = rows["stream"]
    old = stream.stream_key
    admin_client.post(
        reverse("admin:streaming_stream_changelist"),
        {"action": "rotate_key", "_selected_action": [str(stream.pk)]},
        follow=True,
    )
    stream.refresh_from_db()
    assert stream.stream_key != old and stream.key_rotated_at is not None
    assert publish_authorize(old) is None


def test_staff_cut_a_stream_off(admin_client: Client, rows: dict[str, Any]) -> None:
    stream = rows["stream"]
    pubsub = redis_sync().pubsub()
    pubsub.subscribe(DROP_CHANNEL)
    try:
        wait_until(lambda: pubsub.get_message(timeout=0.1), 5, message="not subscribed")
        answer = admin_client.post(
            reverse("admin:streaming_stream_changelist"),
            {"action": "cut_off", "_selected_action": [str(stream.pk)]},
            follow=True,
        )
        message = wait_until(lambda: pubsub.get_message(timeout=0.1), 5, message="the ingest was not asked")
    finally:
        pubsub.close()
    assert [m.message for m in answer.context["messages"]] == [
        "1 stream(s) cut off; their keys were rotated."
    ]
    assert json.loads(message["data"]) == {"stream": str(stream.pk)}
