"""Recipients' webhook endpoints."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest

from notifications.admin.base import BigTableAdmin
from notifications.models import WebhookEndpoint, WebhookKind


class WebhookEndpointForm(forms.ModelForm):
    """The signing secret is write-only: it is never rendered back, not even masked."""

    url = forms.URLField(max_length=2000, assume_scheme="https")
    new_secret = forms.CharField(
        label="Signing secret",
        required=False,
        strip=True,
        max_length=100,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only. Leave blank to keep the current secret.",
    )
    clear_secret = forms.BooleanField(label="Remove the signing secret", required=False)

    class Meta:
        model = WebhookEndpoint
        fields = ["recipient", "kind", "url", "active"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        new, clear = cleaned.get("new_secret", ""), cleaned.get("clear_secret", False)
        if new and clear:
            self.add_error("clear_secret", "Either enter a new secret or remove it, not both.")
        will_have_secret = bool(new) or (bool(self.instance.secret) and not clear)
        if cleaned.get("kind") == WebhookKind.GENERIC and not will_have_secret:
            self.add_error("new_secret", "A generic webhook is signed: enter its signing secret.")
        return cleaned

    def save(self, commit: bool = True) -> WebhookEndpoint:
        endpoint = super().save(commit=False)
        if self.cleaned_data.get("new_secret"):
            endpoint.secret = self.cleaned_data["new_secret"]
        elif self.cleaned_data.get("clear_secret"):
            endpoint.secret = ""
        if commit:
            endpoint.save()
        return endpoint


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(BigTableAdmin):
    form = WebhookEndpointForm
    list_display = ["url", "kind", "recipient", "active", "has_secret", "created_at"]
    list_filter = ["kind", "active"]
    list_select_related = ["recipient"]
    search_fields = ["=recipient__external_id", "url"]
    search_help_text = "An exact recipient external id, or part of the URL."
    raw_id_fields = ["recipient"]
    readonly_fields = ["has_secret", "created_at"]

    def get_fields(self, request: HttpRequest, obj: WebhookEndpoint | None = None) -> tuple[str, ...]:
        fields = ("recipient", "kind", "url", "active", "new_secret")
        if obj is None:
            return fields
        return (*fields, "clear_secret", "has_secret", "created_at")

    @admin.display(boolean=True, description="secret set")
    def has_secret(self, obj: WebhookEndpoint) -> bool:
        return bool(obj.secret)
