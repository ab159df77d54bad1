"""The editor page /docs/{key}/ (collaboration/views.py) for members, outsiders and
visitors, and the editor bundle it loads being built from the sources in the repository."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from collaboration.models import Document
from collaboration.selectors import document_by_key, member_role
from collaboration.services.documents import document_create
from notifications.models import Recipient
from tests.notifications.factories import RecipientFactory

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "collaboration/static/collaboration/vendor/collab.js"


def _logged_in(*, with_recipient: bool = True, name: str = "Ana Lima") -> tuple[Client, Recipient | None]:
    user = get_user_model().objects.create_user(username=f"u-{uuid.uuid4().hex[:12]}", password="x" * 12)
    recipient = RecipientFactory(user=user, name=name) if with_recipient else None
    client = Client()
    client.force_login(user)
    return client, recipient


def _document(kind: str = "rich", members: dict[str, str] | None = None) -> Document:
    return document_create(
        key=f"doc-{uuid.uuid4().hex[:8]}",
        title="Quarterly planning",
        kind=kind,
        members=[{"recipient": rid, "role": role} for rid, role in (members or {}).items()],
    )


def _data(html: str) -> dict[str, str]:
    """The data-* attributes of the page's #doc element."""
    match = re.search(r'<section class="doc" id="doc"(.*?)>', html, re.S)
    assert match, html
    return dict(re.findall(r'data-([a-z-]+)="([^"]*)"', match.group(1)))


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("kind", "role"), [("rich", "owner"), ("text", "editor")], ids=["rich-owner", "text-editor"]
)
def test_it_gives_a_member_the_editor_with_their_role_and_who_they_are(kind: str, role: str) -> None:
    client, me = _logged_in()
    assert me is not None
    document = _document(kind, {me.external_id: role})

    response = client.get(f"/docs/{document.key}/")

    assert response.status_code == 200
    html = response.content.decode()
    assert _data(html) == {
        "key": document.key,
        "kind": kind,
        "role": role,
        "can-write": "true",
        "me-id": me.external_id,
        "me-name": "Ana Lima",
        "token-url": "/inbox/token/",
        "api": "/api/v1/documents/",
    }
    assert '<h1 id="doc-title">Quarterly planning</h1>' in html
    assert "collaboration/document.js" in html
    assert "read-only" not in html
    # the formatting toolbar belongs to rich documents only
    assert ('id="format-tools"' in html) is (kind == "rich")


@pytest.mark.django_db
def test_it_tells_a_viewer_the_page_is_read_only() -> None:
    client, me = _logged_in()
    assert me is not None
    document = _document("text", {me.external_id: "viewer"})

    response = client.get(f"/docs/{document.key}/")

    assert response.status_code == 200
    html = response.content.decode()
    assert _data(html)["can-write"] == "false"
    assert "Viewer · read-only" in html
    assert 'id="doc-readonly"' in html
    assert 'id="version-form"' not in html  # no saving versions either


@pytest.mark.django_db
def test_it_names_the_user_by_external_id_when_they_have_no_name() -> None:
    client, me = _logged_in(name="")
    assert me is not None
    document = _document("rich", {me.external_id: "editor"})

    response = client.get(f"/docs/{document.key}/")

    assert _data(response.content.decode())["me-name"] == me.external_id


@pytest.mark.django_db
@pytest.mark.parametrize("case", ["not-a-member", "no-such-document", "no-recipient"])
def test_it_answers_404_to_anyone_but_a_member(case: str) -> None:
    client, me = _logged_in(with_recipient=case != "no-recipient")
    other = RecipientFactory()
    document = _document("rich", {other.external_id: "owner"})
    key = "nothing-here" if case == "no-such-document" else document.key

    response = client.get(f"/docs/{key}/")

    assert response.status_code == 404
    html = response.content.decode()
    assert "Document not found" in html
    assert key in html
    assert "data-kind" not in html  # nothing of the document is shown


@pytest.mark.django_db
def test_it_sends_an_anonymous_visitor_to_log_in() -> None:
    document = _document("rich")

    response = Client().get(f"/docs/{document.key}/")

    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next=/docs/{document.key}/"


def _banner() -> str:
    head = BUNDLE.read_text(encoding="utf-8")[:2000]
    match = re.match(r"/\*(.*?)\*/", head, re.S)
    assert match, "the editor bundle has no banner (assets/build.mjs writes one)"
    return match.group(1)


def test_the_editor_bundle_was_built_from_the_current_entry_build_script_and_lockfile() -> None:
    sources = b"".join(
        (REPO / name).read_bytes()
        for name in ("assets/collab-entry.js", "assets/build.mjs", "package-lock.json")
    )

    banner = _banner()

    expected = hashlib.sha256(sources).hexdigest()
    assert f"sources-sha256: {expected}" in banner, (
        "collaboration/static/collaboration/vendor/collab.js is stale: run `make assets` and commit it"
    )


def test_the_editor_bundle_names_the_pinned_versions_it_holds() -> None:
    pins: dict[str, Any] = json.loads((REPO / "package.json").read_text())["devDependencies"]
    banner = _banner()

    for name in (
        "yjs",
        "y-websocket",
        "y-prosemirror",
        "@tiptap/core",
        "codemirror",
        "y-codemirror.next",
        "diff",
    ):
        assert re.fullmatch(r"\d+\.\d+\.\d+", pins[name]), f"{name} is not pinned exactly: {pins[name]}"
        assert f"{name} {pins[name]}" in banner


@pytest.mark.django_db
def test_the_documents_page_lists_a_users_documents_and_creates_one_they_own(client: Any) -> None:
    user = get_user_model().objects.create_user("lee", password="pw")
    lee = RecipientFactory(external_id="lee", user=user)
    other = RecipientFactory(external_id="other")
    document_create(key="lees", title="Lee's notes", members=[{"recipient": "lee", "role": "editor"}])
    document_create(
        key="secret", title="Not Lee's", members=[{"recipient": other.external_id, "role": "owner"}]
    )
    client.force_login(user)

    listed = client.get("/docs/")
    created = client.post("/docs/", {"key": "plan", "title": "Plan", "kind": "text"})
    refused = client.post("/docs/", {"key": "Bad Key", "title": "", "kind": "slides"})

    assert listed.status_code == 200
    assert "Lee&#x27;s notes" in listed.content.decode() and "Not Lee" not in listed.content.decode()
    assert created.status_code == 302 and created["Location"] == "/docs/plan/"
    plan = document_by_key("plan")
    assert plan is not None and member_role(document_id=plan.id, recipient_id=lee.id) == "owner"
    assert refused.status_code == 400
    assert refused.context["errors"].keys() == {"key", "kind"}
