"""Rules and alerts: a breach held for its duration opens one alert that reaches the
recipient through the notification pipeline once; updates while open send nothing;
hysteresis clears it with one "resolved"; a flapping sensor stays on one alert; no-data
alerts open by the sweep and resolve on a reading; the rules API."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.urls import include, path
from django.utils import timezone
from rest_framework.test import APIClient

from iot.api_rules import rule_urlpatterns
from iot.models import Alert, Device, Rule, RuleState
from iot.selectors_alerts import alerts_open
from iot.services.alerts import ALERT_TYPE_CRITICAL
from iot.services.rules import (
    rule_delete,
    rule_save,
    rule_states_for_new_device,
    rules_cache_clear,
    rules_evaluate,
    rules_no_data_sweep,
)
from notifications.models import Delivery, Event, InboxItem, NotificationType, Recipient
from notifications.services.validation import ValidationFailed
from tests.notifications.factories import RecipientFactory, TopicFactory

pytestmark = pytest.mark.django_db

# The API tests mount the routes themselves (iot/urls.py includes them in the project).
urlpatterns = [path("api/v1/iot/", include(rule_urlpatterns))]
URLS = pytest.mark.urls(__name__)

Capture = Any
T0 = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.get_fixed_timezone(0))


@pytest.fixture(autouse=True)
def _fresh_rule_map() -> Iterator[None]:
    rules_cache_clear()
    yield
    rules_cache_clear()


@pytest.fixture
def ops() -> Recipient:
    return RecipientFactory(external_id="ops", name="Ops", email="ops@example.com")


def _device(key: str, kind: str = "boiler", name: str = "") -> Device:
    return Device.objects.create(key=key, kind=kind, name=name, mqtt_password_hash="x", mqtt_salt="x")


def _rule(**data: Any) -> Rule:
    """A rule as the API would save it; this process's rule map sees it at once (the
    commit that would clear it never comes inside a test's transaction)."""
    rule = rule_save({"notify": {"recipients": ["ops"]}, **data})
    rules_cache_clear()
    return rule


def _hot_rule(**overrides: Any) -> Rule:
    return _rule(
        key="boiler.hot",
        name="Boiler too hot",
        kind="boiler",
        metric="temperature",
        op=">",
        threshold=80,
        **overrides,
    )


def _feed(
    capture: Capture, device: Device, values: list[float], *, start: datetime = T0, step: float = 10.0
) -> datetime:
    """Each value a reading ``step`` seconds after the last, evaluated as its own batch
    arriving at its ts; the pipeline runs after each commit. Returns the last ts."""
    ts = start
    for i, value in enumerate(values):
        ts = start + timedelta(seconds=i * step)
        with capture(execute=True):
            rules_evaluate([(device.id, "temperature", ts, value)], now=ts)
    return ts


def _alert_events() -> list[dict[str, Any]]:
    return [
        e.data for e in Event.objects.filter(idempotency_key__startswith="iot-alert-").order_by("created_at")
    ]


# --- Thresholds ------------------------------------------------------------------------------


def test_it_opens_one_alert_only_once_the_breach_has_held_for_seconds(
    ops: Recipient, django_capture_on_commit_callbacks: Capture
) -> None:
    boiler = _device("boiler-1", name="Boiler 1")
    _hot_rule(for_seconds=60)

    _feed(django_capture_on_commit_callbacks, boiler, [85, 86, 87])  # t0, +10 s, +20 s: too short
    assert not Alert.objects.exists()
    _feed(django_capture_on_commit_callbacks, boiler, [88, 89], start=T0 + timedelta(seconds=40))  # +50 s
    assert not Alert.objects.exists()
    _feed(django_capture_on_commit_callbacks, boiler, [90, 87], start=T0 + timedelta(seconds=60))

    alert = Alert.objects.get()
    assert (alert.status, alert.reason, alert.value, alert.peak) == ("open", "threshold", 87.0, 90.0)
    assert alert.opened_at == T0 + timedelta(seconds=60)
    assert [e["state"] for e in _alert_events()] == ["opened"]
    event = _alert_events()[0]
    assert event == {
        **event,
        "device": "boiler-1",
        "device_name": "Boiler 1",
        "rule": "boiler.hot",
        "rule_name": "Boiler too hot",
        "metric": "temperature",
        "threshold": 80.0,
        "severity": "warning",
        "reason": "threshold",
    }
    assert event["url"].endswith("/iot/?device=boiler-1")
    assert [item.title for item in InboxItem.objects.filter(recipient=ops)] == [
        "Boiler too hot on Boiler 1: opened"
    ]


def test_a_breach_interrupted_before_for_seconds_opens_nothing(
    ops: Recipient, django_capture_on_commit_callbacks: Capture
) -> None:
    boiler = _device("boiler-1")
    _hot_rule(for_seconds=30)

    _feed(django_capture_on_commit_callbacks, boiler, [85, 86, 70, 85, 86, 87])

    assert not Alert.objects.exists()
    assert RuleState.objects.get().breach_since == T0 + timedelta(seconds=30)


def test_updates_while_open_follow_value_and_peak_without_notifying(
    ops: Recipient, django_capture_on_commit_callbacks: Capture
) -> None:
    boiler = _device("boiler-1")
    _hot_rule()

    _feed(django_capture_on_commit_callbacks, boiler, [85, 95, 90, 82])

    alert = Alert.objects.get()
    assert (alert.status, alert.value, alert.peak) == ("open", 82.0, 95.0)
    assert alert.updated_at == T0 + timedelta(seconds=30)
    assert [e["state"] for e in _alert_events()] == ["opened"]
    assert InboxItem.objects.filter(recipient=ops).count() == 1


def test_an_alert_opened_and_cleared_within_one_batch_keeps_its_peak(
    ops: Recipient, django_capture_on_commit_callbacks: Capture
) -> None:
    boiler = _device("boiler-1")
    _hot_rule()

    with django_capture_on_commit_callbacks(execute=True):
        rules_evaluate(
            [
                (boiler.id, "temperature", T0 + timedelta(seconds=i), v)
                for i, v in enumerate([85, 97, 90, 60])
            ],
            now=T0,
        )

    alert = Alert.objects.get()
    assert (alert.status, alert.value, alert.peak) == ("resolved", 60.0, 97.0)
    assert [e["state"] for e in _alert_events()] == ["opened", "resolved"]


def test_it_clears_only_past_the_clear_threshold_with_one_resolved_event(
    ops: Recipient, django_capture_on_commit_callbacks: Capture
) -> None:
    boiler = _device("boiler-1", name="Boiler 1")
    _hot_rule(clear_threshold=75)

    _feed(django_capture_on_commit_callbacks, boiler, [85, 78, 76])
    assert Alert.objects.get().status == "open"  # below 80 but above 75: still open
    _feed(django_capture_on_commit_callbacks, boiler, [75, 70], start=T0 + timedelta(seconds=30))

    alert = Alert.objects.get()
    assert (alert.status, alert.value, alert.resolved_at) == ("resolved", 75.0, T0 + timedelta(seconds=30))
    events = _alert_events()
    assert [e["state"] for e in events] == ["opened", "resolved"]
    assert events[1]["value"] == 75.0
    assert sorted(item.title for item in InboxItem.objects.filter(recipient=ops)) == [
        "Boiler too hot on Boiler 1: opened",
        "Boiler too hot on Boiler 1: resolved",
    ]


def test_a_flapping_sensor_sends_at_most_one_opened_and_one_resolved_event(
    ops: Recipient, django_capture_on_commit_callbacks: Capture
) -> None:
    boiler = _device("boiler-1")
    _hot_rule()

    # 100 readings a second apart alternating across the threshold: 50 opens, 50 clears.
    _feed(django_capture_on_commit_callbacks, boiler, [85.0, 75.0] * 50, step=1.0)

    alert = Alert.objects.get()
    assert (alert.status, alert.flaps) == ("resolved", 49)
    assert [e["state"] for e in _alert_events()] == ["opened", "resolved"]
    assert InboxItem.objects.filter(recipient=ops).count() == 2


def test_a_breach_after_the_flap_window_is_a_new_alert_with_its_own_event(
    ops: Recipient, django_capture_on_commit_callbacks: Capture, settings: Any
) -> None:
    settings.IOT_ALERT_FLAP_SECONDS = 60
    boiler = _device("boiler-1")
    _hot_rule()

    _feed(django_capture_on_commit_callbacks, boiler, [85, 70])  # opened, resolved at t0+10
    _feed(django_capture_on_commit_callbacks, boiler, [85, 70], start=T0 + timedelta(seconds=69))  # a flap
    _feed(django_capture_on_commit_callbacks, boiler, [90], start=T0 + timedelta(seconds=140))

    first, second = Alert.objects.order_by("id")
    assert (first.status, first.flaps) == ("resolved", 1)
    assert (second.status, second.flaps, second.value) == ("open", 0, 90.0)
    assert [(e["alert"], e["state"]) for e in _alert_events()] == [
        (first.id, "opened"),
        (first.id, "resolved"),
        (second.id, "opened"),
    ]


def test_readings_older_than_the_last_evaluated_one_change_nothing(
    ops: Recipient, django_capture_on_commit_callbacks: Capture
) -> None:
    boiler = _device("boiler-1")
    _hot_rule()
    _feed(django_capture_on_commit_callbacks, boiler, [70], start=T0 + timedelta(seconds=60))

    _feed(django_capture_on_commit_callbacks, boiler, [99], start=T0)

    assert not Alert.objects.exists()
    state = RuleState.objects.get()
    assert (state.last_value, state.last_reading_at) == (70.0, T0 + timedelta(seconds=60))


def test_a_rule_naming_devices_ignores_other_devices_of_the_kind(
    ops: Recipient, django_capture_on_commit_callbacks: Capture
) -> None:
    watched, other = _device("boiler-1"), _device("boiler-2")
    _rule(key="one", devices=["boiler-1"], metric="temperature", op="<", threshold=10)

    with django_capture_on_commit_callbacks(execute=True):
        rules_evaluate([(watched.id, "temperature", T0, 5.0), (other.id, "temperature", T0, 5.0)], now=T0)

    assert [(a.device_id, a.peak) for a in Alert.objects.all()] == [(watched.id, 5.0)]
    assert not RuleState.objects.filter(device=other).exists()


def test_readings_no_rule_watches_cost_no_query(
    ops: Recipient, django_assert_num_queries: Any, django_assert_max_num_queries: Any
) -> None:
    devices = [_device(f"boiler-{i}") for i in range(50)]
    _hot_rule(no_data_seconds=600)
    rules_evaluate([], now=T0)  # builds the rule map

    with django_assert_num_queries(0):
        rules_evaluate([(d.id, "humidity", T0, 99.0) for d in devices], now=T0)
    # A batch for 50 devices the rule covers: a few statements, not one per device; after
    # the first (device kinds, RuleStates not seen yet), four.
    with django_assert_max_num_queries(6):
        rules_evaluate([(d.id, "temperature", T0, 20.0) for d in devices], now=T0)
    with django_assert_max_num_queries(4):
        rules_evaluate([(d.id, "temperature", T0 + timedelta(seconds=1), 21.0) for d in devices], now=T0)
    assert RuleState.objects.filter(last_value=21.0).count() == 50


@pytest.mark.django_db(transaction=True)
def test_two_ingest_processes_evaluating_the_same_breach_open_one_alert(ops: Recipient) -> None:
    boiler = _device("boiler-1")
    _hot_rule()
    start = threading.Barrier(2)
    failures: list[BaseException] = []

    def ingest(ts: datetime) -> None:
        try:
            start.wait(timeout=10)
            with transaction.atomic():
                rules_evaluate([(boiler.id, "temperature", ts, 90.0)], now=ts)
        except BaseException as exc:  # reported below
            failures.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=ingest, args=(T0 + timedelta(milliseconds=i),)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert failures == []
    assert Alert.objects.filter(status="open").count() == 1
    assert [e["state"] for e in _alert_events()] == ["opened"]


# --- No data -------------------------------------------------------------------------------------


def test_the_no_data_sweep_opens_an_alert_and_a_reading_resolves_it(
    ops: Recipient, django_capture_on_commit_callbacks: Capture
) -> None:
    sensor = _device("sensor-1", kind="sensor", name="Sensor 1")
    rule = _rule(key="sensor.silent", name="Sensor silent", kind="sensor", no_data_seconds=60)
    saved_at = RuleState.objects.get(rule=rule, device=sensor).no_data_deadline
    assert saved_at is not None

    assert rules_no_data_sweep(now=saved_at - timedelta(seconds=1)) == 0
    with django_capture_on_commit_callbacks(execute=True):
        assert rules_no_data_sweep(now=saved_at) == 1
    assert rules_no_data_sweep(now=saved_at + timedelta(seconds=30)) == 0  # once, not every second

    alert = Alert.objects.get()
    assert (alert.status, alert.reason, alert.value) == ("open", "no_data", None)
    assert [a.id for a in alerts_open()] == [alert.id]
    arrival = saved_at + timedelta(seconds=40)
    with django_capture_on_commit_callbacks(execute=True):
        rules_evaluate([(sensor.id, "battery", arrival - timedelta(seconds=5), 3.1)], now=arrival)

    alert.refresh_from_db()
    assert alert.status == "resolved"
    assert [(e["state"], e["reason"]) for e in _alert_events()] == [
        ("opened", "no_data"),
        ("resolved", "no_data"),
    ]
    state = RuleState.objects.get()
    assert state.no_data_deadline == arrival + timedelta(seconds=60)
    assert [item.title for item in InboxItem.objects.filter(recipient=ops).order_by("seq")] == [
        "Sensor silent on Sensor 1: opened",
        "Sensor silent on Sensor 1: resolved",
    ]


def test_a_device_provisioned_after_the_rule_gets_its_no_data_deadline(ops: Recipient) -> None:
    rule = _rule(key="sensor.silent", kind="sensor", no_data_seconds=60)
    late = _device("sensor-9", kind="sensor")

    assert rule_states_for_new_device(late) == 1

    deadline = RuleState.objects.get(rule=rule, device=late).no_data_deadline
    assert deadline is not None
    assert rules_no_data_sweep(now=deadline) == 1


def test_an_open_threshold_alert_stays_the_open_one_when_the_device_falls_silent(
    ops: Recipient, django_capture_on_commit_callbacks: Capture
) -> None:
    boiler = _device("boiler-1")
    _hot_rule(no_data_seconds=60)
    _feed(django_capture_on_commit_callbacks, boiler, [90])

    assert rules_no_data_sweep(now=T0 + timedelta(seconds=61)) == 0

    assert [(a.reason, a.status) for a in Alert.objects.all()] == [("threshold", "open")]
    assert RuleState.objects.get().no_data_deadline is None


# --- Critical types ------------------------------------------------------------------------------


def test_a_critical_rule_reaches_a_recipient_in_quiet_hours_at_once(
    django_capture_on_commit_callbacks: Capture,
) -> None:
    local_now = timezone.now()
    night = RecipientFactory(
        external_id="night",
        email="night@example.com",
        quiet_hours_start=(local_now - timedelta(hours=1)).time().replace(second=0, microsecond=0),
        quiet_hours_end=(local_now + timedelta(hours=1)).time().replace(second=0, microsecond=0),
    )
    boiler = _device("boiler-1")
    rule_save(
        {
            "key": "boiler.fire",
            "kind": "boiler",
            "metric": "temperature",
            "op": ">",
            "threshold": 120,
            "severity": "critical",
            "notify": {"recipients": ["night"]},
        }
    )
    rules_cache_clear()

    now = timezone.now()
    with django_capture_on_commit_callbacks(execute=True):
        rules_evaluate([(boiler.id, "temperature", now, 150.0)], now=now)

    assert Rule.objects.get().notify["type"] == ALERT_TYPE_CRITICAL
    assert NotificationType.objects.get(key=ALERT_TYPE_CRITICAL).is_critical
    assert InboxItem.objects.filter(recipient=night).count() == 1
    statuses = dict(Delivery.objects.filter(recipient=night).values_list("channel", "status"))
    assert statuses["inapp"] == "delivered"
    assert statuses["email"] not in ("scheduled", "suppressed")


# --- Saving rules ----------------------------------------------------------------------------------


def test_a_rule_may_notify_a_topic(django_capture_on_commit_callbacks: Capture) -> None:
    topic = TopicFactory(key="boiler-room")
    boiler = _device("boiler-1")
    rule = rule_save(
        {
            "key": "t",
            "kind": "boiler",
            "metric": "temperature",
            "op": ">=",
            "threshold": 1,
            "notify": {"topic": topic.key},
        }
    )
    rules_cache_clear()

    with django_capture_on_commit_callbacks(execute=True):
        rules_evaluate([(boiler.id, "temperature", T0, 1.0)], now=T0)

    assert rule.notify == {"type": "iot.alert", "topic": "boiler-room"}
    assert Event.objects.get(idempotency_key__startswith="iot-alert-").topic_id == topic.id


def test_changing_a_rules_devices_resolves_the_alert_of_a_device_it_no_longer_covers(
    ops: Recipient, django_capture_on_commit_callbacks: Capture
) -> None:
    one, two = _device("boiler-1"), _device("boiler-2")
    rule = _hot_rule()
    with django_capture_on_commit_callbacks(execute=True):
        rules_evaluate([(one.id, "temperature", T0, 90.0), (two.id, "temperature", T0, 90.0)], now=T0)

    with django_capture_on_commit_callbacks(execute=True):
        rule_save({"devices": ["boiler-2"]}, rule=rule)

    assert dict(Alert.objects.values_list("device_id", "status")) == {one.id: "resolved", two.id: "open"}
    assert list(RuleState.objects.values_list("device_id", flat=True)) == [two.id]
    assert Rule.objects.get().kind == ""


def test_a_type_that_needs_data_an_alert_lacks_is_refused(ops: Recipient) -> None:
    NotificationType.objects.create(
        key="orders.shipped",
        channels=["inapp"],
        variables={"order_id": {"type": "integer", "required": True, "example": 1, "description": ""}},
    )

    with pytest.raises(ValidationFailed) as refused:
        _rule(
            key="x",
            kind="boiler",
            no_data_seconds=5,
            notify={"type": "orders.shipped", "recipients": ["ops"]},
        )

    assert "order_id" in refused.value.errors["notify.type"][0]


def test_a_type_requiring_a_value_is_refused_for_a_no_data_rule_which_has_none(ops: Recipient) -> None:
    NotificationType.objects.create(
        key="readings",
        channels=["inapp"],
        variables={"value": {"type": "number", "required": True, "example": 1, "description": ""}},
    )
    notify = {"type": "readings", "recipients": ["ops"]}

    _rule(key="hot", kind="boiler", metric="temperature", op=">", threshold=1, notify=notify)
    with pytest.raises(ValidationFailed) as refused:
        _rule(key="silent", kind="boiler", no_data_seconds=60, notify=notify)

    assert "value" in refused.value.errors["notify.type"][0]


def test_a_rule_without_a_key_is_refused_naming_it(ops: Recipient) -> None:
    with pytest.raises(ValidationFailed) as refused:
        rule_save({"kind": "boiler", "no_data_seconds": 60, "notify": {"recipients": ["ops"]}})

    assert refused.value.errors == {"key": ["this field is required"]}


def test_deleting_a_rule_takes_its_states_and_alerts(
    ops: Recipient, django_capture_on_commit_callbacks: Capture
) -> None:
    boiler = _device("boiler-1")
    rule = _hot_rule()
    _feed(django_capture_on_commit_callbacks, boiler, [90])

    rule_delete(rule)

    assert not (Rule.objects.exists() or RuleState.objects.exists() or Alert.objects.exists())


# --- API -----------------------------------------------------------------------------------------


@URLS
@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"key": "Bad Key"}, "key"),
        ({"op": "="}, "op"),
        ({"threshold": "80"}, "threshold"),
        ({"clear_threshold": 85}, "clear_threshold"),
        ({"for_seconds": -1}, "for_seconds"),
        ({"no_data_seconds": 0}, "no_data_seconds"),
        ({"kind": "", "devices": ["nope"]}, "devices"),
        ({"kind": ""}, "devices"),
        ({"metric": ""}, "metric"),
        ({"severity": "fatal"}, "severity"),
        ({"notify": {"recipients": ["ghost"]}}, "notify.recipients"),
        ({"notify": {"type": "no.such.type", "recipients": ["ops"]}}, "notify.type"),
        ({"notify": {"topic": "no-such-topic"}}, "notify.topic"),
        ({"colour": "red"}, "colour"),
    ],
    ids=[
        "bad-key",
        "bad-op",
        "threshold-as-text",
        "clear-on-breaching-side",
        "negative-duration",
        "zero-no-data",
        "unknown-device",
        "neither-devices-nor-kind",
        "threshold-without-metric",
        "bad-severity",
        "unknown-recipient",
        "unknown-type",
        "unknown-topic",
        "unknown-field",
    ],
)
def test_a_bad_rule_is_refused_naming_the_field_and_nothing_is_stored(
    service_client: APIClient, ops: Recipient, change: dict[str, Any], field: str
) -> None:
    body = {
        "key": "boiler.hot",
        "kind": "boiler",
        "metric": "temperature",
        "op": ">",
        "threshold": 80,
        "notify": {"recipients": ["ops"]},
        **change,
    }

    response = service_client.post("/api/v1/iot/rules/", body, format="json")

    assert response.status_code == 400, response.json()
    assert field in response.json()["errors"]
    assert not Rule.objects.exists()


@URLS
def test_a_service_creates_reads_changes_and_deletes_a_rule(
    service_client: APIClient, ops: Recipient
) -> None:
    _device("boiler-1")
    created = service_client.post(
        "/api/v1/iot/rules/",
        {
            "key": "boiler.hot",
            "name": "Boiler too hot",
            "devices": ["boiler-1"],
            "metric": "temperature",
            "op": ">",
            "threshold": 80,
            "for_seconds": 30,
            "clear_threshold": 75,
            "notify": {"type": "iot.alert", "recipients": ["ops"]},
        },
        format="json",
    )
    assert created.status_code == 201, created.json()
    body = created.json()
    assert {
        k: body[k] for k in ("key", "devices", "kind", "op", "threshold", "clear_threshold", "severity")
    } == {
        "key": "boiler.hot",
        "devices": ["boiler-1"],
        "kind": "",
        "op": ">",
        "threshold": 80.0,
        "clear_threshold": 75.0,
        "severity": "warning",
    }
    assert body["notify"] == {"type": "iot.alert", "recipients": ["ops"]}

    assert [r["key"] for r in service_client.get("/api/v1/iot/rules/").json()["results"]] == ["boiler.hot"]
    changed = service_client.patch(
        "/api/v1/iot/rules/boiler.hot/", {"threshold": 90, "clear_threshold": 85}, format="json"
    )
    assert changed.status_code == 200, changed.json()
    assert (changed.json()["threshold"], changed.json()["clear_threshold"]) == (90.0, 85.0)
    refused = service_client.patch("/api/v1/iot/rules/boiler.hot/", {"clear_threshold": 95}, format="json")
    assert refused.status_code == 400 and "clear_threshold" in refused.json()["errors"]
    assert (
        service_client.patch("/api/v1/iot/rules/boiler.hot/", {"key": "other"}, format="json").status_code
        == 400
    )
    assert service_client.get("/api/v1/iot/rules/boiler.hot/").json()["threshold"] == 90.0

    assert service_client.delete("/api/v1/iot/rules/boiler.hot/").status_code == 204
    missing = service_client.get("/api/v1/iot/rules/boiler.hot/")
    assert missing.status_code == 404 and "detail" in missing.json()["errors"]
    assert (
        service_client.patch("/api/v1/iot/rules/boiler.hot/", {"threshold": 1}, format="json").status_code
        == 404
    )


@URLS
def test_alerts_are_listed_by_status_and_device_and_read_one_by_one(
    service_client: APIClient, ops: Recipient, django_capture_on_commit_callbacks: Capture
) -> None:
    one, two = _device("boiler-1", name="Boiler 1"), _device("boiler-2")
    _hot_rule()
    _feed(django_capture_on_commit_callbacks, one, [90, 70])
    _feed(django_capture_on_commit_callbacks, two, [95])

    open_ = service_client.get("/api/v1/iot/alerts/?status=open").json()["results"]
    resolved = service_client.get("/api/v1/iot/alerts/?status=resolved&device=boiler-1").json()["results"]
    assert [(a["device"], a["status"], a["peak"]) for a in open_] == [("boiler-2", "open", 95.0)]
    assert [(a["device"], a["device_name"], a["status"]) for a in resolved] == [
        ("boiler-1", "Boiler 1", "resolved")
    ]
    assert len(service_client.get("/api/v1/iot/alerts/?status=").json()["results"]) == 2
    assert service_client.get("/api/v1/iot/alerts/?status=closed").status_code == 400

    alert = service_client.get(f"/api/v1/iot/alerts/{open_[0]['id']}/")
    assert alert.status_code == 200 and alert.json()["rule"] == "boiler.hot"
    assert service_client.get("/api/v1/iot/alerts/999999/").status_code == 404


@URLS
def test_the_rules_api_wants_an_api_key(ops: Recipient) -> None:
    assert APIClient().get("/api/v1/iot/rules/").status_code == 401
