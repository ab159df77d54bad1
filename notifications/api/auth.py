"""Authentication for the two kinds of caller: services (API key) and end users
(short-lived signed token, or the Django session of a linked user)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AnonymousUser
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions, permissions
from rest_framework.request import Request

from notifications.models import ApiKey, Recipient
from notifications.services.api_keys import api_key_authenticate
from realtime.tokens import TokenInvalid, end_user_token_verify


class ServicePrincipal:
    """request.user for API-key callers."""

    is_authenticated = True
    is_anonymous = False

    def __init__(self, api_key: ApiKey) -> None:
        self.api_key = api_key


class EndUserPrincipal:
    """request.user for end users; ``recipient_id`` scopes every inbox query."""

    is_authenticated = True
    is_anonymous = False

    def __init__(self, recipient_id: int) -> None:
        self.recipient_id = recipient_id


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Api-Key"

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header.startswith(self.keyword + " "):
            return None
        api_key = api_key_authenticate(raw=header[len(self.keyword) + 1 :])
        if api_key is None:
            raise exceptions.AuthenticationFailed("invalid or revoked API key")
        return ServicePrincipal(api_key), api_key

    def authenticate_header(self, request: Request) -> str:
        return self.keyword


class EndUserTokenAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer <token>`` or ``?token=``; falls back to a session whose user
    is linked to a recipient (CSRF enforced, as for any cookie-authenticated write)."""

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        token = (
            header[len("Bearer ") :] if header.startswith("Bearer ") else request.query_params.get("token")
        )
        if token:
            try:
                recipient_id = end_user_token_verify(token=token)
            except TokenInvalid as exc:
                raise exceptions.AuthenticationFailed(str(exc)) from exc
            return EndUserPrincipal(recipient_id), None
        user = getattr(request._request, "user", None)
        if user is None or isinstance(user, AnonymousUser) or not user.is_authenticated:
            return None
        self._enforce_csrf(request)
        linked = Recipient.objects.filter(user=user).values_list("id", flat=True).first()
        if linked is None:
            raise exceptions.PermissionDenied("this account has no inbox")
        return EndUserPrincipal(linked), None

    def _enforce_csrf(self, request: Request) -> None:
        authentication.SessionAuthentication().enforce_csrf(request)

    def authenticate_header(self, request: Request) -> str:
        return "Bearer"


class IsService(permissions.BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.user, ServicePrincipal)


class IsEndUser(permissions.BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.user, EndUserPrincipal)


class IsServiceOrEndUser(permissions.BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.user, ServicePrincipal | EndUserPrincipal)


def end_user_recipient(request: Request) -> Recipient | None:
    """The recipient of an end user's request (None for a service); a token whose
    recipient was deleted since it was issued is refused."""
    if isinstance(request.user, EndUserPrincipal):
        recipient = Recipient.objects.filter(id=request.user.recipient_id).first()
        if recipient is None:
            raise exceptions.AuthenticationFailed("this token's recipient no longer exists")
        return recipient
    return None


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "notifications.api.auth.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "apiKey", "in": "header", "name": "Authorization", "description": "Api-Key <key>"}


class EndUserTokenScheme(OpenApiAuthenticationExtension):
    target_class = "notifications.api.auth.EndUserTokenAuthentication"
    name = "EndUserToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "Token from POST /recipients/{id}/token/"}
