"""Firmware rollouts, end to end through the broker: a fleet of simulated devices (paho-mqtt,
each with its own credentials) receives the offers of the current stage, downloads the
image from its signed link, checks it and reports on its status topic; a platform
subscriber hands the reports to ``firmware_report`` as the ingest does. A stage with too
many failures stops the rollout there; a healthy one goes through every stage."""

from __future__ import annotations

import hashlib
import json
import queue
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import pytest
from django.core import signing
from django.test import Client
from django.urls import path
from django.utils import timezone

from harness.mqtt import PrivateBroker
from iot.firmware_views import firmware_download
from iot.models import Device, Firmware, Rollout, RolloutDevice, RolloutStatus, UpdateStatus
from iot.selectors_firmware import rollout_progress, stage_counts
from iot.services.broker import platform_client
from iot.services.devices import device_provision, device_revoke
from iot.services.firmware import (
    OFFER_NOT_SENT,
    firmware_link,
    firmware_report,
    firmware_upload,
    rollout_cancel,
    rollout_start,
    rollouts_check,
)
from iot.services.publisher import publish, publisher_close
from iot.tasks import rollouts_check_task
from notifications.services.validation import ValidationFailed
from tests.iot.test_commands import DeviceClient, unique_key

# The download is routed by iot/page_urls.py in the project; these tests mount it alone.
urlpatterns = [path("iot/firmware/<str:token>/", firmware_download)]
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.urls(__name__)]

IMAGE = bytes(range(256)) * 400  # 100 KB
FENCE = b'{"fence": true}'


def _fenced(device: DeviceClient) -> bool:
    return any(payload == FENCE for _, payload in device.received)


class Fleet:
    """Simulated devices of one kind, and the platform's subscriber to their reports."""

    def __init__(self, broker: PrivateBroker, kind: str, count: int, *, failures: int = 0) -> None:
        provisioned = [device_provision(key=unique_key(f"fw-{i:02d}"), kind=kind) for i in range(count)]
        Device.objects.filter(kind=kind).update(firmware_version="1.0.0")
        self.devices = {p.device.key: DeviceClient(broker, p) for p in provisioned}
        for device in self.devices.values():
            device.subscribe("firmware")
        self.failures_left = failures
        self.reports: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.reports_sent = 0
        self.reports_handled = 0
        self.offers: dict[str, list[dict[str, Any]]] = {key: [] for key in self.devices}
        self._seen = dict.fromkeys(self.devices, 0)
        self.http = Client()

    def _on_report(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.reports.put((message.topic, message.payload))

    def _new_offers(self) -> list[tuple[DeviceClient, dict[str, Any]]]:
        found = []
        for key, device in self.devices.items():
            with device.arrived:
                fresh = device.received[self._seen[key] :]
                self._seen[key] = len(device.received)
            for _topic, payload in fresh:
                if payload != FENCE:
                    offer = json.loads(payload)
                    self.offers[key].append(offer)
                    found.append((device, offer))
        return found

    def _flash(self, device: DeviceClient, offer: dict[str, Any]) -> None:
        """What the device does with an offer: download, check, flash, report."""
        response = self.http.get(urlsplit(offer["url"]).path)
        assert response.status_code == 200, response.content
        image = response.content
        assert response["Content-Type"] == "application/octet-stream"
        assert response["X-Checksum-Sha256"] == offer["sha256"] == hashlib.sha256(image).hexdigest()
        assert len(image) == offer["size"]
        ok = self.failures_left <= 0
        self.failures_left -= 0 if ok else 1
        report = {"rollout": offer["rollout"], "version": offer["version"], "ok": ok}
        if not ok:
            report["detail"] = "flash verify failed"
        device.publish("firmware/status", report)
        self.reports_sent += 1

    def run(self, rollout: Rollout, *, timeout: float = 60.0) -> Rollout:
        """Play the devices and the ingest until the rollout ends and every report is in."""
        with platform_client(f"test-fw-reports-{rollout.pk}") as ingest:
            subscribed = threading.Event()
            ingest.on_subscribe = lambda *args: subscribed.set()
            ingest.on_message = self._on_report
            ingest.subscribe("devices/+/firmware/status", qos=1)
            assert subscribed.wait(5)
            # Offers sent before this subscriber existed were answered after it: the
            # devices only report once this loop runs.
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                for device, offer in self._new_offers():
                    self._flash(device, offer)
                try:
                    topic, payload = self.reports.get(timeout=0.05)
                except queue.Empty:
                    rollout.refresh_from_db()
                    if rollout.status != RolloutStatus.RUNNING and self.reports_handled == self.reports_sent:
                        return rollout
                    continue
                firmware_report(topic.split("/")[1], payload, topic=topic)
                self.reports_handled += 1
        raise AssertionError(f"the rollout did not end within {timeout} s: {rollout.status}")

    def fence(self) -> None:
        """Make sure every offer published so far has arrived: a marker published after
        them reaches each device after them (the broker keeps each client's order)."""
        for key in self.devices:
            publish(f"devices/{key}/firmware", FENCE)
        for key, device in self.devices.items():
            with device.arrived:
                fenced = device.arrived.wait_for(partial(_fenced, device), 5)
            assert fenced, f"{key} did not receive the fence"
        self._new_offers()

    def close(self) -> None:
        for device in self.devices.values():
            device.close()


@pytest.fixture
def connected(broker: PrivateBroker) -> Iterator[PrivateBroker]:
    yield broker
    publisher_close()


@pytest.fixture
def firmware(db: Any) -> Firmware:
    return firmware_upload(kind="fw-sensor", version="2.0.0", image=IMAGE, notes="fixes the drift")


def test_a_stage_with_too_many_failures_stops_the_rollout_there(
    connected: PrivateBroker, firmware: Firmware
) -> None:
    # given 20 devices, of which the first three to flash fail
    fleet = Fleet(connected, "fw-sensor", 20, failures=3)
    try:
        # when the rollout starts with a first stage of 25% (5 devices)
        rollout = rollout_start(firmware, stages=[25, 50, 100], failure_threshold=0.1)
        rollout = fleet.run(rollout)
        fleet.fence()
    finally:
        fleet.close()

    # then it stopped at its first stage, saying why
    assert rollout.status == RolloutStatus.STOPPED
    assert rollout.current_stage == 0
    assert rollout.finished_at is not None
    assert "stage 1 of 3" in rollout.reason and "3 of 5 devices failed (60%)" in rollout.reason
    # and only the first stage's devices were offered the update, once each
    offered = {key for key, offers in fleet.offers.items() if offers}
    assert len(offered) == 5
    assert all(len(offers) == 1 for key, offers in fleet.offers.items() if key in offered)
    rows = RolloutDevice.objects.filter(rollout=rollout)
    assert {row.device.key for row in rows} == offered
    assert sorted(row.status for row in rows) == ["failed"] * 3 + ["succeeded"] * 2
    assert rows.filter(detail="flash verify failed").count() == 3
    # and the two devices that flashed run the new version, no other does
    versions = dict(Device.objects.filter(kind="fw-sensor").values_list("key", "firmware_version"))
    assert sorted(versions.values()).count("2.0.0") == 2
    assert {key for key, version in versions.items() if version == "2.0.0"} <= offered
    # and the admin's view of it
    stages = rollout_progress(rollout)
    assert [(s.target, s.offered, s.succeeded, s.failed, s.pending) for s in stages] == [
        (5, 5, 2, 3, 0),
        (5, 0, 0, 0, 0),
        (10, 0, 0, 0, 0),
    ]


def test_a_healthy_rollout_goes_through_every_stage(connected: PrivateBroker, firmware: Firmware) -> None:
    # given 20 devices that all flash well
    fleet = Fleet(connected, "fw-sensor", 20)
    try:
        # when the rollout runs its stages of 5%, 50% and 100%
        rollout = rollout_start(firmware, stages=[5, 50, 100])
        rollout = fleet.run(rollout)
        fleet.fence()
    finally:
        fleet.close()

    # then it completed, each device offered exactly once, every device updated
    assert rollout.status == RolloutStatus.COMPLETED, rollout.reason
    assert rollout.current_stage == 2
    assert all(len(offers) == 1 for offers in fleet.offers.values())
    assert set(Device.objects.filter(kind="fw-sensor").values_list("firmware_version", flat=True)) == {
        "2.0.0"
    }
    stages = rollout_progress(rollout)
    assert [(s.target, s.offered, s.succeeded, s.failed) for s in stages] == [
        (1, 1, 1, 0),
        (9, 9, 9, 0),
        (10, 10, 10, 0),
    ]
    # and the offer said what to expect
    offer = next(iter(fleet.offers.values()))[0]
    assert offer["rollout"] == rollout.pk
    assert offer["version"] == "2.0.0"
    assert offer["sha256"] == hashlib.sha256(IMAGE).hexdigest()
    assert offer["size"] == len(IMAGE)
    assert offer["url"].startswith("http") and "/iot/firmware/" in offer["url"]


def test_it_refuses_a_forged_or_expired_link(firmware: Firmware, monkeypatch: pytest.MonkeyPatch) -> None:
    device = Device.objects.create(key="fw-link", kind="fw-sensor", mqtt_password_hash="x", mqtt_salt="y")
    http = Client()
    good = firmware_link(firmware, device.key)
    answer = http.get(urlsplit(good.url).path)
    assert answer.status_code == 200
    assert answer["ETag"] == f'"{firmware.sha256}"'
    assert answer.content == IMAGE
    assert http.get(urlsplit(good.url).path, HTTP_IF_NONE_MATCH=answer["ETag"]).status_code == 304

    # a token for another firmware, its signature kept
    value, _, signature = good.token.rpartition(":")
    forged = http.get(f"/iot/firmware/{value[:-1]}x:{signature}/")
    assert forged.status_code == 403
    assert b"not valid" in forged.content

    # a link made more than an hour ago
    real_timestamp = signing.TimestampSigner.timestamp
    monkeypatch.setattr(
        signing.TimestampSigner, "timestamp", lambda self: signing.b62_encode(int(time.time()) - 3601)
    )
    old = firmware_link(firmware, device.key)
    monkeypatch.setattr(signing.TimestampSigner, "timestamp", real_timestamp)
    expired = http.get(urlsplit(old.url).path)
    assert expired.status_code == 403
    assert b"expired" in expired.content


def test_it_refuses_the_link_of_a_revoked_device(connected: PrivateBroker, firmware: Firmware) -> None:
    provisioned = device_provision(key=unique_key("fw-revoked"), kind="fw-sensor")
    link = firmware_link(firmware, provisioned.device.key)
    device_revoke(provisioned.device)
    refused = Client().get(urlsplit(link.url).path)
    assert refused.status_code == 403
    assert b"revoked" in refused.content


def test_it_refuses_a_second_upload_of_a_version_and_bad_images(firmware: Firmware) -> None:
    with pytest.raises(ValidationFailed) as again:
        firmware_upload(kind="fw-sensor", version="2.0.0", image=b"other")
    assert "exists already" in again.value.errors["version"][0]
    with pytest.raises(ValidationFailed) as bad:
        firmware_upload(kind="Bad Kind", version="", image=b"")
    assert set(bad.value.errors) == {"kind", "version", "image"}
    assert firmware.size == len(IMAGE)
    assert firmware.sha256 == hashlib.sha256(IMAGE).hexdigest()


@pytest.mark.parametrize(
    ("stages", "threshold", "field"),
    [
        ([50, 40, 100], 0.1, "stages"),
        ([5, 50], 0.1, "stages"),
        ([0, 100], 0.1, "stages"),
        ([5.5, 100], 0.1, "stages"),
        ([], 0.1, "stages"),
        ([100], 1.5, "failure_threshold"),
        ([100], True, "failure_threshold"),
    ],
)
def test_it_names_bad_rollout_settings(firmware: Firmware, stages: Any, threshold: Any, field: str) -> None:
    Device.objects.create(key="fw-one", kind="fw-sensor", mqtt_password_hash="x", mqtt_salt="y")
    with pytest.raises(ValidationFailed) as refused:
        rollout_start(firmware, stages=stages, failure_threshold=threshold)
    assert list(refused.value.errors) == [field]
    assert not Rollout.objects.exists()


def test_it_refuses_a_rollout_without_devices_or_beside_a_running_one(firmware: Firmware) -> None:
    with pytest.raises(ValidationFailed) as empty:
        rollout_start(firmware)
    assert "no active fw-sensor device" in empty.value.errors["firmware"][0]
    Device.objects.create(
        key="fw-two", kind="fw-sensor", group="site-a", mqtt_password_hash="x", mqtt_salt="y"
    )
    Rollout.objects.create(firmware=firmware, stages=[100])
    with pytest.raises(ValidationFailed) as busy:
        rollout_start(firmware, group="site-a")
    assert "is running" in busy.value.errors["firmware"][0]
    with pytest.raises(ValidationFailed) as elsewhere:
        rollout_start(firmware, group="site-b")
    assert "no active fw-sensor device in group site-b" in elsewhere.value.errors["group"][0]


def test_stage_sizes_are_cumulative_and_never_empty_while_devices_remain() -> None:
    assert stage_counts(20, [5, 50, 100]) == [1, 10, 20]
    assert stage_counts(1000, [5, 50, 100]) == [50, 500, 1000]
    assert stage_counts(2, [5, 50, 100]) == [1, 2, 2]
    assert stage_counts(3, [1, 2, 3, 100]) == [1, 2, 3, 3]


def test_silent_devices_fail_after_the_stage_timeout_and_unsent_offers_are_resent(
    connected: PrivateBroker, firmware: Firmware
) -> None:
    # given a rollout whose first stage (one device) never answers
    provisioned = [device_provision(key=unique_key("fw-quiet"), kind="fw-sensor") for _ in range(2)]
    rollout = rollout_start(firmware, stages=[50, 100], failure_threshold=0.5)
    (row,) = RolloutDevice.objects.filter(rollout=rollout)
    assert row.detail == ""  # the broker took the offer
    # and an offer that the broker did not take
    RolloutDevice.objects.filter(pk=row.pk).update(detail=f"{OFFER_NOT_SENT}: broker down")
    later = timezone.now() + timedelta(seconds=120)

    # when the check runs before the stage's timeout: the offer is sent again
    assert rollouts_check(now=later, stage_timeout=3600) == 1
    row.refresh_from_db()
    assert row.detail == "" and row.status == UpdateStatus.OFFERED

    # when it runs after: the silent device counts as failed, and 1 of 1 is above 50%
    assert rollouts_check(now=timezone.now() + timedelta(hours=2), stage_timeout=3600) == 1
    row.refresh_from_db()
    rollout.refresh_from_db()
    assert row.status == UpdateStatus.FAILED and "no report within 3600 s" in row.detail
    assert rollout.status == RolloutStatus.STOPPED
    assert rollouts_check_task.delay().get() == 0
    assert len(provisioned) == 2


def test_reports_are_checked_and_repeats_change_nothing(connected: PrivateBroker, firmware: Firmware) -> None:
    provisioned = device_provision(key=unique_key("fw-report"), kind="fw-sensor")
    stranger = device_provision(key=unique_key("fw-stranger"), kind="other")
    key = provisioned.device.key
    rollout = rollout_start(firmware, stages=[100])
    topic = f"devices/{key}/firmware/status"

    # unreadable reports are quarantined on the device
    firmware_report(key, b"nope", topic=topic)
    firmware_report(key, b'{"rollout": 1, "version": "2.0.0"}', topic=topic)
    assert Device.objects.get(key=key).malformed_count == 2
    # a device the rollout did not offer to cannot report on it
    good = json.dumps({"rollout": rollout.pk, "version": "2.0.0", "ok": True}).encode()
    firmware_report(stranger.device.key, good, topic=topic)
    assert Device.objects.get(key=stranger.device.key).firmware_version == ""
    rollout.refresh_from_db()
    assert rollout.status == RolloutStatus.RUNNING

    # the device's own report completes it; its repeat changes nothing
    firmware_report(key, good, topic=topic)
    firmware_report(
        key, json.dumps({"rollout": rollout.pk, "version": "2.0.0", "ok": False}).encode(), topic=topic
    )
    rollout.refresh_from_db()
    assert rollout.status == RolloutStatus.COMPLETED
    assert RolloutDevice.objects.get(rollout=rollout).status == UpdateStatus.SUCCEEDED
    assert Device.objects.get(key=key).firmware_version == "2.0.0"


def test_a_cancelled_rollout_offers_no_more(connected: PrivateBroker, firmware: Firmware) -> None:
    keys = [device_provision(key=unique_key("fw-cancel"), kind="fw-sensor").device.key for _ in range(4)]
    rollout = rollout_start(firmware, stages=[25, 100])
    rollout_cancel(rollout)
    assert rollout.status == RolloutStatus.CANCELLED
    (row,) = RolloutDevice.objects.filter(rollout=rollout).select_related("device")
    firmware_report(
        row.device.key,
        json.dumps({"rollout": rollout.pk, "version": "2.0.0", "ok": True}).encode(),
        topic="devices/x/firmware/status",
    )
    rollout.refresh_from_db()
    assert rollout.status == RolloutStatus.CANCELLED
    assert RolloutDevice.objects.filter(rollout=rollout).count() == 1
    assert Device.objects.get(pk=row.device_id).firmware_version == "2.0.0"
    assert rollout_cancel(rollout).status == RolloutStatus.CANCELLED
    assert len(keys) == 4
