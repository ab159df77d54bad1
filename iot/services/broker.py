"""The platform's own Mosquitto: its files, and its dynamic-security plugin.

The broker enforces who may connect and where each client may publish and subscribe: a
device's username is its key, its client id is its key too, and its role lets it publish
and subscribe only under ``devices/{key}/``. Two clients of the platform's own are made
with the broker's files: ``platform-admin`` (administers the plugin over
``$CONTROL/dynamic-security/v1``) and ``platform`` (ingestion, commands, firmware offers).
Their passwords are derived from SECRET_KEY, so nothing else needs keeping.

``broker_files_write`` writes ``mosquitto.conf`` and the plugin's JSON before the broker
starts, putting in every device the database holds as active with the hash the database
keeps (the plugin's own format), and leaving out every other: the database is the source
of truth, the broker's file a copy that a restart rebuilds. While the broker runs,
``DynamicSecurity`` changes it at once (a revoked device is disconnected by the plugin).
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import json
import os
import secrets
import shutil
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from django.conf import settings

ADMIN_USERNAME = "platform-admin"
PLATFORM_USERNAME = "platform"
CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
HASH_ITERATIONS = 101  # the plugin's own default for createClient
PLUGIN_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
)


class BrokerUnavailable(Exception):
    """The broker did not answer (or refused) a change of its clients."""


@dataclass(frozen=True)
class BrokerSettings:
    host: str
    port: int
    # What devices are told to connect to (the broker may sit behind a name or a proxy).
    public_host: str
    public_port: int
    admin_password: str
    platform_password: str


def _derived_password(purpose: str) -> str:
    digest = hmac.new(settings.SECRET_KEY.encode(), f"iot.mqtt.{purpose}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(digest.digest()).decode().rstrip("=")


def broker_settings() -> BrokerSettings:
    return BrokerSettings(
        host=settings.MQTT_HOST,
        port=settings.MQTT_PORT,
        public_host=settings.MQTT_PUBLIC_HOST or settings.MQTT_HOST,
        public_port=settings.MQTT_PUBLIC_PORT or settings.MQTT_PORT,
        admin_password=_derived_password("admin"),
        platform_password=_derived_password("platform"),
    )


# --- hashes, as the dynamic-security plugin keeps them ------------------------------------------


@dataclass(frozen=True)
class PasswordHash:
    hash: str
    salt: str
    iterations: int


def password_hash(
    password: str, *, salt: bytes | None = None, iterations: int = HASH_ITERATIONS
) -> PasswordHash:
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return PasswordHash(base64.b64encode(digest).decode(), base64.b64encode(salt).decode(), iterations)


def password_matches(password: str, stored: PasswordHash) -> bool:
    again = password_hash(password, salt=base64.b64decode(stored.salt), iterations=stored.iterations)
    return hmac.compare_digest(again.hash, stored.hash)


def device_password_new() -> str:
    return secrets.token_urlsafe(24)


# --- roles --------------------------------------------------------------------------------------


def device_role_name(key: str) -> str:
    return f"device:{key}"


def device_role_acls(key: str) -> list[dict[str, Any]]:
    topic = f"devices/{key}/#"
    return [
        {"acltype": "publishClientSend", "topic": topic, "allow": True},
        {"acltype": "subscribePattern", "topic": topic, "allow": True},
        {"acltype": "unsubscribePattern", "topic": topic, "allow": True},
    ]


def _admin_role() -> dict[str, Any]:
    acls = [
        {"acltype": kind, "topic": f"{CONTROL_TOPIC}/#", "allow": True}
        for kind in ("publishClientSend", "publishClientReceive", "subscribePattern")
    ]
    return {"rolename": "admin", "acls": acls}


def _platform_role() -> dict[str, Any]:
    acls = [
        {"acltype": "publishClientSend", "topic": "devices/#", "allow": True},
        {"acltype": "subscribePattern", "topic": "devices/#", "allow": True},
        {"acltype": "subscribePattern", "topic": "$share/#", "allow": True},
        {"acltype": "unsubscribePattern", "topic": "#", "allow": True},
    ]
    return {"rolename": "platform", "acls": acls}


def _client_entry(
    username: str, stored: PasswordHash, role: str, *, client_id: str | None = None
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "username": username,
        "password": stored.hash,
        "salt": stored.salt,
        "iterations": stored.iterations,
        "roles": [{"rolename": role}],
    }
    if client_id:
        entry["clientid"] = client_id
    return entry


@dataclass(frozen=True)
class DeviceCredential:
    key: str
    stored: PasswordHash


def dynsec_document(broker: BrokerSettings, devices: Iterable[DeviceCredential]) -> dict[str, Any]:
    clients = [
        _client_entry(ADMIN_USERNAME, password_hash(broker.admin_password), "admin"),
        _client_entry(PLATFORM_USERNAME, password_hash(broker.platform_password), "platform"),
    ]
    roles = [_admin_role(), _platform_role()]
    for device in devices:
        role = device_role_name(device.key)
        clients.append(_client_entry(device.key, device.stored, role, client_id=device.key))
        roles.append({"rolename": role, "acls": device_role_acls(device.key)})
    return {
        "clients": clients,
        "roles": roles,
        "groups": [],
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": True,
            "subscribe": False,
            "unsubscribe": True,
        },
    }


def plugin_path() -> str:
    configured = os.environ.get("MQTT_DYNSEC_PLUGIN")
    if configured:
        return configured
    for candidate in PLUGIN_CANDIDATES:
        if Path(candidate).exists():
            return candidate
    raise FileNotFoundError(
        "mosquitto's dynamic-security plugin was not found (Debian's mosquitto package ships it); "
        "set MQTT_DYNSEC_PLUGIN to its path"
    )


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if not found:
        raise FileNotFoundError("mosquitto is not installed (apt-get install mosquitto)")
    return found


def broker_files_write(
    directory: Path, broker: BrokerSettings, devices: Iterable[DeviceCredential], *, bind: str = "127.0.0.1"
) -> Path:
    """Write the broker's config and its plugin's clients under ``directory``; returns the
    config's path. Only while the broker is stopped: the plugin writes its file too."""
    directory.mkdir(parents=True, exist_ok=True)
    dynsec = directory / "dynamic-security.json"
    tmp = dynsec.with_suffix(".tmp")
    tmp.write_text(json.dumps(dynsec_document(broker, devices), indent=1))
    tmp.chmod(0o600)
    tmp.replace(dynsec)
    config = directory / "mosquitto.conf"
    lines = [
        "# Written by iot/services/broker.py before each start; changes here are lost.",
        f"listener {broker.port} {bind}",
        "allow_anonymous false",
        f"plugin {plugin_path()}",
        f"plugin_opt_config_file {dynsec}",
        # Ingest sessions persist through a restart of the broker or of the ingest, so QoS 1
        # readings published meanwhile wait for them (iot/services/ingest.py).
        "persistence true",
        f"persistence_location {directory}/",
        "autosave_interval 5",
        # What waits for an ingest process that is away: readings are small.
        "max_queued_messages 1000000",
        "max_queued_bytes 0",
        "max_inflight_messages 0",
        "set_tcp_nodelay true",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "connection_messages true",
    ]
    user = getpass.getuser()
    lines.append(f"user {user}")
    config.write_text("\n".join(lines) + "\n")
    return config


# --- changing the running broker ----------------------------------------------------------------


class DynamicSecurity:
    """One connection to the broker as its administrator, sending the plugin's commands and
    waiting for their answers. Thread-safe; reconnects when the connection was lost."""

    def __init__(self, broker: BrokerSettings, *, timeout: float = 5.0) -> None:
        self.broker = broker
        self.timeout = timeout
        self._lock = threading.Lock()
        self._client: mqtt.Client | None = None
        self._answers: dict[str, dict[str, Any]] = {}
        self._answered = threading.Condition()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            body = json.loads(message.payload)
        except ValueError:
            return
        with self._answered:
            for response in body.get("responses", []):
                correlation = response.get("correlationData")
                if correlation:
                    self._answers[correlation] = response
            self._answered.notify_all()

    def _connected(self) -> mqtt.Client:
        if self._client is not None and self._client.is_connected():
            return self._client
        self.close()
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"platform-admin-{uuid.uuid4().hex[:12]}",
            protocol=mqtt.MQTTv5,
        )
        client.username_pw_set(ADMIN_USERNAME, self.broker.admin_password)
        client.on_message = self._on_message
        subscribed = threading.Event()
        client.on_subscribe = lambda *args: subscribed.set()
        try:
            client.connect(self.broker.host, self.broker.port, keepalive=30)
        except OSError as error:
            raise BrokerUnavailable(
                f"the MQTT broker at {self.broker.host}:{self.broker.port}: {error}"
            ) from None
        client.loop_start()
        client.subscribe(RESPONSE_TOPIC, qos=1)
        if not subscribed.wait(self.timeout):
            client.loop_stop()
            client.disconnect()
            raise BrokerUnavailable("the MQTT broker did not let the platform administer its clients")
        self._client = client
        return client

    def close(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    def run(self, *commands: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """Send ``commands`` in one message; raise BrokerUnavailable on any error but those
        whose text contains one of ``ignore`` (e.g. "not found" on a delete)."""
        with self._lock:
            client = self._connected()
            tagged = [{**command, "correlationData": uuid.uuid4().hex} for command in commands]
            info = client.publish(CONTROL_TOPIC, json.dumps({"commands": tagged}), qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                self.close()
                raise BrokerUnavailable(f"publishing to the broker failed ({mqtt.error_string(info.rc)})")
            wanted = [command["correlationData"] for command in tagged]
            with self._answered:
                if not self._answered.wait_for(lambda: all(w in self._answers for w in wanted), self.timeout):
                    raise BrokerUnavailable("the MQTT broker did not answer in time")
                answers = [self._answers.pop(w) for w in wanted]
        for command, answer in zip(tagged, answers, strict=True):
            error = answer.get("error")
            if error and not any(text in error for text in ignore):
                raise BrokerUnavailable(f"the broker refused {command['command']}: {error}")
        return answers

    def device_add(self, key: str, password: str) -> None:
        """Create the device's role and client. A client of that name left in the broker
        (the database is the source of truth: the caller found the key free) is replaced."""
        role = device_role_name(key)
        self.run(
            {"command": "deleteClient", "username": key},
            {"command": "createRole", "rolename": role, "acls": device_role_acls(key)},
            ignore=("already exists", "not found"),
        )
        self.run(
            {
                "command": "createClient",
                "username": key,
                "password": password,
                "clientid": key,
                "roles": [{"rolename": role}],
            }
        )

    def device_password_set(self, key: str, password: str) -> None:
        self.run({"command": "setClientPassword", "username": key, "password": password})

    def device_remove(self, key: str) -> None:
        """Delete the device's client (the plugin disconnects it at once) and its role."""
        self.run(
            {"command": "deleteClient", "username": key},
            {"command": "deleteRole", "rolename": device_role_name(key)},
            ignore=("not found",),
        )


_shared: DynamicSecurity | None = None
_shared_lock = threading.Lock()


def dynamic_security() -> DynamicSecurity:
    """The process's connection to the configured broker (settings MQTT_HOST/MQTT_PORT)."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared.broker != broker_settings():
            if _shared is not None:
                _shared.close()
            _shared = DynamicSecurity(broker_settings())
        return _shared


@contextmanager
def platform_client(client_id: str, *, clean_start: bool = True) -> Iterator[mqtt.Client]:
    """A connected client of the platform's own user, its network loop running."""
    broker = broker_settings()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.username_pw_set(PLATFORM_USERNAME, broker.platform_password)
    try:
        client.connect(broker.host, broker.port, keepalive=30, clean_start=clean_start)
    except OSError as error:
        raise BrokerUnavailable(f"the MQTT broker at {broker.host}:{broker.port}: {error}") from None
    client.loop_start()
    try:
        yield client
    finally:
        client.disconnect()
        client.loop_stop()
