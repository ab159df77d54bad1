"""IoT: devices that publish readings over MQTT through the platform's own broker.

A device's broker credentials live in the broker's dynamic-security plugin; the platform
keeps the same salted hash the plugin keeps (PBKDF2-SHA512), never the password, so it
can rebuild the broker's client list (iot/services/broker.py). Readings go into a table
partitioned by day (``iot_reading``, created by migration 0001 in SQL, its partitions
made and dropped by iot/services/partitions.py) and are rolled up per minute and per hour
as they are stored (iot/services/storage.py). Rules are evaluated as readings arrive
(iot/services/rules.py); an alert reaches people through the notification pipeline.
"""

from __future__ import annotations

from django.core.validators import RegexValidator
from django.db import models
from django.utils.timezone import now

# A device key appears in MQTT topics and as the broker username: no '/', '+', '#'.
DEVICE_KEY_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
DEVICE_KEY_VALIDATOR = RegexValidator(
    DEVICE_KEY_PATTERN,
    "Use lowercase letters, digits, _ and - (at most 64), starting with a letter or digit.",
)
METRIC_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"


class DeviceStatus(models.TextChoices):
    NEVER = "never", "never connected"
    ONLINE = "online"
    OFFLINE = "offline"
    REVOKED = "revoked"


class Device(models.Model):
    key = models.CharField(max_length=64, unique=True, validators=[DEVICE_KEY_VALIDATOR])
    name = models.CharField(max_length=200, blank=True)
    kind = models.CharField(max_length=64, db_index=True)
    # A rollout's target besides the kind (e.g. a site or a customer).
    group = models.CharField(max_length=64, blank=True, default="", db_index=True)
    # The broker's hash of the device's password: base64 PBKDF2-SHA512 of the password with
    # the salt, as mosquitto's dynamic-security plugin stores it.
    mqtt_password_hash = models.CharField(max_length=120)
    mqtt_salt = models.CharField(max_length=40)
    mqtt_iterations = models.PositiveIntegerField(default=101)
    status = models.CharField(max_length=10, choices=DeviceStatus.choices, default=DeviceStatus.NEVER)
    status_changed_at = models.DateTimeField(null=True, blank=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    # metric -> {"ts": ISO 8601, "value": number}: the newest reading of each metric.
    latest = models.JSONField(default=dict, blank=True)
    firmware_version = models.CharField(max_length=64, blank=True, default="")
    malformed_count = models.BigIntegerField(default=0)
    readings_count = models.BigIntegerField(default=0)
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=now)

    def __str__(self) -> str:
        return self.key

    @property
    def client_id(self) -> str:
        return self.key


class Reading(models.Model):
    """One value of one metric. The table is partitioned by ``ts`` (one partition a day)
    and created in SQL; Django reads it, iot/services/storage.py writes it with COPY."""

    pk = models.CompositePrimaryKey("device_id", "metric", "ts")
    device = models.ForeignKey(Device, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+")
    metric = models.CharField(max_length=64)
    ts = models.DateTimeField()
    value = models.FloatField()
    received_at = models.DateTimeField()

    class Meta:
        managed = False
        db_table = "iot_reading"

    def __str__(self) -> str:
        return f"{self.device_id} {self.metric}@{self.ts:%Y-%m-%dT%H:%M:%S}={self.value}"


class _Rollup(models.Model):
    pk = models.CompositePrimaryKey("device_id", "metric", "bucket")
    device = models.ForeignKey(Device, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+")
    metric = models.CharField(max_length=64)
    bucket = models.DateTimeField()
    count = models.BigIntegerField()
    sum = models.FloatField()
    min = models.FloatField()
    max = models.FloatField()

    class Meta:
        abstract = True
        managed = False

    def __str__(self) -> str:
        return f"{self.device_id} {self.metric}@{self.bucket:%Y-%m-%dT%H:%M}"

    @property
    def avg(self) -> float:
        return self.sum / self.count if self.count else 0.0


class RollupMinute(_Rollup):
    """Per device, metric and minute; partitioned by month (``bucket``)."""

    class Meta(_Rollup.Meta):
        db_table = "iot_rollup_minute"


class RollupHour(_Rollup):
    """Per device, metric and hour; kept for good (not partitioned)."""

    class Meta(_Rollup.Meta):
        db_table = "iot_rollup_hour"


class QuarantinedPayload(models.Model):
    """A payload that could not be read, kept for staff to look at. Bounded: the newest
    ``IOT_QUARANTINE_PER_DEVICE`` per device (iot/services/storage.py trims the rest)."""

    device = models.ForeignKey(Device, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    topic = models.CharField(max_length=300)
    payload = models.BinaryField()
    payload_bytes = models.PositiveIntegerField(default=0)
    error = models.CharField(max_length=500)
    received_at = models.DateTimeField(default=now)

    class Meta:
        indexes = [models.Index(fields=["device", "-id"], name="iot_quarantine_device")]

    def __str__(self) -> str:
        return f"{self.topic}: {self.error}"


class Op(models.TextChoices):
    GT = ">"
    GE = ">="
    LT = "<"
    LE = "<="


class Severity(models.TextChoices):
    WARNING = "warning"
    CRITICAL = "critical"


class Rule(models.Model):
    """A threshold held for ``for_seconds`` opens an alert, passing ``clear_threshold`` the
    other way closes it (hysteresis); ``no_data_seconds`` opens one when a device falls
    silent. Applies to ``devices`` or, when that is empty, to every device of ``kind``."""

    key = models.CharField(max_length=100, unique=True)
    name = models.CharField(max_length=200, blank=True)
    kind = models.CharField(max_length=64, blank=True, default="", db_index=True)
    devices = models.ManyToManyField(Device, blank=True, related_name="rules")
    metric = models.CharField(max_length=64, blank=True, default="")
    op = models.CharField(max_length=2, choices=Op.choices, blank=True, default="")
    threshold = models.FloatField(null=True, blank=True)
    for_seconds = models.FloatField(default=0)
    clear_threshold = models.FloatField(null=True, blank=True)
    no_data_seconds = models.FloatField(null=True, blank=True)
    severity = models.CharField(max_length=10, choices=Severity.choices, default=Severity.WARNING)
    # {"type": notification type key, "recipients": [external ids]} or {"type", "topic"}
    notify = models.JSONField(default=dict)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=now)

    def __str__(self) -> str:
        return self.key


class RuleState(models.Model):
    """Where one rule stands for one device, shared by every ingest process."""

    rule = models.ForeignKey(Rule, on_delete=models.CASCADE, related_name="states")
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="+")
    # When the value first passed the threshold in the current run of breaches.
    breach_since = models.DateTimeField(null=True, blank=True)
    last_value = models.FloatField(null=True, blank=True)
    last_reading_at = models.DateTimeField(null=True, blank=True)
    # When no reading arriving by then opens a no-data alert.
    no_data_deadline = models.DateTimeField(null=True, blank=True, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["rule", "device"], name="iot_rule_state_once")]

    def __str__(self) -> str:
        return f"rule {self.rule_id} on device {self.device_id}"


class AlertStatus(models.TextChoices):
    OPEN = "open"
    RESOLVED = "resolved"


class Alert(models.Model):
    rule = models.ForeignKey(Rule, on_delete=models.CASCADE, related_name="alerts")
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="alerts")
    reason = models.CharField(max_length=20, default="threshold")  # threshold | no_data
    status = models.CharField(max_length=10, choices=AlertStatus.choices, default=AlertStatus.OPEN)
    opened_at = models.DateTimeField(default=now)
    updated_at = models.DateTimeField(default=now)
    resolved_at = models.DateTimeField(null=True, blank=True)
    value = models.FloatField(null=True, blank=True)
    peak = models.FloatField(null=True, blank=True)
    # Times it cleared and came back within the flap window without a new notification.
    flaps = models.PositiveIntegerField(default=0)
    opened_event_id = models.UUIDField(null=True, blank=True)
    resolved_event_id = models.UUIDField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["rule", "device"],
                condition=models.Q(status="open"),
                name="iot_alert_open_once",
            )
        ]
        indexes = [models.Index(fields=["status", "-opened_at"], name="iot_alert_status")]

    def __str__(self) -> str:
        return f"{self.rule_id}/{self.device_id} {self.status}"


class CommandStatus(models.TextChoices):
    PENDING = "pending"
    SENT = "sent"
    ACKED = "acked", "acknowledged"
    FAILED = "failed"
    TIMED_OUT = "timed_out", "timed out"


class Command(models.Model):
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="commands")
    name = models.CharField(max_length=100)
    params = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=10, choices=CommandStatus.choices, default=CommandStatus.PENDING)
    created_at = models.DateTimeField(default=now)
    sent_at = models.DateTimeField(null=True, blank=True)
    acked_at = models.DateTimeField(null=True, blank=True)
    timeout_at = models.DateTimeField()
    ok = models.BooleanField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True, default="")

    class Meta:
        indexes = [models.Index(fields=["status", "timeout_at"], name="iot_command_waiting")]

    def __str__(self) -> str:
        return f"{self.name} to {self.device_id} ({self.status})"


class Firmware(models.Model):
    kind = models.CharField(max_length=64)
    version = models.CharField(max_length=64)
    image = models.BinaryField()
    size = models.PositiveIntegerField(default=0)
    sha256 = models.CharField(max_length=64)
    notes = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["kind", "version"], name="iot_firmware_once")]

    def __str__(self) -> str:
        return f"{self.kind} {self.version}"


class RolloutStatus(models.TextChoices):
    RUNNING = "running"
    COMPLETED = "completed"
    STOPPED = "stopped"  # a stage failed too often
    CANCELLED = "cancelled"


class Rollout(models.Model):
    firmware = models.ForeignKey(Firmware, on_delete=models.PROTECT, related_name="rollouts")
    # The devices: every device of the firmware's kind, or only those of ``group``.
    group = models.CharField(max_length=64, blank=True, default="")
    # Cumulative percentages of the target, e.g. [5, 50, 100].
    stages = models.JSONField(default=list)
    # A stage whose share of failed devices passes this stops the rollout.
    failure_threshold = models.FloatField(default=0.1)
    status = models.CharField(max_length=10, choices=RolloutStatus.choices, default=RolloutStatus.RUNNING)
    current_stage = models.PositiveIntegerField(default=0)
    reason = models.CharField(max_length=300, blank=True, default="")
    created_at = models.DateTimeField(default=now)
    finished_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.firmware} rollout {self.id}"


class UpdateStatus(models.TextChoices):
    OFFERED = "offered"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class RolloutDevice(models.Model):
    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="targets")
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="+")
    stage = models.PositiveIntegerField()
    status = models.CharField(max_length=10, choices=UpdateStatus.choices, default=UpdateStatus.OFFERED)
    offered_at = models.DateTimeField(default=now)
    reported_at = models.DateTimeField(null=True, blank=True)
    detail = models.CharField(max_length=300, blank=True, default="")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["rollout", "device"], name="iot_rollout_device_once")]

    def __str__(self) -> str:
        return f"device {self.device_id} in rollout {self.rollout_id}: {self.status}"
