"""Recurring reminders: an event at each occurrence of an RFC 5545 rule
(notifications/services/reminders.py)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from django.http import Http404
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from notifications.api.common import JsonObjectField, StrictSerializer, errors_response, operation
from notifications.api.events import KeyField, recipients_field, wall_time_parse
from notifications.models import Reminder, ReminderStatus
from notifications.services.reminders import RULE_MAX, ReminderError, reminder_cancel, reminder_create


class ReminderCreateSerializer(StrictSerializer):
    type = KeyField(max_length=100, trim_whitespace=False, help_text="Key of an existing notification type")
    recipients = recipients_field(required=False)
    topic = KeyField(
        max_length=100, trim_whitespace=False, required=False, help_text="Key of an existing topic"
    )
    data = JsonObjectField(required=False, default=dict, help_text="Template variables of every occurrence")  # type: ignore[assignment]
    rule = serializers.CharField(
        max_length=RULE_MAX,
        help_text="An RFC 5545 RRULE, at most hourly: FREQ=WEEKLY;BYDAY=MO, FREQ=DAILY;COUNT=5, "
        "FREQ=MONTHLY;BYMONTHDAY=1;UNTIL=20271231T000000",
    )
    starts_at = serializers.CharField(
        max_length=40, help_text="Wall-clock time of the first occurrence, no offset: 2026-12-07T09:00"
    )
    timezone = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=64,
        default="",
        help_text="IANA timezone of the wall-clock times; empty: each recipient's own",
    )

    def validate_starts_at(self, value: str) -> datetime:
        return wall_time_parse(value, hint="the timezone field, or each recipient's, says where")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("recipients" in attrs) == ("topic" in attrs):
            raise serializers.ValidationError({"recipients": ["give either recipients or topic, not both"]})
        return attrs


class ReminderSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    type = serializers.CharField()
    status = serializers.ChoiceField(choices=ReminderStatus.choices)
    rule = serializers.CharField()
    starts_at = serializers.CharField()
    timezone = serializers.CharField(help_text="Empty: each recipient's own")
    next_at = serializers.CharField(allow_null=True, help_text="The next occurrence's wall-clock time")
    sent = serializers.IntegerField(min_value=0, help_text="Occurrences stored as events")


def _payload(reminder: Reminder) -> dict[str, Any]:
    return {
        "id": str(reminder.id),
        "type": reminder.notification_type.key,
        "status": reminder.status,
        "rule": reminder.rule,
        "starts_at": reminder.starts_at,
        "timezone": reminder.timezone,
        "next_at": reminder.next_at or None,
        "sent": reminder.sent,
    }


def _reminder(reminder_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(reminder_id)
    except ValueError as exc:
        raise Http404(f"no reminder {reminder_id!r}") from exc


class ReminderListView(APIView):
    @operation(
        summary="Create a recurring reminder",
        description="An event of `type` at each occurrence of `rule` from `starts_at`, to `recipients` or a "
        "`topic`. Times are wall-clock times in `timezone`, or in each recipient's own when it is empty "
        "(a time the clocks skip moves forward by the skip; one that happens twice is its first). "
        "Each occurrence is stored once, even with two beat processes.",
        request=ReminderCreateSerializer,
        responses={201: ReminderSerializer},
        errors=[400],
    )
    def post(self, request: Request) -> Response:
        body = ReminderCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        given = body.validated_data
        try:
            reminder = reminder_create(
                api_key=request.user.api_key,  # type: ignore[union-attr]
                type_key=given["type"],
                rule=given["rule"],
                starts_at=given["starts_at"],
                recipients=given.get("recipients"),
                topic_key=given.get("topic"),
                data=given.get("data") or {},
                timezone_name=given.get("timezone", ""),
            )
        except ReminderError as exc:
            return errors_response(exc.errors)
        return Response(_payload(reminder), status=status.HTTP_201_CREATED)


class ReminderDetailView(APIView):
    @operation(summary="A recurring reminder", responses={200: ReminderSerializer}, errors=[404])
    def get(self, request: Request, reminder_id: str) -> Response:
        reminder = (
            Reminder.objects.select_related("notification_type").filter(id=_reminder(reminder_id)).first()
        )
        if reminder is None:
            raise Http404("no such reminder")
        return Response(_payload(reminder))

    @operation(
        summary="Cancel a recurring reminder",
        description="No further occurrence is stored (204, also when it was cancelled or finished already); "
        "occurrences already stored are events of their own (`DELETE /api/v1/events/{id}/`).",
        responses={204: None},
    )
    def delete(self, request: Request, reminder_id: str) -> Response:
        if reminder_cancel(reminder_id=_reminder(reminder_id)) is None:
            raise Http404("no such reminder")
        return Response(status=status.HTTP_204_NO_CONTENT)
