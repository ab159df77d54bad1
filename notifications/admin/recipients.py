"""Recipients, their devices and preferences, topics and subscriptions."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import Count, QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest

from notifications.admin.base import BigTableAdmin, PipelineOwnedAdmin, adopt_stored_row, show_refusal
from notifications.models import Device, DigestRun, DigestSetting, Preference, Recipient, Subscription, Topic
from notifications.services.feedback import device_remove
from notifications.services.recipients import (
    DIGEST_CATEGORIES,
    device_deactivate,
    device_register,
    recipient_account_set,
    recipient_upsert,
    recipients_delete,
)
from notifications.services.validation import (
    RECIPIENT_FIELDS,
    RuleViolation,
    external_id_check,
    recipient_fields_clean,
)

# --- Devices --------------------------------------------------------------------------


class DeviceForm(forms.ModelForm):
    """A push token as the API registers it: a new token, or one moved to another recipient,
    is stored by ``device_register``, which takes over a token known already (the app was
    reinstalled, or another user signed in on the device) instead of refusing it."""

    class Meta:
        model = Device
        fields = ["recipient", "platform", "token", "active"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:
            # A stored token is the device's identity: a different token is another device.
            for name in ("platform", "token"):
                if name in self.fields:
                    self.fields[name].disabled = True
        elif "active" in self.fields:
            # Registering a token makes it active, as through the API.
            self.fields["active"].disabled = True

    def _get_validation_exclusions(self) -> set[str]:
        # A new row's token may be registered to someone else already: device_register
        # moves it here on save, so the (platform, token) constraint is the service's to
        # keep. Excluding the token is Django's one way to skip that constraint's check;
        # the form field still checks its length.
        exclude: set[str] = super()._get_validation_exclusions()  # type: ignore[misc]
        if self.instance.pk is None:
            exclude.add("token")
        return exclude


def device_store(device: Device, *, changed: list[str] | None) -> None:
    """Store a device row from a form through the services; ``changed`` is the form's
    changed fields, None for a new row. A new row, a new owner or switching a token back
    on is a registration (device_register); switching it off is device_deactivate."""
    if changed is None or "recipient" in changed or ("active" in changed and device.active):
        stored, _ = device_register(recipient=device.recipient, platform=device.platform, token=device.token)
        if not device.active:
            stored = device_deactivate(device=stored)
    elif "active" in changed:
        stored = device_deactivate(device=device)
    else:
        return
    adopt_stored_row(device, stored)


class DeviceInline(admin.TabularInline):
    model = Device
    form = DeviceForm
    fields = ["platform", "token", "active", "last_seen_at", "deactivated_at"]
    readonly_fields = ["last_seen_at", "deactivated_at"]
    extra = 0


def devices_save(formset: BaseInlineFormSet) -> None:
    """Store a recipient page's device rows through the services (see ``device_store``)."""
    # commit=False sorts the rows into new, changed and deleted for the admin's change
    # message without writing any of them.
    formset.save(commit=False)
    for device in formset.deleted_objects:
        device_remove(platform=device.platform, token=device.token)
    for device in formset.new_objects:
        device_store(device, changed=None)
    for device, changed in formset.changed_objects:
        device_store(device, changed=changed)


@admin.register(Device)
class DeviceAdmin(BigTableAdmin):
    form = DeviceForm
    list_display = ["id", "recipient", "platform", "short_token", "active", "created_at", "last_seen_at"]
    list_filter = ["platform", "active"]
    list_select_related = ["recipient"]
    search_fields = ["recipient__external_id__exact", "token__exact"]
    search_help_text = "Exact recipient external id or device token."
    raw_id_fields = ["recipient"]
    readonly_fields = ["created_at", "last_seen_at", "deactivated_at"]

    @admin.display(description="token")
    def short_token(self, obj: Device) -> str:
        return f"{obj.token[:16]}…" if len(obj.token) > 16 else obj.token

    def save_model(self, request: HttpRequest, obj: Device, form: forms.ModelForm, change: bool) -> None:
        device_store(obj, changed=form.changed_data if change else None)

    def delete_model(self, request: HttpRequest, obj: Device) -> None:
        device_remove(platform=obj.platform, token=obj.token)


# --- Recipients -----------------------------------------------------------------------


class PreferenceInline(admin.TabularInline):
    model = Preference
    fields = ["notification_type", "category", "channel", "enabled"]
    autocomplete_fields = ["notification_type"]
    extra = 0


def _text(name: str, *, required: bool, help_text: str = "") -> forms.CharField:
    # No max_length of the form's own: the shared rules judge the length too, in the API's
    # words. The model's default is offered, as the API stores it when the field is left out.
    default = getattr(Recipient._meta.get_field(name), "default", None)
    return forms.CharField(
        required=required,
        help_text=help_text,
        initial=default if isinstance(default, str) else None,
        widget=forms.TextInput(attrs={"class": "vTextField"}),
    )


class RecipientForm(forms.ModelForm):
    """The API's recipient fields judged and normalised by the rules recipient_upsert
    applies (services/validation.py): a phone is stored in E.164, a bad one refused with
    the API's message beside it."""

    external_id = _text(
        "external_id", required=True, help_text="The producing service's own id of this user."
    )
    name = _text("name", required=False)
    email = _text("email", required=False)
    phone = _text(
        "phone", required=False, help_text="International form, e.g. +44 20 7946 0958; stored as E.164."
    )
    locale = _text("locale", required=True, help_text="e.g. en or pt-BR")
    timezone = _text("timezone", required=True, help_text="An IANA name, e.g. Europe/Lisbon")

    class Meta:
        model = Recipient
        fields = [
            "external_id",
            "user",
            "name",
            "email",
            "phone",
            "locale",
            "timezone",
            "quiet_hours_start",
            "quiet_hours_end",
        ]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if "external_id" in cleaned:  # absent on change, where it is read-only
            try:
                external_id_check(cleaned["external_id"])
            except RuleViolation as exc:
                self.add_error("external_id", str(exc))
        stored, errors = recipient_fields_clean(
            {name: cleaned[name] for name in RECIPIENT_FIELDS if name in cleaned}
        )
        show_refusal(self, errors)
        cleaned.update(stored)
        start, end = cleaned.get("quiet_hours_start"), cleaned.get("quiet_hours_end")
        if (start is None) != (end is None):
            self.add_error(
                "quiet_hours_end" if end is None else "quiet_hours_start",
                "Give both ends of quiet hours, or neither.",
            )
        elif start is not None and start == end:
            self.add_error("quiet_hours_end", "must differ from the start of quiet hours")
        return cleaned


@admin.register(Recipient)
class RecipientAdmin(BigTableAdmin):
    form = RecipientForm
    list_display = ["external_id", "name", "email", "phone", "locale", "timezone", "user", "created_at"]
    list_select_related = ["user"]
    search_fields = ["external_id", "email", "phone", "name"]
    raw_id_fields = ["user"]
    inlines = [DeviceInline, PreferenceInline]
    fields = [*RecipientForm.Meta.fields, "created_at", "updated_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: Recipient | None = None) -> tuple[str, ...]:
        # The external id is the producing service's key for the user, by which
        # recipient_upsert finds the row: changing it would detach the user's events.
        return ("created_at", "updated_at") if obj is None else ("external_id", "created_at", "updated_at")

    def delete_model(self, request: HttpRequest, obj: Recipient) -> None:
        recipients_delete(recipient_ids=[obj.id])

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Recipient]) -> None:
        recipients_delete(recipient_ids=list(queryset.values_list("id", flat=True)))

    def save_model(self, request: HttpRequest, obj: Recipient, form: forms.ModelForm, change: bool) -> None:
        data = form.cleaned_data
        stored, _ = recipient_upsert(
            external_id=obj.external_id,
            fields={name: data[name] for name in RECIPIENT_FIELDS if name in data},
        )
        # What the upsert does not take: the site login linked to the recipient, and quiet
        # hours (which the API sets together with every preference).
        if {"user", "quiet_hours_start", "quiet_hours_end"} & set(form.changed_data):
            start, end = data.get("quiet_hours_start"), data.get("quiet_hours_end")
            stored = recipient_account_set(
                recipient=stored, user=data.get("user"), quiet_hours=(start, end) if start and end else None
            )
        adopt_stored_row(obj, stored)

    def save_formset(
        self, request: HttpRequest, form: forms.ModelForm, formset: BaseInlineFormSet, change: bool
    ) -> None:
        if formset.model is Device:
            devices_save(formset)
        else:
            super().save_formset(request, form, formset, change)


@admin.register(Topic)
class TopicAdmin(admin.ModelAdmin):
    list_display = ["key", "name", "subscriber_count", "created_at"]
    search_fields = ["key", "name"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Topic]:
        return super().get_queryset(request).annotate(subscriber_count=Count("subscriptions"))

    @admin.display(description="subscribers", ordering="subscriber_count")
    def subscriber_count(self, obj: Topic) -> int:
        return obj.subscriber_count  # type: ignore[attr-defined]


@admin.register(Subscription)
class SubscriptionAdmin(BigTableAdmin):
    list_display = ["id", "topic", "recipient", "created_at"]
    list_filter = ["topic"]
    list_select_related = ["topic", "recipient"]
    search_fields = ["recipient__external_id__exact"]
    search_help_text = "Exact recipient external id."
    raw_id_fields = ["topic", "recipient"]


@admin.register(Preference)
class PreferenceAdmin(BigTableAdmin):
    list_display = ["id", "recipient", "notification_type", "category", "channel", "enabled"]
    list_filter = ["channel", "category", "enabled"]
    list_select_related = ["recipient", "notification_type"]
    search_fields = ["recipient__external_id__exact"]
    search_help_text = "Exact recipient external id."
    raw_id_fields = ["recipient"]
    autocomplete_fields = ["notification_type"]


@admin.register(DigestSetting)
class DigestSettingAdmin(BigTableAdmin):
    list_display = ["id", "recipient", "category", "frequency", "next_at"]
    readonly_fields = ["next_at"]
    list_filter = ["category", "frequency"]
    list_select_related = ["recipient"]
    search_fields = ["recipient__external_id__exact"]
    search_help_text = "Exact recipient external id."
    raw_id_fields = ["recipient"]

    def formfield_for_choice_field(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        field: Any = super().formfield_for_choice_field(db_field, request, **kwargs)
        if db_field.name == "category":
            # Critical notifications are never gathered into a digest: no such choice.
            field.choices = [(value, label) for value, label in field.choices if value in DIGEST_CATEGORIES]
        return field


@admin.register(DigestRun)
class DigestRunAdmin(PipelineOwnedAdmin):
    """Each digest sent (or found with nothing unread), by recipient, category and period
    (notifications/services/digests.py)."""

    list_display = [
        "id",
        "recipient",
        "category",
        "frequency",
        "period_start",
        "period_end",
        "item_count",
        "event_id",
    ]
    list_filter = ["category", "frequency"]
    list_select_related = ["recipient"]
    search_fields = ["recipient__external_id__exact"]
    search_help_text = "Exact recipient external id."
    date_hierarchy = "period_end"
