"""The per-process cache of API keys and notification types (notifications/services/
lookups.py): used while nothing changed, dropped in every process once a change commits."""

from __future__ import annotations

import pytest
from django.utils import timezone

from notifications.models import ApiKey, NotificationType
from notifications.services import lookups
from notifications.services.api_keys import api_key_authenticate, api_key_create, api_key_revoke
from notifications.services.lookups import notification_type_by_key
from project.processes.waiting import wait_until
from realtime.redis_client import redis_key, redis_sync
from tests.notifications.factories import NotificationTypeFactory, RecipientFactory

pytestmark = pytest.mark.django_db


def test_a_key_is_read_from_the_database_once_while_nothing_changes(django_assert_num_queries):
    key, raw = api_key_create(name="cached")
    assert api_key_authenticate(raw=raw) == key  # read, and last_used_at written

    with django_assert_num_queries(0):
        assert api_key_authenticate(raw=raw) == key


def test_a_revoked_key_is_refused_at_once_although_it_was_cached(django_capture_on_commit_callbacks):
    key, raw = api_key_create(name="revoked")
    assert api_key_authenticate(raw=raw) == key

    with django_capture_on_commit_callbacks(execute=True):
        assert api_key_revoke(api_key_id=key.id)

    assert api_key_authenticate(raw=raw) is None


def test_a_wrong_secret_with_a_known_prefix_is_refused_cached_or_not():
    key, raw = api_key_create(name="k")
    assert api_key_authenticate(raw=raw) == key

    assert api_key_authenticate(raw=raw[:-2] + ("xy" if not raw.endswith("xy") else "zz")) is None


def test_a_deleted_type_is_unknown_at_once_although_it_was_cached(
    service_client, django_capture_on_commit_callbacks
):
    nt = NotificationTypeFactory()
    alice = RecipientFactory()
    assert notification_type_by_key(nt.key) == nt

    with django_capture_on_commit_callbacks(execute=True):
        NotificationType.objects.get(id=nt.id).delete()
    response = service_client.post(
        "/api/v1/events/", {"type": nt.key, "recipients": [alice.external_id]}, format="json"
    )

    assert response.status_code == 400 and nt.key in response.json()["errors"]["type"][0]


def test_a_type_is_read_from_the_database_once_while_nothing_changes(django_assert_num_queries):
    nt = NotificationTypeFactory()
    assert notification_type_by_key(nt.key) == nt

    with django_assert_num_queries(0):
        assert notification_type_by_key(nt.key) == nt
    # and an unknown key is not cached as missing: it may be created any moment
    with django_assert_num_queries(1):
        assert notification_type_by_key("not.yet") is None


def _watcher_listening() -> None:
    wait_until(lookups._watching, 5, interval=0.02, message="the lookup cache watcher never subscribed")


def test_a_key_revoked_by_another_process_is_refused_once_its_message_arrives():
    key, raw = api_key_create(name="elsewhere")
    assert api_key_authenticate(raw=raw) == key
    _watcher_listening()
    # another process revokes it: its row changes, and its commit hook bumps and publishes
    ApiKey.objects.filter(id=key.id).update(revoked_at=timezone.now())
    assert api_key_authenticate(raw=raw) == key  # still cached here
    version = redis_sync().incr(redis_key(lookups.VERSION_KEY))
    redis_sync().publish(redis_key(lookups.CHANGES_CHANNEL), version)

    wait_until(
        lambda: api_key_authenticate(raw=raw) is None,
        2,
        interval=0.01,
        message="the revoked key was still accepted",
    )


def test_while_the_watcher_listens_a_cached_lookup_asks_neither_redis_nor_the_database(
    monkeypatch, django_assert_num_queries
):
    nt = NotificationTypeFactory()
    assert notification_type_by_key(nt.key) == nt
    _watcher_listening()

    class Unreachable:
        def __getattr__(self, name: str) -> None:
            raise AssertionError(f"Redis asked: {name}")

    monkeypatch.setattr(lookups, "redis_sync", Unreachable)
    with django_assert_num_queries(0):
        assert notification_type_by_key(nt.key) == nt
