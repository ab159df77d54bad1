"""/healthz and /metrics."""

from __future__ import annotations

import logging
import time
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Min
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from notifications.models import OutboxMessage
from notifications.services.metrics import metrics_read
from notifications.services.provider_health import provider_health
from notifications.services.queues import queue_depths
from realtime.redis_client import redis_sync

log = logging.getLogger(__name__)


def _check_database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return "ok"


def _check_redis() -> str:
    redis_sync().ping()
    return "ok"


def _check_broker() -> str:
    from project.celery import app

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=0, timeout=1)
    return "ok"


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """200 with each dependency "ok", or 503 naming what is down and why."""
    report: dict[str, Any] = {}
    healthy = True
    for name, check in (("database", _check_database), ("redis", _check_redis), ("broker", _check_broker)):
        try:
            report[name] = check()
        except Exception as exc:  # noqa: BLE001 - any failure means "down", reported by name
            healthy = False
            report[name] = f"down: {exc.__class__.__name__}: {str(exc)[:200]}"
    report["status"] = "ok" if healthy else "degraded"
    return JsonResponse(report, status=200 if healthy else 503)


class _PlatformCollector:
    """Reads shared counters from Redis and lag from PostgreSQL at scrape time."""

    def collect(self) -> Any:
        counters = metrics_read()
        events = CounterMetricFamily("notifications_events_accepted", "Events accepted by the API")
        events.add_metric([], counters.get("events_accepted", 0))
        yield events
        deliveries = CounterMetricFamily(
            "notifications_deliveries",
            "Delivery state changes by channel and status",
            labels=["channel", "status"],
        )
        for name, value in sorted(counters.items()):
            if name.startswith("deliveries:"):
                _, channel, status = name.split(":", 2)
                deliveries.add_metric([channel, status], value)
        yield deliveries
        fanout = CounterMetricFamily(
            "notifications_fanout_recipients", "Recipients planned by fan-out; rate() is fan-out throughput"
        )
        fanout.add_metric([], counters.get("fanout_recipients", 0))
        yield fanout
        sends = CounterMetricFamily(
            "notifications_provider_calls",
            "Provider calls by provider and outcome (success, transient, rate_limited, permanent)",
            labels=["provider", "outcome"],
        )
        for name, value in sorted(counters.items()):
            if name.startswith("sends:"):
                _, provider, outcome = name.split(":", 2)
                sends.add_metric([provider, outcome], value)
        yield sends
        breakers = GaugeMetricFamily(
            "notifications_provider_breaker_open",
            "1 while a provider's circuit breaker is open",
            labels=["provider"],
        )
        for health in provider_health(minutes=1):
            breakers.add_metric([health.provider], 1 if health.state == "open" else 0)
        yield breakers
        reads = CounterMetricFamily("notifications_inbox_read", "Inbox items marked read")
        reads.add_metric([], counters.get("inbox_read", 0))
        yield reads

        depth = GaugeMetricFamily(
            "notifications_queue_depth", "Messages waiting in each Celery queue", labels=["queue"]
        )
        try:
            for queue, length in queue_depths(settings.WORK_QUEUES).items():
                depth.add_metric([queue], length)
        except Exception as exc:  # noqa: BLE001 - /healthz says the broker is down; the rest still scrapes
            log.warning("queue depths not read: %s", exc)
        yield depth

        oldest = OutboxMessage.objects.filter(
            processed_at__isnull=True, available_at__lte=timezone.now()
        ).aggregate(oldest=Min("available_at"))["oldest"]
        lag = GaugeMetricFamily(
            "notifications_outbox_lag_seconds", "Age of the oldest due event not yet fully fanned out"
        )
        lag.add_metric([], (timezone.now() - oldest).total_seconds() if oldest else 0.0)
        yield lag


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_PlatformCollector())
    started = time.monotonic()
    body = generate_latest(registry)
    scrape = f"# scrape took {time.monotonic() - started:.4f}s on {settings.PUBLIC_URL}\n".encode()
    return HttpResponse(body + scrape, content_type="text/plain; version=0.0.4; charset=utf-8")
