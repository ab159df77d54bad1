"""Every API error has one shape: ``{"errors": {field: [message, ...]}}`` (CONVENTIONS 13)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError, DataError, IntegrityError
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from notifications.services.validation import ValidationFailed


def _as_lists(detail: Any) -> Any:
    if isinstance(detail, dict):
        return {key: _as_lists(value) for key, value in detail.items()}
    if isinstance(detail, list):
        if all(not isinstance(item, dict | list) for item in detail):
            return [str(item) for item in detail]
        return [_as_lists(item) for item in detail]
    return [str(detail)]


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, RequestDataTooBig):
        # Django's own answer would be an HTML 400 that names nothing.
        return Response(
            {
                "errors": {
                    "body": [
                        f"the body is over the limit of {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes "
                        "(MAX_REQUEST_BYTES); send fewer items per call"
                    ]
                }
            },
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    if isinstance(exc, ValidationFailed):
        # A service refused a value by the rules every door shares (services/validation.py).
        return Response({"errors": _as_lists(exc.errors)}, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, DatabaseError) and not isinstance(exc, IntegrityError | DataError):
        # PostgreSQL unreachable or restarting: say so and invite a retry rather than 500.
        # Nothing was accepted: ingest stores an event only with its commit.
        unavailable = Response(
            {"errors": {"service": ["the database is unavailable; nothing was stored, retry shortly"]}},
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
        )
        unavailable["Retry-After"] = "5"
        return unavailable
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        detail = exc.detail
        errors = _as_lists(detail) if isinstance(detail, dict) else {"non_field_errors": _as_lists(detail)}
    elif isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
        errors = {"authorization": [str(getattr(exc, "detail", exc))]}
        response.status_code = status.HTTP_401_UNAUTHORIZED
    else:
        errors = {"detail": [str(getattr(exc, "detail", exc))]}
    response.data = {"errors": errors}
    return response
