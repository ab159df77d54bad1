"""Fixtures of the sandbox tests: the stand-in platform and the sandbox process calling it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.sandbox import SandboxProcess
from tests.sandbox.standin import PlatformStandIn


@pytest.fixture(scope="module")
def platform() -> Iterator[PlatformStandIn]:
    stand_in = PlatformStandIn()
    stand_in.thread.start()
    yield stand_in
    stand_in.server.shutdown()
    stand_in.server.server_close()


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory, platform: PlatformStandIn) -> Iterator[SandboxProcess]:
    with SandboxProcess(
        directory=tmp_path_factory.mktemp("sandbox"),
        platform_url=platform.url,
        extra_args=["--callback-delay-ms", "10"],
    ) as process:
        yield process
