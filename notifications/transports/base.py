"""What every provider transport speaks: one outbound message in, a result or a classified
error out.

A transport makes exactly one provider call per ``send`` and never retries, sleeps or
swallows an error: retries, pacing, breakers and failover belong to the sending service,
which needs to see every failure to classify it (services/sending/). Transports are
created once per process from ``settings.PROVIDERS`` and must be safe to call from several
threads at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


class Feedback:
    """What a failure says about the destination, so the platform can act on it."""

    UNREGISTERED = "unregistered"  # push token no longer valid (FCM UNREGISTERED, APNs 410)
    BAD_TOKEN = "bad_token"  # push token malformed for this app (APNs BadDeviceToken, FCM INVALID_ARGUMENT)
    HARD_BOUNCE = "hard_bounce"  # address does not exist
    COMPLAINT = "complaint"  # recipient marked the mail as spam
    OPTED_OUT = "opted_out"  # number replied STOP (Twilio 21610)
    INVALID_NUMBER = "invalid_number"  # not a valid phone number (Twilio 21211)
    NOT_SMS_CAPABLE = "not_sms_capable"  # cannot receive SMS (Twilio 21614)


@dataclass(frozen=True)
class OutboundMessage:
    """One provider call's worth of message, already rendered and validated.

    ``to`` is an email address, an E.164 number, a device token or a webhook URL;
    ``idempotency_key`` is the delivery's key, passed to the provider where its API has a
    place for it (APNs ``apns-id``, a Mailgun variable, an FCM data field, a header), so
    that a duplicate can at least be counted downstream.
    """

    delivery_id: int
    idempotency_key: str
    channel: str
    to: str
    category: str = "transactional"
    notification_type: str = ""
    # The channel's rendered template fields (email: subject/html/text; sms: text;
    # push: title/body; webhook: text).
    content: dict[str, str] = field(default_factory=dict)
    # Extra mail headers (List-Unsubscribe...), or extra webhook headers.
    headers: dict[str, str] = field(default_factory=dict)
    # Push: replaces an earlier alert with the same key on the device.
    collapse_key: str | None = None
    # Push data payload / webhook JSON body extras; string values for push.
    data: dict[str, Any] = field(default_factory=dict)
    # Channel specifics: push "platform"; webhook "kind" (slack|teams|generic) and "secret";
    # email "from_email"; sms "status_callback".
    options: dict[str, Any] = field(default_factory=dict)
    # Email that can go out in a provider's batch send (one call, many recipients): the
    # content as a template of ``%recipient.NAME%`` placeholders the provider fills in per
    # recipient, and this recipient's value of each. ``content`` is what that gives for
    # this recipient, checked equal when the message was prepared.
    merge_content: dict[str, str] | None = None
    merge_values: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SendResult:
    provider: str
    provider_message_id: str = ""
    # Provider facts worth keeping: SMS segments and estimated cost, HTTP status...
    detail: dict[str, Any] = field(default_factory=dict)


class TransportError(Exception):
    """A provider call that did not succeed, classified.

    ``permanent``: retrying cannot help (invalid token, hard bounce, bad number).
    ``rate_limited``: the provider asked us to slow down; ``retry_after`` is its hint in
    seconds, when it gave one. Otherwise the error is transient (timeouts, 5xx, connection
    refused) and may be retried with backoff.
    """

    def __init__(
        self,
        reason: str,
        *,
        permanent: bool = False,
        rate_limited: bool = False,
        retry_after: float | None = None,
        code: str = "",
        feedback: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.rate_limited = rate_limited
        self.retry_after = retry_after
        self.code = code
        self.feedback = feedback
        self.detail = detail or {}

    @property
    def outcome(self) -> str:
        if self.permanent:
            return "permanent"
        return "rate_limited" if self.rate_limited else "transient"

    def __repr__(self) -> str:
        return f"TransportError({self.reason!r}, outcome={self.outcome}, code={self.code!r})"


class Transport(Protocol):
    """One configured provider account. ``name`` is its key in ``settings.PROVIDERS``."""

    name: str
    channel: str

    def send(self, message: OutboundMessage) -> SendResult:
        """Make one provider call. Returns the provider's acceptance; raises
        TransportError (never anything else) when it was not accepted."""
        ...


class BatchTransport(Transport, Protocol):
    """A provider account that also sends one message to many recipients in one call
    (``batch_size`` at most), each personalised by its ``merge_values``."""

    batch_size: int

    def send_batch(self, messages: list[OutboundMessage]) -> list[SendResult | TransportError]:
        """One provider call for ``messages`` (same ``merge_content``, sender and type,
        distinct addresses). Returns each message's outcome, in order; never raises."""
        ...
