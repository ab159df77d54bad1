"""The end user's inbox (end-user token or linked session). A user never sees or touches
another's items: someone else's item is a 404, like one that does not exist."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.http import Http404, StreamingHttpResponse
from django.http.response import HttpResponseBase
from drf_spectacular.utils import OpenApiParameter, extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from notifications import selectors
from notifications.api.auth import EndUserTokenAuthentication, IsEndUser
from notifications.api.common import StrictSerializer, operation, query
from notifications.api.schema import ID_MAX
from notifications.models import InboxItem
from notifications.services.inbox import (
    InboxChangeRefused,
    inbox_item_archive,
    inbox_item_mark_read,
    inbox_item_mark_unread,
    inbox_item_payload,
    inbox_item_snooze,
    inbox_item_unarchive,
    inbox_item_unsnooze,
    inbox_mark_all_read,
)
from notifications.services.live_inbox import inbox_wait

INBOX_LIMIT_DEFAULT = 50
# selectors.inbox_items clamps to this; the API refuses more rather than answer fewer silently.
INBOX_LIMIT_MAX = selectors.INBOX_PAGE_MAX


@extend_schema_field({"type": "object", "additionalProperties": {}, "description": "The event's data"})
class DataField(serializers.DictField):
    pass


class InboxItemSerializer(serializers.Serializer):
    """Documentation of ``inbox_item_payload`` (the one shape of an item everywhere)."""

    id = serializers.IntegerField()
    seq = serializers.IntegerField(min_value=1)
    type = serializers.CharField()
    category = serializers.CharField()
    title = serializers.CharField()
    body = serializers.CharField()
    url = serializers.CharField()
    data = DataField()  # type: ignore[assignment]
    read = serializers.BooleanField()
    read_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    accepted_at = serializers.DateTimeField(
        help_text="Where the item is listed: when its event was accepted, or when its snooze ran out"
    )
    event_id = serializers.UUIDField()
    archived = serializers.BooleanField()
    archived_at = serializers.DateTimeField(allow_null=True)
    snoozed_until = serializers.DateTimeField(allow_null=True, help_text="Hidden from the list until then")


class InboxPageSerializer(serializers.Serializer):
    results = InboxItemSerializer(many=True)
    unread_count = serializers.IntegerField(min_value=0)
    last_seq = serializers.IntegerField(min_value=0, help_text="The newest seq; 0 before the first item")


class PollSerializer(serializers.Serializer):
    results = InboxItemSerializer(many=True, help_text="Items with seq greater than `after`, ascending")
    last_seq = serializers.IntegerField(min_value=0, help_text="The newest seq; 0 before the first item")
    unread_count = serializers.IntegerField(min_value=0)


class SnoozeSerializer(StrictSerializer):
    until = serializers.DateTimeField(
        help_text="When the item comes back (ISO 8601 with an offset), in the future"
    )


class UnreadCountSerializer(serializers.Serializer):
    count = serializers.IntegerField(min_value=0)


class MarkedReadSerializer(serializers.Serializer):
    marked_read = serializers.IntegerField(min_value=0, help_text="Items that were unread")
    unread_count = serializers.IntegerField(min_value=0, max_value=0)


class EndUserView(APIView):
    authentication_classes = [EndUserTokenAuthentication]
    permission_classes = [IsEndUser]


def _whole_number(request: Request, name: str, *, minimum: int, maximum: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if not raw.isascii() or not raw.isdigit() or not minimum <= int(raw) <= maximum:
        raise serializers.ValidationError(
            {name: [f"must be a whole number from {minimum} to {maximum}, got {raw!r}"]}
        )
    return int(raw)


_SEQ = {"type": "integer", "minimum": 0, "maximum": ID_MAX}


class InboxView(EndUserView):
    @operation(
        summary="The end user's inbox",
        description="Without `after`: newest first, as a person reads it, without archived and "
        "snoozed items (`archived=true`: the archived ones); `before` pages on. With `after`: every "
        "item with a greater seq in seq order, archived and snoozed ones included (each says so), "
        "the resume cursor that never skips or repeats an item (`before` and `archived` are then "
        "ignored).",
        parameters=[
            query("after", _SEQ, "Items with seq greater than this, ascending by seq", blank=True),
            query("before", _SEQ, "Items older than the item with this seq, newest first", blank=True),
            query(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": INBOX_LIMIT_MAX},
                f"1..{INBOX_LIMIT_MAX}, default {INBOX_LIMIT_DEFAULT}",
                blank=True,
            ),
            query(
                "archived",
                {"type": "string", "enum": ["true", "false"]},
                "true: the archived items",
                blank=True,
            ),
        ],
        responses={200: InboxPageSerializer},
        errors=[400, 403],
    )
    def get(self, request: Request) -> Response:
        recipient_id = request.user.recipient_id  # type: ignore[union-attr]
        after = _whole_number(request, "after", minimum=0, maximum=ID_MAX)
        before = _whole_number(request, "before", minimum=0, maximum=ID_MAX)
        limit = _whole_number(request, "limit", minimum=1, maximum=INBOX_LIMIT_MAX) or INBOX_LIMIT_DEFAULT
        archived = request.query_params.get("archived", "")
        if archived not in ("", "true", "false"):
            raise serializers.ValidationError({"archived": [f"must be true or false, got {archived!r}"]})
        items = selectors.inbox_items(
            recipient_id=recipient_id, after=after, before=before, limit=limit, archived=archived == "true"
        )
        return Response(
            {
                "results": [inbox_item_payload(item) for item in items],
                "unread_count": selectors.inbox_unread_count(recipient_id=recipient_id),
                "last_seq": selectors.inbox_last_seq(recipient_id=recipient_id),
            }
        )


class InboxUnreadCountView(EndUserView):
    @operation(summary="Unread count", responses={200: UnreadCountSerializer}, errors=[403])
    def get(self, request: Request) -> Response:
        return Response({"count": selectors.inbox_unread_count(recipient_id=request.user.recipient_id)})  # type: ignore[union-attr]


def _item_action(request: Request, change: Any, item_id: int, **kwargs: Any) -> Response:
    try:
        item = change(recipient_id=request.user.recipient_id, item_id=item_id, **kwargs)  # type: ignore[union-attr]
    except InboxItem.DoesNotExist as exc:
        raise Http404("no such inbox item") from exc
    except InboxChangeRefused as exc:
        raise serializers.ValidationError({exc.field: [exc.message]}) from exc
    return Response(inbox_item_payload(item))


class InboxReadView(EndUserView):
    @operation(
        summary="Mark an item read", request=None, responses={200: InboxItemSerializer}, errors=[403, 404]
    )
    def post(self, request: Request, item_id: int) -> Response:
        return _item_action(request, inbox_item_mark_read, item_id)


class InboxUnreadView(EndUserView):
    @operation(
        summary="Mark an item unread again",
        request=None,
        responses={200: InboxItemSerializer},
        errors=[403, 404],
    )
    def post(self, request: Request, item_id: int) -> Response:
        return _item_action(request, inbox_item_mark_unread, item_id)


class InboxArchiveView(EndUserView):
    @operation(
        summary="Archive an item",
        description="It leaves the inbox list (`?archived=true` lists it) and counts as read; a snooze ends.",
        request=None,
        responses={200: InboxItemSerializer},
        errors=[403, 404],
    )
    def post(self, request: Request, item_id: int) -> Response:
        return _item_action(request, inbox_item_archive, item_id)


class InboxUnarchiveView(EndUserView):
    @operation(
        summary="Bring an archived item back",
        request=None,
        responses={200: InboxItemSerializer},
        errors=[403, 404],
    )
    def post(self, request: Request, item_id: int) -> Response:
        return _item_action(request, inbox_item_unarchive, item_id)


class InboxSnoozeView(EndUserView):
    @operation(
        summary="Snooze an item",
        description="Hidden until `until` (at most a year ahead), then back on top of the list, unread, "
        "on every open tab and device. DELETE ends the snooze now.",
        request=SnoozeSerializer,
        responses={200: InboxItemSerializer},
        errors=[400, 403, 404],
    )
    def post(self, request: Request, item_id: int) -> Response:
        body = SnoozeSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        return _item_action(request, inbox_item_snooze, item_id, until=body.validated_data["until"])

    @operation(
        summary="End a snooze now", request=None, responses={200: InboxItemSerializer}, errors=[403, 404]
    )
    def delete(self, request: Request, item_id: int) -> Response:
        return _item_action(request, inbox_item_unsnooze, item_id)


class InboxReadAllView(EndUserView):
    @operation(
        summary="Mark every item read", request=None, responses={200: MarkedReadSerializer}, errors=[403]
    )
    def post(self, request: Request) -> Response:
        changed = inbox_mark_all_read(recipient_id=request.user.recipient_id)  # type: ignore[union-attr]
        return Response({"marked_read": changed, "unread_count": 0})


class InboxPollView(EndUserView):
    @operation(
        summary="Long-poll for new items",
        description="Answers at once with every item after `after` (up to `limit`, ascending by seq) "
        "when there are any; otherwise holds the request up to 25 s (INBOX_POLL_SECONDS) and answers "
        "as soon as one arrives, or with none. Poll again with the answer's `last_seq`.",
        parameters=[
            OpenApiParameter(
                "after",
                _SEQ,
                OpenApiParameter.QUERY,
                required=True,
                description="The last seq the client has",
            ),
            query(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": INBOX_LIMIT_MAX},
                f"1..{INBOX_LIMIT_MAX}, default {INBOX_LIMIT_MAX}",
                blank=True,
            ),
        ],
        responses={200: PollSerializer},
        errors=[400, 403],
    )
    def get(self, request: Request) -> HttpResponseBase:
        recipient_id = request.user.recipient_id  # type: ignore[union-attr]
        after = _whole_number(request, "after", minimum=0, maximum=ID_MAX)
        if after is None:
            raise serializers.ValidationError(
                {"after": ["required: the last seq the client has (0 for none)"]}
            )
        limit = _whole_number(request, "limit", minimum=1, maximum=INBOX_LIMIT_MAX) or INBOX_LIMIT_MAX
        body = _poll_answer(recipient_id, after, limit)
        if body["results"]:
            return Response(body)
        # Nothing yet: the status and headers go out now, the body when an item arrives or
        # the time is up. The wait runs on the server's event loop as the response's
        # stream (as the SSE stream does), so a held poll keeps no request thread.
        response = StreamingHttpResponse(
            _held_answer(recipient_id, after, limit), content_type="application/json"
        )
        response["Cache-Control"] = "no-store"
        response["X-Accel-Buffering"] = "no"
        return response


def _poll_answer(recipient_id: int, after: int, limit: int) -> dict[str, Any]:
    # The newest seq is read before the items: an item committed in between is then beyond
    # it, so a client polling again after ``last_seq`` cannot step over it.
    newest = selectors.inbox_last_seq(recipient_id=recipient_id)
    items = selectors.inbox_items(recipient_id=recipient_id, after=after, limit=limit)
    last_seq = items[-1]["seq"] if items else max(after, newest)
    return {
        "results": [inbox_item_payload(item) for item in items],
        "last_seq": last_seq,
        "unread_count": selectors.inbox_unread_count(recipient_id=recipient_id),
    }


async def _held_answer(recipient_id: int, after: int, limit: int) -> AsyncGenerator[bytes, None]:
    await inbox_wait(recipient_id=recipient_id, after=after, timeout=settings.INBOX_POLL_SECONDS)
    body = await database_sync_to_async(_poll_answer)(recipient_id, after, limit)
    yield json.dumps(body, cls=DjangoJSONEncoder, separators=(",", ":")).encode()
