"""One of several uvicorn web processes sharing a port: ``python -m project.serve --port P``.

Django runs each request's synchronous code on one thread per process (asgiref's
thread-sensitive executor), so one process accepts events only as fast as that thread goes.
``project.processes`` starts several of these, each binding the same address with
SO_REUSEPORT, so that the kernel spreads connections over them; each is a direct child of
the supervisor (it dies with it) and a websocket may land on any (the channel layer is in
Redis). With ``--ready-file`` the process writes its pid there once it accepts connections.
"""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

import uvicorn

from project.processes.heap import heap_freeze
from project.processes.platform import UVICORN_WS, UVICORN_WS_MAX_SIZE


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) that other processes may bind too."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, ready_file: Path | None) -> None:
        super().__init__(config)
        self.ready_file = ready_file

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # The application is loaded: the collector need not walk it on every pass.
        heap_freeze()
        if self.ready_file is not None and not self.should_exit:
            self.ready_file.write_text(f"{os.getpid()}\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m project.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ready-file", type=Path, default=None)
    args = parser.parse_args(argv)
    config = uvicorn.Config(
        "project.asgi:application",
        ws=UVICORN_WS,
        ws_max_size=UVICORN_WS_MAX_SIZE,
        # Inbox frames are a few hundred bytes: compressing each costs CPU on every frame
        # and a compression context per socket for little gain (Centrifugo too leaves
        # compression off by default).
        ws_per_message_deflate=False,
        lifespan="off",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=5,
    )
    _Server(config, args.ready_file).run(sockets=[listening_socket(args.host, args.port)])


if __name__ == "__main__":
    main()
