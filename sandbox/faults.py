"""Applying scripted faults and the global latency knob to one request.

Every provider endpoint calls ``fault_strike`` before doing its own work: a fault set through
the control API (or the global error rate) is answered in the provider's own error shape by
the caller; a timeout fault holds the request here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web

from sandbox.state import OUTBOUND_PROVIDERS, Fault, SandboxState

TIMEOUT_ANSWER_STATUS = 504


async def fault_strike(
    state: SandboxState,
    provider: str,
    *,
    received_at: float,
    key: str | None,
    to: str | None,
    summary: dict[str, Any],
) -> Fault | None:
    """Apply the fault that hits this request of ``provider`` and the global latency.

    Returns None when the request should be handled normally (after any delay), else the
    fault whose status (>= 400) the caller answers with and records. A timeout fault
    (status 0) is recorded (status 0) and held here before it is returned; the caller then
    answers it with ``TIMEOUT_ANSWER_STATUS`` without recording it again.
    """
    fault = state.fault_for(provider)
    if fault is not None:
        if fault.status == 0:
            state.record(
                provider,
                status=0,
                key=key,
                to=to,
                summary={**summary, "fault": "timeout"},
                received_at=received_at,
            )
            await asyncio.sleep(fault.hold_seconds)
            return fault
        if fault.latency_ms > 0:
            await asyncio.sleep(fault.latency_ms / 1000)
        if fault.status >= 400:
            return fault
    if state.latency_ms > 0 and provider not in OUTBOUND_PROVIDERS:
        await asyncio.sleep(state.latency_ms / 1000)
    return None


async def http_fault_gate(
    state: SandboxState,
    provider: str,
    *,
    received_at: float,
    key: str | None,
    to: str | None,
    summary: dict[str, Any],
    error_response: Callable[[int], web.Response],
) -> web.Response | None:
    """``fault_strike`` for the HTTP providers: returns the response to answer with (already
    recorded), or None to handle the request normally. ``error_response(status)`` builds
    the provider's own error body for a status."""
    fault = await fault_strike(state, provider, received_at=received_at, key=key, to=to, summary=summary)
    if fault is None:
        return None
    if fault.status == 0:
        return web.Response(status=TIMEOUT_ANSWER_STATUS, text="sandbox: request held by a timeout fault")
    response = error_response(fault.status)
    if fault.retry_after is not None:
        response.headers["Retry-After"] = str(fault.retry_after)
    state.record(
        provider,
        status=fault.status,
        key=key,
        to=to,
        summary={**summary, "fault": "global-error-rate" if fault.synthetic else "fault"},
        received_at=received_at,
    )
    return response
