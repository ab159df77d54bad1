"""Shared fixtures. Unit and API tests run Celery tasks eagerly in-process (the tasks are
thin; the broker is exercised for real by tests/e2e, which start real workers)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from rest_framework.test import APIClient


@pytest.fixture(autouse=True, scope="session")
def _eager_celery() -> None:
    # Imported here, not at module level: importing project.celery sets a default
    # DJANGO_SETTINGS_MODULE, which must not win over pytest-django's test settings.
    from project.celery import app as celery_app

    celery_app.conf.task_always_eager = True
    celery_app.conf.task_eager_propagates = True
    # Register the tasks, as a worker does at start: services enqueue by name
    # (notifications/services/queues.py), and only a registered task runs eagerly.
    celery_app.loader.import_default_modules()


@pytest.fixture(autouse=True, scope="session")
def _test_settings_in_use() -> None:
    from django.conf import settings

    assert settings.SETTINGS_MODULE == "project.settings.test", settings.SETTINGS_MODULE


@pytest.fixture(autouse=True)
def _fresh_lookup_cache() -> None:
    # Each test rolls its rows back, and with them the commits that would invalidate the
    # cached API keys and types (notifications/services/lookups.py): start each empty.
    from notifications.services.lookups import lookups_clear

    lookups_clear()


@pytest.fixture
def api_key(db: Any) -> str:
    from notifications.services.api_keys import api_key_create

    _, raw = api_key_create(name="tests")
    return raw


@pytest.fixture
def service_client(api_key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {api_key}")
    return client


@pytest.fixture
def user_client(db: Any) -> Callable[[int], APIClient]:
    """An API client acting as the end user who owns ``recipient_id`` (Bearer token)."""
    from realtime.tokens import end_user_token_issue

    def make(recipient_id: int) -> APIClient:
        token, _ = end_user_token_issue(recipient_id=recipient_id)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        return client

    return make
