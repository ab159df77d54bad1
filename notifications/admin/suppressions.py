"""The suppression list."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import Q, QuerySet
from django.http import HttpRequest

from notifications.admin.base import BigTableAdmin, adopt_stored_row
from notifications.models import Suppression, SuppressionKind, SuppressionReason
from notifications.services.feedback import suppression_add, suppression_remove
from notifications.services.validation import RuleViolation, suppression_address_normalise


class SuppressionForm(forms.ModelForm):
    """Judges the address by the rule suppression_add applies (services/validation.py), so
    the admin refuses what the API refuses, in the same words."""

    class Meta:
        model = Suppression
        fields = ["kind", "address", "reason", "detail"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "reason" in self.fields:  # absent on the read-only page of a stored row
            self.fields["reason"].initial = SuppressionReason.MANUAL

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        kind, address = cleaned.get("kind"), cleaned.get("address")
        if not kind or not address:
            return cleaned
        try:
            # In its stored form (E.164, lower-case email) before the model's uniqueness
            # check runs, so "already exists" is found whatever way the number was written.
            cleaned["address"] = suppression_address_normalise(kind=kind, address=address)
        except RuleViolation as exc:
            self.add_error("address", str(exc))
        return cleaned


def _phone_search(term: str) -> str | None:
    try:
        return suppression_address_normalise(kind=SuppressionKind.PHONE, address=term)
    except RuleViolation:
        return None


@admin.register(Suppression)
class SuppressionAdmin(BigTableAdmin):
    """Addresses nothing is sent to. Staff add (a manual suppression) and delete (to send
    again) through the feedback services; a row is a fact, not edited in place."""

    form = SuppressionForm
    list_display = ["address", "kind", "reason", "detail", "created_at"]
    list_filter = ["kind", "reason", "created_at"]
    search_fields = ["address"]  # shows the box; get_search_results does the matching
    search_help_text = "An exact email address (any case) or phone number."
    ordering = ["-created_at"]

    def get_fields(self, request: HttpRequest, obj: Suppression | None = None) -> tuple[str, ...]:
        return (
            ("kind", "address", "reason", "detail")
            if obj is None
            else ("kind", "address", "reason", "detail", "created_at")
        )

    def get_readonly_fields(self, request: HttpRequest, obj: Suppression | None = None) -> tuple[str, ...]:
        return () if obj is None else ("kind", "address", "reason", "detail", "created_at")

    def has_change_permission(self, request: HttpRequest, obj: Suppression | None = None) -> bool:
        return False

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Suppression], search_term: str
    ) -> tuple[QuerySet[Suppression], bool]:
        # Both kinds named, so each side is a lookup on the unique (kind, address) index.
        term = search_term.strip()
        if not term:
            return queryset, False
        phone = _phone_search(term)
        condition = Q(kind=SuppressionKind.EMAIL, address=term.lower())
        if phone is not None:
            condition |= Q(kind=SuppressionKind.PHONE, address=phone)
        return queryset.filter(condition), False

    def save_model(self, request: HttpRequest, obj: Suppression, form: forms.ModelForm, change: bool) -> None:
        data = form.cleaned_data
        created = suppression_add(
            kind=data["kind"], address=data["address"], reason=data["reason"], detail=data.get("detail", "")
        )
        stored = Suppression.objects.get(kind=data["kind"], address=data["address"])
        adopt_stored_row(obj, stored)
        if not created:
            messages.warning(
                request, f"{stored.address} was suppressed already ({stored.get_reason_display()})."
            )

    def delete_model(self, request: HttpRequest, obj: Suppression) -> None:
        suppression_remove(kind=obj.kind, address=obj.address)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Suppression]) -> None:
        for kind, address in queryset.values_list("kind", "address"):
            suppression_remove(kind=kind, address=address)
