"""Comments on a document's text: threads anchored to a span, replies, resolve, and
mentions that notify.

A comment's anchor is two Yjs relative positions (collaboration/models.py
DocumentComment): the server keeps them as the client wrote them and never resolves them,
so they follow the text through every edit. ``@external_id`` of a member in a comment's
body mentions them: each mentioned member other than the author gets one
``document.mention`` event through the notification pipeline, stored in the same
transaction as the comment (both or neither). That type sends in-app, and email only to
those who are not active in the app (its ``when_active`` is "skip"); staff may change it
in admin like any other type.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from collaboration.models import Document, DocumentComment, DocumentMember, Role
from notifications.models import Recipient
from notifications.services.catalog import notification_type_ensure
from notifications.services.ingest import event_ingest
from notifications.services.validation import ValidationFailed

BODY_MAX = 10_000
QUOTE_MAX = 500
ANCHOR_MAX_BYTES = 2_000
MENTION_TYPE = "document.mention"
# "@" then an external id: no white space, and not ending with punctuation that ends a
# sentence ("@ana." mentions ana).
_MENTION = re.compile(r"(?<![\w@])@([^\s@,;!?()\[\]{}<>\"'`]+)")

MENTION_TYPE_SPEC: dict[str, Any] = {
    "fields": {
        "name": "Mentioned in a document",
        "category": "social",
        "channels": ["inapp", "email"],
        "when_active": "skip",
    },
    "templates": {
        "inapp": {
            "title": "{{ data.author }} mentioned you in {{ data.document_title }}",
            "body": "{{ data.excerpt }}",
            "url": "{{ data.url }}",
        },
        "email": {
            "subject": "{{ data.author }} mentioned you in {{ data.document_title }}",
            "html": '<p><b>{{ data.author }}</b> mentioned you in <a href="{{ data.url }}">'
            "{{ data.document_title }}</a>:</p><blockquote>{{ data.excerpt }}</blockquote>",
            "text": "{{ data.author }} mentioned you in {{ data.document_title }}:\n\n"
            "{{ data.excerpt }}\n\n{{ data.url }}",
        },
    },
}


class CommentRefused(Exception):
    """The caller may not do this to the comment (``status`` 403), or the comment's state
    does not allow it (409); ``field`` names what was refused."""

    def __init__(self, message: str, status: int = 403, field: str = "detail") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.field = field


def mentioned(body: str, member_ids: Iterable[str]) -> list[str]:
    """The members ``body`` mentions, in order of first mention."""
    members = set(member_ids)
    found: list[str] = []
    for match in _MENTION.finditer(body):
        name = match.group(1)
        for candidate in (name, name.rstrip(".:")):
            if candidate in members and candidate not in found:
                found.append(candidate)
                break
    return found


def _body_errors(body: Any) -> list[str]:
    if not isinstance(body, str) or not body.strip():
        return ["required: the comment's text"]
    if len(body) > BODY_MAX:
        return [f"at most {BODY_MAX:,} characters, got {len(body):,}"]
    if "\x00" in body:
        return ["must not contain NUL characters"]
    return []


def _anchor_errors(anchor: Any) -> list[str]:
    if anchor is None:
        return []
    if not isinstance(anchor, dict) or set(anchor) != {"start", "end"}:
        return ['must be an object {"start", "end"} of Yjs relative positions (Y.relativePositionToJSON)']
    if not all(isinstance(anchor[end], dict) for end in ("start", "end")):
        return ["start and end must each be a relative position object"]
    if len(json.dumps(anchor)) > ANCHOR_MAX_BYTES:
        return [f"at most {ANCHOR_MAX_BYTES:,} bytes of JSON"]
    return []


def _members(document_id: int) -> dict[str, tuple[int, str]]:
    """external_id -> (recipient id, role) of the document's members."""
    rows = DocumentMember.objects.filter(document_id=document_id).values_list(
        "recipient__external_id", "recipient_id", "role"
    )
    return {external_id: (recipient_id, role) for external_id, recipient_id, role in rows}


def _mention_type() -> None:
    """The mention type, created with its templates the first time it is needed."""
    notification_type_ensure(key=MENTION_TYPE, **MENTION_TYPE_SPEC)


def _notify(document: Document, comment: DocumentComment, author: Recipient | None, who: list[str]) -> None:
    if not who:
        return
    _mention_type()
    excerpt = comment.body if len(comment.body) <= 280 else comment.body[:279] + "…"
    event_ingest(
        api_key=None,
        type_key=MENTION_TYPE,
        recipients=who,
        data={
            "author": (author.name or author.external_id) if author is not None else "Someone",
            "document": document.key,
            "document_title": document.title or document.key,
            "comment": comment.id,
            "excerpt": excerpt,
            "url": f"{settings.PUBLIC_URL}/docs/{document.key}/#comment-{comment.id}",
        },
    )


def comment_create(
    *,
    document: Document,
    author: Recipient | None,
    body: Any,
    anchor: Any = None,
    quote: Any = "",
    parent: Any = None,
) -> DocumentComment:
    """A comment (or, with ``parent``, a reply in that comment's thread); its mentions are
    notified in the same transaction. ``ValidationFailed`` names each bad field."""
    errors: dict[str, list[str]] = {}
    if body_errors := _body_errors(body):
        errors["body"] = body_errors
    if anchor_errors := _anchor_errors(anchor):
        errors["anchor"] = anchor_errors
    if not isinstance(quote, str) or len(quote) > QUOTE_MAX or "\x00" in quote:
        errors["quote"] = [f"must be a string of at most {QUOTE_MAX} characters"]
    thread: DocumentComment | None = None
    if parent is not None:
        if not isinstance(parent, int) or isinstance(parent, bool):
            errors["parent"] = ["must be the id of a comment of this document"]
        else:
            thread = DocumentComment.objects.filter(document=document, id=parent).first()
            if thread is None:
                errors["parent"] = [f"no comment {parent} in this document"]
            elif thread.parent_id is not None:
                thread = thread.parent  # a reply to a reply joins the same thread
    if thread is not None and anchor is not None:
        errors["anchor"] = ["a reply has no anchor of its own: it is on its thread's"]
    if errors:
        raise ValidationFailed(errors)
    members = _members(document.id)
    author_id = author.external_id if author is not None else None
    who = [m for m in mentioned(body, members) if m != author_id]
    with transaction.atomic():
        comment = DocumentComment.objects.create(
            document=document,
            parent=thread,
            author=author,
            body=body,
            anchor=anchor,
            quote=quote,
            mentions=who,
        )
        _notify(document, comment, author, who)
    return comment


def comment_update(
    *, comment: DocumentComment, actor: Recipient | None, role: str | None, changes: dict[str, Any]
) -> DocumentComment:
    """Edit a comment's body (its author only; newly mentioned members are notified) or
    resolve and reopen a thread (its author or anyone who edits the document). ``actor``
    None with ``role`` None: a service, which may do both."""
    errors: dict[str, list[str]] = {}
    for name in sorted(set(changes) - {"body", "resolved"}):
        errors[name] = ["unknown field; a comment's body and resolved may change"]
    if "body" in changes and (body_errors := _body_errors(changes["body"])):
        errors["body"] = body_errors
    if "resolved" in changes and not isinstance(changes["resolved"], bool):
        errors["resolved"] = ["must be true or false"]
    if errors:
        raise ValidationFailed(errors)
    service = actor is None
    is_author = actor is not None and comment.author_id == actor.id
    if "body" in changes and not (service or is_author):
        raise CommentRefused("only its author may edit a comment")
    if "resolved" in changes:
        if comment.parent_id is not None:
            raise CommentRefused("a reply is resolved with its thread: resolve the thread", 409, "resolved")
        if not (service or is_author or role in (Role.OWNER, Role.EDITOR)):
            raise CommentRefused("only its author or an editor may resolve a thread")
    with transaction.atomic():
        locked = DocumentComment.objects.select_for_update().get(id=comment.id)
        fields = ["updated_at"]
        if "body" in changes:
            members = _members(locked.document_id)
            author_id = actor.external_id if actor is not None else None
            fresh = [
                m for m in mentioned(changes["body"], members) if m != author_id and m not in locked.mentions
            ]
            locked.body = changes["body"]
            locked.mentions = [*locked.mentions, *fresh]
            fields += ["body", "mentions"]
            _notify(locked.document, locked, actor, fresh)
        if "resolved" in changes:
            if changes["resolved"] and locked.resolved_at is None:
                locked.resolved_at, locked.resolved_by = timezone.now(), actor
            elif not changes["resolved"]:
                locked.resolved_at, locked.resolved_by = None, None
            fields += ["resolved_at", "resolved_by"]
        locked.updated_at = timezone.now()
        locked.save(update_fields=fields)
    return locked


def comment_delete(*, comment: DocumentComment, actor: Recipient | None, role: str | None) -> None:
    """Delete a comment (a thread with its replies): its author, an owner, or a service."""
    if actor is not None and comment.author_id != actor.id and role != Role.OWNER:
        raise CommentRefused("only its author or an owner may delete a comment")
    comment.delete()
