"""Notification types and their templates, judged and stored by the catalog services
(services/catalog.py) with the API's rules: a type is judged whole, with its templates in
every locale, and stored by one service call, so a fallback rule, a template field or a
template that does not compile is refused here as the API refuses it.

The type page posts the type's fields and its template rows (an inline) together. Django
validates the two apart, so each side shows what is its own: a template row checks its
content and locale itself (``NotificationTemplateForm``), and the type's form judges the
whole type, reading the rows through the inline's own formset, and shows what concerns
the type's fields (``NotificationTypeForm``).
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest

from notifications.admin.base import adopt_stored_row, refusal_lines, show_refusal
from notifications.models import Category, Channel, NotificationTemplate, NotificationType
from notifications.services.catalog import (
    APPROVAL_NEEDED,
    TYPE_FIELDS,
    notification_template_errors,
    notification_template_save,
    notification_type_locale_templates,
    notification_type_locales_errors,
    notification_type_save_locales,
)
from notifications.services.validation import RuleViolation, locale_check, template_content_errors

Locales = dict[str, dict[str, Any]]

# --- Template rows ----------------------------------------------------------------------


class NotificationTemplateForm(forms.ModelForm):
    """One template row of a type's page: its content judged by the API's template rules
    (fields of the channel, required fields, a template that compiles) and its locale by
    the API's locale rule, each message beside the value it concerns."""

    class Meta:
        model = NotificationTemplate
        fields = ["channel", "locale", "content"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if "locale" in cleaned:
            try:
                locale_check(cleaned["locale"])
            except RuleViolation as exc:
                self.add_error("locale", str(exc))
        if "channel" in cleaned and "content" in cleaned:
            errors = template_content_errors(channel=cleaned["channel"], content=cleaned["content"])
            for line in refusal_lines(errors):
                self.add_error("content", line)
        return cleaned


def _gated(obj: Any) -> bool:
    """A critical or marketing type's templates change only through an approved template
    version (admin/template_versions.py)."""
    notification_type = getattr(obj, "notification_type", obj)
    return bool(getattr(notification_type, "needs_approval", False))


class NotificationTemplateInline(admin.StackedInline):
    """The published templates. A critical or marketing type's are shown read-only: they
    change through a template version a second staff member approves."""

    model = NotificationTemplate
    form = NotificationTemplateForm
    fields = ["channel", "locale", "content"]
    extra = 0

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return not _gated(obj) and super().has_add_permission(request, obj)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return not _gated(obj) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return not _gated(obj) and super().has_delete_permission(request, obj)


def formset_locales(formset: BaseInlineFormSet) -> Locales:
    """The templates a type's page was posted with, ``{locale: {channel: content}}``: every
    row but the deleted and the empty ones. A row whose channel or locale is unreadable is
    left out (it shows its own error); one whose content is, counts with empty content, so
    the type is not also told that the channel lacks a template."""
    locales: Locales = {}
    for row in formset.forms:
        row.is_valid()  # cleans the row; its errors are shown on the row itself
        data = row.cleaned_data
        if formset.can_delete and data.get("DELETE"):
            continue
        if "channel" in data and "locale" in data:
            locales.setdefault(data["locale"], {})[data["channel"]] = data.get("content", {})
    return locales


# --- Types ------------------------------------------------------------------------------


class NotificationTypeForm(forms.ModelForm):
    """A type's fields, judged with its templates by notification_type_locales_errors: the
    errors of the type's fields beside them, in the API's words ("fallbacks[0].to: ...")."""

    channels = forms.MultipleChoiceField(choices=Channel.choices, widget=forms.CheckboxSelectMultiple)
    # The template inline's formset class, set per request by NotificationTypeAdmin.get_form;
    # None when the user may not edit templates, so the stored ones stand.
    template_formset: type[BaseInlineFormSet] | None = None

    class Meta:
        model = NotificationType
        fields = ["key", *TYPE_FIELDS]
        help_texts = {
            "fallbacks": (
                'A JSON list of rules, e.g. [{"from": "push", "to": "sms", "after_seconds": 60}]: '
                "when the push has not reached the user within 60 seconds (or failed for good), "
                "the event is sent by SMS as well. The SMS channel needs a template."
            )
        }

    def posted_locales(self) -> Locales | None:
        """The templates the page was posted with, or None when it had no template rows."""
        if self.template_formset is None or (self.instance.pk is not None and _gated(self.instance)):
            return None
        rows = self.template_formset(data=self.data, files=self.files, instance=self.instance)
        return formset_locales(rows) if rows.management_form.is_valid() else None

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        stored = self.instance if self.instance.pk is not None else None
        key = stored.key if stored is not None else cleaned.get("key")
        # The rules judge a whole type: a field the form could not read leaves none to judge.
        if key is None or any(name not in cleaned for name in TYPE_FIELDS):
            return cleaned
        locales = self.posted_locales()
        on_page = locales is not None
        if locales is None:
            locales = notification_type_locale_templates(notification_type=stored) if stored else {}
        fields, errors = notification_type_locales_errors(
            key=key, fields={name: cleaned[name] for name in TYPE_FIELDS}, locales=locales, instance=stored
        )
        self._show_type_errors(errors, rows_on_page=on_page)
        if (
            stored is not None
            and on_page
            and cleaned["category"] in (Category.CRITICAL, Category.MARKETING)
            and locales != notification_type_locale_templates(notification_type=stored)
        ):
            self.add_error("category", APPROVAL_NEEDED.format(category=cleaned["category"]))
        cleaned["fallbacks"] = fields["fallbacks"]
        return cleaned

    def _show_type_errors(self, errors: dict[str, Any], *, rows_on_page: bool) -> None:
        for name, value in errors.items():
            if name in ("templates", "translations"):
                self._show_template_set_errors(name, value, rows_on_page=rows_on_page)
            elif name.startswith("fallbacks"):
                lines = value if name == "fallbacks" else refusal_lines({name: value})
                for line in lines:
                    self.add_error("fallbacks", line)
            else:
                show_refusal(self, {name: value})

    def _show_template_set_errors(self, name: str, errors: dict[str, Any], *, rows_on_page: bool) -> None:
        """Which templates the type has is the type's concern, shown beside its channels;
        what a template says is its row's, shown there by NotificationTemplateForm (or on
        the form as a whole, when the page had no template rows)."""
        # templates: {channel: problem}; translations: {locale: [message] | {channel: problem}}
        groups = {"": errors} if name == "templates" else errors
        for locale, per_channel in groups.items():
            where = f"{name}.{locale}" if locale else name
            if not isinstance(per_channel, dict):  # a translation's locale
                if not rows_on_page:
                    for line in refusal_lines({where: per_channel}):
                        self.add_error(None, line)
                continue
            for channel, problem in per_channel.items():
                if isinstance(problem, list):
                    for message in problem:
                        self.add_error("channels", f"{locale}: {message}" if locale else message)
                elif not rows_on_page:
                    for line in refusal_lines(problem, f"{where}.{channel}"):
                        self.add_error(None, line)


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
        "when_active",
        "updated_at",
    ]
    list_filter = ["category"]
    search_fields = ["key", "name"]
    fields = ["key", *TYPE_FIELDS, "created_at", "updated_at"]

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

    def get_readonly_fields(
        self, request: HttpRequest, obj: NotificationType | None = None
    ) -> tuple[str, ...]:
        # Producers name the type by its key in every event, and dead letters keep it:
        # a renamed key would break them, so it is fixed once created (as in the API).
        return ("created_at", "updated_at") if obj is None else ("key", "created_at", "updated_at")

    def get_form(
        self, request: HttpRequest, obj: NotificationType | None = None, change: bool = False, **kwargs: Any
    ) -> type[forms.ModelForm]:
        form = super().get_form(request, obj, change=change, **kwargs)
        inline = next(
            (i for i in self.get_inline_instances(request, obj) if isinstance(i, NotificationTemplateInline)),
            None,
        )
        formset = inline.get_formset(request, obj) if inline is not None else None
        return type(form.__name__, (form,), {"template_formset": formset})

    def save_model(
        self, request: HttpRequest, obj: NotificationType, form: forms.ModelForm, change: bool
    ) -> None:
        # Stored together with its templates, by one service call, in save_related: the
        # template rows are not at hand here.
        return

    def save_related(
        self, request: HttpRequest, form: forms.ModelForm, formsets: list[BaseInlineFormSet], change: bool
    ) -> None:
        rows = next((formset for formset in formsets if formset.model is NotificationTemplate), None)
        stored = form.instance if change else None
        # Gated as the type is stored: form.instance holds the posted category already.
        as_stored = NotificationType.objects.filter(pk=stored.pk).first() if stored is not None else None
        if rows is not None and not (as_stored is not None and _gated(as_stored)):
            locales = formset_locales(rows)
        else:
            locales = notification_type_locale_templates(notification_type=stored) if stored else {}
        saved = notification_type_save_locales(
            key=form.instance.key,
            fields={name: form.cleaned_data[name] for name in TYPE_FIELDS},
            locales=locales,
            instance=stored,
            by=request.user,
        )
        adopt_stored_row(form.instance, saved)
        form.save_m2m()
        if rows is not None:
            # Sorts the rows into added, changed and deleted for the admin's change message;
            # commit=False writes nothing, the service stored them above.
            rows.save(commit=False)


# --- The template list ------------------------------------------------------------------


class NotificationTemplateAdminForm(forms.ModelForm):
    """One template edited on its own page, judged with its type whole
    (notification_template_errors): the API's messages beside the template's content,
    channel or locale; what the type breaks elsewhere on the form as a whole."""

    class Meta:
        model = NotificationTemplate
        fields = ["notification_type", "channel", "locale", "content"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        stored = self.instance if self.instance.pk is not None else None
        notification_type = (
            stored.notification_type if stored is not None else cleaned.get("notification_type")
        )
        if notification_type is None or any(name not in cleaned for name in ("channel", "locale", "content")):
            return cleaned
        channel, locale = cleaned["channel"], cleaned["locale"]
        errors = notification_template_errors(
            notification_type=notification_type,
            channel=channel,
            locale=locale,
            content=cleaned["content"],
            template=stored,  # still as stored: the form applies its values after clean()
        )
        # This template's own errors go beside its fields; the rest of the type's, if it
        # breaks its rules elsewhere, on the form as a whole.
        section = "templates" if locale == notification_type.default_locale else "translations"
        others: dict[str, Any] = errors.pop(section, {})
        here: Any = others if section == "templates" else others.pop(locale, {})
        prefix = section if section == "templates" else f"{section}.{locale}"
        if isinstance(here, list):
            for message in here:
                self.add_error("locale", message)
            here = {}
        if section == "templates":
            others = {}
        for where, problem in here.items():
            if isinstance(problem, list):
                # Which channels have templates, this one's included, is the channel's concern.
                for message in problem:
                    self.add_error("channel", message)
            elif where == channel:
                for line in refusal_lines(problem):
                    self.add_error("content", line)
            else:
                for line in refusal_lines({where: problem}, prefix):
                    self.add_error(None, line)
        for line in refusal_lines({section: others} if others else {}) + refusal_lines(errors):
            self.add_error(None, line)
        return cleaned


@admin.register(NotificationTemplate)
class NotificationTemplateAdmin(admin.ModelAdmin):
    """Every template in one list, to find a locale's gaps across types; usually edited
    inline on its type. Each save judges the type whole with the template."""

    form = NotificationTemplateAdminForm
    list_display = ["notification_type", "channel", "locale", "updated_at"]
    list_filter = ["channel", "locale"]
    list_select_related = ["notification_type"]
    search_fields = ["notification_type__key"]
    autocomplete_fields = ["notification_type"]

    def get_readonly_fields(
        self, request: HttpRequest, obj: NotificationTemplate | None = None
    ) -> tuple[str, ...]:
        # A template moved to another type would leave its first type without it.
        return ("updated_at",) if obj is None else ("notification_type", "updated_at")

    def has_change_permission(self, request: HttpRequest, obj: NotificationTemplate | None = None) -> bool:
        return not _gated(obj) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: NotificationTemplate | None = None) -> bool:
        # Deleted on its type's page, where the type is judged whole without it: on its
        # own, a required template could go and leave the type breaking the rules.
        return False

    def save_model(
        self, request: HttpRequest, obj: NotificationTemplate, form: forms.ModelForm, change: bool
    ) -> None:
        stored = NotificationTemplate.objects.get(pk=obj.pk) if change else None
        saved = notification_template_save(
            notification_type=obj.notification_type,
            channel=obj.channel,
            locale=obj.locale,
            content=obj.content,
            template=stored,
            by=request.user,
        )
        adopt_stored_row(obj, saved)
