"""Checks of a rendered message before it goes to a provider, shared by the sender
(notifications/services/sending/prepare.py) and the admin's preview: an SMS within
SMS_MAX_SEGMENTS segments (GSM-7 or UCS-2, notifications/transports/sms.py), a push payload
within 4 KB (APNs' and FCM's limit), and every email with a text part (made from its HTML
when the template has none).
"""

from __future__ import annotations

import json
import re
from html import unescape
from html.parser import HTMLParser
from typing import Any

from django.conf import settings

from notifications.transports.sms import sms_encoding, sms_segments

PUSH_PAYLOAD_LIMIT_BYTES = 4096


def sms_problem(text: str) -> str | None:
    """None when ``text`` fits SMS_MAX_SEGMENTS, else why not."""
    segments = sms_segments(text)
    limit = int(settings.SMS_MAX_SEGMENTS)
    if segments > limit:
        return (
            f"SMS text takes {segments} segments ({sms_encoding(text)}, {len(text)} characters), "
            f"more than SMS_MAX_SEGMENTS ({limit})"
        )
    return None


def push_payload_bytes(content: dict[str, str], data: dict[str, Any]) -> int:
    """The size of the push as APNs receives it (the larger of the two providers' bodies)."""
    alert = {"title": content.get("title", ""), "body": content.get("body", "")}
    body = {"aps": {"alert": alert, "sound": "default"}, **{k: v for k, v in data.items() if k != "aps"}}
    return len(json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode())


def push_problem(content: dict[str, str], data: dict[str, Any]) -> str | None:
    size = push_payload_bytes(content, data)
    if size > PUSH_PAYLOAD_LIMIT_BYTES:
        return f"push payload is {size} bytes, more than {PUSH_PAYLOAD_LIMIT_BYTES}"
    return None


class _TextOfHtml(HTMLParser):
    """Readable text of an email's HTML: paragraphs and line breaks kept, links as
    ``text (url)``, scripts and styles dropped."""

    BLOCKS = frozenset(
        {"p", "div", "br", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol"}
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0
        self._href: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "head", "title"):
            self._skip += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")
        if tag == "li":
            self.parts.append("- ")
        if tag == "a":
            self._href.append(dict(attrs).get("href"))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head", "title"):
            self._skip = max(0, self._skip - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n")
        if tag == "a" and self._href:
            href = self._href.pop()
            if href and href.startswith(("http://", "https://", "mailto:")):
                self.parts.append(f" ({href})")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(re.sub(r"\s+", " ", data))


def email_text_from_html(html: str) -> str:
    parser = _TextOfHtml()
    parser.feed(html)
    parser.close()
    text = unescape("".join(parser.parts))
    lines = [line.strip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def email_with_text(rendered: dict[str, str]) -> dict[str, str]:
    """The email's fields with a text part: its own, or one made from its HTML."""
    if rendered.get("text", "").strip() or not rendered.get("html"):
        return rendered
    return {**rendered, "text": email_text_from_html(rendered["html"])}
