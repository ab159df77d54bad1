"""What the sandbox tests share: a stdlib HTTP server in the test process standing in for
the platform (it records the sandbox's status callbacks and tracking webhooks), and those
webhooks as anymail's own Mailgun view validates and parses them."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

from harness.processes import wait_until


@dataclass(frozen=True)
class Captured:
    path: str
    headers: dict[str, str]
    body: bytes
    url: str

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode(), keep_blank_values=True))

    def json(self) -> Any:
        return json.loads(self.body)


class PlatformStandIn:
    """Records every POST it receives and answers ``status``."""

    def __init__(self) -> None:
        self.captured: list[Captured] = []
        self.lock = threading.Lock()
        self.status = 200
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with stand_in.lock:
                    stand_in.captured.append(
                        Captured(
                            path=self.path,
                            headers={name.lower(): value for name, value in self.headers.items()},
                            body=body,
                            url=f"{stand_in.url}{self.path}",
                        )
                    )
                self.send_response(stand_in.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def clear(self) -> None:
        with self.lock:
            self.captured.clear()
        self.status = 200

    def wait_for(
        self, count: int, where: Callable[[Captured], bool], timeout: float = 10.0
    ) -> list[Captured]:
        def enough() -> list[Captured] | None:
            with self.lock:
                matching = [item for item in self.captured if where(item)]
            return matching if len(matching) >= count else None

        return wait_until(enough, timeout, message=f"{count} callbacks at the stand-in platform")


def tracking_events(platform: PlatformStandIn, count: int) -> list[Any]:
    """The tracking webhooks the stand-in received, validated and parsed by anymail's own
    Mailgun view (basic auth + signature), as anymail events."""
    from anymail.webhooks.mailgun import MailgunTrackingWebhookView
    from django.test import RequestFactory

    captured = platform.wait_for(count, lambda item: item.path == "/anymail/mailgun/tracking/")
    events = []
    for item in captured:
        request = RequestFactory().post(
            "/anymail/mailgun/tracking/",
            data=item.body,
            content_type="application/json",
            HTTP_AUTHORIZATION=item.headers["authorization"],
        )
        view = MailgunTrackingWebhookView()
        view.run_validators(request)
        events.extend(view.parse_events(request))
    return events
