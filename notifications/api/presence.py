"""Presence for services: who of these end users is online, idle or offline, and when each
was last seen (presence/services.py)."""

from __future__ import annotations

import redis
from drf_spectacular.utils import OpenApiParameter
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from notifications import selectors
from notifications.api.common import errors_response, operation
from notifications.services.validation import EXTERNAL_ID_MAX
from presence.services import IDLE, OFFLINE, ONLINE, presence_of

PRESENCE_RECIPIENTS_MAX = 500


# The answer is the map itself (DESIGN's contract): external_id -> presence.
PRESENCE_MAP_SCHEMA = {
    "type": "object",
    "additionalProperties": {
        "type": "object",
        "properties": {
            "status": {"type": "string", "enum": [ONLINE, IDLE, OFFLINE]},
            "last_seen": {
                "type": "string",
                "format": "date-time",
                "nullable": True,
                "description": "Null when never seen",
            },
        },
        "required": ["status", "last_seen"],
        "additionalProperties": False,
    },
    "description": "external_id -> presence, one entry per external_id asked",
}


def _external_ids(request: Request) -> list[str]:
    raw = request.query_params.get("recipients", "")
    ids = [part for part in raw.split(",") if part != ""]
    if not ids:
        raise serializers.ValidationError({"recipients": ["required: external_ids separated by commas"]})
    if len(ids) > PRESENCE_RECIPIENTS_MAX:
        raise serializers.ValidationError(
            {"recipients": [f"at most {PRESENCE_RECIPIENTS_MAX} external_ids, got {len(ids)}"]}
        )
    too_long = [external_id for external_id in ids if len(external_id) > EXTERNAL_ID_MAX]
    if too_long:
        raise serializers.ValidationError(
            {
                "recipients": [
                    f"an external_id has at most {EXTERNAL_ID_MAX} characters: {too_long[0][:40]!r}..."
                ]
            }
        )
    return list(dict.fromkeys(ids))


class PresenceView(APIView):
    @operation(
        summary="Presence of end users",
        description=(
            "Online while any of the user's connections (a tab, an app) is live and active; idle "
            "while every live one reported inactivity; offline with none. A socket makes its user "
            "online as it opens; after the last one closes cleanly the user is offline within 15 s "
            "(a reload within that grace does not flap); when heartbeats stop without a close, "
            "within 90 s."
        ),
        parameters=[
            OpenApiParameter(
                "recipients",
                {"type": "string", "minLength": 1},
                OpenApiParameter.QUERY,
                required=True,
                description=f"external_ids separated by commas, up to {PRESENCE_RECIPIENTS_MAX}; an unknown one is a 400",
            )
        ],
        responses={200: PRESENCE_MAP_SCHEMA},
        errors=[400],
    )
    def get(self, request: Request) -> Response:
        external_ids = _external_ids(request)
        known = selectors.recipient_ids_by_external_id(external_ids=external_ids)
        unknown = [external_id for external_id in external_ids if external_id not in known]
        if unknown:
            raise serializers.ValidationError(
                {"recipients": [f"no recipient with external_id {', '.join(repr(x) for x in unknown[:10])}"]}
            )
        try:
            presence = presence_of(known.values())
        except redis.RedisError:
            # Presence lives in Redis: without it there is no honest answer (not "offline").
            unavailable = errors_response(
                {"service": ["presence is unavailable (Redis does not answer); retry shortly"]},
                status.HTTP_503_SERVICE_UNAVAILABLE,
            )
            unavailable["Retry-After"] = "5"
            return unavailable
        return Response(
            {
                external_id: {
                    "status": presence[known[external_id]].status,
                    "last_seen": presence[known[external_id]].last_seen,
                }
                for external_id in external_ids
            }
        )
