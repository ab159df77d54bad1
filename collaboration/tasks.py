"""Thin Celery tasks of collaborative documents: ids in, call a service."""

from __future__ import annotations

from celery import shared_task
from django.db import OperationalError as DatabaseOperationalError

from collaboration.services.updates import document_compact
from collaboration.services.versions import version_auto_take, versions_auto_due


@shared_task(autoretry_for=(DatabaseOperationalError,), retry_backoff=1, retry_backoff_max=30, max_retries=5)
def document_compact_task(document_id: int) -> int:
    return document_compact(document_id)


@shared_task(autoretry_for=(DatabaseOperationalError,), retry_backoff=1, retry_backoff_max=30, max_retries=3)
def versions_auto_task() -> int:
    return sum(version_auto_take(document_id) is not None for document_id in versions_auto_due())
