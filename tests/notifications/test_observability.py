from __future__ import annotations

import pytest

from harness import free_port
from realtime import redis_client

pytestmark = pytest.mark.django_db


def test_it_reports_every_dependency_ok(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"database": "ok", "redis": "ok", "broker": "ok", "status": "ok"}


def test_it_answers_503_naming_redis_when_redis_is_down(client, settings):
    # A dead address and a fresh client, rather than a patched function: modules imported
    # during the request would bind a patched function for the rest of the run.
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    redis_client.redis_sync.cache_clear()
    try:
        response = client.get("/healthz")
    finally:
        redis_client.redis_sync.cache_clear()

    assert response.status_code == 503
    body = response.json()
    assert body["redis"].startswith("down:") and body["database"] == "ok" and body["status"] == "degraded"


def test_it_exports_prometheus_metrics(client, service_client, django_capture_on_commit_callbacks):
    from tests.notifications.factories import NotificationTypeFactory, RecipientFactory

    nt = NotificationTypeFactory()
    alice = RecipientFactory()
    with django_capture_on_commit_callbacks(execute=True):
        service_client.post(
            "/api/v1/events/",
            {"type": nt.key, "recipients": [alice.external_id], "data": {"order_id": 1}},
            format="json",
        )

    text = client.get("/metrics").content.decode()

    assert "notifications_events_accepted_total" in text
    assert 'notifications_deliveries_total{channel="inapp",status="delivered"}' in text
    assert "notifications_fanout_recipients_total" in text
    assert 'notifications_queue_depth{queue="fanout"}' in text
    assert "notifications_outbox_lag_seconds" in text


def test_it_exports_provider_calls_and_breaker_state(client, settings):
    from notifications.services.metrics import metrics_increment
    from notifications.services.provider_health import breaker_record, breaker_reset

    settings.BREAKER_MIN_CALLS = 2
    breaker_reset(provider="twilio")
    metrics_increment({"sends:fcm:success": 3, "sends:twilio:transient": 2})
    for _ in range(2):
        breaker_record(provider="twilio", ok=False, latency_ms=10)

    text = client.get("/metrics").content.decode()
    breaker_reset(provider="twilio")

    assert 'notifications_provider_calls_total{outcome="success",provider="fcm"}' in text
    assert 'notifications_provider_breaker_open{provider="twilio"} 1.0' in text
    assert 'notifications_provider_breaker_open{provider="fcm"} 0.0' in text
