"""What the v1 OpenAPI schema states beyond drf-spectacular's inference, next to what the
server enforces: patterns of values, the answers of a DELETE with a body, the request
schemas of strict serializers, free-form JSON, and each path parameter's URL converter
beside its schema. schemathesis checks that it tells the truth (tests/e2e/test_api_schema.py).
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiSerializerExtension, OpenApiSerializerFieldExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import ResolvedComponent
from drf_spectacular.utils import PolymorphicProxySerializer

from notifications.models import KEY_PATTERN, SuppressionKind
from notifications.services.validation import EXTERNAL_ID_MAX

# PostgreSQL text cannot hold NUL, and DRF's CharField refuses it: every free-text
# request string carries this pattern in the schema (StrictSerializerSchema adds it).
NO_NUL_PATTERN = r"^[^\x00]*$"
# Ids are bigint columns; longer digit strings do not match the route, so they are a
# 404 instead of an overflowing query.
ID_MAX = 10**18 - 1


# What both Django's EmailValidator (email_normalise) and "format: email" accept, in ASCII
# and bounded by shape (generators cannot build values for lookaheads): a dot-atom local
# part of at most 64 characters, and up to four domain labels of letters and digits joined
# by single hyphens (a "--" at positions 3-4 is reserved for IDNA) before a top-level label
# of two or more letters. "format: email" alone would promise "a@b.c", which Django
# refuses; what Django takes beyond the pattern (longer or more dotted addresses, punycode)
# is accepted and left unpromised.
_ATOM = "[-!#$%&'*+/=?^_`{}|~0-9A-Za-z]"
LABEL_PATTERN = _LABEL = "[A-Za-z0-9]{1,20}(-[A-Za-z0-9]{1,20})?"
EMAIL_PATTERN = rf"^{_ATOM}{{1,32}}(\.{_ATOM}{{1,15}}){{0,2}}@{_LABEL}(\.{_LABEL}){{0,3}}\.[A-Za-z]{{2,63}}$"


class ApiSchema(AutoSchema):
    """drf-spectacular's AutoSchema with two facts of this API it cannot infer: a DELETE
    may carry a body (unsubscribing many recipients at once), and a body documented as a
    oneOf of shapes (events, webhooks, suppressions, replays) is required: each shape has
    required fields."""

    def _get_request_body(self, direction: str = "request") -> Any:
        method = self.method
        if method == "DELETE" and self.get_request_serializer() is not None:
            self.method = "POST"  # AutoSchema documents bodies of POST, PUT and PATCH only
        try:
            body = super()._get_request_body(direction)
        finally:
            self.method = method
        if body is not None and isinstance(self.get_request_serializer(), PolymorphicProxySerializer):
            body["required"] = True
        return body


def _forbid_nul(schema: dict[str, Any]) -> None:
    # A string with branches (anyOf) is judged by its branches, which carry their patterns.
    if schema.get("type") == "string" and not {"pattern", "format", "enum", "anyOf", "oneOf"} & set(schema):
        schema["pattern"] = NO_NUL_PATTERN
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            _forbid_nul(schema[key])
    for child in schema.get("properties", {}).values():
        _forbid_nul(child)


class StrictSerializerSchema(OpenApiSerializerExtension):
    """Request schemas of strict serializers: no additional properties, no NUL in text."""

    # By name: api/common.py imports this module, not the other way round.
    target_class = "notifications.api.common.StrictSerializer"
    match_subclasses = True

    def map_serializer(self, auto_schema: Any, direction: str) -> dict[str, Any]:
        schema: dict[str, Any] = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        target = self.target if isinstance(self.target, type) else type(self.target)
        if not target.__dict__.get("__doc__"):
            # drf-spectacular would describe it with the docstring of a base class.
            schema.pop("description", None)
        if direction == "request":
            schema["additionalProperties"] = False
            schema.update(getattr(self.target, "schema_extra", {}))
            for child in schema.get("properties", {}).values():
                _forbid_nul(child)
        return schema


# --- Free-form JSON ----------------------------------------------------------------------------

# OpenAPI 3.1 (JSON Schema 2020-12): 3.0 has no propertyNames for the keys.
JSON_VALUE_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "null"},
        {"type": "string", "pattern": NO_NUL_PATTERN},
        {"type": "number"},
        {"type": "boolean"},
        {"type": "array", "items": {"$ref": "#/components/schemas/JsonValue"}},
        {
            "type": "object",
            "additionalProperties": {"$ref": "#/components/schemas/JsonValue"},
            "propertyNames": {"pattern": NO_NUL_PATTERN},
        },
    ],
    "description": "Any JSON value without NUL characters",
}


class JsonObjectFieldSchema(OpenApiSerializerFieldExtension):
    target_class = "notifications.api.common.JsonObjectField"

    def map_serializer_field(self, auto_schema: Any, direction: str) -> dict[str, Any]:
        component = ResolvedComponent(
            name="JsonValue", type=ResolvedComponent.SCHEMA, object="JsonValue", schema=JSON_VALUE_SCHEMA
        )
        auto_schema.registry.register_on_missing(component)
        return {
            "type": "object",
            "additionalProperties": component.ref,
            "propertyNames": {"pattern": NO_NUL_PATTERN},
        }


# --- Path parameters ----------------------------------------------------------------------


class SegmentConverter:
    """One path segment without NUL (PostgreSQL cannot compare text holding one)."""

    regex = r"[^/\x00]+"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


class AddressConverter(SegmentConverter):
    """The rest of the path, "/" included: an email address may hold one ("a/b@example.com")
    and must be removable from the suppression list like any other."""

    regex = r"[^\x00]+"


class IdConverter:
    """A positive bigint id; anything else does not match the route (a JSON 404)."""

    regex = "[0-9]{1,18}"

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value: int) -> str:
        return str(value)


_ID = {"type": "integer", "minimum": 1, "maximum": ID_MAX}
PATH_PARAMETERS: dict[str, tuple[dict[str, Any], str]] = {
    "external_id": (
        # "bulk" is the bulk upsert (POST /recipients/bulk/), not a recipient.
        {"type": "string", "minLength": 1, "maxLength": EXTERNAL_ID_MAX, "pattern": r"^(?!bulk$)[^/\x00]+$"},
        "The producing service's own id of the user (no '/'; 'bulk' is reserved)",
    ),
    "key": ({"type": "string", "maxLength": 100, "pattern": KEY_PATTERN}, "Key: a-z, 0-9 and . _ : -"),
    "event_id": ({"type": "string", "format": "uuid"}, "The event's id"),
    "reminder_id": ({"type": "string", "format": "uuid"}, "The reminder's id"),
    "delivery_id": (_ID, "Id of the dead delivery"),
    "campaign_id": (_ID, "Id of the campaign"),
    "segment_id": (_ID, "Id of the segment"),
    "endpoint_id": (_ID, "Id of the webhook endpoint"),
    "item_id": (_ID, "Id of the inbox item"),
    "number": ({"type": "integer", "minimum": 1, "maximum": 999_999_999}, "The version's number"),
    "comment_id": (_ID, "Id of the comment"),
    # iot/urls.py, iot/api_rules.py
    "device_key": (
        {"type": "string", "maxLength": 64, "pattern": r"^[a-z0-9][a-z0-9_-]{0,63}$"},
        "The device's key: a-z, 0-9, _ and -",
    ),
    "command_id": (_ID, "Id of the command"),
    "alert_id": (_ID, "Id of the alert"),
    # gaming/urls.py
    "ticket_id": ({"type": "string", "format": "uuid"}, "The matchmaking ticket's id"),
    "mode": ({"type": "string", "maxLength": 40, "pattern": r"^[a-z][a-z0-9_-]{0,39}$"}, "A game mode's key"),
    # streaming/urls.py
    "stream": (
        {"type": "string", "minLength": 3, "maxLength": 64, "pattern": r"^[a-z0-9][a-z0-9-]{1,62}[a-z0-9]$"},
        "The stream's public key",
    ),
    "kind": ({"type": "string", "enum": list(SuppressionKind.values)}, "What the address is"),
    "address": (
        {"type": "string", "minLength": 1, "maxLength": 320, "pattern": r"^[^\x00]+$"},
        "The address as listed or in any form that normalises to it ('/' encoded as %2F)",
    ),
}
