"""End-to-end fixtures: a whole platform (web, workers, beat) on a private Redis and a
temporary, migrated PostgreSQL database, driven only from the outside.

Every process is started through ``harness.processes`` context managers, so it is stopped
also when a test or the fixture itself fails. When a test fails, the tail of every
process's log is attached to its report.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest

from harness.processes import (
    DEFAULT_DATABASE_URL,
    DEFAULT_WORKERS,
    REPO_ROOT,
    PlatformProcesses,
    PrivateRedis,
    Server,
    TemporaryDatabase,
    WorkerSpec,
    free_port,
)
from harness.sandbox import SandboxProcess

# Stacks alive in this (xdist worker) process; their logs go into failure reports.
ACTIVE_STACKS: list[Stack] = []

BASE_ENV = {
    "DJANGO_SETTINGS_MODULE": "project.settings",
    "OUTBOX_LEASE_SECONDS": "5",
    "SWEEP_INTERVAL_SECONDS": "1",
    "DELIVERY_STALE_SECONDS": "5",
    "RATE_CAP_INAPP": "100000/60",
    "LOG_LEVEL": "INFO",
    "LOG_FORMAT": "text",
    "CELERY_LOG_LEVEL": "INFO",
    "PYTHONUNBUFFERED": "1",
}


SETTINGS_ENV = {"DJANGO_SETTINGS_MODULE": "project.settings"}
_MIGRATED: list[TemporaryDatabase] = []
# The suite's server, before any test points DATABASE_URL at a server of its own.
SUITE_SERVER = urlsplit(os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL).netloc


def migrated_template() -> str | None:
    """The name of a database migrated once per test process on the suite's server, which
    each stack's database there clones (CREATE DATABASE ... TEMPLATE takes a
    fraction of a second; migrating takes seconds, more on a loaded machine); dropped when
    the process exits. None while DATABASE_URL names a server of a test's own (a
    PrivatePostgres that lives for one module): the stack's database is migrated there."""
    if urlsplit(os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL).netloc != SUITE_SERVER:
        return None
    if not _MIGRATED:
        template = TemporaryDatabase(prefix="tmp_e2e_tpl", env=SETTINGS_ENV)
        template.__enter__()
        atexit.register(_drop_quietly, template)
        _MIGRATED.append(template)
    return _MIGRATED[0].name


def _drop_quietly(database: TemporaryDatabase) -> None:
    with contextlib.suppress(Exception):  # the server may be gone by now: its data with it
        database.drop()


@dataclass
class Stack:
    """A running platform and the ways to reach it from outside."""

    redis: PrivateRedis
    database: TemporaryDatabase
    processes: PlatformProcesses
    env: dict[str, str]
    api_key: str = ""
    clients: list[httpx.Client] = field(default_factory=list)
    sandbox: SandboxProcess | None = None
    # More web processes of this platform (``another_web``), in their reports too.
    peers: list[PlatformProcesses] = field(default_factory=list)

    @property
    def web_url(self) -> str:
        return self.processes.web_url

    @property
    def ws_url(self) -> str:
        return self.processes.ws_url

    @property
    def database_url(self) -> str:
        return self.database.url

    def manage(self, *args: str, timeout: float = 120.0) -> str:
        """Run ``manage.py <args>`` with the stack's environment; return stdout + stderr."""
        import subprocess

        completed = subprocess.run(
            [sys.executable, str(REPO_ROOT / "manage.py"), *args],
            cwd=REPO_ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if completed.returncode != 0:
            raise RuntimeError(
                f"manage.py {' '.join(args)} failed ({completed.returncode}):\n"
                f"{completed.stdout.decode()}\n{completed.stderr.decode()}"
            )
        return completed.stdout.decode()

    def client(
        self, *, api_key: str | None = None, timeout: float | httpx.Timeout = 15.0, **kwargs: Any
    ) -> httpx.Client:
        """An httpx client on the web server; authenticated with ``api_key`` (default: the
        stack's key; pass "" for none). Closed with the stack."""
        key = self.api_key if api_key is None else api_key
        headers = {"Authorization": f"Api-Key {key}"} if key else {}
        client = httpx.Client(base_url=self.web_url, headers=headers, timeout=timeout, **kwargs)
        self.clients.append(client)
        return client

    @property
    def api(self) -> httpx.Client:
        """The service client (API key)."""
        if not hasattr(self, "_api"):
            self._api = self.client()
        return self._api

    def end_user(self, token: str) -> httpx.Client:
        """A client acting as the end user the token names (Bearer)."""
        client = httpx.Client(
            base_url=self.web_url, headers={"Authorization": f"Bearer {token}"}, timeout=15.0
        )
        self.clients.append(client)
        return client

    # -- arrangement over the public API --

    def create_type(self, key: str, *, category: str = "transactional", **extra: Any) -> dict[str, Any]:
        body = {
            "key": key,
            "category": category,
            "channels": ["inapp"],
            "templates": {
                "inapp": {
                    "title": "{{ data.title | default('Hello') }}",
                    "body": "n={{ data.n | default(0) }}",
                    "url": "/x/{{ data.n | default(0) }}",
                }
            },
            **extra,
        }
        response = self.api.post("/api/v1/notification-types/", json=body)
        assert response.status_code == 201, response.text
        return response.json()

    def create_recipient(self, prefix: str = "user") -> tuple[str, str]:
        """Upsert a fresh recipient; returns (external_id, end-user token)."""
        external_id = f"{prefix}-{uuid.uuid4().hex[:10]}"
        response = self.api.put(
            f"/api/v1/recipients/{external_id}/", json={"name": prefix, "timezone": "UTC"}
        )
        assert response.status_code == 201, response.text
        return external_id, self.token(external_id)

    def token(self, external_id: str) -> str:
        response = self.api.post(f"/api/v1/recipients/{external_id}/token/")
        assert response.status_code == 200, response.text
        return str(response.json()["token"])

    def post_event(self, **body: Any) -> httpx.Response:
        return self.api.post("/api/v1/events/", json=body)

    def send(self, **body: Any) -> str:
        """POST an event that must be accepted; returns its id."""
        response = self.post_event(**body)
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    def db(self) -> psycopg.Connection[Any]:
        """A direct autocommit connection to the stack's database (fault tests' checks)."""
        return psycopg.connect(self.database.url, autocommit=True)

    def log_tails(self, lines: int = 60) -> str:
        tails = self.processes.log_tails(lines)
        for number, peer in enumerate(self.peers, start=2):
            tails += f"\n--- web process {number} ---\n{peer.log_tails(lines)}"
        if self.sandbox is not None:
            tails += f"\n--- provider sandbox ---\n{self.sandbox.log_tail(lines)}"
        return tails

    def close_clients(self) -> None:
        for client in self.clients:
            with contextlib.suppress(Exception):
                client.close()
        self.clients.clear()


@contextlib.contextmanager
def platform_stack(
    extra_env: Mapping[str, str] | None = None,
    *,
    with_sandbox: bool = False,
    workers: tuple[WorkerSpec, ...] = DEFAULT_WORKERS,
    sandbox_dir: Any = None,
    with_iot: bool = False,
    with_games: bool = False,
    with_streaming: bool = False,
) -> Iterator[Stack]:
    """Start Redis, a migrated temporary database and the platform (and, ``with_sandbox``,
    a provider sandbox whose callbacks reach the platform; ``with_iot``, the platform's own
    MQTT broker on a free port and one ingest, as make run starts them; ``with_games``, a
    match server; ``with_streaming``, the stream ingest (nginx-rtmp and the transcoders) on
    free ports and a temporary directory); stop all on exit."""
    with contextlib.ExitStack() as exit_stack:
        redis = exit_stack.enter_context(PrivateRedis())
        database = exit_stack.enter_context(
            TemporaryDatabase(prefix="tmp_e2e", template=migrated_template(), env=SETTINGS_ENV)
        )
        port = free_port()
        sandbox = None
        sandbox_env: dict[str, str] = {}
        if with_sandbox:
            import tempfile
            from pathlib import Path

            directory = Path(sandbox_dir or tempfile.mkdtemp(prefix="sandbox-"))
            sandbox = exit_stack.enter_context(
                SandboxProcess(directory=directory, platform_url=f"http://127.0.0.1:{port}")
            )
            sandbox_env = sandbox.env()
        env = {
            **os.environ,
            **BASE_ENV,
            "DATABASE_URL": database.url,
            "REDIS_URL": redis.url,
            "CELERY_BROKER_URL": redis.url,
            **sandbox_env,
            **(extra_env or {}),
        }
        if with_iot:
            import tempfile

            env["MQTT_PORT"] = str(free_port())
            env["MQTT_DIR"] = tempfile.mkdtemp(prefix="mqtt-")
        if with_streaming:
            import tempfile

            env["STREAMING_DIR"] = tempfile.mkdtemp(prefix="streaming-")
            for name in ("STREAMING_RTMP_PORT", "STREAMING_HTTP_PORT", "STREAMING_CALLBACK_PORT"):
                env[name] = str(free_port())
        processes = PlatformProcesses(env=env, port=port, workers=workers)
        # Another process may take the free MQTT_PORT before the broker binds it: the
        # broker then moves to another free port (PlatformProcesses.wait_for_mqtt).
        processes.start_all(
            iot=with_iot, games=with_games, streaming=with_streaming, mqtt_pick_port=free_port
        )
        exit_stack.callback(processes.stop_all)
        # Copied once started: PORT is fixed by PlatformProcesses and MQTT_PORT may have moved;
        # manage.py commands and devices must see the same settings.
        env = dict(processes.env)
        stack = Stack(redis=redis, database=database, processes=processes, env=env, sandbox=sandbox)
        exit_stack.callback(stack.close_clients)
        ACTIVE_STACKS.append(stack)
        exit_stack.callback(ACTIVE_STACKS.remove, stack)
        stack.api_key = stack.manage("create_api_key", "e2e").strip().splitlines()[-1].strip()
        assert stack.api_key, "create_api_key printed no key"
        yield stack


@contextlib.contextmanager
def another_web(
    stack: Stack, *, server: Server = "uvicorn", web_processes: int = 1
) -> Iterator[PlatformProcesses]:
    """Start one more ASGI web server of ``stack``'s platform (same database, Redis,
    broker and settings; ``web_processes`` processes sharing its port) on a port of its
    own, as a second host behind a load balancer would run it; yield its
    ``PlatformProcesses`` (``web_url``, ``ws_url``). It is stopped on exit, also when the
    body raises or it fails to start."""
    web = PlatformProcesses(
        env=stack.env,
        workers=(),
        server=server,
        log_dir=stack.processes.log_dir / f"web-{len(stack.peers) + 2}",
        web_processes=web_processes,
    )
    stack.peers.append(web)
    try:
        web.start_web()
        yield web
    finally:
        web.stop_all()
        stack.peers.remove(web)


@contextlib.contextmanager
def debian_chromium() -> Iterator[Any]:
    """Debian's headless Chromium driven by Playwright (never a browser download;
    scripts/ensure_browser.sh installs it), closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-background-networking", "--disable-gpu"],
        )
        try:
            yield browser
        finally:
            browser.close()


def log_in_as_demo(page: Any, url: str) -> None:
    """Open ``url`` (a page behind the login), log in as seed_demo's user demo, and wait
    until the login has sent the browser back to it."""
    page.goto(url)
    page.fill("input[name=username]", "demo")
    page.fill("input[name=password]", "demo-password")
    page.click("[type=submit]")
    page.wait_for_url(url)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with platform_stack() as running:
        yield running


def pytest_configure(config: pytest.Config) -> None:
    # Registered here too, so that a serial run with ``-p no:xdist`` does not warn about it.
    config.addinivalue_line("markers", "xdist_group(name): run in one xdist worker with --dist loadgroup")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed and ACTIVE_STACKS:
        for number, running in enumerate(ACTIVE_STACKS):
            with contextlib.suppress(Exception):
                report.sections.append((f"platform logs (stack {number})", running.log_tails()))
                exits = running.processes.unexpected_exits()
                for peer in running.peers:
                    exits += peer.unexpected_exits()
                if exits:
                    report.sections.append((f"unexpected exits (stack {number})", repr(exits)))
    return report


def people_script(people: Mapping[str, tuple[str, str]], password: str) -> str:
    """A ``manage.py shell -c`` script that makes each ``username: (external_id, name)`` a
    user with ``password`` linked to a recipient of that external id and name."""
    return f"""
from django.contrib.auth import get_user_model
from notifications.models import Recipient
from notifications.services.recipients import recipient_upsert
for username, (external_id, name) in {dict(people)!r}.items():
    user, _ = get_user_model().objects.get_or_create(username=username)
    user.set_password({password!r})
    user.save()
    recipient, _ = recipient_upsert(external_id=external_id, fields={{"name": name, "timezone": "UTC"}})
    Recipient.objects.filter(id=recipient.id).update(user=user)
"""
