"""SMS through Twilio's Messages API, plus the number and segment arithmetic other
services need before they decide to send (abuse limits, spend caps).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import phonenumbers
import requests
from django.conf import settings
from requests.adapters import HTTPAdapter
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from notifications.transports.base import Feedback, OutboundMessage, SendResult, TransportError
from notifications.transports.http_env import session_tune
from notifications.transports.retry_after import retry_after_parse

# --- Segments -------------------------------------------------------------------------------

# GSM 03.38 default alphabet (one septet each) and its extension table (escape + septet).
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

GSM7_SINGLE = 160
GSM7_PART = 153  # 7 septets of each part go to the concatenation header
UCS2_SINGLE = 70
UCS2_PART = 67


def _is_gsm7(text: str) -> bool:
    return all(char in GSM7_BASIC or char in GSM7_EXTENSION for char in text)


def _units(text: str, gsm7: bool) -> list[int]:
    """Size of each character in the encoding's units: septets, or UTF-16 code units."""
    if gsm7:
        return [2 if char in GSM7_EXTENSION else 1 for char in text]
    return [2 if ord(char) > 0xFFFF else 1 for char in text]


def sms_encoding(text: str) -> str:
    """``GSM-7`` or ``UCS-2``: the encoding ``text`` is sent in."""
    return "GSM-7" if _is_gsm7(text) else "UCS-2"


def sms_segments(text: str) -> int:
    """Return how many SMS segments ``text`` is sent as (0 for an empty text).

    GSM-7 when every character is in the GSM 03.38 alphabet or its extension table (an
    extension character takes two septets): 160 septets in one segment, 153 per part when
    concatenated. Otherwise UCS-2: 70 UTF-16 code units, 67 per part (an emoji outside
    the BMP takes two). A two-unit character is never split across parts, as phones and
    carriers do it.
    """
    if not text:
        return 0
    gsm7 = _is_gsm7(text)
    units = _units(text, gsm7)
    single, part = (GSM7_SINGLE, GSM7_PART) if gsm7 else (UCS2_SINGLE, UCS2_PART)
    if sum(units) <= single:
        return 1
    segments, used = 1, 0
    for size in units:
        if used + size > part:
            segments += 1
            used = 0
        used += size
    return segments


# --- Numbers and prices ---------------------------------------------------------------------

# Estimated price of one outbound segment in USD, by the destination's region. Real prices
# vary by carrier and change; this is for spend caps and dashboards, not for billing.
SMS_PRICE_PER_SEGMENT: dict[str, float] = {
    "US": 0.0079,
    "CA": 0.0079,
    "GB": 0.0400,
    "GG": 0.0400,
    "JE": 0.0400,
    "IM": 0.0400,
    "DE": 0.0750,
    "FR": 0.0750,
    "NL": 0.0950,
    "ES": 0.0650,
    "IT": 0.0800,
    "SE": 0.0550,
}
SMS_PRICE_DEFAULT = 0.0500


class InvalidPhoneNumber(ValueError):
    """The text is not a valid, dialable phone number."""


def sms_normalise(number: str) -> tuple[str, str]:
    """Return ``(E.164 form, ISO region code)`` of an international number ("+44 7911
    123456" → ("+447911123456", "GG")).

    Raises InvalidPhoneNumber, naming the number, when it does not parse (a leading "+"
    and country code are required) or is not a valid number for its region.
    """
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException as error:
        raise InvalidPhoneNumber(
            f"{number!r} is not a phone number in international form: {error}"
        ) from error
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidPhoneNumber(f"{number!r} is not a valid phone number")
    region = phonenumbers.region_code_for_number(parsed) or ""
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164), region


def sms_cost_estimate(e164: str, segments: int) -> float:
    """Return the estimated price in USD of ``segments`` segments to ``e164``, from
    ``SMS_PRICE_PER_SEGMENT`` (``SMS_PRICE_DEFAULT`` for regions not in it)."""
    try:
        region = phonenumbers.region_code_for_number(phonenumbers.parse(e164, None)) or ""
    except phonenumbers.NumberParseException:
        region = ""
    return round(segments * SMS_PRICE_PER_SEGMENT.get(region, SMS_PRICE_DEFAULT), 6)


# --- Transport ------------------------------------------------------------------------------


def status_callback_with_key(url: str | None, idempotency_key: str) -> str | None:
    """The status callback URL carrying the delivery's idempotency key as ``key=``.

    Twilio's Messages API has no field for an idempotency key; the callback URL is the one
    place it travels with the message and comes back on every status report.
    """
    if not url:
        return None
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(name == "key" for name, _ in query):
        return url
    return urlunsplit(parts._replace(query=urlencode([*query, ("key", idempotency_key)])))


# Twilio's error codes that say something about the destination.
TWILIO_INVALID_NUMBER = 21211
TWILIO_NOT_SMS_CAPABLE = 21614
TWILIO_OPTED_OUT = 21610
TWILIO_TOO_MANY_REQUESTS = 20429


class _RecordingHttpClient(TwilioHttpClient):
    """TwilioHttpClient that remembers each thread's last response.

    TwilioRestException carries no response headers, and Retry-After lives there; the
    client's own ``_test_only_last_response`` is shared by all threads.
    """

    def __init__(self, *, timeout: float, pool_size: int) -> None:
        super().__init__(pool_connections=True, timeout=timeout)
        self._local = threading.local()
        # The default mounts a pool only for https (and one of cpu_count + 4); size both
        # schemes for the sender's thread pool so connections are reused, not discarded.
        # No retries: the sender owns them.
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        assert self.session is not None
        session_tune(self.session)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)

    def request(self, *args: Any, **kwargs: Any) -> Response:
        self._local.response = None
        response = super().request(*args, **kwargs)
        self._local.response = response
        return response

    def last_response(self) -> Response | None:
        return getattr(self._local, "response", None)


class TwilioTransport:
    """Sends one SMS per call with twilio's REST client (one pooled session per process)."""

    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        self.name = name
        self.channel = str(config.get("channel", "sms"))
        self._from_number = str(config["from_number"])
        self._http = _RecordingHttpClient(timeout=float(settings.SEND_TIMEOUT_SECONDS), pool_size=32)
        account_sid = str(config["account_sid"])
        # A non-empty environment keeps TWILIO_REGION / TWILIO_EDGE from the process
        # environment from rewriting the configured host.
        client = Client(
            account_sid,
            str(config["auth_token"]),
            http_client=self._http,
            environment={"TWILIO_ACCOUNT_SID": account_sid},
        )
        # The Api domain builds every Messages URL from its base_url; set it, and build the
        # lazily created objects now, while only one thread can see them.
        client.api.base_url = str(config.get("api_url") or "https://api.twilio.com")
        self._messages = client.api.v2010.account.messages

    def send(self, message: OutboundMessage) -> SendResult:
        try:
            e164, region = sms_normalise(message.to)
        except InvalidPhoneNumber as error:
            raise TransportError(
                str(error), permanent=True, code="invalid_number", feedback=Feedback.INVALID_NUMBER
            ) from error
        text = message.content.get("text", "")
        segments = sms_segments(text)
        cost = sms_cost_estimate(e164, segments)
        detail: dict[str, Any] = {"segments": segments, "cost_estimate": cost, "region": region}
        try:
            created = self._messages.create(
                to=e164,
                from_=self._from_number,
                body=text,
                status_callback=status_callback_with_key(
                    message.options.get("status_callback"), message.idempotency_key
                ),
            )
        except (TwilioRestException, TwilioServiceException) as error:
            response = self._http.last_response()
            headers = response.headers if response is not None and response.headers else {}
            raise twilio_error(
                error, e164=e164, detail=detail, retry_after_header=headers.get("Retry-After")
            ) from error
        except requests.Timeout as error:
            raise TransportError(f"twilio timed out: {error!r}", code="timeout", detail=detail) from error
        except (requests.RequestException, TwilioException, OSError) as error:
            raise TransportError(
                f"twilio unreachable: {error!r}", code="connection", detail=detail
            ) from error
        except Exception as error:  # a malformed answer: json errors, missing fields
            raise TransportError(
                f"twilio send failed: {error!r}", code="unexpected", detail=detail
            ) from error
        return SendResult(
            provider=self.name,
            provider_message_id=str(created.sid or ""),
            detail={**detail, "status": str(created.status or "")},
        )


def twilio_error(
    error: TwilioRestException | TwilioServiceException,
    *,
    e164: str,
    detail: Mapping[str, Any],
    retry_after_header: str | None,
) -> TransportError:
    """Classify Twilio's error answer to one Messages create call for ``e164``."""
    status = int(error.status or 0)
    code = int(error.code) if error.code is not None else None
    text = error.msg if isinstance(error, TwilioRestException) else (error.detail or error.title)
    reason = f"twilio answered {status} (error {code}) for {e164}: {text}"
    full_detail = {**detail, "http_status": status, "twilio_code": code}
    code_text = str(code if code is not None else status)
    destination_errors = {
        TWILIO_INVALID_NUMBER: Feedback.INVALID_NUMBER,
        TWILIO_NOT_SMS_CAPABLE: Feedback.NOT_SMS_CAPABLE,
        TWILIO_OPTED_OUT: Feedback.OPTED_OUT,
    }
    if code in destination_errors:
        return TransportError(
            reason, permanent=True, code=code_text, feedback=destination_errors[code], detail=full_detail
        )
    if status == 429 or code == TWILIO_TOO_MANY_REQUESTS:
        return TransportError(
            reason,
            rate_limited=True,
            retry_after=retry_after_parse(retry_after_header),
            code=code_text,
            detail=full_detail,
        )
    if status >= 500 or status == 0:
        return TransportError(reason, code=code_text, detail=full_detail)
    if status == 401:
        # Wrong account credentials fail every message alike: transient, for the breaker.
        return TransportError(reason, code=code_text, detail=full_detail)
    return TransportError(reason, permanent=True, code=code_text, detail=full_detail)
