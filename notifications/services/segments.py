"""Segments: saved filters over recipients, their attributes, the topics they follow and
what they did lately. Every filter given must hold (AND); values within one filter are
alternatives (OR). The admin shows the count live as the filters are edited.

    {"locales": ["fr", "en-GB"],          # fr, fr-CA, ... and en-GB
     "timezones": ["Europe/Paris"],
     "email_domain": "example.com",
     "has": ["email", "phone", "device"],  # each of them
     "topics": ["launches"],              # subscribed to any of them
     "active_within_days": 30,            # read an in-app item in the last 30 days
     "created_within_days": 7}
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from notifications.models import Device, InboxItem, Recipient, Segment, Subscription, Topic
from notifications.services.validation import TIMEZONES, ValidationFailed

FILTERS = (
    "locales",
    "timezones",
    "email_domain",
    "has",
    "topics",
    "active_within_days",
    "created_within_days",
)
HAS = ("email", "phone", "device")
_LOCALE = re.compile(r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})*$")
_DOMAIN = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63})+$")
MAX_VALUES = 100


def _texts(value: Any, name: str, errors: dict[str, list[str]]) -> list[str] | None:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        errors[f"filters.{name}"] = ["must be a non-empty list of text"]
        return None
    if len(value) > MAX_VALUES:
        errors[f"filters.{name}"] = [f"at most {MAX_VALUES} values"]
        return None
    return value


def segment_filters_clean(filters: Any) -> dict[str, Any]:
    """The filters as stored; ValidationFailed names each wrong one (``filters.<name>``)."""
    if not isinstance(filters, dict):
        raise ValidationFailed({"filters": ["must be an object of filter name to value"]})
    errors: dict[str, list[str]] = {}
    clean: dict[str, Any] = {}
    for name in sorted(set(filters) - set(FILTERS)):
        errors[f"filters.{name}"] = [f"unknown filter; use {', '.join(FILTERS)}"]
    if "locales" in filters and (values := _texts(filters["locales"], "locales", errors)) is not None:
        bad = [v for v in values if not _LOCALE.match(v)]
        if bad:
            errors["filters.locales"] = [f"not locales: {', '.join(map(repr, bad[:5]))}"]
        else:
            clean["locales"] = values
    if "timezones" in filters and (values := _texts(filters["timezones"], "timezones", errors)) is not None:
        bad = [v for v in values if v not in TIMEZONES]
        if bad:
            errors["filters.timezones"] = [f"unknown timezones: {', '.join(map(repr, bad[:5]))}"]
        else:
            clean["timezones"] = values
    if "email_domain" in filters:
        domain = filters["email_domain"]
        if not isinstance(domain, str) or not _DOMAIN.match(domain):
            errors["filters.email_domain"] = ["must be a domain such as example.com"]
        else:
            clean["email_domain"] = domain.lower()
    if "has" in filters and (values := _texts(filters["has"], "has", errors)) is not None:
        bad = [v for v in values if v not in HAS]
        if bad:
            errors["filters.has"] = [
                f"expected some of {', '.join(HAS)}, got {', '.join(map(repr, bad[:5]))}"
            ]
        else:
            clean["has"] = sorted(set(values))
    if "topics" in filters and (values := _texts(filters["topics"], "topics", errors)) is not None:
        known = set(Topic.objects.filter(key__in=values).values_list("key", flat=True))
        missing = [v for v in values if v not in known]
        if missing:
            errors["filters.topics"] = [f"unknown topics: {', '.join(map(repr, missing[:5]))}"]
        else:
            clean["topics"] = values
    for name in ("active_within_days", "created_within_days"):
        if name in filters:
            days = filters[name]
            if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 3650:
                errors[f"filters.{name}"] = ["must be a whole number of days, 1 to 3650"]
            else:
                clean[name] = days
    if errors:
        raise ValidationFailed(errors)
    return clean


def segment_recipients(filters: dict[str, Any]) -> QuerySet[Recipient]:
    """The recipients matching cleaned ``filters`` (segment_filters_clean)."""
    query = Recipient.objects.all()
    if locales := filters.get("locales"):
        match = Q()
        for locale in locales:
            tag = locale.replace("_", "-")
            match |= (
                Q(locale__iexact=tag) | Q(locale__istartswith=f"{tag}-") | Q(locale__istartswith=f"{tag}_")
            )
        query = query.filter(match)
    if zones := filters.get("timezones"):
        query = query.filter(timezone__in=zones)
    if domain := filters.get("email_domain"):
        query = query.filter(email__iendswith=f"@{domain}")
    for what in filters.get("has", []):
        if what == "device":
            query = query.filter(Exists(Device.objects.filter(recipient_id=OuterRef("id"), active=True)))
        else:
            query = query.exclude(**{what: ""})
    if topics := filters.get("topics"):
        query = query.filter(
            Exists(Subscription.objects.filter(recipient_id=OuterRef("id"), topic__key__in=topics))
        )
    now = timezone.now()
    if days := filters.get("active_within_days"):
        since = now - timedelta(days=days)
        query = query.filter(
            Exists(InboxItem.objects.filter(recipient_id=OuterRef("id"), read_at__gte=since))
        )
    if days := filters.get("created_within_days"):
        query = query.filter(created_at__gte=now - timedelta(days=days))
    return query


def segment_count(filters: Any) -> int:
    """How many recipients match ``filters`` now; ValidationFailed as segment_filters_clean."""
    return segment_recipients(segment_filters_clean(filters)).count()


def segment_save(*, name: str, filters: Any, segment: Segment | None = None) -> Segment:
    """Create (or, given ``segment``, replace) a segment; ValidationFailed names what is wrong."""
    clean = segment_filters_clean(filters)
    name = (name or "").strip()
    if not name or len(name) > 200:
        raise ValidationFailed({"name": ["a name of 1 to 200 characters is required"]})
    clash = Segment.objects.filter(name=name)
    if segment is not None:
        clash = clash.exclude(pk=segment.pk)
    if clash.exists():
        raise ValidationFailed({"name": [f"a segment named {name!r} exists"]})
    with transaction.atomic():
        segment = segment or Segment()
        segment.name, segment.filters, segment.updated_at = name, clean, timezone.now()
        segment.save()
    return segment
