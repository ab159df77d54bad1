"""The IoT admin: devices, their commands and unreadable payloads, rules and alerts,
firmware images and rollouts. Every change goes through a service of iot/services/, so a
device provisioned here gets its broker client as one made through the API does, and a
refusal is the service's own, shown beside its field.

A device's password exists only on the page that follows its provisioning or the rotation
of its credentials: it is rendered into that response and stored nowhere (not even in a
message cookie or the session), so reloading the list does not show it again.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.widgets import FilteredSelectMultiple
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from iot.models import (
    Alert,
    AlertStatus,
    Command,
    CommandStatus,
    Device,
    DeviceStatus,
    Firmware,
    QuarantinedPayload,
    Rollout,
    RolloutStatus,
    Rule,
)
from iot.selectors_firmware import rollout_progress
from iot.services.broker import BrokerUnavailable
from iot.services.devices import (
    KIND_PATTERN,
    Provisioned,
    device_credentials_rotate,
    device_errors,
    device_provision,
    device_revoke,
    device_update,
)
from iot.services.firmware import (
    FIRMWARE_MAX_BYTES,
    firmware_errors,
    firmware_upload,
    rollout_cancel,
    rollout_errors,
    rollout_start,
)
from iot.services.rules import RULE_FIELDS, rule_delete, rule_save
from notifications.admin.base import (
    BigTableAdmin,
    PipelineOwnedAdmin,
    adopt_stored_row,
    page_context,
    refusal_lines,
    show_refusal,
    status_badge_html,
)
from notifications.services.validation import ValidationFailed

GREY = "#6b7280"
DEVICE_COLOURS = {
    DeviceStatus.NEVER: GREY,
    DeviceStatus.ONLINE: "#047857",
    DeviceStatus.OFFLINE: "#b45309",
    DeviceStatus.REVOKED: "#b91c1c",
}
COMMAND_COLOURS = {
    CommandStatus.PENDING: GREY,
    CommandStatus.SENT: "#2563eb",
    CommandStatus.ACKED: "#047857",
    CommandStatus.FAILED: "#b91c1c",
    CommandStatus.TIMED_OUT: "#b45309",
}
ROLLOUT_COLOURS = {
    RolloutStatus.RUNNING: "#2563eb",
    RolloutStatus.COMPLETED: "#047857",
    RolloutStatus.STOPPED: "#b91c1c",
    RolloutStatus.CANCELLED: GREY,
}
SUCCEEDED, FAILED, PENDING = "#10b981", "#ef4444", "#cbd5e1"
JSON_WIDGET = {
    "rows": 6,
    "class": "vLargeTextField",
    "spellcheck": "false",
    "style": "font-family: monospace",
}


def _badge(colours: dict[Any, str], value: str, label: str) -> str:
    return status_badge_html(colours.get(value, GREY), label)


def _messages(request: HttpRequest, error: ValidationFailed | BrokerUnavailable, what: str) -> None:
    lines = refusal_lines(error.errors) if isinstance(error, ValidationFailed) else [str(error)]
    for line in lines:
        messages.error(request, f"{what}: {line}")


# --- devices ------------------------------------------------------------------------------------


class DeviceProvisionForm(forms.ModelForm):
    """The API's fields; device_errors judges them, each message beside its field."""

    class Meta:
        model = Device
        fields = ["key", "name", "kind", "group"]

    def validate_unique(self) -> None:
        return  # device_errors says it, in the service's words

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        show_refusal(
            self,
            device_errors(
                key=cleaned.get("key", ""),
                name=cleaned.get("name", ""),
                kind=cleaned.get("kind", ""),
                group=cleaned.get("group", ""),
            ),
        )
        return cleaned


class DeviceChangeForm(forms.ModelForm):
    class Meta:
        model = Device
        fields = ["name", "group"]

    def clean_group(self) -> str:
        group = self.cleaned_data.get("group") or ""
        if group and not KIND_PATTERN.fullmatch(group):
            raise forms.ValidationError(
                "use lowercase letters, digits, _ - and . (at most 64), starting with a letter or digit"
            )
        return group


DEVICE_READONLY = [
    "key",
    "kind",
    "status",
    "status_changed_at",
    "last_seen_at",
    "firmware_version",
    "malformed_count",
    "readings_count",
    "latest",
    "created_at",
    "revoked_at",
]


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin):
    list_display = [
        "key",
        "name",
        "kind",
        "group",
        "status_badge",
        "last_seen_at",
        "firmware_version",
        "malformed_count",
    ]
    list_filter = ["status", "kind"]
    search_fields = ["=key", "name"]
    ordering = ["key"]
    show_full_result_count = False
    actions = ["revoke_selected", "rotate_credentials"]

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: Device) -> str:
        return _badge(DEVICE_COLOURS, obj.status, obj.get_status_display())

    def get_form(
        self, request: HttpRequest, obj: Device | None = None, change: bool = False, **kwargs: Any
    ) -> Any:
        kwargs["form"] = DeviceChangeForm if obj is not None else DeviceProvisionForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: Device | None = None) -> Any:
        if obj is None:
            return DeviceProvisionForm.Meta.fields
        return ["key", "name", "kind", "group", *DEVICE_READONLY[2:]]

    def get_readonly_fields(self, request: HttpRequest, obj: Device | None = None) -> Any:
        return [] if obj is None else DEVICE_READONLY

    def has_delete_permission(self, request: HttpRequest, obj: Device | None = None) -> bool:
        # Revoke instead: the broker's client goes with it, and the device's history stays.
        return False

    def save_model(self, request: HttpRequest, obj: Device, form: forms.ModelForm, change: bool) -> None:
        if change:
            device_update(obj, name=form.cleaned_data["name"], group=form.cleaned_data["group"])
            return
        provisioned = device_provision(
            key=form.cleaned_data["key"],
            name=form.cleaned_data["name"],
            kind=form.cleaned_data["kind"],
            group=form.cleaned_data["group"],
        )
        adopt_stored_row(obj, provisioned.device)
        obj._provisioned = provisioned  # type: ignore[attr-defined]  # for response_add, this request only

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> Any:
        try:
            return super().add_view(request, form_url, extra_context)
        except BrokerUnavailable as error:
            # Nothing was stored (the admin's transaction rolled back with the row).
            messages.error(request, f"The device was not provisioned: {error}")
            return HttpResponseRedirect(request.get_full_path())

    def response_add(
        self, request: HttpRequest, obj: Device, post_url_continue: str | None = None
    ) -> HttpResponse:
        provisioned: Provisioned | None = getattr(obj, "_provisioned", None)
        if provisioned is None:
            return super().response_add(request, obj, post_url_continue)
        return self._credentials_page(request, [provisioned], f"Device {obj.key} provisioned")

    def _credentials_page(
        self, request: HttpRequest, provisioned: list[Provisioned], title: str
    ) -> HttpResponse:
        context = {
            **page_context(request, self, title),
            "credentials": [(p.device, p.mqtt()) for p in provisioned],
            "list_url": reverse("admin:iot_device_changelist"),
        }
        response = TemplateResponse(request, "admin/iot/device/credentials.html", context)
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Revoke selected devices", permissions=["change"])
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[Device]) -> None:
        revoked = 0
        for device in queryset.filter(revoked_at__isnull=True).order_by("pk"):
            try:
                device_revoke(device)
            except BrokerUnavailable as error:
                messages.error(request, f"{device.key} was not revoked: {error}")
                continue
            revoked += 1
        self.message_user(
            request, f"Revoked {revoked} device{'s' if revoked != 1 else ''}.", messages.SUCCESS
        )

    @admin.action(description="Rotate credentials of selected devices", permissions=["change"])
    def rotate_credentials(self, request: HttpRequest, queryset: QuerySet[Device]) -> HttpResponse | None:
        rotated = []
        for device in queryset.order_by("pk"):
            try:
                rotated.append(device_credentials_rotate(device))
            except (ValidationFailed, BrokerUnavailable) as error:
                _messages(request, error, device.key)
        if not rotated:
            return None
        return self._credentials_page(request, rotated, "New device credentials")


# --- commands and unreadable payloads -----------------------------------------------------------


def _json(value: Any) -> str:
    return format_html("<pre>{}</pre>", json.dumps(value, indent=2, ensure_ascii=False))


COMMAND_FIELDS: tuple[str, ...] = (
    "device",
    "name",
    "params_shown",
    "status",
    "created_at",
    "sent_at",
    "acked_at",
    "timeout_at",
    "ok",
    "result_shown",
    "error",
)


@admin.register(Command)
class CommandAdmin(PipelineOwnedAdmin):
    """Commands are sent through the API (iot/services/commands.py) and answered by devices."""

    list_display = ["id", "device", "name", "status_badge", "created_at", "sent_at", "acked_at", "ok"]
    list_filter = ["status"]
    list_select_related = ["device"]
    search_fields = ["=device__key", "=name"]
    fields = readonly_fields = COMMAND_FIELDS

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: Command) -> str:
        return _badge(COMMAND_COLOURS, obj.status, obj.get_status_display())

    @admin.display(description="params")
    def params_shown(self, obj: Command) -> str:
        return _json(obj.params)

    @admin.display(description="result")
    def result_shown(self, obj: Command) -> str:
        return _json(obj.result)


QUARANTINE_FIELDS = (
    "device",
    "topic",
    "error",
    "received_at",
    "payload_bytes",
    "payload_text",
    "payload_hex",
)


@admin.register(QuarantinedPayload)
class QuarantinedPayloadAdmin(PipelineOwnedAdmin):
    list_display = ["received_at", "device", "topic", "error", "payload_bytes"]
    list_select_related = ["device"]
    search_fields = ["=device__key"]
    fields = readonly_fields = QUARANTINE_FIELDS

    @admin.display(description="payload as text")
    def payload_text(self, obj: QuarantinedPayload) -> str:
        return format_html("<pre>{}</pre>", bytes(obj.payload).decode("utf-8", errors="replace"))

    @admin.display(description="payload as hex")
    def payload_hex(self, obj: QuarantinedPayload) -> str:
        data = bytes(obj.payload)
        lines = (f"{offset:08x}  {data[offset : offset + 16].hex(' ')}" for offset in range(0, len(data), 16))
        return format_html("<pre>{}</pre>", "\n".join(lines))


# --- rules and alerts ---------------------------------------------------------------------------


class RuleForm(forms.ModelForm):
    """Judged and saved by rule_save, the API's service, which has no dry run: it runs in
    the form's clean inside the admin's transaction, so any later refusal rolls it back."""

    devices = forms.ModelMultipleChoiceField(
        Device.objects.filter(revoked_at__isnull=True).order_by("key"),
        required=False,
        widget=FilteredSelectMultiple("devices", is_stacked=False),
        help_text="Or a kind: every device of it.",
    )
    notify = forms.JSONField(
        initial=dict,
        widget=forms.Textarea(attrs=JSON_WIDGET),
        help_text='{"type": notification type key, "recipients": [external ids]} or {"type": key, "topic": key}',
    )

    class Meta:
        model = Rule
        fields = list(RULE_FIELDS)

    def validate_unique(self) -> None:
        return  # rule_save says it

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if self.errors:
            return cleaned
        data = {name: cleaned.get(name) for name in self.Meta.fields if name in self.fields}
        data["devices"] = [device.key for device in cleaned.get("devices") or []]
        try:
            self.saved = rule_save(data, rule=self.instance if self.instance.pk else None)
        except ValidationFailed as refused:
            show_refusal(self, refused.errors)
        return cleaned


@admin.register(Rule)
class RuleAdmin(admin.ModelAdmin):
    form = RuleForm
    list_display = ["key", "name", "kind", "metric", "op", "threshold", "severity", "enabled"]
    list_filter = ["enabled", "severity"]
    search_fields = ["=key", "name"]

    def get_readonly_fields(self, request: HttpRequest, obj: Rule | None = None) -> Any:
        return ["key", "created_at"] if obj is not None else []

    def save_model(self, request: HttpRequest, obj: Rule, form: forms.ModelForm, change: bool) -> None:
        adopt_stored_row(obj, form.saved)  # type: ignore[attr-defined]

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        return  # rule_save set the devices

    def delete_model(self, request: HttpRequest, obj: Rule) -> None:
        rule_delete(obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Rule]) -> None:
        for rule in queryset.order_by("pk"):
            rule_delete(rule)


@admin.register(Alert)
class AlertAdmin(PipelineOwnedAdmin):
    list_display = [
        "opened_at",
        "rule",
        "device",
        "status_badge",
        "reason",
        "value",
        "peak",
        "flaps",
        "resolved_at",
    ]
    list_filter = ["status", "reason"]
    list_select_related = ["rule", "device"]
    search_fields = ["=device__key", "=rule__key"]

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: Alert) -> str:
        colour = "#b91c1c" if obj.status == AlertStatus.OPEN else "#047857"
        return status_badge_html(colour, obj.get_status_display())


# --- firmware and rollouts ----------------------------------------------------------------------


class FirmwareUploadForm(forms.ModelForm):
    # Not "image": the model's binary field is not editable, and a form field of its name
    # would be taken for it.
    image_file = forms.FileField(label="Image", help_text=f"At most {FIRMWARE_MAX_BYTES // 2**20} MB.")

    class Meta:
        model = Firmware
        fields = ["kind", "version", "notes"]

    def validate_unique(self) -> None:
        return  # firmware_errors says it

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        upload = cleaned.get("image_file")
        if upload is not None and upload.size > FIRMWARE_MAX_BYTES:
            self.add_error("image_file", f"{upload.size} bytes: at most {FIRMWARE_MAX_BYTES // 2**20} MB")
            return cleaned
        cleaned["image_bytes"] = upload.read() if upload is not None else b""
        show_refusal(
            self,
            firmware_errors(
                kind=cleaned.get("kind", ""),
                version=cleaned.get("version", ""),
                image=cleaned["image_bytes"],
                notes=cleaned.get("notes", ""),
            ),
            rename={"image": "image_file"},
        )
        return cleaned


def _size(count: int) -> str:
    for unit in ("bytes", "KB", "MB"):
        if count < 1024 or unit == "MB":
            return f"{count} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    return str(count)


@admin.register(Firmware)
class FirmwareAdmin(admin.ModelAdmin):
    form = FirmwareUploadForm
    list_display = ["kind", "version", "size_shown", "sha256", "created_at"]
    list_filter = ["kind"]
    search_fields = ["=kind", "=version"]
    readonly = ["kind", "version", "size_shown", "sha256", "notes", "created_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Firmware]:
        # Never the images themselves (up to 64 MB each) for a list or a page.
        return super().get_queryset(request).defer("image")

    @admin.display(description="size", ordering="size")
    def size_shown(self, obj: Firmware) -> str:
        return _size(obj.size)

    def get_fields(self, request: HttpRequest, obj: Firmware | None = None) -> Any:
        return ["kind", "version", "image_file", "notes"] if obj is None else self.readonly

    def get_readonly_fields(self, request: HttpRequest, obj: Firmware | None = None) -> Any:
        return [] if obj is None else self.readonly

    def has_change_permission(self, request: HttpRequest, obj: Firmware | None = None) -> bool:
        return False  # an image is never changed: upload a new version

    def save_model(self, request: HttpRequest, obj: Firmware, form: forms.ModelForm, change: bool) -> None:
        stored = firmware_upload(
            kind=form.cleaned_data["kind"],
            version=form.cleaned_data["version"],
            image=form.cleaned_data["image_bytes"],
            notes=form.cleaned_data.get("notes", ""),
        )
        adopt_stored_row(obj, stored)


class RolloutStartForm(forms.ModelForm):
    firmware = forms.ModelChoiceField(Firmware.objects.defer("image").order_by("kind", "-created_at"))
    stages = forms.CharField(
        initial="5,50,100",
        help_text="Cumulative percentages of the devices, strictly increasing, ending at 100.",
    )
    failure_threshold = forms.FloatField(
        initial=0.1,
        help_text="The share of a stage's devices that may fail before the rollout stops (0.1 = 10%).",
    )

    class Meta:
        model = Rollout
        fields = ["firmware", "group", "stages", "failure_threshold"]

    def clean_stages(self) -> list[int]:
        text = self.cleaned_data.get("stages") or ""
        try:
            return [int(part) for part in text.replace(" ", "").split(",") if part]
        except ValueError:
            raise forms.ValidationError(
                f"{text!r}: whole percentages separated by commas, e.g. 5,50,100"
            ) from None

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        firmware = cleaned.get("firmware")
        if firmware is not None and not self.errors:
            show_refusal(
                self,
                rollout_errors(
                    firmware,
                    group=cleaned.get("group") or "",
                    stages=cleaned.get("stages"),
                    failure_threshold=cleaned.get("failure_threshold"),
                ),
            )
        return cleaned


ROLLOUT_READONLY = [
    "firmware",
    "group",
    "stages_shown",
    "failure_threshold",
    "status_badge",
    "current_stage_shown",
    "reason",
    "created_at",
    "finished_at",
    "stage_progress",
]


@admin.register(Rollout)
class RolloutAdmin(BigTableAdmin):
    change_form_template = "admin/iot/rollout/change_form.html"
    list_display = [
        "id",
        "firmware",
        "group",
        "stages_shown",
        "status_badge",
        "current_stage_shown",
        "created_at",
    ]
    list_filter = ["status"]
    actions = ["cancel_selected"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Rollout]:
        return super().get_queryset(request).select_related("firmware").defer("firmware__image")

    @admin.display(description="stages")
    def stages_shown(self, obj: Rollout) -> str:
        return ", ".join(f"{percent}%" for percent in obj.stages)

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: Rollout) -> str:
        return _badge(ROLLOUT_COLOURS, obj.status, obj.get_status_display())

    @admin.display(description="stage")
    def current_stage_shown(self, obj: Rollout) -> str:
        return f"{obj.current_stage + 1} of {len(obj.stages)}"

    @admin.display(description="progress by stage")
    def stage_progress(self, obj: Rollout) -> str:
        def bar(stage: Any) -> str:
            return format_html(
                '<div class="rollout-bar" style="display:flex;width:320px;height:14px;border-radius:3px;'
                'overflow:hidden;background:#f1f5f9" role="img" aria-label="{} succeeded, {} failed, {} pending">'
                '<span style="width:{}%;background:{}"></span><span style="width:{}%;background:{}"></span>'
                '<span style="width:{}%;background:{}"></span></div>',
                stage.succeeded,
                stage.failed,
                stage.pending,
                stage.succeeded_share,
                SUCCEEDED,
                stage.failed_share,
                FAILED,
                stage.pending_share,
                PENDING,
            )

        rows = format_html_join(
            "",
            '<tr class="{}"><td>{} ({}%){}</td><td>{}</td><td class="num">{}</td><td class="num">{}</td>'
            '<td class="num">{}</td><td class="num">{}</td><td class="num">{}</td></tr>',
            (
                (
                    "rollout-stage current" if stage.current else "rollout-stage",
                    stage.number,
                    stage.percent,
                    " ◀" if stage.current else "",
                    bar(stage),
                    stage.target,
                    stage.offered,
                    stage.succeeded,
                    stage.failed,
                    stage.pending,
                )
                for stage in rollout_progress(obj)
            ),
        )
        return format_html(
            '<table class="rollout-progress"><thead><tr><th>stage</th><th>progress</th><th>devices</th>'
            "<th>offered</th><th>succeeded</th><th>failed</th><th>pending</th></tr></thead><tbody>{}</tbody></table>",
            rows,
        )

    def get_form(
        self, request: HttpRequest, obj: Rollout | None = None, change: bool = False, **kwargs: Any
    ) -> Any:
        if obj is None:
            kwargs["form"] = RolloutStartForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: Rollout | None = None) -> Any:
        return RolloutStartForm.Meta.fields if obj is None else ROLLOUT_READONLY

    def get_readonly_fields(self, request: HttpRequest, obj: Rollout | None = None) -> Any:
        return [] if obj is None else ROLLOUT_READONLY

    def has_delete_permission(self, request: HttpRequest, obj: Rollout | None = None) -> bool:
        return False  # its devices' outcomes are the history of the firmware

    def save_model(self, request: HttpRequest, obj: Rollout, form: forms.ModelForm, change: bool) -> None:
        if change:
            return  # only Cancel changes it, in response_change
        started = rollout_start(
            form.cleaned_data["firmware"],
            group=form.cleaned_data.get("group") or "",
            stages=form.cleaned_data["stages"],
            failure_threshold=form.cleaned_data["failure_threshold"],
        )
        adopt_stored_row(obj, started)

    def response_change(self, request: HttpRequest, obj: Rollout) -> HttpResponse:
        if "_cancel" not in request.POST:
            return super().response_change(request, obj)
        try:
            rollout_cancel(obj)
            self.message_user(
                request, "Cancelled: no further devices are offered the update.", messages.SUCCESS
            )
        except ValidationFailed as refused:
            _messages(request, refused, "Not cancelled")
        return HttpResponseRedirect(reverse("admin:iot_rollout_change", args=[obj.pk]))

    @admin.action(description="Cancel selected rollouts", permissions=["change"])
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet[Rollout]) -> None:
        cancelled = 0
        for rollout in queryset.filter(status=RolloutStatus.RUNNING).order_by("pk"):
            rollout_cancel(rollout)
            cancelled += 1
        self.message_user(
            request, f"Cancelled {cancelled} rollout{'s' if cancelled != 1 else ''}.", messages.SUCCESS
        )
