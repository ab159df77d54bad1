"""Template versions in the admin: write a draft with a live preview of every channel in
any locale, see what changed against another version, send a test to yourself, publish
(or ask a second staff member to approve, for critical and marketing types), approve or
reject, and roll back to an earlier version. Every step is a call of
notifications/services/template_versions.py.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from notifications.admin.base import status_badge_html
from notifications.models import TemplateVersion, TemplateVersionStatus
from notifications.services.template_versions import (
    VersionRefused,
    version_approve,
    version_diff,
    version_draft_create,
    version_draft_update,
    version_errors,
    version_preview,
    version_publish_request,
    version_reject,
    version_rollback,
    version_send_test,
)
from notifications.services.validation import ValidationFailed

PRETTY = {"indent": 2, "ensure_ascii": False, "sort_keys": True}


class PrettyJSONField(forms.JSONField):
    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, str):
            return value
        return json.dumps(value, **PRETTY)  # type: ignore[arg-type]


class TemplateVersionForm(forms.ModelForm):
    templates = PrettyJSONField(
        widget=forms.Textarea(attrs={"rows": 18, "class": "vLargeTextField tv-json", "spellcheck": "false"}),
        help_text='{"locale": {"channel": {"field": "template"}}}, e.g. {"en": {"email": {"subject": …}}}',
    )
    variables = PrettyJSONField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 8, "class": "vLargeTextField tv-json", "spellcheck": "false"}),
        help_text='{"name": {"type": "string", "required": true, "example": "…"}}; '
        "types: string, integer, number, boolean, datetime, date, url, object, list",
    )

    class Meta:
        model = TemplateVersion
        fields = ["templates", "variables", "note"]

    def clean_templates(self) -> Any:
        templates = self.cleaned_data.get("templates")
        if not isinstance(templates, dict):
            raise forms.ValidationError('must be an object: {"locale": {"channel": {"field": "template"}}}')
        return templates

    def clean_variables(self) -> Any:
        variables = self.cleaned_data.get("variables") or {}
        if not isinstance(variables, dict):
            raise forms.ValidationError('must be an object: {"name": {"type": "string", "example": "…"}}')
        return variables


class TemplateVersionReadForm(forms.ModelForm):
    """A version no longer a draft: nothing to edit, only the workflow's buttons."""

    class Meta:
        model = TemplateVersion
        fields: list[str] = []


class TemplateVersionAddForm(forms.ModelForm):
    class Meta:
        model = TemplateVersion
        fields = ["notification_type", "note"]
        help_texts = {"note": "What this version changes (shown in the history)."}


STATUS_COLOURS = {
    TemplateVersionStatus.DRAFT: "#6b7280",
    TemplateVersionStatus.PENDING: "#b45309",
    TemplateVersionStatus.PUBLISHED: "#047857",
    TemplateVersionStatus.RETIRED: "#9ca3af",
    TemplateVersionStatus.REJECTED: "#b91c1c",
}

ACTIONS = ("_publish", "_approve", "_reject", "_rollback", "_send_test")


@admin.register(TemplateVersion)
class TemplateVersionAdmin(admin.ModelAdmin):
    change_form_template = "admin/notifications/templateversion/change_form.html"
    list_display = [
        "notification_type",
        "number",
        "status_badge",
        "note",
        "created_by",
        "requested_by",
        "approved_by",
        "published_at",
    ]
    list_filter = ["status", "notification_type__category"]
    list_select_related = ["notification_type", "created_by", "requested_by", "approved_by"]
    search_fields = ["notification_type__key", "note"]
    autocomplete_fields = ["notification_type"]
    ordering = ["notification_type__key", "-number"]
    WORKFLOW = [
        "notification_type",
        "number",
        "status",
        "based_on",
        "created_by",
        "created_at",
        "requested_by",
        "requested_at",
        "approved_by",
        "approved_at",
        "rejected_reason",
        "published_by",
        "published_at",
    ]

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: TemplateVersion) -> str:
        return status_badge_html(
            STATUS_COLOURS.get(TemplateVersionStatus(obj.status), "#6b7280"), obj.get_status_display()
        )

    def get_form(
        self, request: HttpRequest, obj: TemplateVersion | None = None, change: bool = False, **kwargs: Any
    ) -> type[forms.ModelForm]:
        if obj is None:
            kwargs["form"] = TemplateVersionAddForm
        else:
            kwargs["form"] = TemplateVersionForm if obj.editable else TemplateVersionReadForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: TemplateVersion | None = None) -> Any:
        if obj is None:
            return ["notification_type", "note"]
        if obj.editable:
            return ["templates", "variables", "note", *self.WORKFLOW]
        return ["templates_shown", "variables_shown", "note", *self.WORKFLOW]

    def get_readonly_fields(self, request: HttpRequest, obj: TemplateVersion | None = None) -> list[str]:
        if obj is None:
            return []
        if obj.editable:
            return self.WORKFLOW
        return ["templates_shown", "variables_shown", "note", *self.WORKFLOW]

    @admin.display(description="templates")
    def templates_shown(self, obj: TemplateVersion) -> str:
        return format_html('<pre class="tv-pre">{}</pre>', json.dumps(obj.templates, **PRETTY))  # type: ignore[arg-type]

    @admin.display(description="variables")
    def variables_shown(self, obj: TemplateVersion) -> str:
        return format_html('<pre class="tv-pre">{}</pre>', json.dumps(obj.variables, **PRETTY))  # type: ignore[arg-type]

    def has_delete_permission(self, request: HttpRequest, obj: TemplateVersion | None = None) -> bool:
        # History is kept: a draft nobody wants is simply never published.
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[TemplateVersion]:
        return super().get_queryset(request).select_related("notification_type")

    def save_model(
        self, request: HttpRequest, obj: TemplateVersion, form: forms.ModelForm, change: bool
    ) -> None:
        if not change:
            created = version_draft_create(
                notification_type=form.cleaned_data["notification_type"],
                by=request.user,
                note=form.cleaned_data.get("note", ""),
            )
            obj.pk, obj.number, obj._state.adding = created.pk, created.number, False
            return
        if obj.editable and form.has_changed():
            version_draft_update(
                version=obj,
                templates=form.cleaned_data["templates"],
                variables=form.cleaned_data.get("variables") or {},
                note=form.cleaned_data.get("note", ""),
            )

    def response_change(self, request: HttpRequest, obj: TemplateVersion) -> HttpResponse:
        action = next((name for name in ACTIONS if name in request.POST), None)
        if action is None:
            return super().response_change(request, obj)
        here = reverse("admin:notifications_templateversion_change", args=[obj.pk])
        try:
            if action == "_publish":
                done = version_publish_request(version=obj, by=request.user)
                if done.status == TemplateVersionStatus.PUBLISHED:
                    self.message_user(request, f"Version {done.number} is published.", messages.SUCCESS)
                else:
                    self.message_user(
                        request,
                        f"Version {done.number} awaits the approval of a second staff member.",
                        messages.WARNING,
                    )
            elif action == "_approve":
                done = version_approve(version=obj, by=request.user)
                self.message_user(request, f"Approved: version {done.number} is published.", messages.SUCCESS)
            elif action == "_reject":
                version_reject(version=obj, by=request.user, reason=request.POST.get("reject_reason", ""))
                self.message_user(request, f"Version {obj.number} went back to its author.", messages.WARNING)
            elif action == "_rollback":
                done = version_rollback(version=obj, by=request.user)
                word = "published" if done.status == TemplateVersionStatus.PUBLISHED else "awaits approval"
                self.message_user(
                    request,
                    f"Version {done.number}, a copy of version {obj.number}, {word}.",
                    messages.SUCCESS,
                )
                here = reverse("admin:notifications_templateversion_change", args=[done.pk])
            elif action == "_send_test":
                event = version_send_test(version=obj, user=request.user)
                link = reverse("admin:notifications_event_change", args=[event.pk])
                self.message_user(
                    request,
                    format_html('Test sent to you: <a href="{}">event {}</a>.', link, event.pk),
                    messages.SUCCESS,
                )
        except ValidationFailed as exc:
            for where, problems in exc.errors.items():
                for problem in problems if isinstance(problems, list) else [problems]:
                    self.message_user(request, f"{where}: {problem}", messages.ERROR)
        except VersionRefused as exc:
            self.message_user(request, str(exc), messages.ERROR)
        return HttpResponseRedirect(here)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        version = self.get_object(request, object_id)
        context = dict(extra_context or {})
        if version is not None:
            context.update(self._page_context(request, version))
        return super().change_view(request, object_id, form_url, extra_context=context)

    def _page_context(self, request: HttpRequest, version: TemplateVersion) -> dict[str, Any]:
        others = list(
            TemplateVersion.objects.filter(notification_type=version.notification_type)
            .exclude(pk=version.pk)
            .order_by("-number")
        )
        published = next((v for v in others if v.status == TemplateVersionStatus.PUBLISHED), None)
        wanted = request.GET.get("diff")
        against = next((v for v in others if str(v.number) == wanted), None) or published
        if against is None and version.based_on is not None:
            against = next((v for v in others if v.number == version.based_on), None)
        locales = sorted((version.templates or {}).keys()) if isinstance(version.templates, dict) else []
        return {
            "version": version,
            "notification_type": version.notification_type,
            "needs_approval": version.notification_type.needs_approval,
            "others": others,
            "against": against,
            "diff": version_diff(against, version) if against is not None else [],
            "errors": version_errors(
                notification_type=version.notification_type,
                templates=version.templates,
                variables=version.variables,
            )
            if version.editable
            else {},
            "locales": locales,
            "preview_url": reverse("admin:notifications_templateversion_preview", args=[version.pk]),
            "may_approve": version.status == TemplateVersionStatus.PENDING
            and request.user.pk not in (version.requested_by_id, version.created_by_id),
        }

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [
            path(
                "<int:version_id>/preview/",
                wrap(partial(template_version_preview, model_admin=self)),
                name="notifications_templateversion_preview",
            ),
            *super().get_urls(),
        ]


def template_version_preview(
    request: HttpRequest, version_id: int, model_admin: TemplateVersionAdmin
) -> HttpResponse:
    """POST ``{"templates", "variables", "locale", "timezone"}`` (what the page holds, saved
    or not) → each channel rendered with the examples, the checks before sending and what
    the version breaks. Nothing is stored."""
    if request.method != "POST":
        return JsonResponse({"error": "POST the templates to preview"}, status=405)
    version = get_object_or_404(TemplateVersion.objects.select_related("notification_type"), pk=version_id)
    if not model_admin.has_view_permission(request, version):
        raise PermissionDenied
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return JsonResponse({"errors": {"": ["the body is not JSON"]}}, status=400)
    if not isinstance(body, dict):
        return JsonResponse({"errors": {"": ["the body must be an object"]}}, status=400)
    errors: dict[str, list[str]] = {}
    templates, variables = body.get("templates"), body.get("variables") or {}
    for name, text in (("templates", templates), ("variables", variables)):
        if isinstance(text, str):
            try:
                parsed = json.loads(text) if text.strip() else {}
            except ValueError as exc:
                errors[name] = [f"not JSON: {exc}"]
                parsed = None
            if name == "templates":
                templates = parsed
            else:
                variables = parsed
    notification_type = version.notification_type
    locale = str(body.get("locale") or notification_type.default_locale)[:20]
    if not errors:
        errors = version_errors(notification_type=notification_type, templates=templates, variables=variables)
    previews = (
        version_preview(
            notification_type=notification_type,
            templates=templates,
            variables=variables,
            locale=locale,
            timezone_name=str(body.get("timezone") or "UTC")[:64],
        )
        if isinstance(templates, dict)
        else []
    )
    return JsonResponse(
        {
            "locale": locale,
            "errors": errors,
            "previews": [
                {
                    "channel": p.channel,
                    "locale": p.locale,
                    "fields": p.fields,
                    "error": p.error,
                    "facts": p.facts,
                    "problems": p.problems,
                }
                for p in previews
            ],
        }
    )
