"""Chat moderation over HTTP: ``POST /api/v1/streams/{stream}/moderation/`` acts on a
stream's chat, ``GET`` reads its moderation log. Both for the stream's owner and the
moderators the owner named, with their own end-user token (or signed-in session); anyone
else gets a 403 naming ``moderator``. Each action is the service the socket's viewers see
at once (streaming/services/chat.py) and answers with the log entry it wrote.

``chat_urlpatterns`` is mounted under ``/api/v1/streams/`` (before the v1 catch-all).
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.urls import URLPattern, re_path
from rest_framework import exceptions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from notifications.api.auth import EndUserTokenAuthentication, IsEndUser, end_user_recipient
from notifications.api.common import (
    StrictSerializer,
    WholeNumberField,
    errors_response,
    operation,
    text_field,
)
from notifications.api.pagination import PAGE_PARAMETERS, Pagination, page_of
from notifications.api.schema import ID_MAX
from notifications.models import Recipient
from notifications.services.validation import EXTERNAL_ID_MAX
from streaming.chat_selectors import chat_moderation_log
from streaming.models import ModerationAction, Stream
from streaming.selectors import stream_by_key
from streaming.services.chat import (
    BAN,
    DELETE,
    MODERATOR_ADD,
    MODERATOR_REMOVE,
    MUTE,
    MUTE_MINUTES_MAX,
    SLOW_MODE,
    SLOW_MODE_SECONDS_MAX,
    UNBAN,
    ChatConflict,
    ChatForbidden,
    ChatRefused,
    chat_ban,
    chat_delete,
    chat_mute,
    chat_slow_mode,
    chat_unban,
    moderator_add,
    moderator_remove,
)

# What each action needs besides itself; anything else given is refused, not ignored.
ACTION_FIELDS: dict[str, tuple[str, ...]] = {
    DELETE: ("message_id",),
    MUTE: ("target", "minutes"),
    BAN: ("target",),
    UNBAN: ("target",),
    SLOW_MODE: ("seconds",),
    MODERATOR_ADD: ("target",),
    MODERATOR_REMOVE: ("target",),
}
OPTIONAL_FIELDS = ("message_id", "target", "minutes", "seconds")


class ModerationSerializer(StrictSerializer):
    action = serializers.ChoiceField(
        choices=list(ACTION_FIELDS),
        help_text=(
            "delete (message_id), mute (target, minutes), ban (target), unban (target: lifts a ban and a "
            "mute), slow_mode (seconds; 0 is off), moderator_add / moderator_remove (target; the owner only)"
        ),
    )
    message_id = WholeNumberField(
        min_value=1, max_value=ID_MAX, required=False, help_text="The message to delete"
    )
    target = text_field(
        min_length=1, max_length=EXTERNAL_ID_MAX, required=False, help_text="The viewer's external id"
    )
    minutes = WholeNumberField(
        min_value=1, max_value=MUTE_MINUTES_MAX, required=False, help_text="How long the mute lasts"
    )
    seconds = WholeNumberField(
        min_value=0,
        max_value=SLOW_MODE_SECONDS_MAX,
        required=False,
        help_text="Slow mode: one message per viewer every this many seconds; 0 turns it off",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        needed = ACTION_FIELDS[attrs["action"]]
        errors: dict[str, list[str]] = {
            name: [f"required for action {attrs['action']!r}"] for name in needed if name not in attrs
        }
        errors.update(
            {
                name: [f"not used by action {attrs['action']!r}; it takes {', '.join(needed)}"]
                for name in OPTIONAL_FIELDS
                if name in attrs and name not in needed
            }
        )
        if errors:
            raise serializers.ValidationError(errors)
        return attrs


class ModerationEntrySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    action = serializers.ChoiceField(choices=list(ACTION_FIELDS))
    moderator = serializers.CharField(
        source="moderator.external_id", allow_null=True, help_text="Who did it (null: since deleted)"
    )
    target = serializers.CharField(
        source="target.external_id", allow_null=True, help_text="Whom it was done to, if anyone"
    )
    message_id = serializers.IntegerField(allow_null=True, help_text="The message deleted, for delete")
    details = serializers.DictField(
        help_text="mute: minutes, until; slow_mode: seconds, before; unban: lifted"
    )
    created_at = serializers.DateTimeField()


def _stream(key: str) -> Stream:
    stream = stream_by_key(key)
    if stream is None:
        raise exceptions.NotFound(f"no stream {key!r}")
    return stream


def _target(external_id: str) -> Recipient:
    recipient = Recipient.objects.filter(external_id=external_id).first()
    if recipient is None:
        raise exceptions.ValidationError({"target": [f"no viewer with external id {external_id!r}"]})
    return recipient


def _refused(refused: ChatRefused) -> Response:
    code: int = status.HTTP_400_BAD_REQUEST
    if isinstance(refused, ChatForbidden):
        code = status.HTTP_403_FORBIDDEN
    elif isinstance(refused, ChatConflict):
        code = status.HTTP_409_CONFLICT
    return errors_response({refused.field: [refused.message]}, code)


def _act(stream: Stream, actor: Recipient, data: dict[str, Any]) -> ModerationAction:
    action = data["action"]
    if action == DELETE:
        return chat_delete(stream=stream, moderator=actor, message_id=data["message_id"])
    if action == SLOW_MODE:
        return chat_slow_mode(stream=stream, moderator=actor, seconds=data["seconds"])
    target = _target(data["target"])
    if action == MUTE:
        return chat_mute(stream=stream, moderator=actor, target=target, minutes=data["minutes"])
    if action == BAN:
        return chat_ban(stream=stream, moderator=actor, target=target)
    if action == UNBAN:
        return chat_unban(stream=stream, moderator=actor, target=target)
    if action == MODERATOR_ADD:
        return moderator_add(stream=stream, owner=actor, recipient=target)
    return moderator_remove(stream=stream, owner=actor, recipient=target)


class ModerationView(APIView):
    authentication_classes = [EndUserTokenAuthentication]
    permission_classes = [IsEndUser]

    @operation(
        summary="A stream's moderation log",
        description=(
            "Newest first: who deleted, muted, banned, unbanned, set slow mode, named or removed a "
            "moderator, whom, and when. For the stream's owner and moderators (others: 403)."
        ),
        parameters=PAGE_PARAMETERS,
        responses={200: page_of("ModerationLogPage", ModerationEntrySerializer(many=True))},
        errors=[400, 403],
    )
    def get(self, request: Request, stream: str) -> Response:
        chat = _stream(stream)
        caller = end_user_recipient(request)
        assert caller is not None  # IsEndUser
        entries: QuerySet[ModerationAction] | None = chat_moderation_log(stream=chat, recipient_id=caller.id)
        if entries is None:
            return errors_response(
                {"moderator": [f"only the owner and moderators of {chat.key!r} read its moderation log"]},
                status.HTTP_403_FORBIDDEN,
            )
        paginator = Pagination()
        paginator.ordering = "-id"
        page = paginator.paginate_queryset(entries, request, view=self)
        return paginator.get_paginated_response(ModerationEntrySerializer(page, many=True).data)

    @operation(
        summary="Moderate a stream's chat",
        description=(
            "Delete a message, mute a viewer for some minutes, ban or unban them, set slow mode, or (the "
            "owner only) name or remove a moderator. Every viewer's socket sees the effect at once "
            "(`deleted` and `moderation` frames). Answers with the log entry written; 409 when it would "
            "change nothing (deleted already, banned already, neither banned nor muted)."
        ),
        request=ModerationSerializer,
        responses={201: ModerationEntrySerializer},
        errors=[400, 403, 409],
    )
    def post(self, request: Request, stream: str) -> Response:
        chat = _stream(stream)
        caller = end_user_recipient(request)
        assert caller is not None  # IsEndUser
        serializer = ModerationSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            entry = _act(chat, caller, serializer.validated_data)
        except ChatRefused as refused:
            return _refused(refused)
        return Response(ModerationEntrySerializer(entry).data, status=status.HTTP_201_CREATED)


# Mounted under /api/v1/streams/. The same pattern as streaming/urls.py's ``stream``
# converter, spelled out so that these routes do not depend on which module registers it first.
chat_urlpatterns: list[URLPattern] = [
    re_path(
        r"^(?P<stream>[a-z0-9][a-z0-9-]{1,62}[a-z0-9])/moderation/$",
        ModerationView.as_view(),
        name="stream-moderation",
    ),
]
