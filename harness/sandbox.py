"""The provider sandbox as a real process, for tests and benchmarks.

``SandboxProcess`` runs ``manage.py provider_sandbox`` on free ports with its own key
directory and learns the ports from the ready line the command prints; ``SandboxControl``
is a thin client of its control API (``/_sandbox/api/``). Like ``harness.processes``: the
process runs in its own process group with its output in a log file, the context manager
stops it also when the body raises, and waiting is polling with a deadline.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from harness.processes import LOCALHOST, REPO_ROOT, ManagedProcess, wait_until

READY_MARKER = '{"sandbox": "ready"'
DEFAULT_SETTINGS_MODULE = "project.settings.test"
PAGE_SIZE = 10_000

Record = dict[str, Any]


class SandboxControl:
    """Client of the sandbox's control API at ``base_url`` (the sandbox's HTTP port)."""

    def __init__(self, base_url: str, *, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = httpx.Client(base_url=f"{self.base_url}/_sandbox/api", timeout=timeout)

    def close(self) -> None:
        self.client.close()

    def _json(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise RuntimeError(
                f"sandbox control {response.request.method} {response.request.url} answered "
                f"{response.status_code}: {response.text[:1000]}"
            )
        return response.json()

    def reset(self) -> None:
        """Forget recordings, counters, faults and opt-outs."""
        self._json(self.client.post("/reset"))

    def set_fault(
        self,
        provider: str,
        *,
        status: int,
        rate: float = 1.0,
        seconds: float | None = None,
        latency_ms: int = 0,
        retry_after: int | None = None,
    ) -> dict[str, Any]:
        """Make a fraction ``rate`` of ``provider``'s requests answer ``status`` (0: hold
        them ``latency_ms``, default 30 s) for ``seconds`` (None: until cleared); return the
        fault as the sandbox stored it."""
        fault: dict[str, Any] = self._json(
            self.client.post(
                "/faults",
                json={
                    "provider": provider,
                    "status": status,
                    "rate": rate,
                    "seconds": seconds,
                    "latency_ms": latency_ms,
                    "retry_after": retry_after,
                },
            )
        )
        return fault

    def clear_faults(self, provider: str | None = None) -> None:
        """Clear every fault, or only ``provider``'s."""
        self._json(self.client.delete("/faults", params={"provider": provider} if provider else None))

    def faults(self) -> list[dict[str, Any]]:
        faults: list[dict[str, Any]] = self._json(self.client.get("/faults"))["faults"]
        return faults

    def messages(
        self, provider: str | None = None, since: float | None = None, *, after: int | None = None
    ) -> list[Record]:
        """Every recorded request (of ``provider``, received after ``since`` / after record
        number ``after``), oldest first; pages through the API as needed."""
        records: list[Record] = []
        while True:
            params: dict[str, Any] = {"limit": PAGE_SIZE}
            if provider is not None:
                params["provider"] = provider
            if since is not None:
                params["since"] = repr(since)
            if after is not None:
                params["after"] = after
            page: list[Record] = self._json(self.client.get("/messages", params=params))["messages"]
            records.extend(page)
            if len(page) < PAGE_SIZE:
                return records
            after = page[-1]["seq"]

    def stats(self) -> dict[str, Any]:
        """``{"providers": {name: {requests, accepted, rejected, keys, duplicates}}, "opted_out": [...]}``."""
        stats: dict[str, Any] = self._json(self.client.get("/stats"))
        return stats

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = self._json(self.client.get("/info"))
        return info

    def twilio_inbound(
        self, from_number: str, body: str, to: str | None = None, account: str = "twilio"
    ) -> int:
        """Have the sandbox deliver an inbound SMS to the platform's Twilio webhook; return
        the platform's HTTP status (0 when it did not answer)."""
        payload: dict[str, Any] = {"from": from_number, "body": body, "account": account}
        if to is not None:
            payload["to"] = to
        # The control call answers with the platform's own status, so a 4xx is not
        # necessarily the sandbox's refusal: that one carries "errors" instead.
        response = self.client.post("/twilio/inbound", json=payload)
        answer = response.json()
        if "platform_status" not in answer:
            raise RuntimeError(f"sandbox refused the inbound message: {response.text[:1000]}")
        status: int = answer["platform_status"]
        return status

    def wait_for_messages(
        self,
        provider: str,
        count: int,
        timeout: float = 10.0,
        *,
        since: float | None = None,
        where: Callable[[Record], bool] | None = None,
    ) -> list[Record]:
        """Poll until ``provider`` has at least ``count`` recordings (received after
        ``since``, matching ``where``) and return them all; TimeoutError naming what was
        seen otherwise."""
        seen: list[Record] = []

        def enough() -> list[Record] | None:
            nonlocal seen
            seen = [record for record in self.messages(provider, since) if where is None or where(record)]
            return seen if len(seen) >= count else None

        try:
            return wait_until(enough, timeout, interval=0.05, message=f"{count} {provider} recordings")
        except TimeoutError as error:
            raise TimeoutError(f"{error}; saw {len(seen)}: {json.dumps(seen[-5:])[:2000]}") from None


class SandboxProcess:
    """``manage.py provider_sandbox`` on free ports with its own ``directory`` (keys, TLS,
    log file ``sandbox.log``); callbacks go to ``platform_url``. Settings are
    ``project.settings.test`` unless ``env`` names another ``DJANGO_SETTINGS_MODULE``."""

    def __init__(
        self,
        *,
        directory: Path,
        platform_url: str,
        env: dict[str, str] | None = None,
        extra_args: Sequence[str] = (),
        python: str = sys.executable,
        start_timeout: float = 30.0,
        nice: int = 0,
    ) -> None:
        self.directory = Path(directory).resolve()
        self.nice = nice
        self.platform_url = platform_url
        self.extra_env = dict(env or {})
        self.extra_args = list(extra_args)
        self.python = python
        self.start_timeout = start_timeout
        self.host = LOCALHOST
        self.http_port = 0
        self.apns_port = 0
        self.smtp_port = 0
        self.process: ManagedProcess | None = None
        self._control: SandboxControl | None = None

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def apns_url(self) -> str:
        return f"https://{self.host}:{self.apns_port}"

    @property
    def control(self) -> SandboxControl:
        if self._control is None:
            raise RuntimeError("the sandbox is not running")
        return self._control

    @property
    def log_path(self) -> Path:
        return self.directory / "sandbox.log"

    def _argv(self) -> list[str]:
        niced = ["nice", "-n", str(self.nice)] if self.nice else []
        return [
            *niced, self.python, str(REPO_ROOT / "manage.py"), "provider_sandbox",
            "--host", self.host,
            "--http-port", "0", "--apns-port", "0", "--smtp-port", "0",
            "--dir", str(self.directory),
            "--platform-url", self.platform_url,
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> Self:
        """Start the sandbox and return once it printed its ready line (RuntimeError with
        its output if it exits first, TimeoutError after ``start_timeout``)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": DEFAULT_SETTINGS_MODULE,
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }
        process = ManagedProcess("provider-sandbox", self._argv(), log_path=self.log_path, env=env)
        self.process = process
        process.start()

        def ready_line() -> dict[str, Any] | None:
            for line in process.log_text().splitlines():
                if line.startswith(READY_MARKER):
                    info: dict[str, Any] = json.loads(line)
                    return info
            if not process.alive:
                raise RuntimeError(
                    f"provider_sandbox exited with code {process.returncode} before it was ready; "
                    f"log {self.log_path}:\n{process.log_tail(60)}"
                )
            return None

        try:
            info = wait_until(
                ready_line, self.start_timeout, interval=0.05, message="provider sandbox not ready"
            )
        except TimeoutError as error:
            process.stop(5.0)
            raise TimeoutError(f"{error}; log {self.log_path}:\n{process.log_tail(60)}") from None
        except BaseException:
            process.stop(5.0)
            raise
        self.http_port = int(info["http_port"])
        self.apns_port = int(info["apns_port"])
        self.smtp_port = int(info["smtp_port"])
        self._control = SandboxControl(self.http_url)
        return self

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s."""
        if self._control is not None:
            self._control.close()
            self._control = None
        if self.process is not None and self.process.alive:
            code = self.process.stop(5.0)
            if code not in (0, None):
                # Logged, not raised: stopping happens in teardown, where raising would hide
                # the test's own failure.
                print(f"provider_sandbox exited with code {code}; log {self.log_path}", file=sys.stderr)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.alive

    def log_tail(self, lines: int = 40) -> str:
        return self.process.log_tail(lines) if self.process is not None else ""

    def env(self) -> dict[str, str]:
        """Environment that points platform processes' providers at this sandbox."""
        return {
            "PROVIDER_SANDBOX_HOST": self.host,
            "PROVIDER_SANDBOX_HTTP_PORT": str(self.http_port),
            "PROVIDER_SANDBOX_APNS_PORT": str(self.apns_port),
            "PROVIDER_SANDBOX_SMTP_PORT": str(self.smtp_port),
            "PROVIDER_SANDBOX_DIR": str(self.directory),
        }

    def providers(self) -> dict[str, dict[str, object]]:
        """``settings.PROVIDERS`` pointing at this sandbox (for ``override_settings``)."""
        from project.settings.providers import build_providers

        return build_providers(
            sandbox_host=self.host,
            http_port=self.http_port,
            apns_port=self.apns_port,
            smtp_port=self.smtp_port,
            sandbox_dir=self.directory,
        )

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
