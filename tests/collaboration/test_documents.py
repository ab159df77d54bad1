"""Documents and their members: created whole or not at all, errors naming the field."""

from __future__ import annotations

import pytest

from collaboration.models import Document, DocumentMember
from collaboration.selectors import document_by_key, member_role
from collaboration.services.documents import document_create, member_set
from notifications.services.validation import ValidationFailed
from tests.notifications.factories import RecipientFactory

pytestmark = pytest.mark.django_db


def test_it_creates_a_document_with_its_members_and_their_roles():
    ana, bob = RecipientFactory(external_id="ana"), RecipientFactory(external_id="bob")

    document = document_create(
        key="team.notes",
        title="Team notes",
        kind="text",
        members=[{"recipient": "ana", "role": "owner"}, {"recipient": "bob", "role": "viewer"}],
    )

    assert document_by_key("team.notes") == document
    assert (document.title, document.kind) == ("Team notes", "text")
    assert member_role(document_id=document.id, recipient_id=ana.id) == "owner"
    assert member_role(document_id=document.id, recipient_id=bob.id) == "viewer"
    assert member_role(document_id=document.id, recipient_id=RecipientFactory().id) is None


@pytest.mark.parametrize(
    ("fields", "errors"),
    [
        ({"key": ""}, {"key": ["required: a string"]}),
        ({"key": "Has Spaces"}, {"key": None}),
        ({"title": "t" * 301}, {"title": ["must be a string of at most 300 characters"]}),
        ({"kind": "slides"}, {"kind": ["must be one of rich, text"]}),
        ({"members": "ana"}, {"members": ["must be a list of {recipient, role}"]}),
        (
            {"members": [{"recipient": "ana", "role": "boss"}]},
            {"members[0].role": ["must be one of owner, editor, viewer"]},
        ),
        (
            {"members": [{"recipient": "nobody", "role": "editor"}]},
            {"members[0].recipient": ["no recipient 'nobody'"]},
        ),
        (
            {"members": [{"recipient": "ana", "role": "owner"}, {"recipient": "ana", "role": "viewer"}]},
            {"members[1].recipient": ["'ana' is listed twice"]},
        ),
        (
            {"members": [{"recipient": "ana", "role": "owner", "rights": "all"}]},
            {"members[0].rights": ["unknown field; a member has recipient and role"]},
        ),
    ],
    ids=[
        "no-key",
        "bad-key",
        "long-title",
        "bad-kind",
        "members-not-list",
        "bad-role",
        "unknown-recipient",
        "twice",
        "unknown-field",
    ],
)
def test_it_refuses_bad_input_naming_the_field_and_stores_nothing(fields, errors):
    RecipientFactory(external_id="ana")
    values = {"key": "doc", "title": "", "kind": "rich", "members": [], **fields}

    with pytest.raises(ValidationFailed) as refused:
        document_create(**values)

    assert set(refused.value.errors) == set(errors)
    for field, messages in errors.items():
        if messages is not None:
            assert refused.value.errors[field] == messages
    assert not Document.objects.exists() and not DocumentMember.objects.exists()


def test_it_refuses_a_key_in_use_and_keeps_the_first_documents_members():
    RecipientFactory(external_id="ana")
    first = document_create(key="doc", members=[{"recipient": "ana", "role": "owner"}])

    with pytest.raises(ValidationFailed) as refused:
        document_create(key="doc", members=[{"recipient": "ana", "role": "viewer"}])

    assert refused.value.errors == {"key": ["a document with key 'doc' exists"]}
    assert list(DocumentMember.objects.values_list("document_id", "role")) == [(first.id, "owner")]


def test_it_changes_a_members_role_and_removes_a_member():
    ana = RecipientFactory(external_id="ana")
    document = document_create(key="doc", members=[{"recipient": "ana", "role": "viewer"}])

    member_set(document=document, recipient=ana, role="editor")
    assert member_role(document_id=document.id, recipient_id=ana.id) == "editor"

    member_set(document=document, recipient=ana, role=None)
    assert member_role(document_id=document.id, recipient_id=ana.id) is None
    with pytest.raises(ValidationFailed):
        member_set(document=document, recipient=ana, role="boss")


def test_staff_see_a_document_with_its_members_in_admin(admin_client):
    RecipientFactory(external_id="ana")
    document = document_create(key="doc", title="Plans", members=[{"recipient": "ana", "role": "owner"}])

    listing = admin_client.get("/admin/collaboration/document/")
    page = admin_client.get(f"/admin/collaboration/document/{document.id}/change/")

    assert listing.status_code == 200 and b"Plans" in listing.content
    assert page.status_code == 200 and b"ana" in page.content and b"owner" in page.content
