"""Pieces every v1 resource module shares: the strict serializer, the one error body and
how it is documented, ``operation()`` (a view method's schema with the answers every
route can give: 401 without credentials, 503 while the database is down, 404 outside a
path parameter's pattern), and query parameters. What the schema states beyond that
lives in api/schema.py; cursor pages in api/pagination.py.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from notifications.api.schema import PATH_PARAMETERS, ApiSchema
from notifications.services.validation import RuleViolation

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

# --- Serializers ------------------------------------------------------------------------------


def _json_type(value: Any) -> str:
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
    }.get(type(value), type(value).__name__)


def json_type_errors(field: serializers.Field, value: Any) -> Any:
    """What is wrong with the JSON type of ``value`` for ``field``, or None. DRF coerces
    (5 becomes "5", "yes" becomes True, "5" becomes 5); the schema promises JSON types, so
    strict serializers refuse what would be coerced."""
    if value is None or isinstance(field, serializers.Serializer):
        return None  # null is judged by allow_null; nested serializers check themselves
    expected: str | None = None
    if isinstance(field, serializers.CharField | serializers.ChoiceField | serializers.DateTimeField):
        expected = None if isinstance(value, str) else "a string"
    elif isinstance(field, serializers.BooleanField):
        expected = None if isinstance(value, bool) else "true or false"
    elif isinstance(field, serializers.IntegerField):
        # 3.0 is an integer in JSON Schema; WholeNumberField takes it as 3.
        whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        expected = None if whole and not isinstance(value, bool) else "a whole number"
    elif isinstance(field, serializers.ListField):
        if not isinstance(value, list):
            expected = "a list"
        else:
            items = {str(i): json_type_errors(field.child, item) for i, item in enumerate(value)}
            items = {i: problem for i, problem in items.items() if problem}
            return items or None
    elif isinstance(field, serializers.DictField):
        if not isinstance(value, dict):
            expected = "an object"
        else:
            entries = {key: json_type_errors(field.child, item) for key, item in value.items()}
            entries = {key: problem for key, problem in entries.items() if problem}
            return entries or None
    return None if expected is None else [f"must be {expected}, got {_json_type(value)}"]


class WholeNumberField(serializers.IntegerField):
    """An integer as JSON Schema means it: 3 and 3.0 alike (DRF reads 1e16 as text)."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, float) and data.is_integer():
            data = int(data)
        return super().to_internal_value(data)


class StrictSerializer(serializers.Serializer):
    """Rejects fields it does not know, so typos are errors instead of silent no-ops, and
    values of the wrong JSON type instead of coercing them. Its request schema says so
    (``additionalProperties: false``); ``schema_extra`` adds what else the request schema
    must state (``minProperties``)."""

    schema_extra: dict[str, Any] = {}

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name: ["unknown field"] for name in unknown})
            given = sorted(name for name in data if self.fields[name].read_only)
            if given:
                raise serializers.ValidationError(
                    {name: ["read-only field; the server sets it"] for name in given}
                )
            typed = {name: json_type_errors(self.fields[name], value) for name, value in data.items()}
            wrong = {name: problem for name, problem in typed.items() if problem}
            if wrong:
                raise serializers.ValidationError(wrong)
        return super().to_internal_value(data)


def checked(check: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a rule of services/validation.py; its RuleViolation becomes the serializer
    error of the field being validated, with the rule's own message."""
    try:
        return check(*args, **kwargs)
    except RuleViolation as exc:
        raise serializers.ValidationError(str(exc)) from exc


KEY_SHAPE = "a key of lowercase letters, digits and . _ : - (at most 100, starting with a letter or digit)"
PHONE_SHAPE = "a phone number in international form (+<country><number>, e.g. +14155550100)"


def shaped(value: str, pattern: str, expected: str) -> str:
    """``value`` if all of it matches the schema's ``pattern``, else a serializer error.

    The rules of services/validation.py normalise leniently (libphonenumber ignores a
    trailing "*"; Python's "$" also matches before a final newline); the API promises its
    schema's patterns, so it refuses what they refuse before the rule normalises."""
    if not re.fullmatch(pattern, value):
        raise serializers.ValidationError(f"{value!r} is not {expected}")
    return value


def text_field(**kwargs: Any) -> serializers.CharField:
    """A CharField taken as sent: no silent trimming, so the length the schema states is
    the length the server checks (the services normalise what needs it)."""
    return serializers.CharField(trim_whitespace=False, **kwargs)


# --- Free-form JSON ----------------------------------------------------------------------------


def _unstorable_path(value: Any, path: str) -> str | None:
    """Where in ``value`` text PostgreSQL's jsonb cannot hold (NUL, unpaired surrogates)."""
    if isinstance(value, str):
        return path if "\x00" in value or not _encodable(value) else None
    if isinstance(value, list):
        for i, item in enumerate(value):
            if (found := _unstorable_path(item, f"{path}[{i}]")) is not None:
                return found
    if isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in key or not _encodable(key):
                return f"{path} (a key)"
            if (found := _unstorable_path(item, f"{path}.{key}")) is not None:
                return found
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class JsonObjectField(serializers.DictField):
    """A JSON object stored as jsonb: any values, but no NUL or unpaired surrogate in its
    text or keys (jsonb refuses them; better a 400 naming where than a failed INSERT)."""

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        value: dict[str, Any] = super().to_internal_value(data)
        if (where := _unstorable_path(value, self.field_name or "data")) is not None:
            raise serializers.ValidationError(f"{where} holds a NUL or unpaired surrogate character")
        return value


# --- The error body ---------------------------------------------------------------------------

_MESSAGES: dict[str, Any] = {"type": "array", "items": {"type": "string"}}


def _error_tree(depth: int) -> dict[str, Any]:
    # Errors nest at most three objects deep (templates -> channel -> field); a bounded
    # schema keeps generators and validators away from recursive references.
    value = _MESSAGES if depth == 0 else {"anyOf": [_MESSAGES, _error_tree(depth - 1)]}
    return {"type": "object", "additionalProperties": value}


@extend_schema_field(_error_tree(3))
class ErrorTreeField(serializers.DictField):
    """{field: [message, ...]}, or {field: {sub-field: [message, ...]}} for nested values."""


class BulkRefusedSerializer(serializers.Serializer):
    """The result of a refused item of a bulk call (recipients, events)."""

    index = serializers.IntegerField(min_value=0)
    status = serializers.ChoiceField(choices=["error"])

    def get_fields(self) -> dict[str, serializers.Field]:
        # "errors" would shadow Serializer.errors as a class attribute.
        fields: dict[str, serializers.Field] = super().get_fields()
        fields["errors"] = ErrorTreeField(help_text="{field: [message, ...]}")
        return fields


class ErrorBodySerializer(serializers.Serializer):
    """Every 4xx and 503 of the API: ``{"errors": {field: [message, ...]}}``."""

    def get_fields(self) -> dict[str, serializers.Field]:
        # "errors" would shadow Serializer.errors as a class attribute.
        return {"errors": ErrorTreeField()}


def errors_response(errors: dict[str, Any], code: int = status.HTTP_400_BAD_REQUEST) -> Response:
    return Response({"errors": errors}, status=code)


_ERROR_DESCRIPTIONS = {
    400: "The request is malformed or breaks a rule; `errors` names each field and what is wrong",
    401: "No valid credentials (`errors.authorization`)",
    403: "Signed in, but this session has no inbox, or its CSRF token is missing",
    404: "No such resource, or a path parameter outside its pattern (`errors.detail`)",
    409: "Conflicts with what is stored (`errors` names the field)",
    413: "The body is over MAX_REQUEST_BYTES (`errors.body` names the limit); nothing was stored",
    503: "The database is unavailable; nothing was stored. Retry after `Retry-After` seconds",
}
ERRORS = {
    code: OpenApiResponse(ErrorBodySerializer, description=text) for code, text in _ERROR_DESCRIPTIONS.items()
}
RETRY_AFTER = OpenApiParameter(
    "Retry-After",
    {"type": "string", "pattern": "^[0-9]+$"},
    OpenApiParameter.HEADER,
    response=[503],
    required=True,
    description="Seconds to wait before retrying",
)


def _path_parameters(method: Callable[..., Any]) -> list[OpenApiParameter]:
    names = [name for name in inspect.signature(method).parameters if name not in ("self", "request")]
    return [
        OpenApiParameter(
            name, PATH_PARAMETERS[name][0], OpenApiParameter.PATH, description=PATH_PARAMETERS[name][1]
        )
        for name in names
    ]


def operation(
    *,
    summary: str,
    responses: dict[int, Any],
    errors: Iterable[int] = (),
    request: Any = None,
    parameters: Iterable[OpenApiParameter] = (),
    description: str = "",
    operation_id: str | None = None,
) -> Callable[[F], F]:
    """extend_schema for a v1 view method: its path parameters (from its signature, with
    the patterns of PATH_PARAMETERS), its answers, and the errors every route can give:
    401 without valid credentials, 503 with Retry-After while the database is down, and
    404 where there are path parameters. ``request=None`` documents no body."""

    def decorate(method: F) -> F:
        path_parameters = _path_parameters(method)
        # A path parameter outside its pattern names no route: the catch-all 404.
        codes = sorted({*errors, 401, 503, *([404] if path_parameters else [])})
        # extend_schema builds on the method's own schema class when it has one.
        method.schema = ApiSchema  # type: ignore[attr-defined]
        return extend_schema(
            summary=summary,
            description=description or None,
            request=request,
            responses={**responses, **{code: ERRORS[code] for code in codes}},
            parameters=[*path_parameters, *parameters, RETRY_AFTER],
            operation_id=operation_id,
        )(method)

    return decorate


def query(
    name: str, schema: dict[str, Any], description: str = "", *, blank: bool = False
) -> OpenApiParameter:
    """A query parameter; ``blank``: an empty value means the same as none (a filter off)."""
    if blank:
        schema = {"anyOf": [schema, {"type": "string", "maxLength": 0}]}
        description = f"{description}; empty means no filter" if description else "Empty means no filter"
    return OpenApiParameter(name, schema, OpenApiParameter.QUERY, required=False, description=description)


class NotFoundView(APIView):
    """Any path under /api/v1/ that names no route: a 404 in the API's error shape, not
    Django's HTML page."""

    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []
    schema = None

    def dispatch(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        self.args, self.kwargs = args, kwargs
        self.request = self.initialize_request(request, *args, **kwargs)
        self.headers = self.default_response_headers
        response = errors_response({"detail": ["no such API route"]}, status.HTTP_404_NOT_FOUND)
        self.response = self.finalize_response(self.request, response, *args, **kwargs)
        return self.response


# --- Query parameters ----------------------------------------------------------------------------

_UNENCODED_OFFSET = re.compile(r"^(.*\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}(?::?\d{2})?)$")
# RFC 3339 date-time, what OpenAPI's "date-time" means; Python would also take a bare
# date or an hour without minutes, which the schema does not promise.
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
ISO_DATETIME_MESSAGE = "must be an ISO 8601 date-time such as 2024-05-01T12:00:00Z"


class DateTimeField(serializers.DateTimeField):
    """An RFC 3339 date-time with its offset (``Z`` or ``+02:00``)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("error_messages", {"invalid": ISO_DATETIME_MESSAGE})
        super().__init__(**kwargs)

    def to_internal_value(self, value: Any) -> Any:
        if not isinstance(value, str) or not _RFC3339.match(value):
            self.fail("invalid", format="")
        return super().to_internal_value(value)


def query_params_for(serializer_class: type[serializers.Serializer], params: Any) -> dict[str, str]:
    """The query parameters a filter serializer knows, empty ones dropped (``?channel=``
    means no filter; the schema says so, see ``query(blank=True)``). A "+" of a UTC
    offset arrives as a space when the client did not encode it; it is put back so
    ``?after=2024-05-01T12:00:00+02:00`` works either way."""
    known: dict[str, serializers.Field] = dict(serializer_class().fields.items())
    picked = {name: params.get(name, "") for name in known if params.get(name, "") != ""}
    for name, field in known.items():
        if name in picked and isinstance(field, serializers.DateTimeField):
            picked[name] = _UNENCODED_OFFSET.sub(r"\1+\2", picked[name])
    return picked
