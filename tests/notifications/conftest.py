"""Fixtures the notifications tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.sandbox import SandboxProcess


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    """The provider sandbox as a real process, one per test module. Its callbacks go
    nowhere (nothing listens on the discard port): the e2e tests cover them end to end."""
    with SandboxProcess(
        directory=tmp_path_factory.mktemp("provider-sandbox"), platform_url="http://127.0.0.1:9"
    ) as running:
        yield running
