"""Commands reach the device through the broker at QoS 1 and are tracked until its answer:
the answer of the device is recorded once, another device cannot answer for it, silence
times out, bad input names its field, a broker that is down leaves a visible failure."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from django.utils import timezone
from paho.mqtt.reasoncodes import ReasonCode

from harness.mqtt import PrivateBroker
from iot.models import Command, CommandStatus, Device, QuarantinedPayload
from iot.selectors_commands import command_of, command_payload
from iot.services.commands import command_ack, command_send, commands_time_out
from iot.services.devices import Provisioned, device_provision, device_revoke
from iot.services.publisher import publisher_close
from iot.tasks import commands_time_out_task
from notifications.services.validation import ValidationFailed

pytestmark = pytest.mark.django_db(transaction=True)


def unique_key(prefix: str) -> str:
    """The session's broker outlives each test's rows: every test provisions new keys."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class DeviceClient:
    """A device as paho-mqtt sees it, with its own credentials: subscribes (waiting for
    the SUBACK), publishes, and collects what arrives."""

    def __init__(self, broker: PrivateBroker, provisioned: Provisioned) -> None:
        self.key = provisioned.device.key
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.key, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(self.key, provisioned.password)
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.granted: list[ReasonCode] = []
        self.received: list[tuple[str, bytes]] = []
        self.arrived = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect(broker.settings.host, broker.port)
        self.client.loop_start()
        assert self.connected.wait(5), f"{self.key} could not connect"

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        if not reason.is_failure:
            self.connected.set()

    def _on_subscribe(
        self, client: Any, userdata: Any, mid: int, codes: list[ReasonCode], props: Any
    ) -> None:
        self.granted = codes
        self.subscribed.set()

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self.arrived:
            self.received.append((message.topic, message.payload))
            self.arrived.notify_all()

    def subscribe(self, suffix: str) -> None:
        self.subscribed.clear()
        self.client.subscribe(f"devices/{self.key}/{suffix}", qos=1)
        assert self.subscribed.wait(5) and not self.granted[0].is_failure

    def wait_messages(self, count: int, timeout: float = 5.0) -> list[tuple[str, bytes]]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.received) >= count, timeout), self.received
            return list(self.received)

    def publish(self, suffix: str, body: dict[str, Any]) -> None:
        info = self.client.publish(f"devices/{self.key}/{suffix}", json.dumps(body).encode(), qos=1)
        info.wait_for_publish(5)
        assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def connected(broker: PrivateBroker) -> Iterator[PrivateBroker]:
    yield broker
    publisher_close()


def test_it_delivers_a_command_to_the_device_and_records_its_answer(connected: PrivateBroker) -> None:
    # given a device listening on its commands topic with its own credentials
    provisioned = device_provision(key=unique_key("cmd-lamp"), kind="lamp")
    device = DeviceClient(connected, provisioned)
    device.subscribe("commands")
    try:
        # when a command is sent
        command = command_send(provisioned.device, name="reboot", params={"delay": 5})
        # then the broker took it and the device received it at QoS 1
        assert command.status == CommandStatus.SENT
        assert command.sent_at is not None
        assert command.timeout_at > command.created_at
        ((topic, payload),) = device.wait_messages(1)
        assert topic == f"devices/{device.key}/commands"
        assert json.loads(payload) == {"id": command.id, "name": "reboot", "params": {"delay": 5}}

        # when the device answers and the ingest hands the answer over
        answer = json.dumps({"id": command.id, "ok": True, "result": {"uptime": 0}}).encode()
        command_ack(device.key, answer, topic=f"devices/{device.key}/commands/ack")
        # then it is recorded
        stored = command_of(provisioned.device, command.id)
        assert stored is not None
        assert stored.status == CommandStatus.ACKED
        assert stored.ok is True
        assert stored.result == {"uptime": 0}
        first_ack = stored.acked_at
        assert first_ack is not None

        # and a redelivery of the same answer changes nothing
        command_ack(device.key, answer, topic=f"devices/{device.key}/commands/ack")
        stored.refresh_from_db()
        assert stored.acked_at == first_ack
        assert command_payload(stored)["late"] is False
    finally:
        device.close()


def test_it_records_a_failure_the_device_reports(connected: PrivateBroker) -> None:
    provisioned = device_provision(key=unique_key("cmd-valve"), kind="valve")
    command = command_send(provisioned.device, name="open", params=None)
    answer = json.dumps({"id": command.id, "ok": False, "result": {"error": "stuck"}}).encode()
    command_ack(provisioned.device.key, answer, topic="devices/x/commands/ack")
    command.refresh_from_db()
    assert command.status == CommandStatus.FAILED
    assert command.ok is False
    assert command.result == {"error": "stuck"}
    assert command.params == {}


def test_it_ignores_an_answer_from_another_device(connected: PrivateBroker) -> None:
    mine = device_provision(key=unique_key("cmd-mine"), kind="lamp")
    other = device_provision(key=unique_key("cmd-other"), kind="lamp").device.key
    command = command_send(mine.device, name="reboot", params={})
    forged = json.dumps({"id": command.id, "ok": True, "result": "done"}).encode()

    command_ack(other, forged, topic=f"devices/{other}/commands/ack")

    command.refresh_from_db()
    assert command.status == CommandStatus.SENT
    assert command.acked_at is None
    assert not QuarantinedPayload.objects.exists()


def test_it_quarantines_an_unreadable_answer_on_the_device(connected: PrivateBroker) -> None:
    provisioned = device_provision(key=unique_key("cmd-garbled"), kind="lamp")
    key = provisioned.device.key
    command_ack(key, b"\xff not json", topic=f"devices/{key}/commands/ack")
    command_ack(key, b'{"id": "7", "ok": true}', topic=f"devices/{key}/commands/ack")

    kept = list(QuarantinedPayload.objects.order_by("id"))
    assert [row.device_id for row in kept] == [provisioned.device.id] * 2
    assert "not JSON" in kept[0].error
    assert "id: expected a command id" in kept[1].error
    assert Device.objects.get(pk=provisioned.device.pk).malformed_count == 2


def test_it_times_out_a_command_left_unanswered_and_still_records_a_late_answer(
    connected: PrivateBroker,
) -> None:
    # given a sent command and another answered one
    provisioned = device_provision(key=unique_key("cmd-silent"), kind="lamp")
    silent = command_send(provisioned.device, name="reboot", params={})
    answered = command_send(provisioned.device, name="ping", params={})
    command_ack(provisioned.device.key, json.dumps({"id": answered.id, "ok": True}).encode(), topic="t")

    # when the sweep runs before and after the time-out
    assert commands_time_out(now=timezone.now()) == 0
    assert commands_time_out(now=silent.timeout_at + timedelta(seconds=1)) == 1

    # then only the unanswered one timed out
    silent.refresh_from_db()
    answered.refresh_from_db()
    assert silent.status == CommandStatus.TIMED_OUT
    assert "no answer" in silent.error
    assert answered.status == CommandStatus.ACKED

    # and an answer arriving after the time-out is still recorded, marked late
    Command.objects.filter(pk=silent.pk).update(timeout_at=timezone.now() - timedelta(seconds=1))
    command_ack(
        provisioned.device.key, json.dumps({"id": silent.id, "ok": True, "result": 1}).encode(), topic="t"
    )
    silent.refresh_from_db()
    assert silent.status == CommandStatus.ACKED
    assert command_payload(silent)["late"] is True


def test_the_beat_task_times_out_commands(connected: PrivateBroker) -> None:
    provisioned = device_provision(key=unique_key("cmd-task"), kind="lamp")
    command = command_send(provisioned.device, name="reboot", params={})
    Command.objects.filter(pk=command.pk).update(timeout_at=timezone.now() - timedelta(seconds=1))

    assert commands_time_out_task.delay().get() == 1

    command.refresh_from_db()
    assert command.status == CommandStatus.TIMED_OUT


@pytest.mark.parametrize(
    ("name", "params", "field", "words"),
    [
        ("", {}, "name", "required"),
        ("bad name!", {}, "name", "letters, digits"),
        ("x" * 101, {}, "name", "at most 100"),
        (7, {}, "name", "must be a string"),
        ("reboot", [1, 2], "params", "JSON object"),
        ("reboot", {"blob": "x" * 9000}, "params", "at most 8192 bytes"),
        ("reboot", {"when": object()}, "params", "must be JSON"),
    ],
)
def test_it_names_the_bad_field_and_stores_nothing(
    connected: PrivateBroker, name: Any, params: Any, field: str, words: str
) -> None:
    provisioned = device_provision(key=unique_key("cmd-bad"), kind="lamp")
    with pytest.raises(ValidationFailed) as refused:
        command_send(provisioned.device, name=name, params=params)
    assert list(refused.value.errors) == [field]
    assert words in refused.value.errors[field][0]
    assert not Command.objects.exists()


def test_it_refuses_a_command_to_a_revoked_device(connected: PrivateBroker) -> None:
    provisioned = device_provision(key=unique_key("cmd-gone"), kind="lamp")
    device = device_revoke(provisioned.device)
    with pytest.raises(ValidationFailed) as refused:
        command_send(device, name="reboot", params={})
    assert "revoked" in refused.value.errors["device"][0]


def test_it_keeps_a_command_the_broker_could_not_take_as_failed(
    connected: PrivateBroker, settings: Any
) -> None:
    # given a device, and then a broker that cannot be reached
    provisioned = device_provision(key=unique_key("cmd-nobroker"), kind="lamp")
    from harness.processes import free_port

    settings.MQTT_PORT = free_port()
    # when a command is sent
    command = command_send(provisioned.device, name="reboot", params={})
    # then it is stored, failed, with the reason (the API answers 503 with it)
    assert command.status == CommandStatus.FAILED
    assert command.sent_at is None
    assert "not sent" in command.error and "MQTT broker" in command.error
    assert Command.objects.get(pk=command.pk).status == CommandStatus.FAILED


def test_it_reconnects_after_the_broker_restarts(connected: PrivateBroker) -> None:
    provisioned = device_provision(key=unique_key("cmd-restart"), kind="lamp")
    assert command_send(provisioned.device, name="one", params={}).status == CommandStatus.SENT
    connected.restart()
    # the publisher notices the lost connection and makes a new one
    assert command_send(provisioned.device, name="two", params={}).status == CommandStatus.SENT
