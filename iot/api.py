"""The IoT API under ``/api/v1/iot/``: devices (provisioning, revoking, credentials),
their readings and quarantined payloads, commands. Rules and alerts: iot/api_rules.py.

Services call it with an API key. A device's MQTT password appears in the answer that
made it (provisioning, or a rotation) and nowhere else.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema_field
from rest_framework import exceptions, serializers, status
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from iot import selectors
from iot.models import DEVICE_KEY_VALIDATOR, Command, CommandStatus, Device, DeviceStatus
from iot.selectors_commands import command_of, command_payload, commands_of
from iot.services.broker import BrokerUnavailable
from iot.services.commands import command_send
from iot.services.devices import (
    KIND_PATTERN,
    device_credentials_rotate,
    device_provision,
    device_revoke,
    device_update,
)
from notifications.api.auth import ApiKeyAuthentication, ServicePrincipal
from notifications.api.common import (
    JsonObjectField,
    StrictSerializer,
    errors_response,
    operation,
    query,
    text_field,
)

DEVICES_LIMIT = 1000
COMMANDS_LIMIT = 100
DEFAULT_RANGE = timedelta(hours=1)


class IsService(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.user, ServicePrincipal)


class IotApiView(APIView):
    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [IsService]

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, BrokerUnavailable):
            response = errors_response({"broker": [str(exc)]}, status.HTTP_503_SERVICE_UNAVAILABLE)
            response["Retry-After"] = "5"
            return response
        return super().handle_exception(exc)


def _device(key: str) -> Device:
    device = selectors.device_by_key(key)
    if device is None:
        raise exceptions.NotFound(f"no device {key!r}")
    return device


# --- Devices ---------------------------------------------------------------------------------


class IotMqttSerializer(serializers.Serializer):
    host = serializers.CharField()
    port = serializers.IntegerField()
    username = serializers.CharField()
    password = serializers.CharField(help_text="Shown in this answer only; the platform keeps a hash")
    client_id = serializers.CharField(help_text="The only client id the broker accepts for these credentials")
    telemetry_topic = serializers.CharField()
    status_topic = serializers.CharField(help_text="Set the last will here (payload offline)")
    commands_topic = serializers.CharField()


class IotDeviceSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    key = serializers.CharField()
    name = serializers.CharField(allow_blank=True)
    kind = serializers.CharField()
    group = serializers.CharField(allow_blank=True)
    status = serializers.ChoiceField(choices=DeviceStatus.values)
    status_changed_at = serializers.DateTimeField(allow_null=True)
    last_seen_at = serializers.DateTimeField(allow_null=True)
    latest = serializers.DictField(help_text="metric → {ts, value}: the newest reading of each metric")
    firmware_version = serializers.CharField(allow_blank=True)
    readings_count = serializers.IntegerField()
    malformed_count = serializers.IntegerField(help_text="Payloads refused (see quarantine/)")
    revoked_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()


class IotProvisionedSerializer(IotDeviceSerializer):
    mqtt = IotMqttSerializer()


class IotDeviceListSerializer(serializers.Serializer):
    results = IotDeviceSerializer(many=True)


class IotDeviceCreateSerializer(StrictSerializer):
    key = text_field(
        max_length=64,
        validators=[DEVICE_KEY_VALIDATOR],
        help_text="Lowercase letters, digits, _ and -; the MQTT username",
    )
    name = text_field(max_length=200, required=False, allow_blank=True)
    kind = text_field(max_length=64, help_text="What it is (rules and firmware apply per kind)")
    group = text_field(max_length=64, required=False, allow_blank=True)


class IotDeviceChangeSerializer(StrictSerializer):
    schema_extra = {"minProperties": 1}

    name = text_field(max_length=200, required=False, allow_blank=True)
    group = text_field(max_length=64, required=False, allow_blank=True)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs:
            raise serializers.ValidationError({"body": ["nothing to change: give name or group"]})
        return attrs


def _device_payload(device: Device) -> dict[str, Any]:
    return {
        "id": device.id,
        "key": device.key,
        "name": device.name,
        "kind": device.kind,
        "group": device.group,
        "status": device.status,
        "status_changed_at": device.status_changed_at,
        "last_seen_at": device.last_seen_at,
        "latest": device.latest,
        "firmware_version": device.firmware_version,
        "readings_count": device.readings_count,
        "malformed_count": device.malformed_count,
        "revoked_at": device.revoked_at,
        "created_at": device.created_at,
    }


class DeviceListView(IotApiView):
    @operation(
        summary="Devices",
        description=f"Devices in key order, at most {DEVICES_LIMIT}; revoked ones only with revoked=true.",
        responses={200: IotDeviceListSerializer},
        parameters=[
            query(
                "kind",
                {"type": "string", "pattern": KIND_PATTERN.pattern},
                "Only devices of this kind",
                blank=True,
            ),
            query("revoked", {"type": "string", "enum": ["true", "false"]}, "Include revoked devices"),
        ],
        errors=[400],
    )
    def get(self, request: Request) -> Response:
        errors: dict[str, list[str]] = {}
        revoked = request.query_params.get("revoked", "false")
        if revoked not in ("true", "false"):
            errors["revoked"] = ["true or false"]
        kind = request.query_params.get("kind", "")
        if len(request.query_params.getlist("kind")) > 1:
            errors["kind"] = ["give one kind"]
        elif kind and not KIND_PATTERN.fullmatch(kind):
            errors["kind"] = ["a kind: lowercase letters, digits, _ . -, at most 64"]
        if errors:
            return errors_response(errors)
        devices = selectors.devices_list(kind=kind or None, include_revoked=revoked == "true")[:DEVICES_LIMIT]
        return Response({"results": [_device_payload(d) for d in devices]})

    @operation(
        summary="Provision a device",
        description=(
            "Creates the device and its broker credentials: it may publish and subscribe only "
            "under devices/{key}/. The password is in this answer only. A key in use is a 400."
        ),
        request=IotDeviceCreateSerializer,
        responses={201: IotProvisionedSerializer},
        errors=[400],
    )
    def post(self, request: Request) -> Response:
        serializer = IotDeviceCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        provisioned = device_provision(
            key=data["key"], kind=data["kind"], name=data.get("name", ""), group=data.get("group", "")
        )
        body = {**_device_payload(provisioned.device), "mqtt": provisioned.mqtt()}
        return Response(body, status=status.HTTP_201_CREATED)


class DeviceView(IotApiView):
    @operation(
        summary="A device",
        description="Status, last seen and latest metrics.",
        responses={200: IotDeviceSerializer},
    )
    def get(self, request: Request, device_key: str) -> Response:
        return Response(_device_payload(_device(device_key)))

    @operation(
        summary="Rename or regroup a device",
        request=IotDeviceChangeSerializer,
        responses={200: IotDeviceSerializer},
        errors=[400],
    )
    def patch(self, request: Request, device_key: str) -> Response:
        device = _device(device_key)
        serializer = IotDeviceChangeSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        return Response(
            _device_payload(device_update(device, name=data.get("name"), group=data.get("group")))
        )

    @operation(
        summary="Revoke a device",
        description=(
            "Removes its broker credentials at once (a connected device is disconnected); its "
            "readings and alerts are kept and it is listed as revoked. Revoking again changes nothing."
        ),
        responses={200: IotDeviceSerializer},
    )
    def delete(self, request: Request, device_key: str) -> Response:
        return Response(_device_payload(device_revoke(_device(device_key))))


class DeviceCredentialsView(IotApiView):
    @operation(
        summary="New credentials for a device",
        description="A new password; the old one stops working at once. Shown in this answer only.",
        responses={200: IotProvisionedSerializer},
        errors=[400],
    )
    def post(self, request: Request, device_key: str) -> Response:
        provisioned = device_credentials_rotate(_device(device_key))
        return Response({**_device_payload(provisioned.device), "mqtt": provisioned.mqtt()})


# --- Readings --------------------------------------------------------------------------------


class IotPointSerializer(serializers.Serializer):
    ts = serializers.DateTimeField(help_text="The reading's time, or the bucket's start")
    value = serializers.FloatField(help_text="The value, or the bucket's average")
    min = serializers.FloatField()
    max = serializers.FloatField()
    count = serializers.IntegerField()


class IotSeriesSerializer(serializers.Serializer):
    device = serializers.CharField()
    metric = serializers.CharField()
    bucket = serializers.ChoiceField(choices=["raw", "1m", "1h"])
    points = IotPointSerializer(many=True)

    def get_fields(self) -> dict[str, serializers.Field]:
        # "from" is a Python keyword: no class attribute can carry the name.
        fields: dict[str, serializers.Field] = super().get_fields()
        fields["from"] = serializers.DateTimeField(help_text="The range's start")
        fields["to"] = serializers.DateTimeField(help_text="The range's end (excluded)")
        return fields


def _when(request: Request, name: str, default: datetime, errors: dict[str, list[str]]) -> datetime:
    raw = request.query_params.get(name)
    if not raw:
        return default
    try:
        value = datetime.fromisoformat(raw.replace(" ", "+").replace("Z", "+00:00"))
    except ValueError:
        errors[name] = ["an ISO 8601 time with its offset, e.g. 2026-12-01T10:00:00Z"]
        return default
    if value.tzinfo is None:
        errors[name] = ["give the time's offset (e.g. Z or +02:00)"]
        return default
    return value.astimezone(UTC)


class ReadingsView(IotApiView):
    @operation(
        summary="A device's readings of one metric",
        description=(
            "Raw readings or per-minute / per-hour rollups (average, min, max, count) in "
            "[from, to), oldest first; default the last hour. bucket=auto picks raw up to 6 hours, "
            f"minutes up to 7 days, hours beyond. At most {selectors.SERIES_MAX_POINTS} points (the newest)."
        ),
        responses={200: IotSeriesSerializer},
        parameters=[
            OpenApiParameter(
                "metric",
                {"type": "string", "minLength": 1, "maxLength": 64},
                OpenApiParameter.QUERY,
                required=True,
            ),
            query("from", {"type": "string", "format": "date-time"}, "Start (default: an hour before to)"),
            query("to", {"type": "string", "format": "date-time"}, "End (default: now)"),
            query("bucket", {"type": "string", "enum": ["raw", "1m", "1h", "auto"]}, "Resolution"),
        ],
        errors=[400],
    )
    def get(self, request: Request, device_key: str) -> Response:
        device = _device(device_key)
        errors: dict[str, list[str]] = {}
        metric = request.query_params.get("metric", "")
        if not metric or len(metric) > 64 or "\x00" in metric:
            errors["metric"] = ["a metric name is required (at most 64 characters)"]
        end = _when(request, "to", timezone.now(), errors)
        start = _when(request, "from", end - DEFAULT_RANGE, errors)
        bucket = request.query_params.get("bucket", "auto")
        if bucket not in ("raw", "1m", "1h", "auto"):
            errors["bucket"] = ["raw, 1m, 1h or auto"]
        if not errors and start > end:
            errors["from"] = ["must not be after to"]
        if errors:
            return errors_response(errors)
        chosen = selectors.bucket_for_span(start, end) if bucket == "auto" else bucket
        points = selectors.readings_series(device.id, metric, start, end, chosen)  # type: ignore[arg-type]
        return Response(
            {
                "device": device.key,
                "metric": metric,
                "bucket": chosen,
                "from": start,
                "to": end,
                "points": [
                    {"ts": p.ts, "value": p.value, "min": p.min, "max": p.max, "count": p.count}
                    for p in points
                ],
            }
        )


class IotQuarantinedSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    topic = serializers.CharField()
    error = serializers.CharField()
    payload = serializers.CharField(help_text="As text when it is UTF-8, else base64 (payload_encoding)")
    payload_encoding = serializers.ChoiceField(choices=["utf-8", "base64"])
    payload_bytes = serializers.IntegerField(help_text="Its whole size; at most 4 KB of it is kept")
    received_at = serializers.DateTimeField()


class IotQuarantineListSerializer(serializers.Serializer):
    results = IotQuarantinedSerializer(many=True)


class QuarantineView(IotApiView):
    @operation(
        summary="A device's refused payloads",
        description="The newest payloads that could not be read, each with what was wrong.",
        responses={200: IotQuarantineListSerializer},
    )
    def get(self, request: Request, device_key: str) -> Response:
        results = []
        for item in selectors.quarantine_of(_device(device_key)):
            raw = bytes(item.payload)
            try:
                text, encoding = raw.decode("utf-8"), "utf-8"
            except UnicodeDecodeError:
                text, encoding = base64.b64encode(raw).decode(), "base64"
            results.append(
                {
                    "id": item.id,
                    "topic": item.topic,
                    "error": item.error,
                    "payload": text,
                    "payload_encoding": encoding,
                    "payload_bytes": item.payload_bytes,
                    "received_at": item.received_at,
                }
            )
        return Response({"results": results})


# --- Commands --------------------------------------------------------------------------------


class IotCommandCreateSerializer(StrictSerializer):
    name = text_field(max_length=100, help_text="What the device should do")
    params = JsonObjectField(required=False, help_text="A JSON object for the device")


@extend_schema_field({})
class AnyJsonField(serializers.JSONField):
    """Any JSON value, null included (a schema of ``{}``, not oneOf with null)."""


class IotCommandSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    device = serializers.CharField()
    name = serializers.CharField()
    params = serializers.DictField()
    status = serializers.ChoiceField(choices=["pending", "sent", "acked", "failed", "timed_out"])
    created_at = serializers.DateTimeField()
    sent_at = serializers.DateTimeField(allow_null=True)
    acked_at = serializers.DateTimeField(allow_null=True)
    timeout_at = serializers.DateTimeField()
    late = serializers.BooleanField(help_text="Answered after it had timed out (the answer is kept)")
    ok = serializers.BooleanField(allow_null=True)
    result = AnyJsonField(help_text="What the device answered (any JSON; null until it answers)")
    error = serializers.CharField(allow_blank=True)


class IotCommandListSerializer(serializers.Serializer):
    results = IotCommandSerializer(many=True)


def _command_payload(command: Command, device_key: str) -> dict[str, Any]:
    return {**command_payload(command), "device": device_key}


class CommandListView(IotApiView):
    @operation(
        summary="A device's commands",
        description=f"The newest {COMMANDS_LIMIT}, newest first.",
        responses={200: IotCommandListSerializer},
    )
    def get(self, request: Request, device_key: str) -> Response:
        device = _device(device_key)
        commands = commands_of(device, limit=COMMANDS_LIMIT)
        return Response({"results": [_command_payload(c, device.key) for c in commands]})

    @operation(
        summary="Send a command to a device",
        description=(
            "Published to devices/{key}/commands at QoS 1 as {id, name, params}; the device answers "
            "on devices/{key}/commands/ack with {id, ok, result}. Follow it at commands/{id}/: "
            "sent, then acked or failed, or timed_out when no answer came in time."
        ),
        request=IotCommandCreateSerializer,
        responses={202: IotCommandSerializer},
        errors=[400],
    )
    def post(self, request: Request, device_key: str) -> Response:
        device = _device(device_key)
        serializer = IotCommandCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        command = command_send(device, name=data["name"], params=data.get("params", {}))
        if command.status == CommandStatus.FAILED:
            # The broker could not be reached: the command is kept, marked failed, with why.
            response = errors_response(
                {"broker": [command.error], "command": [f"command {command.id} is kept as failed"]},
                status.HTTP_503_SERVICE_UNAVAILABLE,
            )
            response["Retry-After"] = "5"
            return response
        return Response(_command_payload(command, device.key), status=status.HTTP_202_ACCEPTED)


class CommandView(IotApiView):
    @operation(summary="A command", responses={200: IotCommandSerializer})
    def get(self, request: Request, device_key: str, command_id: int) -> Response:
        device = _device(device_key)
        command = command_of(device, command_id)
        if command is None:
            raise exceptions.NotFound(f"no command {command_id} of device {device_key!r}")
        return Response(_command_payload(command, device.key))
