"""Replaying dead letters by filter, every open one, or one from its page.

The views are wired in by ``DeadLetterAdmin.get_urls`` (admin/deadletters.py) through
``AdminSite.admin_view`` and take the dead-letter change permission, although the rows stay
read-only in forms. ``deadletters_replay`` does the work; these views parse the changelist's
query, confirm with a count, and report.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, time

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, QueryDict
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from django.views.decorators.http import require_POST

from notifications.admin.base import page_context, parse_id
from notifications.models import Channel, DeadLetter
from notifications.selectors import deadletters_open
from notifications.services.deadletters import DeadLetterFilter, deadletters_replay

# The confirmation page counts what a replay would touch; past this it says "more than".
REPLAY_COUNT_CAP = 100_000


def can_replay_dead_letters(request: HttpRequest) -> bool:
    return request.user.has_perm("notifications.change_deadletter")


class UnsupportedFilter(ValueError):
    """The changelist query has a parameter a replay cannot reproduce exactly."""


def deadletter_search(term: str) -> Q:
    """What the dead-letter search box matches: text in the reason, an exact type key, or
    a delivery id. ``DeadLetterSelection`` replays exactly these rows."""
    term = term.strip()
    condition = Q(reason__icontains=term) | Q(notification_type=term)
    delivery_id = parse_id(term)
    if delivery_id is not None:
        condition |= Q(delivery_id=delivery_id)
    return condition


# Changelist parameters a replay understands; "o" (ordering), "p" (page) and "all" change
# nothing about which rows match.
_FILTER_PARAMS = {"channel__exact", "notification_type", "replayed", "created_at__gte", "created_at__lt", "q"}
_NEUTRAL_PARAMS = {"o", "p", "all"}


def _parse_moment(name: str, raw: str) -> datetime:
    moment = parse_datetime(raw)
    if moment is None:
        day = parse_date(raw)
        if day is None:
            raise UnsupportedFilter(f"{name}={raw!r} is not a date or a date and time.")
        moment = datetime.combine(day, time())
    return timezone.make_aware(moment) if timezone.is_naive(moment) else moment


@dataclass(frozen=True)
class DeadLetterSelection:
    """The open dead letters a changelist query shows. The service's ``DeadLetterFilter``
    ANDs its fields while the search box ORs reason, type and delivery id, so a search
    becomes a union: one filter per alternative, replayed one after the other (a letter
    replayed by the first is no longer open for the next)."""

    base: DeadLetterFilter
    search: str = ""
    nothing: bool = False

    def rows(self) -> QuerySet[DeadLetter]:
        """The open letters matched, built the way the changelist builds its rows."""
        if self.nothing:
            return DeadLetter.objects.none()
        rows = deadletters_open(self.base)
        return rows.filter(deadletter_search(self.search)) if self.search else rows

    def replay(self) -> int:
        if self.nothing:
            return 0
        if not self.search:
            return deadletters_replay(where=self.base)
        replayed = deadletters_replay(where=replace(self.base, reason_contains=self.search))
        if self.base.notification_type in ("", self.search):
            replayed += deadletters_replay(where=replace(self.base, notification_type=self.search))
        delivery_id = parse_id(self.search)
        if delivery_id is not None:
            ids = list(
                deadletters_open(self.base)
                .filter(delivery_id=delivery_id)
                .values_list("delivery_id", flat=True)
            )
            if ids:
                replayed += deadletters_replay(delivery_ids=ids)
        return replayed

    def description(self) -> list[str]:
        parts = []
        if self.base.channel:
            parts.append(f"channel is {self.base.channel}")
        if self.base.notification_type:
            parts.append(f"type is {self.base.notification_type}")
        if self.base.created_after:
            parts.append(f"created at or after {self.base.created_after:%Y-%m-%d %H:%M %Z}")
        if self.base.created_before:
            parts.append(f"created before {self.base.created_before:%Y-%m-%d %H:%M %Z}")
        if self.search:
            parts.append(f"reason contains, type is, or delivery id is “{self.search}”")
        return parts


def deadletter_selection(params: QueryDict) -> DeadLetterSelection:
    """The open dead letters the changelist with query ``params`` lists. Raises
    ``UnsupportedFilter`` for a parameter the replay could not honour, rather than
    replaying more than the staff member saw."""
    unknown = sorted(set(params) - _FILTER_PARAMS - _NEUTRAL_PARAMS)
    if unknown:
        raise UnsupportedFilter(
            f"Cannot replay by {', '.join(unknown)}: only channel, type, date and search."
        )
    channel = params.get("channel__exact", "")
    if channel and channel not in Channel.values:
        raise UnsupportedFilter(f"channel__exact={channel!r} is not a channel.")
    replayed = params.get("replayed", "")
    if replayed not in ("", "yes", "no"):
        raise UnsupportedFilter(f"replayed={replayed!r}: expected yes or no.")
    after = params.get("created_at__gte", "")
    before = params.get("created_at__lt", "")
    base = DeadLetterFilter(
        channel=channel,
        notification_type=params.get("notification_type", ""),
        created_after=_parse_moment("created_at__gte", after) if after else None,
        created_before=_parse_moment("created_at__lt", before) if before else None,
    )
    # Replayed letters are never replayed again: "replayed: yes" selects nothing open.
    return DeadLetterSelection(base=base, search=params.get("q", "").strip(), nothing=replayed == "yes")


def _deadletter_changelist(query: str = "") -> str:
    url = reverse("admin:notifications_deadletter_changelist")
    return f"{url}?{query}" if query else url


def replayed_message(replayed: int, *, asked: int | None = None) -> str:
    message = f"Replayed {replayed} dead letter{'' if replayed == 1 else 's'}."
    if asked is not None and asked > replayed:
        skipped = asked - replayed
        message += f" {skipped} {'was' if skipped == 1 else 'were'} replayed already or no longer dead, and left alone."
    return message


def _capped_count(rows: QuerySet[DeadLetter]) -> tuple[int, bool]:
    n = rows[: REPLAY_COUNT_CAP + 1].count()
    return min(n, REPLAY_COUNT_CAP), n > REPLAY_COUNT_CAP


def _confirm_or_replay(
    request: HttpRequest,
    model_admin: admin.ModelAdmin,
    *,
    selection: DeadLetterSelection,
    everything: bool,
    query: str,
    action_url: str,
    title: str,
) -> HttpResponse:
    if request.POST.get("confirm") != "yes":
        count, capped = _capped_count(selection.rows())
        return render(
            request,
            "admin/notifications/deadletter/replay_confirm.html",
            {
                **page_context(request, model_admin, title),
                "count": count,
                "capped": capped,
                "conditions": [] if everything else selection.description(),
                "everything": everything,
                "action_url": action_url,
                "changelist_query": query,
                "changelist_url": _deadletter_changelist(query),
            },
        )
    replayed = deadletters_replay(everything=True) if everything else selection.replay()
    messages.success(request, replayed_message(replayed))
    return HttpResponseRedirect(_deadletter_changelist(query))


@require_POST
def deadletter_replay_matching(request: HttpRequest, *, model_admin: admin.ModelAdmin) -> HttpResponse:
    """Replay the open dead letters the changelist shows under its current filters and
    search (``changelist_query``): a confirmation page with the count first."""
    if not can_replay_dead_letters(request):
        raise PermissionDenied
    params = QueryDict(request.POST.get("changelist_query", ""))
    query = params.urlencode()
    try:
        selection = deadletter_selection(params)
    except UnsupportedFilter as exc:
        messages.error(request, str(exc))
        return HttpResponseRedirect(_deadletter_changelist(query))
    return _confirm_or_replay(
        request,
        model_admin,
        selection=selection,
        everything=False,
        query=query,
        action_url=reverse("admin:notifications_deadletter_replay_matching"),
        title="Replay the dead letters matching the filter",
    )


@require_POST
def deadletter_replay_open(request: HttpRequest, *, model_admin: admin.ModelAdmin) -> HttpResponse:
    """Replay every open dead letter, after a confirmation page with the count."""
    if not can_replay_dead_letters(request):
        raise PermissionDenied
    query = QueryDict(request.POST.get("changelist_query", "")).urlencode()
    return _confirm_or_replay(
        request,
        model_admin,
        selection=DeadLetterSelection(base=DeadLetterFilter()),
        everything=True,
        query=query,
        action_url=reverse("admin:notifications_deadletter_replay_open"),
        title="Replay every open dead letter",
    )


@require_POST
def deadletter_replay_one(
    request: HttpRequest, delivery_id: int, *, model_admin: admin.ModelAdmin
) -> HttpResponse:
    """Replay the dead letter shown on its change page, and return there."""
    if not can_replay_dead_letters(request):
        raise PermissionDenied
    if not DeadLetter.objects.filter(delivery_id=delivery_id).exists():
        raise Http404(f"No dead letter for delivery {delivery_id}.")
    replayed = deadletters_replay(delivery_ids=[delivery_id])
    messages.success(request, replayed_message(replayed, asked=1))
    return HttpResponseRedirect(reverse("admin:notifications_deadletter_change", args=[delivery_id]))
