from django.apps import AppConfig


class IotConfig(AppConfig):
    name = "iot"
    default_auto_field = "django.db.models.BigAutoField"
