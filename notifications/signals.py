"""Model receivers that keep per-process caches honest: any save or delete of an API key
or a notification type, from a service, the admin or a shell, invalidates the cached
lookups of every process (services/lookups.py). Revoking a key is an UPDATE, which sends
no signal; services/api_keys.py invalidates it itself."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from notifications.models import ApiKey, NotificationType
from notifications.services.lookups import lookups_changed


@receiver(post_save, sender=ApiKey)
@receiver(post_delete, sender=ApiKey)
@receiver(post_save, sender=NotificationType)
@receiver(post_delete, sender=NotificationType)
def lookups_invalidate(sender: Any, **kwargs: Any) -> None:
    lookups_changed()
