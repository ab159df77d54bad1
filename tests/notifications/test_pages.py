"""Server-rendered pages: landing page, login, and the live inbox."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from realtime.tokens import end_user_token_issue
from tests.notifications.test_consumers import inbox_items_create, recipient_create

pytestmark = pytest.mark.django_db


def logged_in_client(*, with_inbox: bool) -> tuple[Client, Any]:
    user = get_user_model().objects.create_user(username=f"u-{uuid.uuid4().hex[:12]}", password="x" * 12)
    recipient = recipient_create(user=user) if with_inbox else None
    client = Client()
    client.force_login(user)
    return client, recipient


def test_it_renders_the_landing_page_with_links() -> None:
    response = Client().get("/")

    assert response.status_code == 200
    for link in ("/inbox/", "/admin/", "/api/docs/", "/healthz", "/metrics"):
        assert f'href="{link}"'.encode() in response.content


def test_it_renders_the_login_page() -> None:
    response = Client().get("/accounts/login/?next=/inbox/")

    assert response.status_code == 200
    assert b'name="username"' in response.content
    assert b'name="password"' in response.content
    assert b'value="/inbox/"' in response.content


def test_it_logs_a_user_in_and_sends_them_to_the_inbox() -> None:
    get_user_model().objects.create_user(username="ada", password="correct horse battery")

    response = Client().post("/accounts/login/", {"username": "ada", "password": "correct horse battery"})

    assert response.status_code == 302
    assert response["Location"] == "/inbox/"


def test_it_redirects_an_anonymous_visitor_of_the_inbox_to_login() -> None:
    response = Client().get("/inbox/")

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=/inbox/")


def test_it_renders_the_latest_items_of_a_linked_user() -> None:
    client, recipient = logged_in_client(with_inbox=True)
    inbox_items_create(recipient, list(range(1, 56)), read={55})
    other = recipient_create()
    inbox_items_create(other, [1])

    response = client.get("/inbox/")

    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-last-seq="55"' in html
    assert html.count("data-seq=") == 50
    assert html.index("Item 55") < html.index("Item 54")
    assert "Item 5<" not in html  # older than the latest 50
    assert 'id="unread-badge"' in html and ">54</span>" in html
    assert "notifications/inbox.js" in html
    assert "csrftoken" in response.cookies


def test_it_renders_an_empty_inbox() -> None:
    client, _ = logged_in_client(with_inbox=True)

    response = client.get("/inbox/")

    assert response.status_code == 200
    assert "You're all caught up." in response.content.decode()


def test_it_shows_a_friendly_404_to_a_user_without_an_inbox() -> None:
    client, _ = logged_in_client(with_inbox=False)

    response = client.get("/inbox/")

    assert response.status_code == 404
    assert b"No inbox for this account" in response.content


def test_it_serves_the_inbox_script_and_stylesheet() -> None:
    for path in ("/static/notifications/inbox.js", "/static/notifications/inbox.css"):
        response = Client().get(path)
        assert response.status_code == 200, path
        assert response.getvalue()


# --- the page's token and the embeddable inbox's cross-origin access ---------------------


def test_it_gives_a_logged_in_user_a_token_for_their_own_inbox() -> None:
    client, recipient = logged_in_client(with_inbox=True)
    inbox_items_create(recipient, [1])

    response = client.get("/inbox/token/")

    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    token = response.json()["token"]
    listed = Client().get("/api/v1/inbox/", HTTP_AUTHORIZATION=f"Bearer {token}").json()["results"]
    assert [item["seq"] for item in listed] == [1]


def test_it_refuses_a_token_to_an_anonymous_visitor_or_an_account_without_inbox() -> None:
    anonymous = Client().get("/inbox/token/")
    assert anonymous.status_code == 401 and list(anonymous.json()["errors"]) == ["session"]
    client, _ = logged_in_client(with_inbox=False)
    assert client.get("/inbox/token/").status_code == 404


def test_it_answers_cross_origin_calls_of_the_inbox_api_without_credentials() -> None:
    preflight = Client().options(
        "/api/v1/inbox/",
        HTTP_ORIGIN="https://app.example.com",
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization",
    )
    assert preflight.status_code == 204
    assert preflight["Access-Control-Allow-Origin"] == "*"
    assert "Authorization" in preflight["Access-Control-Allow-Headers"]
    assert "Access-Control-Allow-Credentials" not in preflight

    recipient = recipient_create()
    token = end_user_token_issue(recipient_id=recipient.id)[0]
    answer = Client().get(
        "/api/v1/inbox/", HTTP_ORIGIN="https://app.example.com", HTTP_AUTHORIZATION=f"Bearer {token}"
    )
    assert answer.status_code == 200 and answer["Access-Control-Allow-Origin"] == "*"
    # service routes are not for browsers of other origins
    service = Client().get("/api/v1/events/", HTTP_ORIGIN="https://app.example.com")
    assert "Access-Control-Allow-Origin" not in service


def test_it_limits_cross_origin_inbox_calls_to_the_configured_origins(settings: Any) -> None:
    settings.INBOX_EMBED_ORIGINS = ["https://app.example.com"]

    allowed = Client().get("/api/v1/inbox/", HTTP_ORIGIN="https://app.example.com")
    foreign = Client().get("/api/v1/inbox/", HTTP_ORIGIN="https://evil.example.net")

    assert allowed["Access-Control-Allow-Origin"] == "https://app.example.com" and allowed["Vary"] == "Origin"
    assert "Access-Control-Allow-Origin" not in foreign
