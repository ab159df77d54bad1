from django.apps import AppConfig


class GamingConfig(AppConfig):
    name = "gaming"
    default_auto_field = "django.db.models.BigAutoField"
