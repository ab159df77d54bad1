"""Provider callbacks: Twilio status callbacks and inbound messages, Mailgun tracking
webhooks (through anymail). Thin views: authenticate the provider, parse, call a service.

Forged requests (bad signature, unknown account) get 403 or 400 and change nothing.
Replays are harmless by construction (receipts only move a delivery forward and are
de-duplicated by the provider's event id), and Mailgun webhooks older than the tolerance
or carrying a token already used are refused outright.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from typing import Any

import redis
from anymail.signals import AnymailTrackingEvent, tracking
from anymail.webhooks.mailgun import MailgunTrackingWebhookView
from django.conf import settings
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from twilio.request_validator import RequestValidator

from notifications.models import SuppressionKind, SuppressionReason
from notifications.services.feedback import (
    delivery_track,
    email_event_receipt,
    receipt_track,
    sms_inbound,
    suppression_add,
)
from realtime.redis_client import redis_key, redis_sync

log = logging.getLogger(__name__)

# Twilio MessageStatus -> our tracking kind.
TWILIO_STATUS = {"sent": "sent", "delivered": "delivered", "undelivered": "failed", "failed": "failed"}


def _twilio_auth_token(account_sid: str) -> str | None:
    for config in settings.PROVIDERS.values():
        if config.get("kind") == "twilio" and config.get("account_sid") == account_sid:
            return str(config["auth_token"])
    return None


def _twilio_valid(request: HttpRequest) -> bool:
    """Check X-Twilio-Signature against the URL Twilio called. Behind a proxy the URL this
    process sees differs from the public one, so both PUBLIC_URL + path and the absolute
    URI Django builds (which honours SECURE_PROXY_SSL_HEADER / USE_X_FORWARDED_HOST) are
    tried; either must carry a valid signature."""
    token = _twilio_auth_token(request.POST.get("AccountSid", ""))
    signature = request.headers.get("X-Twilio-Signature", "")
    if token is None or not signature:
        return False
    validator = RequestValidator(token)
    # The QueryDict itself, not a dict of its last values: Twilio signs every value of a
    # repeated parameter, and the validator reads them with getlist().
    params = request.POST
    candidates = {settings.PUBLIC_URL.rstrip("/") + request.get_full_path(), request.build_absolute_uri()}
    return any(validator.validate(url, params, signature) for url in candidates)


@csrf_exempt
@require_POST
def twilio_status(request: HttpRequest) -> HttpResponse:
    if not _twilio_valid(request):
        return JsonResponse({"errors": {"X-Twilio-Signature": ["missing or invalid signature"]}}, status=403)
    try:
        delivery_id = int(request.GET.get("d", ""))
    except ValueError:
        return JsonResponse({"errors": {"d": ["delivery id missing from the callback URL"]}}, status=400)
    status = request.POST.get("MessageStatus", "")
    kind = TWILIO_STATUS.get(status)
    if kind is None:
        return HttpResponse(status=204)  # queued, sending, accepted: nothing to record
    error_code = request.POST.get("ErrorCode", "")
    delivery_track(
        delivery_id=delivery_id,
        kind=kind,
        provider="twilio",
        reason=f"twilio error {error_code}" if error_code else "",
        detail={
            "message_sid": request.POST.get("MessageSid", ""),
            "status": status,
            "error_code": error_code,
        },
        dedupe_key=f"{request.POST.get('MessageSid', '')}:{status}",
    )
    if error_code == "21610":
        suppression_add(
            kind=SuppressionKind.PHONE,
            address=request.POST.get("To", ""),
            reason=SuppressionReason.SMS_STOP,
            detail="twilio 21610",
        )
    return HttpResponse(status=204)


@csrf_exempt
@require_POST
def twilio_inbound(request: HttpRequest) -> HttpResponse:
    if not _twilio_valid(request):
        return JsonResponse({"errors": {"X-Twilio-Signature": ["missing or invalid signature"]}}, status=403)
    sms_inbound(from_number=request.POST.get("From", ""), body=request.POST.get("Body", ""))
    # An empty TwiML response: Twilio itself answers STOP/START with its compliance text.
    return HttpResponse(
        '<?xml version="1.0" encoding="UTF-8"?><Response></Response>', content_type="text/xml"
    )


_mailgun_view = MailgunTrackingWebhookView.as_view()


@csrf_exempt
@require_POST
def mailgun_tracking(request: HttpRequest) -> HttpResponse:
    """Refuse stale or replayed Mailgun webhooks, then hand the request to anymail, which
    checks the basic-auth secret and the signature and sends the ``tracking`` signal."""
    try:
        block = json.loads(request.body.decode("utf-8"))["signature"]
        timestamp, token, signature = str(block["timestamp"]), str(block["token"]), str(block["signature"])
        age = abs(time.time() - float(timestamp))
        if age != age:  # NaN compares false with everything, so it would pass the window check
            raise ValueError(timestamp)
    except (KeyError, ValueError, TypeError, UnicodeDecodeError):
        return JsonResponse({"errors": {"signature": ["missing or malformed signature block"]}}, status=400)
    key = str(settings.ANYMAIL.get("MAILGUN_WEBHOOK_SIGNING_KEY", "")).encode()
    expected = hmac.new(key, f"{timestamp}{token}".encode(), hashlib.sha256).hexdigest()
    # As bytes: compare_digest raises TypeError on a str with non-ASCII characters.
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        return JsonResponse({"errors": {"signature": ["signature does not match"]}}, status=403)
    if age > settings.WEBHOOK_SIGNATURE_TOLERANCE_SECONDS:
        return JsonResponse(
            {"errors": {"signature": ["timestamp outside the accepted window (replay?)"]}}, status=400
        )
    # Claim the token before acting (SET NX, atomic), so two concurrent copies of one
    # webhook cannot both pass; the claim is released when the request is not handled, so
    # that Mailgun's own retry of a failed delivery is not taken for a replay.
    seen = redis_key(f"mailgun:token:{token}")
    try:
        claimed = bool(
            redis_sync().set(seen, 1, nx=True, ex=2 * settings.WEBHOOK_SIGNATURE_TOLERANCE_SECONDS)
        )
    except redis.RedisError:
        claimed = False  # receipts are idempotent by event id; a replay would still change nothing
    else:
        if not claimed:
            return JsonResponse({"errors": {"signature": ["token already used (replay)"]}}, status=409)
    handled = False
    try:
        response: HttpResponse = _mailgun_view(request)
        handled = response.status_code < 300
    finally:
        if claimed and not handled:
            _release_token(seen)
    return response


def _release_token(key: str) -> None:
    try:
        redis_sync().delete(key)
    except redis.RedisError:
        pass  # the claim expires on its own


@receiver(tracking, dispatch_uid="notifications.mailgun_tracking")
def on_email_tracking(sender: Any, event: AnymailTrackingEvent, esp_name: str, **kwargs: Any) -> None:
    receipt = email_event_receipt(event, esp_name)
    if receipt is not None:
        receipt_track(receipt)
