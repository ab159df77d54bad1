"""The ``/iot/`` page for staff and the JSON endpoints its script reads (iot/views.py)."""

from django.urls import URLPattern, path

from iot import firmware_views, views

urlpatterns: list[URLPattern] = [
    path("", views.devices_page, name="iot-page"),
    path("alerts/", views.alerts, name="iot-alerts"),
    path("devices/<str:key>/series/", views.series, name="iot-series"),
    path("devices/<str:key>/commands/", views.command_create, name="iot-command-create"),
    path("devices/<str:key>/commands/<int:command_id>/", views.command_detail, name="iot-command"),
    # Signed, expiring links to a firmware image, offered to devices over MQTT (iot/services/firmware.py).
    path("firmware/<str:token>/", firmware_views.firmware_download, name="iot-firmware-download"),
]
