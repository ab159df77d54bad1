"""The preference center pages: ``/preferences/`` for the logged-in user, and the same
form bound to an email's unsubscribe link (``/unsubscribe/<token>/preferences/``), whose
signed token stands in for a login; plus the unsubscribe page's Undo.

Both forms are plain POSTs with a CSRF token that redirect back with a "Saved" message,
so they work without JavaScript; static/notifications/preferences.js saves the same form
without a reload when it can (asking for JSON with ``Accept: application/json``).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any
from zoneinfo import available_timezones

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_http_methods, require_POST

from notifications import selectors
from notifications.models import Channel, Recipient
from notifications.services.preference_center import (
    QUIET_END,
    QUIET_START,
    TIMEZONE,
    PreferenceCenter,
    category_field,
    preference_center_get,
    preference_center_save,
    unsubscribe_landing,
)
from notifications.services.validation import ValidationFailed

SAVED = "Saved. Your changes apply from the next notification."


@lru_cache(maxsize=1)
def timezone_groups() -> list[tuple[str, list[str]]]:
    """Every zone ``zoneinfo`` knows (what the API accepts), grouped by region for the
    select; names without a region (UTC, GMT...) come first, under "Common"."""
    groups: dict[str, list[str]] = {}
    for name in sorted(available_timezones()):
        region = name.split("/", 1)[0] if "/" in name else "Common"
        groups.setdefault(region, []).append(name)
    common = groups.pop("Common", [])
    return [("Common", common), *sorted(groups.items())]


def _fields(request: HttpRequest) -> dict[str, str]:
    """The form's fields, the last value of each: a checkbox follows a hidden "off" of the
    same name, so an unticked box still says so."""
    return {name: request.POST.getlist(name)[-1] for name in request.POST if name != "csrfmiddlewaretoken"}


def _wants_json(request: HttpRequest) -> bool:
    return request.headers.get("Accept", "").startswith("application/json")


def _errors_listed(center: PreferenceCenter, errors: Mapping[str, Any]) -> list[dict[str, str]]:
    """The errors as the page lists them: which control, called what, and the message."""
    listed = []
    for name, problems in errors.items():
        for problem in problems if isinstance(problems, list) else [problems]:
            listed.append(
                {
                    "name": name,
                    "id": center.control_id(name),
                    "label": center.label(name),
                    "message": str(problem),
                }
            )
    return listed


def _preference_form(
    request: HttpRequest, *, recipient: Recipient, form_action: str, context: dict[str, Any]
) -> HttpResponse:
    """GET shows the form; POST saves it and redirects back (or answers JSON to the page's
    script). Bad input is shown again as filled in, with every bad field named, status 400,
    and nothing stored."""
    errors: list[dict[str, str]] = []
    status = 200
    if request.method == "POST":
        fields = _fields(request)
        try:
            center = preference_center_save(recipient=recipient, fields=fields)
        except ValidationFailed as exc:
            center = preference_center_get(recipient=recipient, submitted=fields)
            errors = _errors_listed(center, exc.errors)
            if _wants_json(request):
                labelled = {e["name"]: f"{e['label']}: {e['message']}" for e in errors}
                return JsonResponse({"errors": exc.errors, "messages": labelled}, status=400)
            status = 400
        else:
            if _wants_json(request):
                return JsonResponse({"saved": True, "message": SAVED, "values": center.values()})
            messages.success(request, SAVED)
            return HttpResponseRedirect(form_action)
    else:
        center = preference_center_get(recipient=recipient)
    # Inline beside their controls too (the checkboxes' only come from a tampered form).
    inline = {error["name"]: error["message"] for error in errors}
    return render(
        request,
        "notifications/preferences.html",
        {
            **context,
            "recipient": recipient,
            "center": center,
            "tables": [(table, inline.get(table.digest_name, "")) for table in center.tables],
            "errors": errors,
            "quiet_start_error": inline.get(QUIET_START, ""),
            "quiet_end_error": inline.get(QUIET_END, ""),
            "timezone_error": inline.get(TIMEZONE, ""),
            "form_action": form_action,
            "timezone_groups": timezone_groups(),
            "digest_choices": [("off", "Off"), ("daily", "Daily digest"), ("weekly", "Weekly digest")],
        },
        status=status,
    )


@require_http_methods(["GET", "POST"])
@login_required
@ensure_csrf_cookie
def preferences_page(request: HttpRequest) -> HttpResponse:
    """The logged-in user's preference center; 404 when the account has no recipient."""
    recipient = selectors.recipient_for_user(user=request.user)
    if recipient is None:
        return render(request, "notifications/no_preferences.html", status=404)
    return _preference_form(
        request, recipient=recipient, form_action=reverse("preferences"), context={"token_bound": False}
    )


def _invalid_link(request: HttpRequest) -> HttpResponse:
    return render(request, "notifications/unsubscribe.html", {"invalid": True}, status=404)


@require_http_methods(["GET", "POST"])
@ensure_csrf_cookie
def unsubscribe_preferences(request: HttpRequest, token: str) -> HttpResponse:
    """The preference center of the recipient an email's unsubscribe link names, without a
    login: the signed token is the authority (as for the one-click POST), for that
    recipient only."""
    landing = unsubscribe_landing(token=token)
    if landing is None:
        return _invalid_link(request)
    return _preference_form(
        request,
        recipient=landing.recipient,
        form_action=reverse("unsubscribe-preferences", args=[token]),
        context={"token_bound": True, "landing": landing, "token": token},
    )


@require_POST
def unsubscribe_undo(request: HttpRequest, token: str) -> HttpResponse:
    """Undo an unsubscribe: email of the link's category is on again, as if ticked on the
    preference center (a CSRF-checked form POST: unlike the one-click unsubscribe, no mail
    provider sends it)."""
    landing = unsubscribe_landing(token=token)
    if landing is None:
        return _invalid_link(request)
    try:
        preference_center_save(
            recipient=landing.recipient, fields={category_field(landing.category, Channel.EMAIL): "on"}
        )
    except ValidationFailed:
        # A signed token of a category no link is made for (critical): nothing to undo.
        return _invalid_link(request)
    return render(
        request,
        "notifications/unsubscribe.html",
        {"landing": landing, "category": landing.category_label, "token": token, "undone": True},
    )
