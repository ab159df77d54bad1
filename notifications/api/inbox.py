"""The end user's inbox (end-user token or linked session). A user never sees or touches
another's items: someone else's item is a 404, like one that does not exist."""

from __future__ import annotations

from django.http import Http404
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from notifications import selectors
from notifications.api.auth import EndUserTokenAuthentication, IsEndUser
from notifications.api.common import operation, query
from notifications.api.schema import ID_MAX
from notifications.models import InboxItem
from notifications.services.inbox import inbox_item_mark_read, inbox_item_payload, inbox_mark_all_read

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
    event_id = serializers.UUIDField()


class InboxPageSerializer(serializers.Serializer):
    results = InboxItemSerializer(many=True)
    unread_count = serializers.IntegerField(min_value=0)
    last_seq = serializers.IntegerField(min_value=0, help_text="The newest seq; 0 before the first item")


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
        description="Without `after`: newest first, as a person reads it; `before` pages on. "
        "With `after`: every item with a greater seq in seq order, the resume cursor that never "
        "skips or repeats an item (`before` is then ignored).",
        parameters=[
            query("after", _SEQ, "Items with seq greater than this, ascending by seq", blank=True),
            query("before", _SEQ, "Items older than the item with this seq, newest first", blank=True),
            query(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": INBOX_LIMIT_MAX},
                f"1..{INBOX_LIMIT_MAX}, default {INBOX_LIMIT_DEFAULT}",
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
        items = selectors.inbox_items(recipient_id=recipient_id, after=after, before=before, limit=limit)
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


class InboxReadView(EndUserView):
    @operation(
        summary="Mark an item read", request=None, responses={200: InboxItemSerializer}, errors=[403, 404]
    )
    def post(self, request: Request, item_id: int) -> Response:
        try:
            item = inbox_item_mark_read(recipient_id=request.user.recipient_id, item_id=item_id)  # type: ignore[union-attr]
        except InboxItem.DoesNotExist as exc:
            raise Http404("no such inbox item") from exc
        return Response(inbox_item_payload(item))


class InboxReadAllView(EndUserView):
    @operation(
        summary="Mark every item read", request=None, responses={200: MarkedReadSerializer}, errors=[403]
    )
    def post(self, request: Request) -> Response:
        changed = inbox_mark_all_read(recipient_id=request.user.recipient_id)  # type: ignore[union-attr]
        return Response({"marked_read": changed, "unread_count": 0})
