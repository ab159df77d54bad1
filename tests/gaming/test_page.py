"""The /play/ page's view (gaming/views.py): a signed-in player gets the page with the
arena's layout for the client; anyone else is sent to log in, and a user without a
recipient gets the no-inbox page."""

from __future__ import annotations

import json
import uuid

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from gaming.modes import arena
from notifications.models import Recipient

pytestmark = pytest.mark.django_db


def test_a_player_gets_the_page_with_the_arenas_layout(client: Client) -> None:
    user = get_user_model().objects.create_user(username=f"p-{uuid.uuid4().hex[:6]}", password="x" * 12)
    Recipient.objects.create(external_id=f"player-{user.pk}", user=user, name="Pat")
    client.force_login(user)
    page = client.get("/play/")
    assert page.status_code == 200
    html = page.content.decode()
    assert f'data-me="player-{user.pk}"' in html and 'id="arena"' in html
    start = html.index('<script id="arena-layout" type="application/json">') + len(
        '<script id="arena-layout" type="application/json">'
    )
    layout = json.loads(html[start : html.index("</script>", start)])
    assert layout["speed"] == arena.SPEED and layout["walls"] == [list(w) for w in arena.WALLS]


def test_anyone_else_is_sent_to_log_in_or_told_they_have_no_inbox(client: Client) -> None:
    assert client.get("/play/").status_code == 302
    user = get_user_model().objects.create_user(username=f"q-{uuid.uuid4().hex[:6]}", password="x" * 12)
    client.force_login(user)
    assert client.get("/play/").status_code == 404
