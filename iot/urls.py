"""The IoT API under ``/api/v1/iot/`` (project/urls.py puts it before the v1 catch-all):
devices, readings, quarantine and commands (iot/api.py), rules and alerts (iot/api_rules.py).
Path parameters use converters whose patterns the schema states (PATH_PARAMETERS of
notifications/api/schema.py)."""

from django.urls import URLPattern, path, register_converter

from iot import api
from iot.api_rules import rule_urlpatterns
from notifications.api.schema import IdConverter, SegmentConverter


class DeviceKeyConverter(SegmentConverter):
    regex = "[a-z0-9][a-z0-9_-]{0,63}"


register_converter(DeviceKeyConverter, "device_key")
register_converter(IdConverter, "iot_command_id")

urlpatterns: list[URLPattern] = [
    path("devices/", api.DeviceListView.as_view(), name="iot-devices"),
    path("devices/<device_key:device_key>/", api.DeviceView.as_view(), name="iot-device"),
    path(
        "devices/<device_key:device_key>/credentials/",
        api.DeviceCredentialsView.as_view(),
        name="iot-device-credentials",
    ),
    path("devices/<device_key:device_key>/readings/", api.ReadingsView.as_view(), name="iot-readings"),
    path("devices/<device_key:device_key>/quarantine/", api.QuarantineView.as_view(), name="iot-quarantine"),
    path("devices/<device_key:device_key>/commands/", api.CommandListView.as_view(), name="iot-commands"),
    path(
        "devices/<device_key:device_key>/commands/<iot_command_id:command_id>/",
        api.CommandView.as_view(),
        name="iot-command",
    ),
    *rule_urlpatterns,
]
