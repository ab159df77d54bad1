"""SMS abuse protection, checked before every SMS send: a valid number in an allowed
country, not on the suppression list, velocity limits per destination, per number prefix
and per originating IP (SMS pumping and OTP floods), and a daily spend cap.

Velocity windows and spend are counted in Redis, shared by every worker. A message over
a velocity limit is suppressed (the limit is the point); a message over the daily spend
cap waits for the next UTC day rather than being lost.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import redis
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from notifications.models import Suppression, SuppressionKind, SuppressionReason
from notifications.transports.sms import InvalidPhoneNumber, sms_cost_estimate, sms_normalise, sms_segments
from realtime.redis_client import redis_key, redis_sync


@dataclass(frozen=True)
class SmsVerdict:
    allowed: bool
    e164: str = ""
    reason: str = ""
    suppress: bool = False  # settled as suppressed rather than failed
    defer_until: float | None = None  # unix time to try again


def _limit(spec: str, name: str) -> tuple[int, int] | None:
    if not spec or spec in {"0", "off", "none"}:
        return None
    try:
        count, seconds = (int(part) for part in spec.split("/"))
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must look like 10/3600, got {spec!r}") from exc
    return count, seconds


# Count in every window at once and refuse if any is over; a refused message is not
# counted, so a flood that is refused does not keep the destination locked out forever.
_VELOCITY = """
for i, key in ipairs(KEYS) do
  local n = tonumber(redis.call('GET', key) or '0')
  if n + 1 > tonumber(ARGV[2 * i - 1]) then return i end
end
for i, key in ipairs(KEYS) do
  local n = redis.call('INCR', key)
  if n == 1 then redis.call('EXPIRE', key, ARGV[2 * i]) end
end
return 0
"""

_SPEND = """
local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
local cost = tonumber(ARGV[1])
if spent + cost > tonumber(ARGV[2]) then return 0 end
redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], 172800)
return 1
"""


@lru_cache(maxsize=1)
def _scripts() -> tuple[Any, Any]:
    client = redis_sync()
    return client.register_script(_VELOCITY), client.register_script(_SPEND)


def sms_spend_today() -> float:
    day = datetime.now(UTC).strftime("%Y%m%d")
    raw = redis_sync().get(redis_key(f"sms:spend:{day}"))
    return float(raw) if raw else 0.0


def sms_guard_check(
    *,
    phone: str,
    text: str,
    origin_ip: str | None,
    critical: bool = False,
    suppressed: Mapping[str, str] | None = None,
) -> SmsVerdict:
    """Decide whether one SMS may go out now. Counts it against the limits when allowed.

    ``suppressed`` ({E.164: reason}) is the suppression list as read for a whole chunk of
    sends (services/sending/prepare.py); without it the list is read for this number."""
    if not phone:
        return SmsVerdict(False, reason="recipient has no phone number")
    try:
        e164, region = sms_normalise(phone)
    except InvalidPhoneNumber as exc:
        return SmsVerdict(False, reason=str(exc)[:200])
    allowed = {c.upper() for c in settings.SMS_ALLOWED_COUNTRIES}
    if allowed and region.upper() not in allowed:
        return SmsVerdict(False, e164, reason=f"country {region} is not in SMS_ALLOWED_COUNTRIES")
    listed = (
        suppressed.get(e164)
        if suppressed is not None
        else Suppression.objects.filter(kind=SuppressionKind.PHONE, address=e164)
        .values_list("reason", flat=True)
        .first()
    )
    if listed is not None:
        reasons: dict[str, str] = {
            SuppressionReason.SMS_STOP: "number opted out (STOP)",
            SuppressionReason.INVALID: "number cannot receive SMS",
        }
        why = reasons.get(listed, listed)
        return SmsVerdict(False, e164, reason=f"suppression list: {why}", suppress=True)

    now = time.time()
    checks: list[tuple[str, tuple[int, int] | None, str]] = [
        (
            f"dest:{e164}",
            _limit(settings.SMS_LIMIT_PER_DESTINATION, "SMS_LIMIT_PER_DESTINATION"),
            "destination",
        ),
        (
            f"prefix:{e164[: settings.SMS_PREFIX_DIGITS + 1]}",
            _limit(settings.SMS_LIMIT_PER_PREFIX, "SMS_LIMIT_PER_PREFIX"),
            "number prefix",
        ),
    ]
    if origin_ip:
        checks.append(
            (f"ip:{origin_ip}", _limit(settings.SMS_LIMIT_PER_IP, "SMS_LIMIT_PER_IP"), "originating IP")
        )
    active = [(key, limit, label) for key, limit, label in checks if limit is not None]
    velocity, spend = _scripts()
    try:
        if active and not critical:
            keys = [redis_key(f"sms:vel:{key}:{int(now) // limit[1]}") for key, limit, _ in active]
            args: list[int] = []
            for _, limit, _ in active:
                assert limit is not None
                args.extend([limit[0], limit[1] + 5])
            over = int(velocity(keys=keys, args=args))
            if over:
                label = active[over - 1][2]
                return SmsVerdict(
                    False, e164, reason=f"SMS velocity limit reached for this {label}", suppress=True
                )
        cost = sms_cost_estimate(e164, sms_segments(text))
        day = datetime.fromtimestamp(now, UTC)
        if not int(
            spend(keys=[redis_key(f"sms:spend:{day:%Y%m%d}")], args=[cost, settings.SMS_DAILY_SPEND_CAP])
        ):
            tomorrow = (day + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
            return SmsVerdict(
                False,
                e164,
                reason="daily SMS spend cap reached; sent after midnight UTC",
                defer_until=tomorrow.timestamp(),
            )
    except redis.RedisError:
        # Abuse limits fail open for a moment of Redis trouble; the provider's own limits
        # and the spend alarm on the provider side still stand.
        pass
    return SmsVerdict(True, e164)
