"""The documents API (``/api/v1/documents/``): documents and their members, their text,
versions and restore, comments.

Two kinds of caller: a service (API key) may do anything to any document; an end user
(token, or the session of a linked user) sees only the documents they are a member of
(any other is a 404, as if it did not exist) and may do what their role allows: anyone
reads and comments, owners and editors save and restore versions and resolve threads,
owners change the title and members and delete. An end user who creates a document is
its owner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
from rest_framework import exceptions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from collaboration import selectors
from collaboration.models import (
    WRITING_ROLES,
    Document,
    DocumentComment,
    DocumentKind,
    DocumentVersion,
    Role,
)
from collaboration.services.comments import (
    ANCHOR_MAX_BYTES,
    BODY_MAX,
    QUOTE_MAX,
    CommentRefused,
    comment_create,
    comment_delete,
    comment_update,
)
from collaboration.services.documents import (
    MEMBERS_MAX,
    TITLE_MAX,
    document_create,
    document_delete,
    document_update,
)
from collaboration.services.updates import document_text, state_text
from collaboration.services.versions import NAME_MAX, VersionNotFound, version_create, version_restore
from notifications.api.auth import (
    ApiKeyAuthentication,
    EndUserTokenAuthentication,
    IsServiceOrEndUser,
    end_user_recipient,
)
from notifications.api.common import StrictSerializer, errors_response, operation, text_field
from notifications.models import KEY_VALIDATOR, Recipient
from notifications.services.validation import EXTERNAL_ID_MAX
from presence.services import presence_of

DOCUMENTS_LIMIT = 200


class DocumentsApiView(APIView):
    authentication_classes = [ApiKeyAuthentication, EndUserTokenAuthentication]
    permission_classes = [IsServiceOrEndUser]


@dataclass(frozen=True)
class Access:
    """The document a request may see, and the caller's role in it (None: a service)."""

    document: Document
    recipient: Recipient | None
    role: str | None

    def require(self, roles: frozenset[str], doing: str) -> None:
        if self.recipient is not None and self.role not in roles:
            raise exceptions.PermissionDenied(f"a {self.role} of this document may not {doing}")


def _access(request: Request, key: str) -> Access:
    document = selectors.document_by_key(key)
    if document is None:
        raise exceptions.NotFound(f"no document {key!r}")
    recipient = end_user_recipient(request)
    if recipient is None:
        return Access(document, None, None)
    role = selectors.member_role(document_id=document.id, recipient_id=recipient.id)
    if role is None:
        raise exceptions.NotFound(f"no document {key!r}")
    return Access(document, recipient, role)


# --- Documents -------------------------------------------------------------------------------


class MemberSerializer(StrictSerializer):
    recipient = text_field(min_length=1, max_length=EXTERNAL_ID_MAX, help_text="The member's external_id")
    role = serializers.ChoiceField(choices=Role.values)


class MemberOutSerializer(serializers.Serializer):
    recipient = serializers.CharField()
    name = serializers.CharField(allow_blank=True)
    role = serializers.ChoiceField(choices=Role.values)
    presence = serializers.ChoiceField(
        choices=["online", "idle", "offline"],
        required=False,
        help_text="Online, idle or offline now (detail only; absent while presence is unavailable)",
    )


class DocumentCreateSerializer(StrictSerializer):
    key = text_field(max_length=100, validators=[KEY_VALIDATOR])
    title = text_field(max_length=TITLE_MAX, required=False, allow_blank=True)
    kind = serializers.ChoiceField(choices=DocumentKind.values, required=False)
    members = serializers.ListField(child=MemberSerializer(), required=False, max_length=MEMBERS_MAX)


def _something(attrs: dict[str, Any], fields: str) -> dict[str, Any]:
    if not attrs:
        raise serializers.ValidationError({"body": [f"nothing to change: give {fields}"]})
    return attrs


class DocumentChangeSerializer(StrictSerializer):
    schema_extra = {"minProperties": 1}

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        return _something(attrs, "title or members")

    title = text_field(max_length=TITLE_MAX, required=False, allow_blank=True)
    members = serializers.ListField(
        child=MemberSerializer(),
        required=False,
        min_length=1,
        max_length=MEMBERS_MAX,
        help_text="The whole member list, replacing the current one; at least one owner",
    )


class DocumentSerializer(serializers.Serializer):
    key = serializers.CharField()
    title = serializers.CharField(allow_blank=True)
    kind = serializers.ChoiceField(choices=DocumentKind.values)
    role = serializers.ChoiceField(
        choices=Role.values, allow_null=True, help_text="The caller's role; null for a service"
    )
    members = MemberOutSerializer(many=True)
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class DocumentListSerializer(serializers.Serializer):
    results = DocumentSerializer(many=True)


def _document_payload(
    document: Document, role: str | None, members: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {
        "key": document.key,
        "title": document.title,
        "kind": document.kind,
        "role": role,
        "members": members if members is not None else selectors.members_of([document.id])[document.id],
        "created_at": document.created_at,
        "updated_at": document.updated_at,
    }


def _with_presence(members: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ids = Recipient.objects.filter(external_id__in=[m["recipient"] for m in members]).values_list(
        "external_id", "id"
    )
    known = dict(ids)
    try:
        presence = presence_of(known.values())
    except redis.RedisError:
        return members
    return [{**m, "presence": presence[known[m["recipient"]]].status} for m in members]


class DocumentListView(DocumentsApiView):
    @operation(
        summary="Documents",
        description=(
            f"An end user's documents (those they are a member of); for a service, every document. "
            f"Most recently edited first, at most {DOCUMENTS_LIMIT}."
        ),
        responses={200: DocumentListSerializer},
    )
    def get(self, request: Request) -> Response:
        caller = end_user_recipient(request)
        documents = selectors.documents_of(recipient_id=caller.id if caller else None, limit=DOCUMENTS_LIMIT)
        members = selectors.members_of([d.id for d in documents])
        results = []
        for document in documents:
            mine = [
                m["role"] for m in members[document.id] if caller and m["recipient"] == caller.external_id
            ]
            results.append(_document_payload(document, mine[0] if mine else None, members[document.id]))
        return Response({"results": results})

    @operation(
        summary="Create a document",
        description=(
            "A document with its members, all or nothing; an end user who creates one is its owner. "
            "A key in use, an unknown recipient or a recipient listed twice is a 400 naming it."
        ),
        request=DocumentCreateSerializer,
        responses={201: DocumentSerializer},
        errors=[400, 403],
    )
    def post(self, request: Request) -> Response:
        serializer = DocumentCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        members = [dict(m) for m in data.get("members", [])]
        creator = end_user_recipient(request)
        if creator is not None and not any(m["recipient"] == creator.external_id for m in members):
            members.insert(0, {"recipient": creator.external_id, "role": Role.OWNER})
        document = document_create(
            key=data["key"],
            title=data.get("title", ""),
            kind=data.get("kind", DocumentKind.RICH),
            members=members,
        )
        role = None
        if creator is not None:
            role = selectors.member_role(document_id=document.id, recipient_id=creator.id)
        return Response(_document_payload(document, role), status=status.HTTP_201_CREATED)


class DocumentView(DocumentsApiView):
    @operation(
        summary="A document",
        description="With its members and, for each, whether they are online, idle or offline now.",
        responses={200: DocumentSerializer},
    )
    def get(self, request: Request, key: str) -> Response:
        access = _access(request, key)
        members = _with_presence(selectors.members_of([access.document.id])[access.document.id])
        return Response(_document_payload(access.document, access.role, members))

    @operation(
        summary="Change a document's title or members",
        description="``members`` replaces the whole list at once and must keep an owner. Owners only.",
        request=DocumentChangeSerializer,
        responses={200: DocumentSerializer},
        errors=[400, 403],
    )
    def patch(self, request: Request, key: str) -> Response:
        access = _access(request, key)
        access.require(frozenset({Role.OWNER}), "change its title or members")
        serializer = DocumentChangeSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        changes = dict(serializer.validated_data)
        if "members" in changes:
            changes["members"] = [dict(m) for m in changes["members"]]
        document = document_update(document=access.document, changes=changes)
        role = None
        if access.recipient is not None:
            role = selectors.member_role(document_id=document.id, recipient_id=access.recipient.id)
        return Response(_document_payload(document, role))

    @operation(
        summary="Delete a document",
        description="With its history and comments. Owners only.",
        responses={204: None},
        errors=[403],
    )
    def delete(self, request: Request, key: str) -> Response:
        access = _access(request, key)
        access.require(frozenset({Role.OWNER}), "delete it")
        document_delete(document=access.document)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ContentSerializer(serializers.Serializer):
    text = serializers.CharField(allow_blank=True)


class DocumentContentView(DocumentsApiView):
    @operation(
        summary="A document's text",
        description=(
            "The plain text of its shared ``content``: a text document's Y.Text, or a rich "
            "document's XmlFragment with a line per paragraph, as every edit stored so far makes it."
        ),
        responses={200: ContentSerializer},
    )
    def get(self, request: Request, key: str) -> Response:
        access = _access(request, key)
        return Response({"text": document_text(access.document.id, access.document.kind)})


# --- Versions --------------------------------------------------------------------------------


class VersionSerializer(serializers.Serializer):
    number = serializers.IntegerField(min_value=1)
    kind = serializers.ChoiceField(choices=["auto", "named"])
    name = serializers.CharField(allow_blank=True)
    created_at = serializers.DateTimeField()
    created_by = serializers.CharField(allow_null=True, help_text="The external_id of who saved it")


class VersionListSerializer(serializers.Serializer):
    results = VersionSerializer(many=True)


class VersionTextSerializer(VersionSerializer):
    text = serializers.CharField(allow_blank=True)


class VersionCreateSerializer(StrictSerializer):
    name = text_field(min_length=1, max_length=NAME_MAX)


class RestoredSerializer(serializers.Serializer):
    restored = serializers.IntegerField(min_value=1)
    version = VersionSerializer(help_text="The version saved just before the restore (restore it to undo)")


def _version_payload(version: DocumentVersion) -> dict[str, Any]:
    return {
        "number": version.number,
        "kind": version.kind,
        "name": version.name,
        "created_at": version.created_at,
        "created_by": version.created_by.external_id if version.created_by else None,
    }


class VersionListView(DocumentsApiView):
    @operation(
        summary="A document's versions", description="Newest first.", responses={200: VersionListSerializer}
    )
    def get(self, request: Request, key: str) -> Response:
        access = _access(request, key)
        return Response({"results": [_version_payload(v) for v in selectors.versions_of(access.document.id)]})

    @operation(
        summary="Save a named version",
        description="The document as it is now. Owners and editors.",
        request=VersionCreateSerializer,
        responses={201: VersionSerializer},
        errors=[400, 403],
    )
    def post(self, request: Request, key: str) -> Response:
        access = _access(request, key)
        access.require(WRITING_ROLES, "save versions")
        serializer = VersionCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        version = version_create(
            document_id=access.document.id,
            name=serializer.validated_data["name"],
            recipient_id=access.recipient.id if access.recipient else None,
        )
        return Response(_version_payload(version), status=status.HTTP_201_CREATED)


class VersionView(DocumentsApiView):
    @operation(summary="A version with its text", responses={200: VersionTextSerializer})
    def get(self, request: Request, key: str, number: int) -> Response:
        access = _access(request, key)
        version = selectors.version_of(access.document.id, number)
        if version is None:
            raise exceptions.NotFound(f"document {key!r} has no version {number}")
        text = state_text(bytes(version.data), access.document.kind)
        return Response({**_version_payload(version), "text": text})


class VersionRestoreView(DocumentsApiView):
    @operation(
        summary="Restore a version",
        description=(
            "Makes the document's content that of the version again, as a new edit that every open "
            "editor receives at once; nobody's work is rewound. The document as it was is saved "
            "first as a named version, returned here: restoring it undoes the restore. Owners and editors."
        ),
        request=None,
        responses={200: RestoredSerializer},
        errors=[403],
    )
    def post(self, request: Request, key: str, number: int) -> Response:
        access = _access(request, key)
        access.require(WRITING_ROLES, "restore versions")
        try:
            before = version_restore(
                document_id=access.document.id,
                number=number,
                recipient_id=access.recipient.id if access.recipient else None,
            )
        except VersionNotFound as missing:
            raise exceptions.NotFound(str(missing)) from None
        return Response({"restored": number, "version": _version_payload(before)})


# --- Comments --------------------------------------------------------------------------------


class AnchorSerializer(serializers.Serializer):
    start = serializers.DictField(help_text="A Yjs relative position (Y.relativePositionToJSON)")
    end = serializers.DictField(help_text="A Yjs relative position (Y.relativePositionToJSON)")


class CommentCreateSerializer(StrictSerializer):
    body = text_field(min_length=1, max_length=BODY_MAX, help_text="@external_id mentions a member")
    anchor = AnchorSerializer(
        required=False, allow_null=True, help_text=f"The commented span; at most {ANCHOR_MAX_BYTES} bytes"
    )
    quote = text_field(max_length=QUOTE_MAX, required=False, allow_blank=True)
    # DRF's metaclass takes declared fields off the class, so "parent" does not shadow
    # Field.parent at run time; mypy sees only the class attribute.
    parent = serializers.IntegerField(  # type: ignore[assignment]
        min_value=1, required=False, allow_null=True, help_text="The thread this is a reply to"
    )


class CommentChangeSerializer(StrictSerializer):
    schema_extra = {"minProperties": 1}

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        return _something(attrs, "body or resolved")

    body = text_field(min_length=1, max_length=BODY_MAX, required=False)
    resolved = serializers.BooleanField(required=False)


class AuthorSerializer(serializers.Serializer):
    recipient = serializers.CharField()
    name = serializers.CharField(allow_blank=True)


class CommentBaseSerializer(serializers.Serializer):
    id = serializers.IntegerField(min_value=1)
    parent = serializers.IntegerField(min_value=1, allow_null=True)  # type: ignore[assignment]  # as above
    author = AuthorSerializer(allow_null=True)
    body = serializers.CharField()
    anchor = AnchorSerializer(allow_null=True)
    quote = serializers.CharField(allow_blank=True)
    mentions = serializers.ListField(child=serializers.CharField())
    resolved = serializers.BooleanField()
    resolved_at = serializers.DateTimeField(allow_null=True)
    resolved_by = serializers.CharField(allow_null=True)
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class CommentSerializer(CommentBaseSerializer):
    replies = CommentBaseSerializer(many=True)


class CommentListSerializer(serializers.Serializer):
    results = CommentSerializer(many=True)


def _comment_payload(
    comment: DocumentComment, replies: list[dict[str, Any]] | None = None, *, nested: bool = False
) -> dict[str, Any]:
    """A comment; a thread's replies listed inside it (``nested``) have no replies field."""
    payload = {
        "id": comment.id,
        "parent": comment.parent_id,
        "author": (
            {"recipient": comment.author.external_id, "name": comment.author.name or ""}
            if comment.author is not None
            else None
        ),
        "body": comment.body,
        "anchor": comment.anchor,
        "quote": comment.quote,
        "mentions": list(comment.mentions),
        "resolved": comment.resolved_at is not None,
        "resolved_at": comment.resolved_at,
        "resolved_by": comment.resolved_by.external_id if comment.resolved_by else None,
        "created_at": comment.created_at,
        "updated_at": comment.updated_at,
    }
    if not nested:
        payload["replies"] = replies or []
    return payload


def _comment_refused(refused: CommentRefused) -> Response:
    return errors_response({refused.field: [refused.message]}, refused.status)


class CommentListView(DocumentsApiView):
    @operation(
        summary="A document's comments",
        description="Threads, oldest first, each with its replies.",
        responses={200: CommentListSerializer},
    )
    def get(self, request: Request, key: str) -> Response:
        access = _access(request, key)
        comments = selectors.comments_of(access.document.id)
        replies: dict[int, list[dict[str, Any]]] = {}
        for comment in comments:
            if comment.parent_id is not None:
                replies.setdefault(comment.parent_id, []).append(_comment_payload(comment, nested=True))
        threads = [_comment_payload(c, replies.get(c.id)) for c in comments if c.parent_id is None]
        return Response({"results": threads})

    @operation(
        summary="Comment on a document",
        description=(
            "A thread on a span (``anchor``: two Yjs relative positions, and the ``quote`` it was "
            "made on), or a reply to a thread (``parent``). Every member may comment. Each member "
            "mentioned as @external_id is notified (document.mention: in-app, and email when not "
            "active in the app)."
        ),
        request=CommentCreateSerializer,
        responses={201: CommentSerializer},
        errors=[400],
    )
    def post(self, request: Request, key: str) -> Response:
        access = _access(request, key)
        serializer = CommentCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        anchor = data.get("anchor")
        comment = comment_create(
            document=access.document,
            author=access.recipient,
            body=data["body"],
            anchor=dict(anchor) if anchor is not None else None,
            quote=data.get("quote", ""),
            parent=data.get("parent"),
        )
        return Response(_comment_payload(comment), status=status.HTTP_201_CREATED)


class CommentView(DocumentsApiView):
    @operation(
        summary="Edit a comment or resolve its thread",
        description=(
            "``body``: its author only (members newly mentioned are notified). ``resolved``: a "
            "thread's author, an owner or an editor; a reply is resolved with its thread (409)."
        ),
        request=CommentChangeSerializer,
        responses={200: CommentSerializer},
        errors=[400, 403, 409],
    )
    def patch(self, request: Request, key: str, comment_id: int) -> Response:
        access = _access(request, key)
        comment = selectors.comment_of(access.document.id, comment_id)
        if comment is None:
            raise exceptions.NotFound(f"no comment {comment_id} in document {key!r}")
        serializer = CommentChangeSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            changed = comment_update(
                comment=comment,
                actor=access.recipient,
                role=access.role,
                changes=dict(serializer.validated_data),
            )
        except CommentRefused as refused:
            return _comment_refused(refused)
        return Response(_comment_payload(changed))

    @operation(
        summary="Delete a comment",
        description="A thread goes with its replies. Its author or an owner.",
        responses={204: None},
        errors=[403],
    )
    def delete(self, request: Request, key: str, comment_id: int) -> Response:
        access = _access(request, key)
        comment = selectors.comment_of(access.document.id, comment_id)
        if comment is None:
            raise exceptions.NotFound(f"no comment {comment_id} in document {key!r}")
        try:
            comment_delete(comment=comment, actor=access.recipient, role=access.role)
        except CommentRefused as refused:
            return _comment_refused(refused)
        return Response(status=status.HTTP_204_NO_CONTENT)
