"""A recipient's webhook endpoints: Slack, Teams, or signed generic HTTPS."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.http import Http404
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import PolymorphicProxySerializer, extend_schema_field
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from notifications import selectors
from notifications.api.common import StrictSerializer, checked, operation, shaped, text_field
from notifications.api.schema import LABEL_PATTERN
from notifications.models import Recipient, WebhookEndpoint, WebhookKind
from notifications.services.recipients import webhook_endpoint_add, webhook_endpoint_remove
from notifications.services.validation import (
    WEBHOOK_SECRET_MAX,
    WEBHOOK_SECRET_MIN,
    WEBHOOK_URL_MAX,
    webhook_kind_check,
    webhook_secret_check,
    webhook_url_check,
)

# https to a host name whose last label is two or more letters (as Django's URLValidator in
# webhook_url_check wants; "format: uri" alone would promise https://0.a), or http(s) to
# this machine (LOOPBACK_HOSTS of services/validation.py). Schemes and host names are
# case-insensitive, as webhook_url_check reads them. The schema's pattern states the start
# (generators build long values of a short pattern quickly) and "format: uri" the rest; the
# API refuses what either refuses: IP hosts other than loopback, and characters a URI must
# escape, which URLValidator would let by.
# At most four labels before the top-level one: URLValidator refuses host names over 253.
_HTTPS = f"[Hh][Tt][Tt][Pp][Ss]://({LABEL_PATTERN}\\.){{1,4}}[A-Za-z]{{2,63}}"
_LOOPBACK = r"[Hh][Tt][Tt][Pp][Ss]?://(127\.0\.0\.1|[Ll][Oo][Cc][Aa][Ll][Hh][Oo][Ss][Tt]|\[::1\])"
_PORT = "(:[0-9]{1,5})?"
URL_PATTERN = f"^({_HTTPS}|{_LOOPBACK}){_PORT}([/?#]|$)"
_URI_REST = r"([/?#]([A-Za-z0-9\-._~!$&'()*+,;=:@/?#]|%[0-9A-Fa-f]{2})*)?"
_WHOLE_URL = f"({_HTTPS}|{_LOOPBACK}){_PORT}{_URI_REST}"
URL_SHAPE = "an https URL (http only to 127.0.0.1, localhost or [::1]) of URI characters"
URL_SCHEMA = {
    "type": "string",
    "format": "uri",
    "maxLength": WEBHOOK_URL_MAX,
    "pattern": URL_PATTERN,
    "description": "https; plain http only to 127.0.0.1, localhost or [::1] (development, sandbox)",
}


@extend_schema_field(URL_SCHEMA)
class UrlField(serializers.CharField):
    pass


class WebhookEndpointSerializer(StrictSerializer):
    id = serializers.IntegerField(read_only=True)
    kind = serializers.ChoiceField(choices=WebhookKind.choices)
    url = UrlField(max_length=WEBHOOK_URL_MAX, trim_whitespace=False)
    secret = text_field(
        write_only=True,
        required=False,
        allow_blank=True,
        max_length=WEBHOOK_SECRET_MAX,
        help_text=f"Signing secret, required for generic webhooks (at least {WEBHOOK_SECRET_MIN} characters); "
        "never returned",
    )
    has_secret = serializers.SerializerMethodField()
    active = serializers.BooleanField(read_only=True)
    created_at = serializers.DateTimeField(read_only=True)

    def get_has_secret(self, endpoint: WebhookEndpoint) -> bool:
        return bool(endpoint.secret)

    def validate_url(self, value: str) -> str:
        scheme = urlsplit(value).scheme.lower()
        if scheme and scheme not in ("http", "https"):
            # webhook_url_check's URLValidator calls an ftp:// URL "not a URL" before its
            # scheme rule can say what is wanted; say it here (the rule stays there).
            raise serializers.ValidationError(
                f"must be an https URL (http only to 127.0.0.1 or localhost), got scheme {scheme!r}"
            )
        # The rule first, for its specific messages; then the schema's shape for what it lets by.
        return shaped(checked(webhook_url_check, value), _WHOLE_URL, URL_SHAPE)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        kind, secret = checked(webhook_kind_check, attrs["kind"]), attrs.get("secret", "")
        if kind != WebhookKind.GENERIC and "secret" in attrs:
            # Even an empty one: the schema's shape for unsigned kinds has no secret.
            raise serializers.ValidationError(
                {"secret": [f"{kind} webhooks are not signed; leave the secret out"]}
            )
        try:
            secret = checked(webhook_secret_check, kind=kind, secret=secret)
        except serializers.ValidationError as exc:
            raise serializers.ValidationError({"secret": exc.detail}) from exc
        return {**attrs, "secret": secret}


@extend_schema_field({"type": "string", "enum": [WebhookKind.GENERIC.value]})
class GenericKindField(serializers.CharField):
    pass


@extend_schema_field({"type": "string", "enum": [WebhookKind.SLACK.value, WebhookKind.TEAMS.value]})
class UnsignedKindField(serializers.CharField):
    pass


class GenericWebhookSerializer(StrictSerializer):
    kind = GenericKindField()
    url = UrlField()
    secret = text_field(
        min_length=WEBHOOK_SECRET_MIN, max_length=WEBHOOK_SECRET_MAX, help_text="Never returned"
    )


class UnsignedWebhookSerializer(StrictSerializer):
    """Slack and Teams webhooks are not signed: no secret."""

    kind = UnsignedKindField()
    url = UrlField()


WEBHOOK_REQUEST = PolymorphicProxySerializer(
    component_name="WebhookEndpointCreate",
    serializers=[GenericWebhookSerializer, UnsignedWebhookSerializer],
    resource_type_field_name=None,
)


class WebhookEndpointListSerializer(serializers.Serializer):
    results = WebhookEndpointSerializer(many=True)


class WebhookEndpointListView(APIView):
    @operation(
        summary="A recipient's webhook endpoints",
        responses={200: WebhookEndpointListSerializer},
        errors=[404],
    )
    def get(self, request: Request, external_id: str) -> Response:
        recipient = get_object_or_404(Recipient, external_id=external_id)
        endpoints = selectors.webhook_endpoints(recipient=recipient)
        return Response({"results": WebhookEndpointSerializer(endpoints, many=True).data})

    @operation(
        summary="Add a webhook endpoint (Slack, Teams or signed generic)",
        description="201 when added; 200 when the recipient had this URL already (its kind and "
        "secret are replaced and it is reactivated). The secret is never returned.",
        request=WEBHOOK_REQUEST,
        responses={201: WebhookEndpointSerializer, 200: WebhookEndpointSerializer},
        errors=[400, 404],
    )
    def post(self, request: Request, external_id: str) -> Response:
        recipient = get_object_or_404(Recipient, external_id=external_id)
        serializer = WebhookEndpointSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        endpoint, created = webhook_endpoint_add(recipient=recipient, **serializer.validated_data)
        return Response(
            WebhookEndpointSerializer(endpoint).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


class WebhookEndpointDetailView(APIView):
    @operation(summary="Remove a webhook endpoint", request=None, responses={204: None}, errors=[404])
    def delete(self, request: Request, external_id: str, endpoint_id: int) -> Response:
        recipient = get_object_or_404(Recipient, external_id=external_id)
        if not webhook_endpoint_remove(recipient=recipient, endpoint_id=endpoint_id):
            raise Http404(f"recipient {external_id!r} has no webhook endpoint {endpoint_id}")
        return Response(status=status.HTTP_204_NO_CONTENT)
