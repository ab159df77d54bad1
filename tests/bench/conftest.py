"""The benchmarks' smoke runs share one migrated database, which each run's stacks clone
(bench/stack.py): they all run in one xdist worker (the ``bench`` group), so it is
migrated once per test session instead of once per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.stack import template_database


@pytest.fixture(scope="session")
def template() -> Iterator[str]:
    with template_database() as name:
        yield name
