"""Small runs of every benchmark, so that ``make bench`` cannot rot. Not timed tests: they
check that each benchmark runs end to end and that its figures are sane, never its speed.
Nothing is written to docs/ (the functions are called directly, as ``--no-write`` does)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest

from bench import memory, p1_fanout, p2_latency
from bench.stack import Progress, progress_bar, template_database
from harness.processes import Server

pytestmark = [pytest.mark.bench_smoke, pytest.mark.xdist_group("bench")]


@pytest.fixture(scope="module")
def template() -> Iterator[str]:
    with template_database() as name:
        yield name


def test_progress_bar_draws_fraction_and_counts() -> None:
    line = progress_bar("P1", 50, 200, started=0.0, width=10)
    assert "[###.......]" in line or "[##........]" in line
    assert "25.0%" in line
    assert "50/200" in line
    Progress("quiet", 10, enabled=False).update(5)  # disabled bars print nothing and do not fail


def test_p1_fanout_persists_every_row(template: str) -> None:
    result = p1_fanout.run(template=template, recipients=2_000, timeout=120, progress=False)

    assert result.all_persisted, result.as_dict()
    assert result.deliveries == result.inbox_items == 2_000
    assert result.per_second > 0
    assert 0 < result.first_delivery_s <= result.last_delivery_s <= result.last_inbox_s
    assert result.last_inbox_s <= result.observed_complete_s


@pytest.mark.parametrize("server", ["uvicorn", "daphne"])
def test_p2_latency_receives_every_frame(template: str, server: Server) -> None:
    result = p2_latency.run(
        template=template, server=server, clients=5, rate=20, seconds=2, grace=30, progress=False
    )

    assert result.http_errors == 0, result.as_dict()
    assert result.accepted == result.sent == 40
    assert result.lost == 0 and result.received == 40, result.as_dict()
    assert result.inbox_rows == 40
    assert result.seq_gaps == 0
    assert 0 < result.p50_ms <= result.p95_ms <= result.p99_ms <= result.max_ms
    assert not math.isnan(result.mean_ms)


@pytest.mark.parametrize("server", ["uvicorn", "daphne"])
def test_memory_per_idle_connection_is_measured(template: str, server: Server) -> None:
    result = memory.run(template=template, server=server, connections=50, progress=False)

    assert result.opened == 50
    assert result.rss_before_kib > 0
    assert result.rss_after_kib >= result.rss_before_kib
    assert result.kib_per_connection >= 0


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert p2_latency.percentile(values, 0.50) == 50.0
    assert p2_latency.percentile(values, 0.99) == 99.0
    assert p2_latency.percentile(values, 1.0) == 100.0
    assert math.isnan(p2_latency.percentile([], 0.5))
