from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Connects the receiver of anymail's tracking signal.
        # Invalidates the cached API keys and types when either changes.
        from notifications import (
            provider_webhooks,  # noqa: F401
            signals,  # noqa: F401
        )
