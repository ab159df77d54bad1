"""An SMTP server (aiosmtpd) that records what it accepts and refuses the magic addresses:
``@bounce.sandbox.test`` (550 5.1.1) and ``@flaky.sandbox.test`` (451 twice per address,
then accepted). A fault with status >= 500 answers MAIL with 421 and closes the connection;
other fault statuses answer 451; a timeout fault holds MAIL unanswered."""

from __future__ import annotations

import asyncio
import socket
import time
from email.parser import BytesParser
from email.policy import compat32
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from sandbox.context import SandboxContext
from sandbox.faults import fault_strike

BOUNCE_DOMAIN = "bounce.sandbox.test"
FLAKY_DOMAIN = "flaky.sandbox.test"
SMTP_HOSTNAME = "smtp.sandbox.test"


def _domain(address: str) -> str:
    return address.rpartition("@")[2].rstrip(">").lower()


class SmtpRecorder:
    """The aiosmtpd handler: hooks for MAIL, RCPT and DATA."""

    def __init__(self, context: SandboxContext) -> None:
        self.state = context.state

    async def handle_MAIL(  # noqa: N802 (aiosmtpd's hook name)
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        received_at = time.time()
        summary: dict[str, Any] = {"from": address, "peer": str(session.peer)}
        fault = await fault_strike(
            self.state, "smtp", received_at=received_at, key=None, to=None, summary=summary
        )
        if fault is not None:
            if fault.status >= 500 or fault.status == 0:
                # smtplib closes its side on 421; closing ours too is what a server that is
                # going away does. call_soon runs after aiosmtpd has written the reply.
                asyncio.get_running_loop().call_soon(_close, server)
                code, reply = 421, "421 4.3.2 service not available"
            else:
                code, reply = 451, "451 4.3.0 try again later"
            if fault.status != 0:  # a timeout fault was recorded while it held the command
                self.state.record(
                    "smtp",
                    status=code,
                    summary={**summary, "fault": "global-error-rate" if fault.synthetic else "fault"},
                    received_at=received_at,
                )
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        domain = _domain(address)
        if domain == BOUNCE_DOMAIN:
            self.state.record("smtp", status=550, to=address, summary={"from": envelope.mail_from})
            return "550 5.1.1 mailbox does not exist"
        if domain == FLAKY_DOMAIN and self.state.attempt("smtp", address.lower()) < 2:
            self.state.record("smtp", status=451, to=address, summary={"from": envelope.mail_from})
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        received_at = time.time()
        content = envelope.original_content or b""
        message = BytesParser(policy=compat32).parsebytes(content, headersonly=True)
        headers: dict[str, str] = {}
        for name, value in message.items():
            headers[name] = f"{headers[name]}, {value}" if name in headers else str(value)
        key = message.get("X-Idempotency-Key")
        self.state.record(
            "smtp",
            status=250,
            key=str(key) if key else None,
            to=", ".join(envelope.rcpt_tos),
            summary={
                "from": envelope.mail_from,
                "to": list(envelope.rcpt_tos),
                "subject": str(message.get("Subject", "")),
                "message_id": str(message.get("Message-ID", "")),
                "headers": headers,
                "size": len(content),
            },
            received_at=received_at,
        )
        return "250 2.0.0 Message accepted for delivery"


def _close(server: SMTP) -> None:
    if server.transport is not None:
        server.transport.close()


async def smtp_server_start(context: SandboxContext, sock: socket.socket) -> asyncio.Server:
    """Serve SMTP on the bound, listening ``sock`` on the running loop."""
    loop = asyncio.get_running_loop()
    recorder = SmtpRecorder(context)
    return await loop.create_server(
        lambda: SMTP(recorder, hostname=SMTP_HOSTNAME, ident="Provider sandbox ESMTP", loop=loop),
        sock=sock,
    )
