"""Runs every sandbox server on one asyncio loop: the HTTP port (aiohttp), the APNs port
(HTTP/2 over TLS on h2) and the SMTP port (aiosmtpd).

Start-up order matters: the three sockets are bound first (so port 0 resolves to real
ports), then the credentials are written (the service account's ``token_uri`` names the HTTP
port), then the servers start; the ready line is printed only once every port accepts
connections and the APNs port has completed a TLS handshake with ALPN h2.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
from collections.abc import Callable
from typing import Any

from aiohttp import web

from sandbox.apns import ApnsServer, apns_server_start
from sandbox.context import SandboxConfig, SandboxContext
from sandbox.credentials import (
    CA_CERT_FILE,
    SERVER_CERT_FILE,
    SERVER_KEY_FILE,
    TLS_DIR,
    sandbox_credentials_ensure,
)
from sandbox.http_api import http_app_build
from sandbox.outbound import CallbackQueue
from sandbox.smtp import smtp_server_start
from sandbox.state import SandboxState

logger = logging.getLogger("sandbox")

READY_TIMEOUT_SECONDS = 20.0
Ready = Callable[[dict[str, Any]], None]


class SandboxStartError(RuntimeError):
    """A port could not be bound or a server did not come up."""


def _listen(host: str, port: int) -> socket.socket:
    """A non-blocking TCP socket bound to ``host:port`` (0: a free port) and listening."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as error:
        raise SandboxStartError(f"cannot resolve {host!r}: {error}") from error
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as error:
        sock.close()
        raise SandboxStartError(f"cannot listen on {host}:{port}: {error}") from error
    sock.setblocking(False)
    return sock


def _connect_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host.strip("[]")


async def _apns_handshake(host: str, port: int, cafile: str) -> None:
    """Complete one TLS handshake with the APNs port, verifying its certificate against
    the CA and that it negotiates h2; raises when it does not."""
    tls = ssl.create_default_context(cafile=cafile)
    tls.set_alpn_protocols(["h2"])
    reader, writer = await asyncio.open_connection(host, port, ssl=tls, server_hostname="localhost")
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        protocol = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        if protocol != "h2":
            raise SandboxStartError(f"the APNs port negotiated {protocol!r}, not h2")
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


async def sandbox_serve(config: SandboxConfig, *, stop: asyncio.Event, ready: Ready | None = None) -> None:
    """Serve until ``stop`` is set (or a server fails); call ``ready(info)`` once all listen.

    ``info`` is ``{"sandbox": "ready", "http_port", "apns_port", "smtp_port", "dir"}``.
    Everything started is stopped before this returns, also on errors.
    """
    state = SandboxState(latency_ms=config.latency_ms, error_rate=config.error_rate)
    context = SandboxContext(config=config, state=state)
    sockets: list[socket.socket] = []
    try:
        for port in (config.http_port, config.apns_port, config.smtp_port):
            sockets.append(_listen(config.host, port))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    http_sock, apns_sock, smtp_sock = sockets
    context.http_port, context.apns_port, context.smtp_port = (sock.getsockname()[1] for sock in sockets)

    directory = config.directory
    tls_dir = directory / TLS_DIR
    try:
        # Blocking, but only at start-up (key generation takes ~0.1 s).
        sandbox_credentials_ensure(directory, http_base_url=context.http_base_url)
        context.load_keys()
    except BaseException:
        for sock in sockets:
            sock.close()
        raise

    callbacks = CallbackQueue(state=state, concurrency=config.callback_concurrency)
    # A short shutdown timeout: a request held by a timeout fault must not hold up SIGTERM.
    runner = web.AppRunner(
        http_app_build(context, callbacks), access_log=None, handle_signals=False, shutdown_timeout=0.5
    )
    smtp_server: asyncio.Server | None = None
    apns_server: ApnsServer | None = None
    try:
        await callbacks.start()
        await runner.setup()
        await web.SockSite(runner, http_sock).start()
        smtp_server = await smtp_server_start(context, smtp_sock)
        apns_server = await apns_server_start(
            context,
            apns_sock,
            certfile=str(tls_dir / SERVER_CERT_FILE),
            keyfile=str(tls_dir / SERVER_KEY_FILE),
        )
        try:
            await asyncio.wait_for(
                _apns_handshake(_connect_host(config.host), context.apns_port, str(tls_dir / CA_CERT_FILE)),
                READY_TIMEOUT_SECONDS,
            )
        except TimeoutError:
            raise SandboxStartError(f"the APNs port gave no TLS handshake in {READY_TIMEOUT_SECONDS:.0f} s")
        except (OSError, ssl.SSLError) as error:
            raise SandboxStartError(f"the APNs port failed its TLS self-check: {error!r}") from error

        info = {
            "sandbox": "ready",
            "http_port": context.http_port,
            "apns_port": context.apns_port,
            "smtp_port": context.smtp_port,
            "dir": str(directory),
        }
        logger.info("provider sandbox ready: %s", info)
        if ready is not None:
            ready(info)
        await stop.wait()
    finally:
        if apns_server is not None:
            await apns_server.close()
        if smtp_server is not None:
            smtp_server.close()
        await runner.cleanup()
        await callbacks.close()
        for sock in sockets:
            sock.close()


def sandbox_run(config: SandboxConfig, *, ready: Ready | None = None) -> None:
    """Run the sandbox in this thread until SIGTERM or SIGINT (uvloop when installed)."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await sandbox_serve(config, stop=stop, ready=ready)

    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
