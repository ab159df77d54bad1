"""The IoT admin: every page renders; a device provisioned here shows its password once and
gets a working broker client; firmware is uploaded and rolled out from forms; a rollout's
page shows each stage's progress and cancels it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from harness.mqtt import PrivateBroker
from iot.models import (
    Alert,
    Command,
    Device,
    DeviceStatus,
    Firmware,
    QuarantinedPayload,
    Rollout,
    RolloutDevice,
    RolloutStatus,
    Rule,
    UpdateStatus,
)
from iot.services.broker import PasswordHash, password_matches
from iot.services.firmware import firmware_upload
from tests.iot.test_commands import unique_key

pytestmark = pytest.mark.django_db


@dataclass
class World:
    device: Device
    command: Command
    quarantined: QuarantinedPayload
    rule: Rule
    alert: Alert
    firmware: Firmware
    rollout: Rollout


def _device(key: str, **fields: object) -> Device:
    return Device.objects.create(key=key, kind="thermo", mqtt_password_hash="h", mqtt_salt="s", **fields)


@pytest.fixture
def world() -> World:
    device = _device("adm-one", name="Boiler", firmware_version="1.0.0", status=DeviceStatus.ONLINE)
    others = [_device(f"adm-{i:02d}") for i in range(9)]
    now = timezone.now()
    command = Command.objects.create(
        device=device, name="reboot", params={"delay": 1}, timeout_at=now + timedelta(seconds=30)
    )
    quarantined = QuarantinedPayload.objects.create(
        device=device,
        topic="devices/adm-one/telemetry",
        payload=b"\x00\xffbad <b>",
        payload_bytes=7,
        error="not JSON",
    )
    rule = Rule.objects.create(
        key="too-hot", kind="thermo", metric="t", op=">", threshold=80, notify={"type": "x"}
    )
    alert = Alert.objects.create(rule=rule, device=device, value=90)
    firmware = firmware_upload(kind="thermo", version="2.0.0", image=b"\x01" * 2048)
    rollout = Rollout.objects.create(firmware=firmware, stages=[20, 100], failure_threshold=0.5)
    statuses = [UpdateStatus.SUCCEEDED, UpdateStatus.FAILED]
    for index, target in enumerate(others[:2]):
        RolloutDevice.objects.create(rollout=rollout, device=target, stage=0, status=statuses[index])
    return World(device, command, quarantined, rule, alert, firmware, rollout)


MODELS = ["device", "command", "quarantinedpayload", "rule", "alert", "firmware", "rollout"]


@pytest.mark.parametrize("model", MODELS)
def test_it_renders_every_list_and_page(admin_client: Client, world: World, model: str) -> None:
    obj = {
        "device": world.device,
        "command": world.command,
        "quarantinedpayload": world.quarantined,
        "rule": world.rule,
        "alert": world.alert,
        "firmware": world.firmware,
        "rollout": world.rollout,
    }[model]
    assert admin_client.get(reverse(f"admin:iot_{model}_changelist")).status_code == 200
    assert admin_client.get(reverse(f"admin:iot_{model}_change", args=[obj.pk])).status_code == 200
    add = admin_client.get(reverse(f"admin:iot_{model}_add"))
    editable = model in {"device", "rule", "firmware", "rollout"}
    assert add.status_code == (200 if editable else 403)


def test_it_shows_a_payload_that_could_not_be_read_as_text_and_hex(
    admin_client: Client, world: World
) -> None:
    page = admin_client.get(reverse("admin:iot_quarantinedpayload_change", args=[world.quarantined.pk]))
    html = page.content.decode()
    assert "00 ff 62 61 64" in html
    assert "bad &lt;b&gt;" in html


def test_it_provisions_a_device_and_shows_its_password_once(
    admin_client: Client, broker: PrivateBroker
) -> None:
    key = unique_key("adm-new")
    # when staff add a device
    page = admin_client.post(
        reverse("admin:iot_device_add"), {"key": key, "name": "Pump", "kind": "pump", "group": "site-a"}
    )
    # then the page after shows its credentials, the password among them
    assert page.status_code == 200
    html = page.content.decode()
    assert "it is not stored" in html and "will not be shown again" in html
    device = Device.objects.get(key=key)
    password = html.split('class="device-password">')[1].split("<")[0]
    stored = PasswordHash(device.mqtt_password_hash, device.mqtt_salt, device.mqtt_iterations)
    assert password_matches(password, stored)
    assert "no-store" in page["Cache-Control"]
    # and never again
    assert password not in admin_client.get(reverse("admin:iot_device_changelist")).content.decode()
    assert (
        password
        not in admin_client.get(reverse("admin:iot_device_change", args=[device.pk])).content.decode()
    )


def test_it_names_bad_device_fields_beside_them(admin_client: Client, world: World) -> None:
    page = admin_client.post(
        reverse("admin:iot_device_add"), {"key": "adm-one", "name": "", "kind": "Bad Kind"}
    )
    assert page.status_code == 200
    errors = page.context["adminform"].form.errors
    assert "exists already" in errors["key"][0]
    assert "lowercase" in errors["kind"][0]
    assert Device.objects.filter(key="adm-one").count() == 1


def test_it_rotates_credentials_and_revokes_from_the_list(
    admin_client: Client, broker: PrivateBroker
) -> None:
    key = unique_key("adm-rot")
    admin_client.post(reverse("admin:iot_device_add"), {"key": key, "kind": "pump"})
    device = Device.objects.get(key=key)
    before = device.mqtt_password_hash
    url = reverse("admin:iot_device_changelist")

    rotated = admin_client.post(url, {"action": "rotate_credentials", "_selected_action": [device.pk]})
    assert rotated.status_code == 200
    assert "will not be shown again" in rotated.content.decode()
    device.refresh_from_db()
    assert device.mqtt_password_hash != before

    revoked = admin_client.post(
        url, {"action": "revoke_selected", "_selected_action": [device.pk]}, follow=True
    )
    assert "Revoked 1 device." in revoked.content.decode()
    device.refresh_from_db()
    assert device.status == DeviceStatus.REVOKED


def test_it_uploads_firmware_from_a_file(admin_client: Client, world: World) -> None:
    image = SimpleUploadedFile("fw.bin", b"\x7fELF" + b"\x00" * 1000)
    page = admin_client.post(
        reverse("admin:iot_firmware_add"),
        {"kind": "thermo", "version": "2.1.0", "notes": "", "image_file": image},
    )
    assert page.status_code == 302, page.context["adminform"].form.errors if page.context else page
    stored = Firmware.objects.get(version="2.1.0")
    assert stored.size == 1004
    again = admin_client.post(
        reverse("admin:iot_firmware_add"),
        {"kind": "thermo", "version": "2.1.0", "image_file": SimpleUploadedFile("fw.bin", b"x")},
    )
    assert "exists already" in again.context["adminform"].form.errors["version"][0]


def test_it_starts_a_rollout_from_the_form_and_names_bad_stages(admin_client: Client, world: World) -> None:
    world.rollout.status = RolloutStatus.COMPLETED
    world.rollout.save()
    url = reverse("admin:iot_rollout_add")
    bad = admin_client.post(
        url, {"firmware": world.firmware.pk, "stages": "50,x", "failure_threshold": "0.1"}
    )
    assert "whole percentages" in bad.context["adminform"].form.errors["stages"][0]
    worse = admin_client.post(
        url, {"firmware": world.firmware.pk, "stages": "50,40", "failure_threshold": "0.1"}
    )
    assert "strictly increasing" in worse.context["adminform"].form.errors["stages"][0]

    # the offers go out after the commit: this test's transaction never commits
    started = admin_client.post(
        url, {"firmware": world.firmware.pk, "stages": "10,100", "failure_threshold": "0.2"}
    )
    assert started.status_code == 302
    rollout = Rollout.objects.exclude(pk=world.rollout.pk).get()
    assert rollout.stages == [10, 100]
    assert rollout.failure_threshold == 0.2
    assert RolloutDevice.objects.filter(rollout=rollout, stage=0).count() == 1


def test_the_rollout_page_shows_progress_per_stage_and_cancels(admin_client: Client, world: World) -> None:
    url = reverse("admin:iot_rollout_change", args=[world.rollout.pk])
    html = admin_client.get(url).content.decode()
    # 10 thermo devices: stage 1 covers 2 (1 succeeded, 1 failed), stage 2 the other 8
    assert html.count('class="rollout-bar"') == 2
    assert "1 succeeded, 1 failed, 0 pending" in html
    assert '<td class="num">2</td><td class="num">2</td><td class="num">1</td><td class="num">1</td>' in html
    assert '<td class="num">8</td><td class="num">0</td>' in html
    assert 'name="_cancel"' in html

    cancelled = admin_client.post(url, {"_cancel": "Cancel rollout"}, follow=True)
    assert "Cancelled: no further devices" in cancelled.content.decode()
    world.rollout.refresh_from_db()
    assert world.rollout.status == RolloutStatus.CANCELLED
    assert 'name="_cancel"' not in cancelled.content.decode()


def test_rules_are_saved_through_the_rules_service(admin_client: Client, world: World) -> None:
    page = admin_client.post(
        reverse("admin:iot_rule_add"),
        {
            "key": "Bad Key!",
            "kind": "thermo",
            "metric": "t",
            "op": ">",
            "threshold": "",
            "for_seconds": "0",
            "severity": "warning",
            "notify": '{"type": "x"}',
            "enabled": "on",
        },
    )
    assert page.status_code == 200
    assert page.context["adminform"].form.errors
    assert not Rule.objects.filter(key="Bad Key!").exists()
