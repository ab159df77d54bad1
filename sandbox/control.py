"""The sandbox's control API (JSON, under ``/_sandbox/api/``) and its staff page.

- ``POST /_sandbox/api/faults`` sets a provider's fault; ``GET`` lists the active ones;
  ``DELETE`` clears all (or ``?provider=name`` only that one);
- ``GET /_sandbox/api/messages?provider=&since=&after=&limit=`` returns recordings;
- ``GET /_sandbox/api/stats`` per-provider counters and the opted-out numbers;
- ``POST /_sandbox/api/reset`` forgets recordings, counters, faults and opt-outs;
- ``GET /_sandbox/api/info`` ports, directory, platform URL, pending callbacks;
- ``GET /_sandbox/`` the HTML page.

Bad input is a 400 with ``{"errors": {field: [message]}}``.
"""

from __future__ import annotations

import html
import json
import time
from typing import Any

from aiohttp import web

from sandbox.context import SandboxContext
from sandbox.outbound import CallbackQueue
from sandbox.state import PROVIDERS, Fault

MAX_LIMIT = 100_000
PAGE_MESSAGES = 50


class ValidationError(Exception):
    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__(errors)
        self.errors = errors


def _errors(errors: dict[str, list[str]]) -> web.Response:
    return web.json_response({"errors": errors}, status=400)


def parse_fault(payload: Any) -> Fault:
    """A ``Fault`` from the control API's JSON; ValidationError naming each bad field."""
    if not isinstance(payload, dict):
        raise ValidationError({"body": ["Expected a JSON object."]})
    errors: dict[str, list[str]] = {}
    provider = payload.get("provider")
    if provider not in PROVIDERS:
        errors["provider"] = [f"Unknown provider {provider!r}; expected one of {', '.join(PROVIDERS)}."]
    status = payload.get("status")
    if not isinstance(status, int) or isinstance(status, bool) or not (status == 0 or 100 <= status <= 599):
        errors["status"] = [f"Expected 0 (timeout) or an HTTP status 100-599, got {status!r}."]
    rate = payload.get("rate", 1.0)
    if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0.0 <= rate <= 1.0:
        errors["rate"] = [f"Expected a fraction between 0 and 1, got {rate!r}."]
    latency_ms = payload.get("latency_ms", 0)
    if latency_ms is None:
        latency_ms = 0
    if not isinstance(latency_ms, int) or isinstance(latency_ms, bool) or latency_ms < 0:
        errors["latency_ms"] = [f"Expected a whole number of milliseconds >= 0, got {latency_ms!r}."]
    seconds = payload.get("seconds")
    if seconds is not None and (
        not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds <= 0
    ):
        errors["seconds"] = [f"Expected a number of seconds > 0 or null, got {seconds!r}."]
    retry_after = payload.get("retry_after")
    if retry_after is not None and (
        not isinstance(retry_after, int) or isinstance(retry_after, bool) or retry_after < 0
    ):
        errors["retry_after"] = [f"Expected whole seconds >= 0 or null, got {retry_after!r}."]
    if errors:
        raise ValidationError(errors)
    return Fault(
        provider=str(provider),
        status=int(status),  # type: ignore[arg-type]
        rate=float(rate),
        latency_ms=int(latency_ms),
        seconds=float(seconds) if seconds is not None else None,
        retry_after=retry_after,
    )


def _float_param(request: web.Request, name: str) -> float | None:
    value = request.query.get(name)
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise ValidationError({name: [f"Expected a number, got {value!r}."]})


def _int_param(request: web.Request, name: str, default: int | None = None) -> int | None:
    value = request.query.get(name)
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValidationError({name: [f"Expected a whole number, got {value!r}."]})


class ControlApi:
    def __init__(self, context: SandboxContext, callbacks: CallbackQueue) -> None:
        self.context = context
        self.state = context.state
        self.callbacks = callbacks

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/_sandbox/api/faults", self.fault_set),
            web.get("/_sandbox/api/faults", self.fault_list),
            web.delete("/_sandbox/api/faults", self.faults_clear),
            web.get("/_sandbox/api/messages", self.messages),
            web.get("/_sandbox/api/stats", self.stats),
            web.post("/_sandbox/api/reset", self.reset),
            web.get("/_sandbox/api/info", self.info),
            web.get("/_sandbox/", self.page),
            web.get("/_sandbox", self.page),
        ]

    async def fault_set(self, request: web.Request) -> web.Response:
        try:
            payload = await request.json()
        except ValueError:
            return _errors({"body": ["Expected a JSON object."]})
        try:
            fault = parse_fault(payload)
        except ValidationError as error:
            return _errors(error.errors)
        return web.json_response(self.state.fault_set(fault).as_json())

    async def fault_list(self, request: web.Request) -> web.Response:
        return web.json_response({"faults": [fault.as_json() for fault in self.state.active_faults()]})

    async def faults_clear(self, request: web.Request) -> web.Response:
        provider = request.query.get("provider")
        self.state.faults_clear([provider] if provider else None)
        return web.json_response({"faults": [fault.as_json() for fault in self.state.active_faults()]})

    async def messages(self, request: web.Request) -> web.Response:
        provider = request.query.get("provider") or None
        if provider is not None and provider not in PROVIDERS:
            return _errors(
                {"provider": [f"Unknown provider {provider!r}; expected one of {', '.join(PROVIDERS)}."]}
            )
        try:
            since = _float_param(request, "since")
            after = _int_param(request, "after")
            limit = _int_param(request, "limit", 1000) or 1000
        except ValidationError as error:
            return _errors(error.errors)
        limit = max(1, min(limit, MAX_LIMIT))
        records = self.state.messages(provider=provider, since=since, after=after, limit=limit)
        return web.json_response({"messages": records}, dumps=_dumps)

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.stats())

    async def reset(self, request: web.Request) -> web.Response:
        self.state.reset()
        return web.json_response({"reset": True, "at": time.time()})

    async def info(self, request: web.Request) -> web.Response:
        context = self.context
        return web.json_response(
            {
                "http_port": context.http_port,
                "apns_port": context.apns_port,
                "smtp_port": context.smtp_port,
                "dir": str(context.config.directory),
                "platform_url": context.config.platform_url,
                "latency_ms": self.state.latency_ms,
                "error_rate": self.state.error_rate,
                "callback_delay_ms": context.config.callback_delay_ms,
                "pending_callbacks": self.callbacks.pending,
            }
        )

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(text=render_page(self.context, self.callbacks), content_type="text/html")


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def render_page(context: SandboxContext, callbacks: CallbackQueue) -> str:
    """The staff page: counters per provider, active faults, the last messages of each.
    Every recorded value is escaped (recordings hold whatever clients sent)."""
    state = context.state
    esc = html.escape
    stats = state.stats()["providers"]
    rows = "".join(
        f"<tr><td>{esc(name)}</td>"
        + "".join(
            f"<td>{counts[column]}</td>"
            for column in ("requests", "accepted", "rejected", "keys", "duplicates")
        )
        + "</tr>"
        for name, counts in stats.items()
    )
    faults = state.active_faults()
    fault_items = (
        "".join(f"<li><code>{esc(json.dumps(fault.as_json()))}</code></li>" for fault in faults)
        or "<li>none</li>"
    )
    sections = []
    for name in stats:
        latest = state.latest(name, PAGE_MESSAGES)
        if not latest:
            continue
        items = "".join(
            "<tr>"
            f"<td>{time.strftime('%H:%M:%S', time.localtime(entry['received_at']))}</td>"
            f"<td>{entry['status']}</td>"
            f"<td>{esc(str(entry['to'] or ''))}</td>"
            f"<td>{esc(str(entry['key'] or ''))}</td>"
            f"<td><code>{esc(_dumps(entry['summary'])[:500])}</code></td>"
            "</tr>"
            for entry in reversed(latest)
        )
        sections.append(
            f"<h2>{esc(name)}</h2><table><thead><tr><th>time</th><th>status</th><th>to</th>"
            f"<th>key</th><th>summary</th></tr></thead><tbody>{items}</tbody></table>"
        )
    opted_out = ", ".join(esc(number) for number in sorted(state.opted_out)) or "none"
    config = context.config
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Provider sandbox</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; }}
table {{ border-collapse: collapse; margin-bottom: 1rem; }}
td, th {{ border: 1px solid #ccc; padding: 2px 6px; text-align: left; vertical-align: top; }}
code {{ font-size: 0.85em; word-break: break-all; }}
</style></head><body>
<h1>Provider sandbox</h1>
<p>HTTP port {context.http_port}, APNs port {context.apns_port}, SMTP port {context.smtp_port};
platform {esc(config.platform_url)}; directory {esc(str(config.directory))};
latency {state.latency_ms} ms, error rate {state.error_rate}; {callbacks.pending} callbacks pending.</p>
<table><thead><tr><th>provider</th><th>requests</th><th>accepted</th><th>rejected</th><th>keys</th>
<th>duplicates</th></tr></thead><tbody>{rows}</tbody></table>
<h2>Active faults</h2><ul>{fault_items}</ul>
<h2>Opted-out numbers</h2><p>{opted_out}</p>
{"".join(sections)}
</body></html>
"""
