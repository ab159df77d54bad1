"""The rules and alerts API under ``/api/v1/iot/`` (``rule_urlpatterns``, included by
iot/urls.py): services (API keys) create, change and delete rules and read alerts. The
serializers check JSON types and refuse unknown fields; the rules themselves are
iot/services/rules.py's, whose ValidationFailed answers 400 naming each field."""

from __future__ import annotations

from typing import Any

from django.urls import URLPattern, path, register_converter
from rest_framework import exceptions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from iot import selectors_alerts as selectors
from iot.models import Alert, AlertStatus, Op, Rule, Severity
from iot.services.rules import DEVICES_MAX, KIND_MAX, NAME_MAX, RECIPIENTS_MAX, rule_delete, rule_save
from notifications.api.auth import ApiKeyAuthentication, IsService
from notifications.api.common import (
    StrictSerializer,
    operation,
    query,
    query_params_for,
    text_field,
)
from notifications.api.schema import IdConverter, SegmentConverter
from notifications.services.validation import EXTERNAL_ID_MAX

ALERTS_LIMIT = 200


class RulesApiView(APIView):
    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [IsService]


class NumberField(serializers.FloatField):
    """A JSON number: "5" is refused instead of read as 5."""

    def to_internal_value(self, data: Any) -> float:
        if not isinstance(data, int | float) or isinstance(data, bool):
            raise serializers.ValidationError(f"must be a number, got {type(data).__name__}")
        return super().to_internal_value(data)


# --- Rules ---------------------------------------------------------------------------------


class NotifySerializer(StrictSerializer):
    type = text_field(
        max_length=100,
        required=False,
        help_text="A notification type's key; by default iot.alert (iot.alert.critical for a critical rule), "
        "created on first use",
    )
    recipients = serializers.ListField(
        child=text_field(min_length=1, max_length=EXTERNAL_ID_MAX),
        required=False,
        min_length=1,
        max_length=RECIPIENTS_MAX,
        help_text="Recipients' external ids (or give topic)",
    )
    topic = text_field(max_length=100, required=False, help_text="A topic's key (or give recipients)")


class RuleWriteSerializer(StrictSerializer):
    key = text_field(max_length=100)
    name = text_field(max_length=NAME_MAX, required=False, allow_blank=True)
    devices = serializers.ListField(
        child=text_field(max_length=64),
        required=False,
        max_length=DEVICES_MAX,
        help_text="The devices' keys (or give kind)",
    )
    kind = text_field(
        max_length=KIND_MAX, required=False, allow_blank=True, help_text="Every device of this kind"
    )
    metric = text_field(max_length=64, required=False, allow_blank=True)
    op = serializers.ChoiceField(choices=Op.values, required=False, allow_blank=True)
    threshold = NumberField(required=False, allow_null=True)
    for_seconds = NumberField(
        required=False, min_value=0, help_text="How long (reading timestamps) the breach must hold"
    )
    clear_threshold = NumberField(
        required=False,
        allow_null=True,
        help_text="An open alert clears at a value on the safe side of this (default: the threshold)",
    )
    no_data_seconds = NumberField(
        required=False, allow_null=True, help_text="Silence after which a no-data alert opens"
    )
    severity = serializers.ChoiceField(choices=Severity.values, required=False)
    notify = NotifySerializer()
    enabled = serializers.BooleanField(required=False)


class NotifyOutSerializer(serializers.Serializer):
    type = serializers.CharField()
    recipients = serializers.ListField(child=serializers.CharField(), required=False)
    topic = serializers.CharField(required=False)


class RuleSerializer(serializers.Serializer):
    key = serializers.CharField()
    name = serializers.CharField(allow_blank=True)
    devices = serializers.ListField(child=serializers.CharField())
    kind = serializers.CharField(allow_blank=True)
    metric = serializers.CharField(allow_blank=True)
    op = serializers.ChoiceField(choices=[*Op.values, ""])
    threshold = serializers.FloatField(allow_null=True)
    for_seconds = serializers.FloatField()
    clear_threshold = serializers.FloatField(allow_null=True)
    no_data_seconds = serializers.FloatField(allow_null=True)
    severity = serializers.ChoiceField(choices=Severity.values)
    notify = NotifyOutSerializer()
    enabled = serializers.BooleanField()
    created_at = serializers.DateTimeField()


class RuleListSerializer(serializers.Serializer):
    results = RuleSerializer(many=True)


def _rule_payload(rule: Rule) -> dict[str, Any]:
    return selectors.rule_data(rule)


def _rule(key: str) -> Rule:
    rule = selectors.rule_by_key(key)
    if rule is None:
        raise exceptions.NotFound(f"no rule {key!r}")
    return rule


def _written(serializer: RuleWriteSerializer) -> dict[str, Any]:
    """The request's fields as sent (the service judges them), nested notify included."""
    serializer.is_valid(raise_exception=True)
    data = dict(serializer.validated_data)
    if "notify" in data:
        data["notify"] = dict(data["notify"])
    return data


_RULE_RULES = (
    "A threshold rule gives metric, op and threshold (with for_seconds, clear_threshold); a "
    "no-data rule gives no_data_seconds (and metric, to watch one metric only); a rule may be both. "
    "It covers its devices, or every device of its kind."
)


class RuleListView(RulesApiView):
    @operation(
        summary="IoT rules",
        description="Every rule, by key.",
        responses={200: RuleListSerializer},
        operation_id="v1_iot_rules_list",
    )
    def get(self, request: Request) -> Response:
        return Response({"results": [_rule_payload(r) for r in selectors.rules_all()]})

    @operation(
        summary="Create an IoT rule",
        description=f"{_RULE_RULES} A bad value is a 400 naming the field; nothing is stored then.",
        request=RuleWriteSerializer,
        responses={201: RuleSerializer},
        errors=[400],
    )
    def post(self, request: Request) -> Response:
        rule = rule_save(_written(RuleWriteSerializer(data=request.data)))
        return Response(
            _rule_payload(selectors.rule_by_key(rule.key) or rule), status=status.HTTP_201_CREATED
        )


class RuleView(RulesApiView):
    @operation(summary="An IoT rule", responses={200: RuleSerializer})
    def get(self, request: Request, key: str) -> Response:
        return Response(_rule_payload(_rule(key)))

    @operation(
        summary="Change an IoT rule",
        description=(
            "The fields given replace the stored ones (notify as a whole; devices replaces kind and "
            "the other way round); the key cannot change. Alerts that no longer apply are resolved."
        ),
        request=RuleWriteSerializer(partial=True),
        responses={200: RuleSerializer},
        errors=[400],
    )
    def patch(self, request: Request, key: str) -> Response:
        rule = _rule(key)
        saved = rule_save(_written(RuleWriteSerializer(data=request.data, partial=True)), rule=rule)
        return Response(_rule_payload(selectors.rule_by_key(saved.key) or saved))

    @operation(
        summary="Delete an IoT rule", description="With its alerts (no event is sent).", responses={204: None}
    )
    def delete(self, request: Request, key: str) -> Response:
        rule_delete(_rule(key))
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- Alerts --------------------------------------------------------------------------------


class AlertSerializer(serializers.Serializer):
    id = serializers.IntegerField(min_value=1)
    rule = serializers.CharField(help_text="The rule's key")
    rule_name = serializers.CharField(allow_blank=True)
    device = serializers.CharField(help_text="The device's key")
    device_name = serializers.CharField(allow_blank=True)
    reason = serializers.CharField(help_text="threshold or no_data")
    status = serializers.ChoiceField(choices=AlertStatus.values)
    severity = serializers.ChoiceField(choices=Severity.values)
    metric = serializers.CharField(allow_blank=True)
    value = serializers.FloatField(allow_null=True, help_text="The latest value")
    peak = serializers.FloatField(allow_null=True, help_text="The worst value while open")
    flaps = serializers.IntegerField(
        min_value=0, help_text="Times it cleared and came back within the flap window, without a new event"
    )
    opened_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    resolved_at = serializers.DateTimeField(allow_null=True)


class AlertListSerializer(serializers.Serializer):
    results = AlertSerializer(many=True)


class AlertFilterSerializer(StrictSerializer):
    status = serializers.ChoiceField(choices=AlertStatus.values, required=False)
    device = text_field(max_length=64, required=False)


def _alert_payload(alert: Alert) -> dict[str, Any]:
    return {
        "id": alert.id,
        "rule": alert.rule.key,
        "rule_name": alert.rule.name,
        "device": alert.device.key,
        "device_name": alert.device.name,
        "reason": alert.reason,
        "status": alert.status,
        "severity": alert.rule.severity,
        "metric": alert.rule.metric,
        "value": alert.value,
        "peak": alert.peak,
        "flaps": alert.flaps,
        "opened_at": alert.opened_at,
        "updated_at": alert.updated_at,
        "resolved_at": alert.resolved_at,
    }


class AlertListView(RulesApiView):
    @operation(
        summary="IoT alerts",
        description=f"Newest first, at most {ALERTS_LIMIT}.",
        operation_id="v1_iot_alerts_list",
        responses={200: AlertListSerializer},
        errors=[400],
        parameters=[
            query("status", {"type": "string", "enum": AlertStatus.values}, "open or resolved", blank=True),
            query("device", {"type": "string", "maxLength": 64}, "A device's key", blank=True),
        ],
    )
    def get(self, request: Request) -> Response:
        filters = AlertFilterSerializer(data=query_params_for(AlertFilterSerializer, request.query_params))
        filters.is_valid(raise_exception=True)
        alerts = selectors.alerts_list(
            status=filters.validated_data.get("status"),
            device_key=filters.validated_data.get("device"),
            limit=ALERTS_LIMIT,
        )
        return Response({"results": [_alert_payload(a) for a in alerts]})


class AlertView(RulesApiView):
    @operation(summary="An IoT alert", responses={200: AlertSerializer})
    def get(self, request: Request, alert_id: int) -> Response:
        alert = selectors.alert_by_id(alert_id)
        if alert is None:
            raise exceptions.NotFound(f"no alert {alert_id}")
        return Response(_alert_payload(alert))


register_converter(SegmentConverter, "iot_rule_key")
register_converter(IdConverter, "iot_alert_id")

# Relative to api/v1/iot/; iot/urls.py includes them.
rule_urlpatterns: list[URLPattern] = [
    path("rules/", RuleListView.as_view(), name="iot-rules"),
    path("rules/<iot_rule_key:key>/", RuleView.as_view(), name="iot-rule"),
    path("alerts/", AlertListView.as_view(), name="iot-alerts"),
    path("alerts/<iot_alert_id:alert_id>/", AlertView.as_view(), name="iot-alert"),
]
