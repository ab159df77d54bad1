"""The Celery application. Queues: fanout, inapp, periodic, default (later: email, sms, push,
webhook, campaign), so that each class of work scales and fails on its own."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

app = Celery("project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
