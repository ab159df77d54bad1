"""``/api/v1/streams/{stream}/moderation/`` (streaming/chat_api.py): each action answers
with the log entry it wrote and reaches a viewer's socket at once; bodies are validated
field by field; only the stream's owner and moderators act or read the log.

This module is its own URLconf: the moderation routes mounted as project/urls.py will mount
them, in front of the project's own (whose v1 catch-all would answer first otherwise).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.urls import include, path
from django.utils import timezone
from rest_framework.test import APIClient

from project.urls import urlpatterns as project_urlpatterns
from streaming.chat_api import chat_urlpatterns
from streaming.models import ChatMessage, ModerationAction, Sanction, Stream
from tests.streaming.test_chat import (
    chat_socket,
    moderator_create,
    next_frame,
    open_chat,
    post,
    recipient_create,
    run,
    stream_create,
)

urlpatterns = [path("api/v1/streams/", include(chat_urlpatterns)), *project_urlpatterns]

pytestmark = [pytest.mark.django_db, pytest.mark.urls(__name__)]

UserClient = Callable[[int], APIClient]


def url(stream: Stream) -> str:
    return f"/api/v1/streams/{stream.key}/moderation/"


@pytest.mark.django_db(transaction=True)
def test_a_deletion_through_the_api_reaches_a_viewers_socket(user_client: UserClient) -> None:
    stream = stream_create()
    alice, bob = recipient_create(), recipient_create()
    owner = user_client(stream.owner.id)

    async def scenario() -> None:
        poster, viewer = chat_socket(stream, alice), chat_socket(stream, bob)
        await open_chat(poster)
        await open_chat(viewer)
        await post(poster, "oops")
        message_id = (await next_frame(viewer))["id"]

        answer = await sync_to_async(owner.post)(
            url(stream), {"action": "delete", "message_id": message_id}, format="json"
        )

        assert answer.status_code == 201, answer.json()
        assert await next_frame(viewer) == {"type": "deleted", "id": message_id}
        for socket in (poster, viewer):
            await socket.disconnect()

    run(scenario)


def test_each_action_answers_with_the_log_entry_it_wrote(user_client: UserClient) -> None:
    stream, alice = stream_create(), recipient_create()
    moderator = moderator_create(stream)
    message = ChatMessage.objects.create(stream=stream, author=alice, text="hi")
    client = user_client(moderator.id)
    before = timezone.now()

    deleted = client.post(url(stream), {"action": "delete", "message_id": message.id}, format="json")
    muted = client.post(
        url(stream), {"action": "mute", "target": alice.external_id, "minutes": 5}, format="json"
    )
    slow = client.post(url(stream), {"action": "slow_mode", "seconds": 10}, format="json")
    unbanned = client.post(url(stream), {"action": "unban", "target": alice.external_id}, format="json")
    banned = client.post(url(stream), {"action": "ban", "target": alice.external_id}, format="json")

    for answer in (deleted, muted, slow, unbanned, banned):
        assert answer.status_code == 201, answer.json()
    entry = deleted.json()
    assert set(entry) == {"id", "action", "moderator", "target", "message_id", "details", "created_at"}
    assert (entry["action"], entry["moderator"], entry["target"], entry["message_id"]) == (
        "delete",
        moderator.external_id,
        alice.external_id,
        message.id,
    )
    assert muted.json()["details"]["minutes"] == 5
    until = Sanction.objects.get(stream=stream, kind="mute").until
    assert until is not None and timedelta(minutes=5) <= until - before < timedelta(minutes=6)
    assert slow.json()["details"] == {"seconds": 10, "before": 0}
    assert Stream.objects.get(id=stream.id).slow_mode_seconds == 10
    assert unbanned.json()["details"] == {"lifted": 1}
    assert banned.json()["action"] == "ban"


def test_the_owner_names_and_removes_a_moderator(user_client: UserClient) -> None:
    stream, alice = stream_create(), recipient_create()
    owner = user_client(stream.owner.id)

    added = owner.post(url(stream), {"action": "moderator_add", "target": alice.external_id}, format="json")
    acting = user_client(alice.id).post(url(stream), {"action": "slow_mode", "seconds": 5}, format="json")
    removed = owner.post(
        url(stream), {"action": "moderator_remove", "target": alice.external_id}, format="json"
    )
    refused = user_client(alice.id).post(url(stream), {"action": "slow_mode", "seconds": 0}, format="json")

    assert [a.status_code for a in (added, acting, removed, refused)] == [201, 201, 201, 403]
    assert refused.json()["errors"]["moderator"]


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({}, {"action": ["This field is required."]}),
        ({"action": "kick"}, {"action": ['"kick" is not a valid choice.']}),
        ({"action": "mute", "target": "x"}, {"minutes": ["required for action 'mute'"]}),
        ({"action": "delete"}, {"message_id": ["required for action 'delete'"]}),
        (
            {"action": "ban", "target": "x", "seconds": 5},
            {"seconds": ["not used by action 'ban'; it takes target"]},
        ),
        ({"action": "slow_mode", "seconds": "10"}, {"seconds": ["must be a whole number, got string"]}),
        (
            {"action": "slow_mode", "seconds": 3601},
            {"seconds": ["Ensure this value is less than or equal to 3600."]},
        ),
        (
            {"action": "mute", "target": "x", "minutes": 0},
            {"minutes": ["Ensure this value is greater than or equal to 1."]},
        ),
        (
            {"action": "ban", "target": "nobody-by-this-id"},
            {"target": ["no viewer with external id 'nobody-by-this-id'"]},
        ),
        ({"action": "delete", "message_id": 999_999_999}, None),
        (
            {"action": "delete", "message_id": 10**20},
            {"message_id": ["Ensure this value is less than or equal to 999999999999999999."]},
        ),
        ({"action": "ban", "target": "x", "reason": "spam"}, {"reason": ["unknown field"]}),
    ],
)
def test_a_bad_body_is_a_400_naming_the_field(
    user_client: UserClient, body: dict[str, Any], errors: dict[str, list[str]] | None
) -> None:
    stream = stream_create()

    answer = user_client(stream.owner.id).post(url(stream), body, format="json")

    assert answer.status_code == 400, answer.json()
    if errors is not None:
        assert answer.json() == {"errors": errors}
    else:
        assert list(answer.json()["errors"]) == ["message_id"]
    assert not ModerationAction.objects.filter(stream=stream).exists()


def test_someone_who_does_not_moderate_gets_a_403_naming_moderator(user_client: UserClient) -> None:
    stream, alice, outsider = stream_create(), recipient_create(), recipient_create()

    answer = user_client(outsider.id).post(
        url(stream), {"action": "ban", "target": alice.external_id}, format="json"
    )
    log = user_client(outsider.id).get(url(stream))

    assert (answer.status_code, log.status_code) == (403, 403)
    assert list(answer.json()["errors"]) == ["moderator"]
    assert list(log.json()["errors"]) == ["moderator"]
    assert not Sanction.objects.filter(stream=stream).exists()


def test_a_change_that_changes_nothing_is_a_409(user_client: UserClient) -> None:
    stream, alice = stream_create(), recipient_create()
    owner = user_client(stream.owner.id)
    owner.post(url(stream), {"action": "ban", "target": alice.external_id}, format="json")

    again = owner.post(url(stream), {"action": "ban", "target": alice.external_id}, format="json")

    assert again.status_code == 409
    assert list(again.json()["errors"]) == ["target"]


def test_an_unknown_stream_is_a_404_and_no_token_a_401(user_client: UserClient) -> None:
    stream = stream_create()

    missing = user_client(stream.owner.id).post(
        "/api/v1/streams/no-such-stream/moderation/", {"action": "slow_mode", "seconds": 1}, format="json"
    )
    anonymous = APIClient().post(url(stream), {"action": "slow_mode", "seconds": 1}, format="json")

    assert missing.status_code == 404
    assert anonymous.status_code == 401
    assert list(anonymous.json()["errors"]) == ["authorization"]


def test_a_moderator_reads_the_log_newest_first(user_client: UserClient) -> None:
    stream, alice = stream_create(), recipient_create()
    moderator = moderator_create(stream)
    owner = user_client(stream.owner.id)
    owner.post(url(stream), {"action": "mute", "target": alice.external_id, "minutes": 1}, format="json")
    owner.post(url(stream), {"action": "slow_mode", "seconds": 3}, format="json")

    page = user_client(moderator.id).get(url(stream), {"page_size": 1})

    assert page.status_code == 200
    body = page.json()
    assert [e["action"] for e in body["results"]] == ["slow_mode"]
    assert body["next"] is not None
    assert [e["action"] for e in user_client(moderator.id).get(body["next"]).json()["results"]] == ["mute"]


def test_the_schema_documents_both_operations(client: Any) -> None:
    schema = client.get("/api/schema/", {"format": "json"}).json()

    operations = schema["paths"]["/api/v1/streams/{stream}/moderation/"]
    assert set(operations) >= {"get", "post"}
    assert {"201", "400", "403", "409"} <= set(operations["post"]["responses"])
    (parameter,) = [p for p in operations["post"]["parameters"] if p["in"] == "path"]
    assert parameter["name"] == "stream"
    assert parameter["schema"]["pattern"] == "^[a-z0-9][a-z0-9-]{1,62}[a-z0-9]$"
