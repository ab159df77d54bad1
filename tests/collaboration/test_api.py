"""The documents API: services do anything, end users only what their role allows on the
documents they are members of; versions and restore; comments, replies, resolve and
mentions that reach the mentioned member's inbox."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from pycrdt import Doc, Text, XmlElement, XmlFragment, XmlText
from rest_framework.test import APIClient

from collaboration.models import Document, DocumentComment, DocumentVersion
from collaboration.services.documents import document_create
from collaboration.services.updates import document_state, update_store
from notifications.models import Delivery, InboxItem
from notifications.services.planning import ACTIVE_IN_APP
from realtime.redis_client import redis_async
from realtime.registry import connection_activity, connection_register
from tests.notifications.factories import RecipientFactory

pytestmark = pytest.mark.django_db

Clients = Callable[[int], APIClient]


def _typed(document: Document, text: str) -> None:
    """Store ``text`` replacing the content, as an editor's update would."""
    doc: Doc[Any] = Doc()
    doc.apply_update(document_state(document.id))
    before = doc.get_state()
    content = doc.get("content", type=Text)
    with doc.transaction():
        del content[0 : len(content)]
        content.insert(0, text)
    update_store(document_id=document.id, data=doc.get_update(before))


@pytest.fixture
def team() -> dict[str, Any]:
    people = {
        name: RecipientFactory(external_id=name, name=name.title()) for name in ("ana", "bob", "cy", "dee")
    }
    document = document_create(
        key="team.plan",
        title="Plan",
        kind="text",
        members=[
            {"recipient": "ana", "role": "owner"},
            {"recipient": "bob", "role": "editor"},
            {"recipient": "cy", "role": "viewer"},
        ],
    )
    return {**people, "document": document}


def test_a_service_creates_a_document_with_members_and_reads_it_back(service_client: APIClient) -> None:
    RecipientFactory(external_id="ana", name="Ana")

    created = service_client.post(
        "/api/v1/documents/",
        {
            "key": "spec.v1",
            "title": "Spec",
            "kind": "text",
            "members": [{"recipient": "ana", "role": "owner"}],
        },
        format="json",
    )

    assert created.status_code == 201, created.json()
    body = service_client.get("/api/v1/documents/spec.v1/").json()
    assert (body["key"], body["title"], body["kind"], body["role"]) == ("spec.v1", "Spec", "text", None)
    assert body["members"] == [{"recipient": "ana", "name": "Ana", "role": "owner", "presence": "offline"}]


def test_an_end_user_who_creates_a_document_owns_it(user_client: Clients) -> None:
    ana = RecipientFactory(external_id="ana")

    created = user_client(ana.id).post("/api/v1/documents/", {"key": "mine", "kind": "rich"}, format="json")

    assert created.status_code == 201, created.json()
    assert created.json()["role"] == "owner"
    assert [m["recipient"] for m in created.json()["members"]] == ["ana"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"key": "Bad Key"}, "key"),
        ({"key": "ok", "kind": "slides"}, "kind"),
        ({"key": "ok", "members": [{"recipient": "ana", "role": "boss"}]}, "members"),
        ({"key": "ok", "members": [{"recipient": "ghost", "role": "editor"}]}, "members[0].recipient"),
        ({"key": "ok", "colour": "red"}, "colour"),
    ],
    ids=["bad-key", "bad-kind", "bad-role", "unknown-recipient", "unknown-field"],
)
def test_a_bad_document_is_refused_naming_the_field_and_nothing_is_stored(
    service_client: APIClient, body: dict[str, Any], field: str
) -> None:
    RecipientFactory(external_id="ana")

    response = service_client.post("/api/v1/documents/", body, format="json")

    assert response.status_code == 400
    assert field in response.json()["errors"]
    assert not Document.objects.exists()


def test_an_end_user_sees_only_their_documents_and_others_are_not_found(
    team: dict[str, Any], user_client: Clients
) -> None:
    outsider = user_client(team["dee"].id)

    assert outsider.get("/api/v1/documents/").json() == {"results": []}
    for path in ("", "content/", "versions/", "comments/"):
        assert outsider.get(f"/api/v1/documents/team.plan/{path}").status_code == 404
    listed = user_client(team["cy"].id).get("/api/v1/documents/").json()["results"]
    assert [(d["key"], d["role"]) for d in listed] == [("team.plan", "viewer")]


def test_only_an_owner_changes_members_and_an_owner_must_remain(
    team: dict[str, Any], user_client: Clients
) -> None:
    path = "/api/v1/documents/team.plan/"
    members = [{"recipient": "ana", "role": "owner"}, {"recipient": "dee", "role": "editor"}]

    assert user_client(team["bob"].id).patch(path, {"members": members}, format="json").status_code == 403
    no_owner = user_client(team["ana"].id).patch(
        path, {"members": [{"recipient": "dee", "role": "editor"}]}, format="json"
    )
    changed = user_client(team["ana"].id).patch(path, {"title": "Plan B", "members": members}, format="json")

    assert no_owner.status_code == 400 and "members" in no_owner.json()["errors"]
    assert changed.status_code == 200, changed.json()
    assert changed.json()["title"] == "Plan B"
    assert [m["recipient"] for m in changed.json()["members"]] == ["ana", "dee"]
    assert user_client(team["bob"].id).get(path).status_code == 404


def test_the_content_is_the_text_every_stored_edit_makes(team: dict[str, Any], user_client: Clients) -> None:
    _typed(team["document"], "hello world")

    assert user_client(team["cy"].id).get("/api/v1/documents/team.plan/content/").json() == {
        "text": "hello world"
    }


def test_a_rich_documents_content_is_its_text_a_line_per_block(service_client: APIClient) -> None:
    document = document_create(key="rich.doc", kind="rich")
    doc: Doc[Any] = Doc()
    fragment = doc.get("content", type=XmlFragment)
    for words in ("First line", "Second line"):
        fragment.children.append(XmlElement("paragraph")).children.append(XmlText(words))
    update_store(document_id=document.id, data=doc.get_update())

    assert service_client.get("/api/v1/documents/rich.doc/content/").json() == {
        "text": "First line\nSecond line"
    }


def test_a_version_is_saved_listed_and_read_with_its_text(team: dict[str, Any], user_client: Clients) -> None:
    bob = user_client(team["bob"].id)
    _typed(team["document"], "first draft")

    saved = bob.post("/api/v1/documents/team.plan/versions/", {"name": "Draft"}, format="json")
    _typed(team["document"], "second draft")

    assert saved.status_code == 201, saved.json()
    assert saved.json()["number"] == 1 and saved.json()["created_by"] == "bob"
    assert [v["name"] for v in bob.get("/api/v1/documents/team.plan/versions/").json()["results"]] == [
        "Draft"
    ]
    assert bob.get("/api/v1/documents/team.plan/versions/1/").json()["text"] == "first draft"
    assert bob.get("/api/v1/documents/team.plan/versions/9/").status_code == 404
    refused = user_client(team["cy"].id).post(
        "/api/v1/documents/team.plan/versions/", {"name": "x"}, format="json"
    )
    assert refused.status_code == 403
    assert bob.post("/api/v1/documents/team.plan/versions/", {"name": ""}, format="json").status_code == 400


def test_restoring_a_version_is_a_new_edit_and_can_itself_be_undone(
    team: dict[str, Any], user_client: Clients
) -> None:
    bob = user_client(team["bob"].id)
    _typed(team["document"], "the plan as agreed")
    bob.post("/api/v1/documents/team.plan/versions/", {"name": "Agreed"}, format="json")
    _typed(team["document"], "a plan nobody agreed to")

    restored = bob.post("/api/v1/documents/team.plan/versions/1/restore/")

    assert restored.status_code == 200, restored.json()
    assert restored.json()["version"]["name"] == "Before restoring version 1"
    assert bob.get("/api/v1/documents/team.plan/content/").json()["text"] == "the plan as agreed"
    undone = bob.post(f"/api/v1/documents/team.plan/versions/{restored.json()['version']['number']}/restore/")
    assert undone.status_code == 200
    assert bob.get("/api/v1/documents/team.plan/content/").json()["text"] == "a plan nobody agreed to"
    assert (
        user_client(team["cy"].id).post("/api/v1/documents/team.plan/versions/1/restore/").status_code == 403
    )


def test_a_comment_with_a_mention_reaches_the_mentioned_members_inbox(
    team: dict[str, Any], user_client: Clients, django_capture_on_commit_callbacks: Any
) -> None:
    anchor = {
        "start": {"type": {"client": 1, "clock": 0}, "tname": None, "item": None, "assoc": 0},
        "end": {},
    }

    with django_capture_on_commit_callbacks(execute=True):
        created = user_client(team["cy"].id).post(
            "/api/v1/documents/team.plan/comments/",
            {
                "body": "What does @bob think? And @dee (not a member), @cy (me).",
                "anchor": anchor,
                "quote": "plan",
            },
            format="json",
        )

    assert created.status_code == 201, created.json()
    assert created.json()["mentions"] == ["bob"]
    items = InboxItem.objects.filter(recipient=team["bob"])
    assert [item.title for item in items] == ["Cy mentioned you in Plan"]
    assert not InboxItem.objects.filter(recipient__in=[team["cy"], team["dee"]]).exists()
    assert created.json()["anchor"] == anchor


def test_replies_join_their_thread_and_a_thread_is_resolved_by_an_editor(
    team: dict[str, Any], user_client: Clients
) -> None:
    ana, bob, cy = (user_client(team[name].id) for name in ("ana", "bob", "cy"))
    thread = ana.post("/api/v1/documents/team.plan/comments/", {"body": "Typo here"}, format="json").json()
    reply = bob.post(
        "/api/v1/documents/team.plan/comments/", {"body": "Fixed", "parent": thread["id"]}, format="json"
    ).json()
    bob.post(
        "/api/v1/documents/team.plan/comments/", {"body": "Thanks", "parent": reply["id"]}, format="json"
    )

    path = f"/api/v1/documents/team.plan/comments/{thread['id']}/"
    assert cy.patch(path, {"resolved": True}, format="json").status_code == 403
    resolved = bob.patch(path, {"resolved": True}, format="json")

    assert resolved.status_code == 200 and resolved.json()["resolved_by"] == "bob"
    threads = ana.get("/api/v1/documents/team.plan/comments/").json()["results"]
    assert [(t["body"], t["resolved"], [r["body"] for r in t["replies"]]) for t in threads] == [
        ("Typo here", True, ["Fixed", "Thanks"])
    ]
    assert bob.patch(path, {"body": "not mine"}, format="json").status_code == 403
    assert bob.delete(path).status_code == 403
    assert ana.delete(path).status_code == 204
    assert not DocumentComment.objects.exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"body": ""}, "body"),
        ({"body": "x" * 10_001}, "body"),
        ({"body": "ok", "anchor": {"start": 1}}, "anchor"),
        ({"body": "ok", "parent": 999_999}, "parent"),
        ({"body": "ok", "pinned": True}, "pinned"),
    ],
    ids=["empty", "too-long", "bad-anchor", "unknown-parent", "unknown-field"],
)
def test_a_bad_comment_is_refused_naming_the_field(
    team: dict[str, Any], user_client: Clients, body: dict[str, Any], field: str
) -> None:
    response = user_client(team["ana"].id).post("/api/v1/documents/team.plan/comments/", body, format="json")

    assert response.status_code == 400
    assert field in response.json()["errors"]
    assert not DocumentComment.objects.exists()


def test_deleting_a_document_takes_its_history_and_comments(
    team: dict[str, Any], user_client: Clients
) -> None:
    ana = user_client(team["ana"].id)
    _typed(team["document"], "x")
    ana.post("/api/v1/documents/team.plan/versions/", {"name": "v"}, format="json")
    ana.post("/api/v1/documents/team.plan/comments/", {"body": "c"}, format="json")

    assert user_client(team["bob"].id).delete("/api/v1/documents/team.plan/").status_code == 403
    assert ana.delete("/api/v1/documents/team.plan/").status_code == 204
    assert not (
        Document.objects.exists() or DocumentVersion.objects.exists() or DocumentComment.objects.exists()
    )


def test_a_token_whose_recipient_was_deleted_is_refused(team: dict[str, Any], user_client: Clients) -> None:
    client = user_client(team["dee"].id)
    team["dee"].delete()

    response = client.get("/api/v1/documents/")

    assert response.status_code == 401
    assert "no longer exists" in response.json()["errors"]["authorization"][0]


def test_a_mention_emails_only_a_member_who_is_not_active_in_the_app(
    user_client: Clients, django_capture_on_commit_callbacks: Any
) -> None:
    author = RecipientFactory(external_id="writer", name="Writer")
    online = RecipientFactory(id=random.randint(10**12, 2**62), external_id="online", email="on@example.com")
    away = RecipientFactory(id=random.randint(10**12, 2**62), external_id="away", email="away@example.com")
    members = [{"recipient": who, "role": "editor"} for who in ("writer", "online", "away")]
    document_create(key="team.mentions", title="Mentions", members=members)
    _tab(online.id)

    with django_capture_on_commit_callbacks(execute=True):
        response = user_client(author.id).post(
            "/api/v1/documents/team.mentions/comments/", {"body": "@online and @away, look"}, format="json"
        )

    assert response.status_code == 201, response.json()
    email = {row.recipient_id: row for row in Delivery.objects.filter(channel="email")}
    assert (email[online.id].status, email[online.id].reason) == ("suppressed", ACTIVE_IN_APP)
    assert email[away.id].status != "suppressed"
    assert InboxItem.objects.filter(recipient__in=[online, away]).count() == 2


def _tab(recipient_id: int) -> None:
    """An open, active tab of the recipient, as the inbox socket registers it."""

    async def register() -> None:
        client = redis_async()
        tab = f"tab-{recipient_id}"
        await connection_register(client, recipient_id=recipient_id, connection=tab)
        await connection_activity(client, recipient_id=recipient_id, connection=tab, state="active")

    async_to_sync(register)()
