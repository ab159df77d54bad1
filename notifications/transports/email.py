"""Email transports: Mailgun's HTTP API through django-anymail, and plain SMTP.

Each transport keeps one open backend (an anymail requests session, or an SMTP
connection) per thread: Django's mail backends are not meant to be shared between
threads, and reusing one per thread keeps the keep-alive connection warm.
"""

from __future__ import annotations

import smtplib
import threading
import time
from collections.abc import Mapping
from email.utils import parseaddr
from typing import Any

import requests
from anymail.exceptions import (
    AnymailAPIError,
    AnymailError,
    AnymailInvalidAddress,
    AnymailRecipientsRefused,
)
from anymail.message import AnymailMessage
from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.core.mail.backends.base import BaseEmailBackend

from notifications.transports.base import Feedback, OutboundMessage, SendResult, TransportError
from notifications.transports.http_env import session_tune
from notifications.transports.retry_after import retry_after_parse

MAILGUN_BACKEND = "anymail.backends.mailgun.EmailBackend"
SMTP_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
MAILGUN_BATCH_MAX = 1000
# A connection idle longer than this is checked with NOOP before it carries a message.
SMTP_IDLE_CHECK_SECONDS = 30.0


def _from_email(message: OutboundMessage) -> str:
    chosen = message.options.get("from_email") or settings.EMAIL_FROM.get(message.category)
    if not chosen:
        chosen = settings.EMAIL_FROM["transactional"]
    return str(chosen)


def _sender_domain(from_email: str) -> str:
    _, address = parseaddr(from_email)
    return address.rpartition("@")[2] or "localhost"


class MailgunTransport:
    """Sends one message per call through anymail's Mailgun backend.

    The delivery's idempotency key and id travel as Mailgun variables (``v:`` fields),
    so tracking webhooks and the provider's logs can be joined back to the delivery.
    """

    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        self.name = name
        self.channel = str(config.get("channel", "email"))
        # Mailgun takes up to 1,000 recipients per batch call.
        self.batch_size = max(1, min(MAILGUN_BATCH_MAX, int(config.get("batch_size", 1) or 1)))
        self._api_key = str(config["api_key"])
        self._api_url = str(config["api_url"])
        self._sender_domain = str(config["sender_domain"])
        self._timeout = float(settings.SEND_TIMEOUT_SECONDS)
        self._local = threading.local()

    def _connection(self) -> BaseEmailBackend:
        connection: BaseEmailBackend | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = get_connection(
                MAILGUN_BACKEND,
                fail_silently=False,
                api_key=self._api_key,
                api_url=self._api_url,
                sender_domain=self._sender_domain,
                timeout=self._timeout,
            )
            # Opened once and kept: send_messages then leaves the requests session (and
            # its pooled connection) open between calls.
            connection.open()
            session = getattr(connection, "session", None)
            if session is not None:
                session_tune(session)
            self._local.connection = connection
        return connection

    def send(self, message: OutboundMessage) -> SendResult:
        content = message.content
        email = AnymailMessage(
            subject=content.get("subject", ""),
            body=content.get("text", ""),
            from_email=_from_email(message),
            to=[message.to],
            headers=dict(message.headers),
            metadata={"idempotency_key": message.idempotency_key, "delivery_id": str(message.delivery_id)},
            tags=[message.notification_type] if message.notification_type else [],
        )
        if content.get("html"):
            email.attach_alternative(content["html"], "text/html")
        try:
            self._connection().send_messages([email])
        except AnymailError as error:
            raise mailgun_error(error, message) from error
        except Exception as error:  # anything else from anymail/requests is unexpected: transient
            raise TransportError(f"mailgun send failed: {error!r}", code="unexpected") from error
        status = email.anymail_status
        message_id = status.message_id
        if isinstance(message_id, set):
            message_id = ",".join(sorted(message_id))
        return SendResult(
            provider=self.name,
            provider_message_id=str(message_id or ""),
            detail={"status": sorted(status.status or [])},
        )

    def send_batch(self, messages: list[OutboundMessage]) -> list[SendResult | TransportError]:
        """One Mailgun batch send: the shared content with ``%recipient.NAME%``
        placeholders, each recipient's values as recipient variables (anymail's
        ``merge_data``), its own idempotency key and delivery id as custom variables
        (``merge_metadata``: tracking events carry them) and its own headers where they
        differ (``merge_headers``: the List-Unsubscribe link). Mailgun sends each
        recipient a message of their own."""
        first = messages[0]
        content = first.merge_content if first.merge_content is not None else first.content
        shared = {
            name: value
            for name, value in first.headers.items()
            if all(m.headers.get(name) == value for m in messages)
        }
        own_headers = {
            m.to: {name: value for name, value in m.headers.items() if name not in shared} for m in messages
        }
        email = AnymailMessage(
            subject=content.get("subject", ""),
            body=content.get("text", ""),
            from_email=_from_email(first),
            to=[m.to for m in messages],
            headers=shared,
            merge_data={m.to: dict(m.merge_values) for m in messages},
            merge_metadata={
                m.to: {"idempotency_key": m.idempotency_key, "delivery_id": str(m.delivery_id)}
                for m in messages
            },
            tags=[first.notification_type] if first.notification_type else [],
        )
        if any(own_headers.values()):
            email.merge_headers = own_headers
        if content.get("html"):
            email.attach_alternative(content["html"], "text/html")
        try:
            self._connection().send_messages([email])
        except AnymailError as error:
            return [mailgun_error(error, m) for m in messages]
        except Exception as error:  # anything else from anymail/requests is unexpected: transient
            failure = TransportError(f"mailgun batch send failed: {error!r}", code="unexpected")
            return [failure for _ in messages]
        status = email.anymail_status
        results: list[SendResult | TransportError] = []
        for m in messages:
            own = status.recipients.get(m.to) if status.recipients else None
            message_id = own.message_id if own is not None else status.message_id
            if isinstance(message_id, set):
                message_id = ",".join(sorted(message_id))
            results.append(
                SendResult(
                    provider=self.name,
                    provider_message_id=str(message_id or ""),
                    detail={
                        "status": [own.status] if own is not None else sorted(status.status or []),
                        "batch": len(messages),
                    },
                )
            )
        return results


def mailgun_error(error: AnymailError, message: OutboundMessage) -> TransportError:
    """Classify an anymail error from one Mailgun send."""
    if isinstance(error, AnymailRecipientsRefused):
        return TransportError(
            f"mailgun refused recipient {message.to!r}",
            permanent=True,
            code="recipient_refused",
            feedback=Feedback.HARD_BOUNCE,
        )
    if isinstance(error, AnymailInvalidAddress):
        return TransportError(
            f"invalid email address: {error.args[0] if error.args else message.to!r}",
            permanent=True,
            code="invalid_address",
        )
    if isinstance(error, AnymailAPIError):
        status: int | None = error.status_code
        response = error.response
        detail: dict[str, Any] = {"status": status}
        if status is None:
            # AnymailRequestsAPIError wrapping a requests exception: no answer at all.
            cause = error.__cause__
            code = "timeout" if isinstance(cause, requests.Timeout) else "connection"
            return TransportError(f"mailgun unreachable: {cause!r}", code=code)
        body = _response_text(response)
        reason = f"mailgun answered {status}: {body}"
        if status < 300:
            # Accepted but unreadable (not JSON): probably sent. Transient, because losing
            # the message is worse than a rare duplicate (at-least-once).
            return TransportError(reason, code="unreadable_response", detail=detail)
        retry_after = retry_after_parse(response.headers.get("Retry-After")) if response is not None else None
        if status == 429:
            return TransportError(
                reason, rate_limited=True, retry_after=retry_after, code="429", detail=detail
            )
        if status >= 500:
            return TransportError(reason, retry_after=retry_after, code=str(status), detail=detail)
        if status == 401:
            # A wrong API key is the account's problem, not this message's: transient, so
            # the breaker opens and the messages wait instead of failing for good.
            return TransportError(reason, code="401", detail=detail)
        return TransportError(reason, permanent=True, code=str(status), detail=detail)
    # Unsupported feature, serialization error, configuration: retrying cannot help.
    return TransportError(
        f"mailgun refused the message: {error.args[0] if error.args else error!r}",
        permanent=True,
        code="rejected",
    )


def _response_text(response: Any) -> str:
    if response is None:
        return ""
    try:
        return str(response.text)[:500]
    except Exception:
        return ""


class SmtpTransport:
    """Sends one message per call over an SMTP connection kept open per thread.

    The Message-ID is derived from the idempotency key, so a message sent twice carries
    the same Message-ID and the receiving side can recognise the duplicate.
    """

    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        self.name = name
        self.channel = str(config.get("channel", "email"))
        self._host = str(config["host"])
        self._port = int(config["port"])
        self._username = str(config.get("username") or "")
        self._password = str(config.get("password") or "")
        self._use_tls = bool(config.get("use_tls", False))
        self._timeout = float(settings.SEND_TIMEOUT_SECONDS)
        self._local = threading.local()

    def _connection(self) -> Any:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = get_connection(
                SMTP_BACKEND,
                fail_silently=False,
                host=self._host,
                port=self._port,
                username=self._username,
                password=self._password,
                use_tls=self._use_tls,
                timeout=self._timeout,
            )
            self._local.connection = connection
        elif connection.connection is not None and self._idle_for() > SMTP_IDLE_CHECK_SECONDS:
            # Servers drop idle sessions (often after a few minutes); finding out by failing
            # a real message would cost it a retry, so ask with a NOOP first.
            try:
                alive = connection.connection.noop()[0] == 250
            except (smtplib.SMTPException, OSError):
                alive = False
            if not alive:
                self._discard_connection()
                return self._connection()
        # Opens (connect, EHLO, STARTTLS, AUTH) only when not already open; raises OSError
        # or an SMTPException when that fails.
        connection.open()
        self._local.used_at = time.monotonic()
        return connection

    def _idle_for(self) -> float:
        return time.monotonic() - getattr(self._local, "used_at", time.monotonic())

    def _discard_connection(self) -> None:
        """Drop this thread's connection after an error that may have left it unusable.

        The socket is closed without QUIT: after a timeout, a polite QUIT would wait for
        the same unresponsive server once more.
        """
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is None:
            return
        for smtp in (connection.connection, getattr(connection, "_partial_connection", None)):
            if smtp is not None:
                try:
                    smtp.close()
                except Exception:  # closing a broken socket: nothing left to report
                    pass
        connection.connection = None

    def send(self, message: OutboundMessage) -> SendResult:
        content = message.content
        from_email = _from_email(message)
        message_id = f"<{message.idempotency_key}@{_sender_domain(from_email)}>"
        headers = {
            **message.headers,
            "Message-ID": message_id,
            "X-Idempotency-Key": message.idempotency_key,
        }
        email = EmailMultiAlternatives(
            subject=content.get("subject", ""),
            body=content.get("text", ""),
            from_email=from_email,
            to=[message.to],
            headers=headers,
        )
        if content.get("html"):
            email.attach_alternative(content["html"], "text/html")
        try:
            self._connection().send_messages([email])
        except (smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as error:
            # smtplib sent RSET after these: the connection is still good for the next message.
            raise smtp_error(error, message) from error
        except ValueError as error:
            # sanitize_address or a header with a newline: this message can never be written.
            raise TransportError(
                f"message to {message.to!r} cannot be written: {error}",
                permanent=True,
                code="invalid_message",
            ) from error
        except Exception as error:
            self._discard_connection()
            raise smtp_error(error, message) from error
        return SendResult(provider=self.name, provider_message_id=message_id, detail={})


def smtp_error(error: Exception, message: OutboundMessage) -> TransportError:
    """Classify an exception from one SMTP send."""
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in error.recipients.values()]
        code = max(codes) if codes else 0
        replies = "; ".join(
            f"{address}: {reply_code} {_smtp_text(text)}"
            for address, (reply_code, text) in error.recipients.items()
        )
        if 500 <= code < 600:
            return TransportError(
                f"recipient refused: {replies}",
                permanent=True,
                code=str(code),
                feedback=Feedback.HARD_BOUNCE,
            )
        return TransportError(f"recipient deferred: {replies}", code=str(code))
    if isinstance(error, smtplib.SMTPAuthenticationError):
        # Wrong credentials fail every message alike: transient, for the breaker to notice.
        return TransportError(
            f"smtp login refused: {error.smtp_code} {_smtp_text(error.smtp_error)}", code="auth"
        )
    if isinstance(error, smtplib.SMTPResponseException):
        reply = f"{error.smtp_code} {_smtp_text(error.smtp_error)}"
        if 500 <= error.smtp_code < 600:
            return TransportError(f"smtp server refused: {reply}", permanent=True, code=str(error.smtp_code))
        return TransportError(f"smtp server deferred: {reply}", code=str(error.smtp_code))
    if isinstance(error, TimeoutError):
        return TransportError(f"smtp timed out: {error!r}", code="timeout")
    if isinstance(error, smtplib.SMTPServerDisconnected):
        # smtplib turns a read timeout into "Connection unexpectedly closed: timed out".
        if isinstance(error.__context__, TimeoutError):
            return TransportError(f"smtp timed out: {error}", code="timeout")
        return TransportError(f"smtp server disconnected: {error}", code="disconnected")
    if isinstance(error, OSError):  # ConnectionError, other smtplib.SMTPException (OSError)
        return TransportError(f"smtp connection failed: {error!r}", code="connection")
    return TransportError(f"smtp send failed: {error!r}", code="unexpected")


def _smtp_text(text: bytes | str) -> str:
    if isinstance(text, bytes):
        return text.decode("utf-8", errors="replace")
    return text
