"""Documents and their members: created with every member at once or not at all.

Members are recipients of the notification platform, named by their external ids, each
with a role: an owner or an editor edits, a viewer receives everything and edits nothing
(collaboration/models.py WRITING_ROLES).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from collaboration.models import Document, DocumentKind, DocumentMember, Role
from notifications.models import KEY_VALIDATOR, Recipient
from notifications.services.validation import ValidationFailed

TITLE_MAX = 300
MEMBERS_MAX = 1000


def _key_errors(key: Any) -> list[str]:
    if not isinstance(key, str) or not key:
        return ["required: a string"]
    try:
        KEY_VALIDATOR(key)
    except ValidationError as error:
        return list(error.messages)
    return []


def _members_parsed(members: Any, errors: dict[str, list[str]]) -> dict[str, str]:
    """``{external_id: role}`` of a members list, errors named by position."""
    if members is None:
        return {}
    if not isinstance(members, list):
        errors["members"] = ["must be a list of {recipient, role}"]
        return {}
    if len(members) > MEMBERS_MAX:
        errors["members"] = [f"at most {MEMBERS_MAX} members"]
        return {}
    roles: dict[str, str] = {}
    for index, member in enumerate(members):
        where = f"members[{index}]"
        if not isinstance(member, dict):
            errors[where] = ["must be an object {recipient, role}"]
            continue
        for name in sorted(set(member) - {"recipient", "role"}):
            errors[f"{where}.{name}"] = ["unknown field; a member has recipient and role"]
        recipient, role = member.get("recipient"), member.get("role")
        if not isinstance(recipient, str) or not recipient:
            errors[f"{where}.recipient"] = ["required: a recipient's external_id"]
        elif recipient in roles:
            errors[f"{where}.recipient"] = [f"{recipient!r} is listed twice"]
        if role not in Role.values:
            errors[f"{where}.role"] = [f"must be one of {', '.join(Role.values)}"]
        if isinstance(recipient, str) and recipient and role in Role.values:
            roles.setdefault(recipient, str(role))
    return roles


def _recipients(
    roles: dict[str, str], members: Sequence[Any], errors: dict[str, list[str]]
) -> dict[str, int]:
    known = dict(Recipient.objects.filter(external_id__in=list(roles)).values_list("external_id", "id"))
    for index, member in enumerate(members):
        recipient = member.get("recipient") if isinstance(member, dict) else None
        if isinstance(recipient, str) and recipient in roles and recipient not in known:
            errors.setdefault(f"members[{index}].recipient", []).append(f"no recipient {recipient!r}")
    return known


def document_create(
    *, key: Any, title: Any = "", kind: Any = DocumentKind.RICH, members: Any = None
) -> Document:
    """A new document with its members (``ValidationFailed`` naming each bad field;
    nothing is stored then)."""
    errors: dict[str, list[str]] = {}
    if key_errors := _key_errors(key):
        errors["key"] = key_errors
    if not isinstance(title, str) or len(title) > TITLE_MAX:
        errors["title"] = [f"must be a string of at most {TITLE_MAX} characters"]
    if kind not in DocumentKind.values:
        errors["kind"] = [f"must be one of {', '.join(DocumentKind.values)}"]
    roles = _members_parsed(members, errors)
    known = _recipients(roles, members if isinstance(members, list) else [], errors)
    if errors:
        raise ValidationFailed(errors)
    try:
        with transaction.atomic():
            document = Document.objects.create(key=key, title=title, kind=kind)
            DocumentMember.objects.bulk_create(
                DocumentMember(document=document, recipient_id=known[external_id], role=role)
                for external_id, role in roles.items()
            )
    except IntegrityError:
        raise ValidationFailed({"key": [f"a document with key {key!r} exists"]}) from None
    return document


def member_set(*, document: Document, recipient: Recipient, role: str | None) -> None:
    """Give ``recipient`` this role in the document, or (None) take them out of it."""
    if role is None:
        DocumentMember.objects.filter(document=document, recipient=recipient).delete()
        return
    if role not in Role.values:
        raise ValidationFailed({"role": [f"must be one of {', '.join(Role.values)}"]})
    DocumentMember.objects.update_or_create(document=document, recipient=recipient, defaults={"role": role})


def document_update(*, document: Document, changes: dict[str, Any]) -> Document:
    """Change a document's title and, given ``members``, its whole member list (replaced
    at once; at least one owner must remain). ``ValidationFailed`` names each bad field;
    nothing changes then."""
    errors: dict[str, list[str]] = {}
    for name in sorted(set(changes) - {"title", "members"}):
        errors[name] = ["unknown or read-only field; a document's title and members may change"]
    title = changes.get("title", document.title)
    if not isinstance(title, str) or len(title) > TITLE_MAX:
        errors["title"] = [f"must be a string of at most {TITLE_MAX} characters"]
    members = changes.get("members")
    roles: dict[str, str] = {}
    known: dict[str, int] = {}
    if "members" in changes:
        if members is None:
            errors["members"] = ["must be a list of {recipient, role}"]
        else:
            roles = _members_parsed(members, errors)
            known = _recipients(roles, members if isinstance(members, list) else [], errors)
            if "members" not in errors and Role.OWNER not in roles.values():
                errors["members"] = ["a document keeps at least one owner"]
    if errors:
        raise ValidationFailed(errors)
    with transaction.atomic():
        locked = Document.objects.select_for_update().get(id=document.id)
        locked.title = title
        locked.save(update_fields=["title"])
        if "members" in changes:
            DocumentMember.objects.filter(document=locked).exclude(
                recipient_id__in=list(known.values())
            ).delete()
            for external_id, role in roles.items():
                DocumentMember.objects.update_or_create(
                    document=locked, recipient_id=known[external_id], defaults={"role": role}
                )
    return locked


def document_delete(*, document: Document) -> None:
    """Delete the document with its members, updates, versions, comments and operations."""
    Document.objects.filter(id=document.id).delete()
