"""The IoT API under ``/api/v1/iot/`` (iot/api.py, iot/api_rules.py)."""

from django.urls import URLPattern

urlpatterns: list[URLPattern] = []
