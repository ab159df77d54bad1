"""Notification types and their templates."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin

from notifications.models import TEMPLATE_FIELDS, Channel, NotificationTemplate, NotificationType
from notifications.services.templating import template_check


class NotificationTypeForm(forms.ModelForm):
    channels = forms.MultipleChoiceField(choices=Channel.choices, widget=forms.CheckboxSelectMultiple)

    class Meta:
        model = NotificationType
        fields = [
            "key",
            "name",
            "category",
            "channels",
            "default_locale",
            "aggregation_window_seconds",
            "quiet_hours_policy",
            "fallbacks",
        ]
        help_texts = {
            "fallbacks": (
                'A JSON list of rules, e.g. [{"from": "push", "to": "sms", "after_seconds": 60}]: '
                "when the push has not reached the user within 60 seconds (or failed for good), "
                "the event is sent by SMS as well."
            )
        }

    def clean_fallbacks(self) -> list[dict[str, Any]]:
        rules = self.cleaned_data.get("fallbacks")
        if rules in (None, ""):
            return []
        if not isinstance(rules, list):
            raise forms.ValidationError("Fallbacks must be a JSON list of rules (or [] for none).")
        errors: list[str] = []
        seen: set[str] = set()
        for index, rule in enumerate(rules, start=1):
            if not isinstance(rule, dict):
                errors.append(f"Rule {index} must be an object with from, to and after_seconds.")
                continue
            unknown = sorted(set(rule) - {"from", "to", "after_seconds"})
            if unknown:
                errors.append(f"Rule {index}: unknown key(s) {', '.join(unknown)}.")
            source, target = rule.get("from"), rule.get("to")
            for key, value in (("from", source), ("to", target)):
                if value not in Channel.values:
                    errors.append(
                        f"Rule {index}: {key}={value!r} is not a channel; expected one of {', '.join(Channel.values)}."
                    )
            if source is not None and source == target:
                errors.append(f"Rule {index}: from and to are both {source}.")
            if source in seen:
                errors.append(
                    f"Rule {index}: a second rule from {source}; a channel falls back to one other."
                )
            seen.add(str(source))
            after = rule.get("after_seconds", 0)
            if not isinstance(after, int) or isinstance(after, bool) or after < 0:
                errors.append(
                    f"Rule {index}: after_seconds={after!r} must be a whole number of seconds, 0 or more."
                )
        if errors:
            raise forms.ValidationError(errors)
        return rules

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        channels = set(cleaned.get("channels") or [])
        for index, rule in enumerate(cleaned.get("fallbacks") or [], start=1):
            if channels and rule["from"] not in channels:
                self.add_error(
                    "fallbacks",
                    f"Rule {index}: from={rule['from']} is not one of this type's channels, so it would never apply.",
                )
        return cleaned


class NotificationTemplateForm(forms.ModelForm):
    class Meta:
        model = NotificationTemplate
        fields = ["channel", "locale", "content"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        channel, content = cleaned.get("channel"), cleaned.get("content")
        if channel is None or content is None:
            return cleaned
        if not isinstance(content, dict):
            self.add_error("content", "Content must be a JSON object of field name to template text.")
            return cleaned
        allowed = TEMPLATE_FIELDS[channel]
        unknown = sorted(set(content) - set(allowed))
        if unknown:
            self.add_error(
                "content",
                f"Unknown field(s) {', '.join(unknown)} for channel {channel}; expected some of {', '.join(allowed)}.",
            )
        not_text = sorted(name for name, value in content.items() if not isinstance(value, str))
        if not_text:
            self.add_error("content", f"Field(s) {', '.join(not_text)} must be text.")
            return cleaned
        for name, source in sorted(content.items()):
            error = template_check(source=source)
            if error is not None:
                self.add_error("content", f"Field {name}: {error}")
        return cleaned


class NotificationTemplateInline(admin.StackedInline):
    model = NotificationTemplate
    form = NotificationTemplateForm
    fields = ["channel", "locale", "content"]
    extra = 0


@admin.register(NotificationType)
class NotificationTypeAdmin(admin.ModelAdmin):
    form = NotificationTypeForm
    inlines = [NotificationTemplateInline]
    list_display = [
        "key",
        "name",
        "category",
        "channel_list",
        "fallback_list",
        "aggregation_window_seconds",
        "quiet_hours_policy",
        "updated_at",
    ]
    list_filter = ["category"]
    search_fields = ["key", "name"]
    readonly_fields = ["created_at", "updated_at"]

    @admin.display(description="channels")
    def channel_list(self, obj: NotificationType) -> str:
        return ", ".join(obj.channels)

    @admin.display(description="fallbacks")
    def fallback_list(self, obj: NotificationType) -> str:
        return ", ".join(
            f"{rule.get('from')} → {rule.get('to')} after {rule.get('after_seconds', 0)}s"
            for rule in obj.fallbacks or []
            if isinstance(rule, dict)
        )


class NotificationTemplateAdminForm(NotificationTemplateForm):
    class Meta(NotificationTemplateForm.Meta):
        fields = ["notification_type", "channel", "locale", "content"]


@admin.register(NotificationTemplate)
class NotificationTemplateAdmin(admin.ModelAdmin):
    """Every template in one list, to find a locale's gaps across types; usually edited
    inline on its type."""

    form = NotificationTemplateAdminForm
    list_display = ["notification_type", "channel", "locale", "updated_at"]
    list_filter = ["channel", "locale"]
    list_select_related = ["notification_type"]
    search_fields = ["notification_type__key"]
    autocomplete_fields = ["notification_type"]
    readonly_fields = ["updated_at"]
