"""Streams through the API and the services behind the ingest's callbacks
(streaming/api.py, streaming/services/streams.py): creating one (what is refused, naming
the field), reading it, rotating its key, following its creator; a publish authorised
only with the current key; a reconnect within the session continuing it; followers told
once per session; a cut-off rotating the key and asking the ingest to drop the publisher."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from rest_framework.test import APIClient

from notifications.models import Event, Recipient
from project.processes.waiting import wait_until
from realtime.redis_client import redis_sync
from streaming.models import Follow, LiveSession, Stream
from streaming.services.streams import (
    DROP_CHANNEL,
    publish_authorize,
    stream_create,
    stream_cut_off,
    stream_went_live,
    stream_went_offline,
)

pytestmark = pytest.mark.django_db
Clients = Callable[[int], APIClient]


def key() -> str:
    return f"show-{uuid.uuid4().hex[:8]}"


def test_a_service_creates_a_stream_and_gets_its_secret_key_once(service_client: APIClient) -> None:
    name = key()
    created = service_client.post(
        "/api/v1/streams/", {"key": name, "title": "Cooking live", "owner": "chef-1"}, format="json"
    )
    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["status"] == "offline" and body["owner"] == "chef-1" and body["viewers"] == 0
    assert body["stream_key"].startswith("sk_") and body["ingest_url"].startswith("rtmp://")
    assert body["hls_url"].endswith(f"/hls/{name}/master.m3u8") and body["page"] == f"/live/{name}/"
    read = service_client.get(f"/api/v1/streams/{name}/")
    assert read.status_code == 200 and "stream_key" not in read.json()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"key": "Bad Key!", "title": "t", "owner": "o"}, "key"),
        ({"key": "-dash", "title": "t", "owner": "o"}, "key"),
        ({"key": "ok-key", "title": "   ", "owner": "o"}, "title"),
        ({"key": "ok-key", "title": "t"}, "owner"),
        ({"key": "ok-key", "title": "t", "owner": "o", "colour": "red"}, "colour"),
        ({"key": "ok-key", "title": 5, "owner": "o"}, "title"),
    ],
)
def test_a_stream_that_cannot_be_made_is_a_400_naming_the_field(
    service_client: APIClient, body: dict[str, Any], field: str
) -> None:
    response = service_client.post("/api/v1/streams/", body, format="json")
    assert response.status_code == 400
    assert field in response.json()["errors"], response.json()
    assert not Stream.objects.filter(key="ok-key").exists()


def test_a_key_taken_is_refused_and_the_first_stream_is_unchanged(service_client: APIClient) -> None:
    name = key()
    first = stream_create(key=name, title="First", owner="a")
    response = service_client.post(
        "/api/v1/streams/", {"key": name, "title": "Second", "owner": "b"}, format="json"
    )
    assert response.status_code == 400 and "key" in response.json()["errors"]
    assert Stream.objects.get(key=name).title == "First" and Stream.objects.count() == 1
    assert first.owner.external_id == "a"


def test_an_end_user_creates_their_own_stream_and_not_anyone_elses(user_client: Clients) -> None:
    me = Recipient.objects.create(external_id=f"me-{uuid.uuid4().hex[:6]}")
    mine = user_client(me.id).post("/api/v1/streams/", {"key": key(), "title": "Mine"}, format="json")
    assert mine.status_code == 201 and mine.json()["owner"] == me.external_id
    theirs = user_client(me.id).post(
        "/api/v1/streams/", {"key": key(), "title": "Theirs", "owner": "someone-else"}, format="json"
    )
    assert theirs.status_code == 403


def test_only_the_owner_or_a_service_rotates_the_key(user_client: Clients, service_client: APIClient) -> None:
    stream = stream_create(key=key(), title="Show", owner=f"owner-{uuid.uuid4().hex[:6]}")
    old = stream.stream_key
    stranger = Recipient.objects.create(external_id=f"x-{uuid.uuid4().hex[:6]}")
    assert user_client(stranger.id).post(f"/api/v1/streams/{stream.key}/key/").status_code == 403
    rotated = user_client(stream.owner_id).post(f"/api/v1/streams/{stream.key}/key/")
    assert rotated.status_code == 200 and rotated.json()["stream_key"] != old
    assert publish_authorize(old) is None
    assert publish_authorize(rotated.json()["stream_key"]) is not None
    assert service_client.post(f"/api/v1/streams/{stream.key}/key/").status_code == 200


def test_a_viewer_follows_a_creator_once_and_not_themselves(user_client: Clients) -> None:
    stream = stream_create(key=key(), title="Show", owner=f"owner-{uuid.uuid4().hex[:6]}")
    fan = Recipient.objects.create(external_id=f"fan-{uuid.uuid4().hex[:6]}")
    for _ in range(2):
        assert user_client(fan.id).post(f"/api/v1/streams/{stream.key}/follow/").status_code == 200
    assert Follow.objects.filter(follower=fan, creator=stream.owner).count() == 1
    itself = user_client(stream.owner_id).post(f"/api/v1/streams/{stream.key}/follow/")
    assert itself.status_code == 400 and "creator" in itself.json()["errors"]
    assert user_client(fan.id).delete(f"/api/v1/streams/{stream.key}/follow/").json()["following"] is False
    assert not Follow.objects.filter(follower=fan).exists()


def test_an_unknown_stream_is_a_404(service_client: APIClient) -> None:
    assert service_client.get("/api/v1/streams/no-such-stream/").status_code == 404


def test_a_publisher_back_within_the_session_continues_it_and_followers_are_told_once(
    django_capture_on_commit_callbacks: Any,
) -> None:
    stream = stream_create(key=key(), title="Show", owner=f"owner-{uuid.uuid4().hex[:6]}")
    fans = [Recipient.objects.create(external_id=f"fan{n}-{uuid.uuid4().hex[:6]}") for n in range(3)]
    Follow.objects.bulk_create([Follow(follower=fan, creator=stream.owner) for fan in fans])
    assert publish_authorize("sk_nobodys") is None and publish_authorize("") is None

    first = publish_authorize(stream.stream_key)
    assert first is not None and not first.continued
    with django_capture_on_commit_callbacks(execute=False):
        assert stream_went_live(stream_id=stream.id, session_id=first.session_id) is True
    again = publish_authorize(stream.stream_key)  # the publisher dropped and came back
    assert again is not None and again.continued and again.session_id == first.session_id
    with django_capture_on_commit_callbacks(execute=False):
        assert stream_went_live(stream_id=stream.id, session_id=again.session_id) is False
    (event,) = Event.objects.filter(notification_type__key="stream.went_live")
    assert sorted(event.recipient_ids or []) == sorted(f.id for f in fans)
    assert Stream.objects.get(pk=stream.pk).status == "live"

    stream_went_offline(stream_id=stream.id, reason="the publisher stopped")
    session = LiveSession.objects.get(pk=first.session_id)
    assert session.ended_at is not None and session.publishes == 2
    assert Stream.objects.get(pk=stream.pk).status == "offline"
    later = publish_authorize(stream.stream_key)  # another day: a new session, told again
    assert later is not None and later.session_id != first.session_id and not later.continued


def test_a_cut_off_rotates_the_key_and_asks_the_ingest_to_drop_the_publisher() -> None:
    stream = stream_create(key=key(), title="Show", owner=f"owner-{uuid.uuid4().hex[:6]}")
    old = stream.stream_key
    pubsub = redis_sync().pubsub()
    pubsub.subscribe(DROP_CHANNEL)
    try:
        wait_until(lambda: pubsub.get_message(timeout=0.1), 5, message="not subscribed")
        new = stream_cut_off(stream)
        message = wait_until(lambda: pubsub.get_message(timeout=0.1), 5, message="no drop message")
    finally:
        pubsub.close()
    assert json.loads(message["data"]) == {"stream": str(stream.id)}
    assert new != old and publish_authorize(old) is None


def test_followers_not_told_because_the_events_failed_are_told_on_the_next_try(
    monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any
) -> None:
    from streaming.services import streams as streams_module

    stream = stream_create(key=key(), title="Show", owner=f"owner-{uuid.uuid4().hex[:6]}")
    fan = Recipient.objects.create(external_id=f"fan-{uuid.uuid4().hex[:6]}")
    Follow.objects.create(follower=fan, creator=stream.owner)
    publish = publish_authorize(stream.stream_key)
    assert publish is not None
    real = streams_module.went_live_notify

    def failing(**kwargs: Any) -> int:
        raise RuntimeError("the events could not be stored")

    monkeypatch.setattr(streams_module, "went_live_notify", failing)
    with pytest.raises(RuntimeError):
        stream_went_live(stream_id=stream.id, session_id=publish.session_id)
    assert LiveSession.objects.get(pk=publish.session_id).notified_at is None
    monkeypatch.setattr(streams_module, "went_live_notify", real)
    with django_capture_on_commit_callbacks(execute=False):
        assert stream_went_live(stream_id=stream.id, session_id=publish.session_id) is True
    assert Event.objects.filter(notification_type__key="stream.went_live").count() == 1


def test_the_demo_stream_is_seeded_once_with_its_key_saved(settings: Any, tmp_path: Any) -> None:
    from io import StringIO

    from django.core.management import call_command

    settings.STREAMING_DIR = tmp_path / "streaming"
    Recipient.objects.get_or_create(external_id="demo-user")
    for _ in range(2):
        out = StringIO()
        call_command("seed_demo_streams", stdout=out)
    stream = Stream.objects.get(key="demo")
    assert stream.owner.external_id == "demo-user"
    assert (tmp_path / "streaming" / "demo-stream-key").read_text().strip() == stream.stream_key
    assert "/live/demo/" in out.getvalue() and stream.stream_key not in out.getvalue()
