"""Recipients' webhook endpoints, judged by the rules webhook_endpoint_add applies
(services/validation.py): an https URL (plain http only to this machine) and, for generic
webhooks, a signing secret of at least 16 characters; Slack and Teams hooks take none."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest

from notifications.admin.base import BigTableAdmin, adopt_stored_row
from notifications.models import WebhookEndpoint
from notifications.services.recipients import webhook_endpoint_add, webhook_endpoint_change
from notifications.services.validation import RuleViolation, webhook_secret_check, webhook_url_check


class WebhookEndpointForm(forms.ModelForm):
    """The signing secret is write-only: it is never rendered back, not even masked."""

    # Plain text, not a URLField: the shared rule judges the URL in the API's words, and
    # nothing guesses a scheme the sender did not write.
    url = forms.CharField(
        label="URL",
        help_text="https; plain http only to 127.0.0.1 or localhost (development, the sandbox).",
        widget=forms.TextInput(attrs={"class": "vURLField"}),
    )
    new_secret = forms.CharField(
        label="Signing secret",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only. Generic webhooks only, at least 16 characters. Leave blank to keep the current one.",
    )
    clear_secret = forms.BooleanField(label="Remove the signing secret", required=False)

    class Meta:
        model = WebhookEndpoint
        fields = ["recipient", "kind", "url", "active"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if "url" in cleaned:
            try:
                cleaned["url"] = webhook_url_check(cleaned["url"])
            except RuleViolation as exc:
                self.add_error("url", str(exc))
        new, clear = cleaned.get("new_secret", ""), cleaned.get("clear_secret", False)
        if new and clear:
            self.add_error("clear_secret", "Either enter a new secret or remove it, not both.")
            return cleaned
        kind = cleaned.get("kind")
        if kind is None:
            return cleaned
        kept = not new and not clear and bool(self.instance.secret)
        secret = new or (self.instance.secret if kept else "")
        try:
            cleaned["secret"] = webhook_secret_check(kind=kind, secret=secret)
        except RuleViolation as exc:
            # A stored secret the kind must not have is removed with the box beside it.
            self.add_error("clear_secret" if kept else "new_secret", str(exc))
        return cleaned


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
        if obj is None:
            # A new endpoint is active, as the API adds it.
            return ("recipient", "kind", "url", "new_secret")
        return (
            "recipient",
            "kind",
            "url",
            "active",
            "new_secret",
            "clear_secret",
            "has_secret",
            "created_at",
        )

    @admin.display(boolean=True, description="secret set")
    def has_secret(self, obj: WebhookEndpoint) -> bool:
        return bool(obj.secret)

    def save_model(
        self, request: HttpRequest, obj: WebhookEndpoint, form: forms.ModelForm, change: bool
    ) -> None:
        secret = form.cleaned_data["secret"]
        if not change:
            stored, _ = webhook_endpoint_add(
                recipient=obj.recipient, kind=obj.kind, url=obj.url, secret=secret
            )
            adopt_stored_row(obj, stored)
            return
        # The form judged the values by the same rules, and the model form's uniqueness check
        # refused a URL the recipient has on another endpoint, so the service agrees.
        stored = webhook_endpoint_change(
            endpoint=obj, kind=obj.kind, url=obj.url, secret=secret, active=obj.active
        )
        adopt_stored_row(obj, stored)
