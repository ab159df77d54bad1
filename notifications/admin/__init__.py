"""The staff admin of the notification pipeline, one module per resource.

Importing the modules registers their ModelAdmins with the default site (Django's admin
autodiscovery imports this package). Configuration (types, templates, recipients,
webhooks, suppressions) is saved through the same services and rules as the API; rows the
pipeline owns are view-only (admin/base.py).
"""

from notifications.admin import (
    campaigns,
    catalog,
    deadletters,
    deliveries,
    events,
    keys,
    recipients,
    reminders,
    suppressions,
    template_versions,
    tracking,
    webhooks,
)

__all__ = [
    "campaigns",
    "catalog",
    "deadletters",
    "deliveries",
    "events",
    "keys",
    "recipients",
    "reminders",
    "suppressions",
    "template_versions",
    "tracking",
    "webhooks",
]
