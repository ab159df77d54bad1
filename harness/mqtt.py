"""A private Mosquitto for tests and benchmarks: the platform's own config and plugin
(iot/services/broker.py) on a free port in a temporary directory, stopped with the test."""

from __future__ import annotations

import signal
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Self

from harness.processes import free_port
from iot.services.broker import (
    BrokerSettings,
    DeviceCredential,
    broker_files_write,
    broker_settings,
    mosquitto_binary,
)
from project.processes.children import ManagedProcess
from project.processes.waiting import LOCALHOST, port_is_open, wait_until


class PrivateBroker:
    """``start()`` writes the files (with ``devices``) and starts mosquitto;
    ``restart(rewrite=False)`` stops it and starts it on the same files and port, as a
    broker restart does; ``kill()`` is the broker dying."""

    def __init__(self, directory: Path, *, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.settings: BrokerSettings = replace(broker_settings(), host=LOCALHOST, port=self.port)
        self.config: Path | None = None
        self.process: ManagedProcess | None = None

    def write(self, devices: Iterable[DeviceCredential] = ()) -> None:
        self.config = broker_files_write(self.directory, self.settings, devices)

    def start(self, devices: Iterable[DeviceCredential] = (), *, rewrite: bool = True) -> Self:
        if rewrite or self.config is None:
            self.write(devices)
        assert self.config is not None
        if self.process is None:
            self.process = ManagedProcess(
                f"mosquitto-{self.port}",
                [mosquitto_binary(), "-c", str(self.config)],
                log_path=self.directory / "mosquitto.log",
            )
        self.process.start()
        wait_until(
            lambda: port_is_open(LOCALHOST, self.port),
            10,
            message=f"mosquitto on {self.port} did not listen; log:\n{self.process.log_tail(30)}",
        )
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.alive:
            self.process.stop(timeout=10)

    def kill(self) -> None:
        if self.process is not None and self.process.alive:
            self.process.kill(signal.SIGKILL)

    def restart(self, *, rewrite: bool = False, devices: Iterable[DeviceCredential] = ()) -> None:
        self.stop()
        self.start(devices, rewrite=rewrite)

    def log(self) -> str:
        return self.process.log_text(this_run_only=False) if self.process is not None else ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()
