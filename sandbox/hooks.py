"""A receiver for the platform's outgoing webhooks: ``/hooks/{path}``.

Slack-style paths (``/hooks/slack/...``) answer ``ok`` and Teams-style paths
(``/hooks/teams/...``) answer ``1``, as those services do; anything else answers
``{"ok": true}``. Path segments provoke faults: ``/flaky/`` (503 twice per path, then 200),
``/down/`` (500 always), ``/ratelimited/`` (429 with Retry-After: 1 once per path, then 200)
and ``/gone/`` (410).
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from sandbox.context import SandboxContext
from sandbox.faults import http_fault_gate

# Recordings are kept in memory (up to 500k of them): keep bodies short.
MAX_RECORDED_BODY = 16_384


def webhook_error(status: int) -> web.Response:
    return web.json_response({"ok": False, "error": f"sandbox fault: HTTP {status}"}, status=status)


class WebhookReceiver:
    """``/hooks/{path:.*}`` for any method."""

    def __init__(self, context: SandboxContext) -> None:
        self.state = context.state

    def routes(self) -> list[web.RouteDef]:
        return [web.route("*", "/hooks/{path:.*}", self.receive)]

    async def receive(self, request: web.Request) -> web.Response:
        received_at = time.time()
        raw = await request.read()
        path = request.path
        headers = dict(request.headers)
        key = request.headers.get("webhook-id") or request.headers.get("Idempotency-Key")
        summary: dict[str, Any] = {
            "method": request.method,
            "path": path,
            "query": request.query_string,
            "headers": headers,
            "body": raw[:MAX_RECORDED_BODY].decode("utf-8", errors="replace"),
            "size": len(raw),
        }
        blocked = await http_fault_gate(
            self.state,
            "webhook",
            received_at=received_at,
            key=key,
            to=path,
            summary=summary,
            error_response=webhook_error,
        )
        if blocked is not None:
            return blocked

        response = self._answer(path)
        self.state.record(
            "webhook", status=response.status, key=key, to=path, summary=summary, received_at=received_at
        )
        return response

    def _answer(self, path: str) -> web.Response:
        segments = f"{path}/"
        if "/gone/" in segments:
            return web.json_response({"ok": False, "error": "gone"}, status=410)
        if "/down/" in segments:
            return web.json_response({"ok": False, "error": "down"}, status=500)
        if "/flaky/" in segments and self.state.attempt("webhook", path) < 2:
            return web.json_response({"ok": False, "error": "flaky"}, status=503)
        if "/ratelimited/" in segments and self.state.attempt("webhook", path) < 1:
            return web.json_response(
                {"ok": False, "error": "rate limited"}, status=429, headers={"Retry-After": "1"}
            )
        if path.startswith("/hooks/slack/"):
            return web.Response(text="ok")
        if path.startswith("/hooks/teams/"):
            return web.Response(text="1")
        return web.json_response({"ok": True})
