"""A small run of P6 (bench/p6_iot.py), so that ``python -m bench p6`` cannot rot: devices
provisioned through the service connect with their own credentials, the bare subscriber
and the ingest get every reading, the probe's latency and the alerts' inbox rows are
measured, the bare COPY and the day's queries run, and the report renders. Never its speed."""

from __future__ import annotations

import math

import pytest

from bench import p6_iot, report

pytestmark = [pytest.mark.bench_smoke, pytest.mark.xdist_group("bench")]


def test_p6_stores_every_reading_and_measures_latency_alerts_and_queries(template: str) -> None:
    result = p6_iot.run(
        template=template,
        devices=20,
        rate=200,
        seconds=3,
        ingests=(1,),
        alerts=2,
        generator_processes=2,
        day_readings=600,
        query_calls=2,
        progress=False,
    )

    # the bare subscriber got every message the devices published, and the broker acknowledged them
    bare = result.baseline
    assert bare is not None and bare.published >= 500 and bare.lost == 0, result.as_dict()
    assert bare.acked == bare.published and bare.stored == bare.published
    # the ingest stored every reading once, and the probe's rows were seen
    phase, kept = result.phases
    # the last phase, offered a share of what was stored, stored everything too
    assert kept.kept_up and kept.offered_rate >= 100 and kept.lost == 0 and kept.stored == kept.published
    assert phase.ingest_processes == 1 and phase.published >= 500, result.as_dict()
    assert phase.lost == 0 and phase.stored == phase.published, result.as_dict()
    assert phase.steady_per_second > 0 and phase.latency_samples > 10
    assert 0 < phase.p50_ms <= phase.p95_ms <= phase.p99_ms <= phase.max_ms and not math.isnan(phase.p99_ms)
    assert phase.arrival_p50_ms is not None and phase.arrival_p50_ms >= 0
    # each alerting device's breach reached its recipient's inbox
    assert phase.alerts_missing == 0 and len(phase.alerts) == 2 and all(0 < s < 30 for s in phase.alerts)
    assert phase.cpu_seconds["ingest-1"] > 0 and phase.cpu_seconds["mqtt"] > 0
    # the baselines and the queries of the seeded series
    assert (
        result.copy is not None and result.copy.rows == phase.published and result.copy.logged_per_second > 0
    )
    queries = result.queries
    assert queries is not None and queries.readings == 600
    assert queries.api_minute_points == 10 and queries.api_raw_points == 600
    assert queries.api_minute_ms > 0 and queries.sql_raw_ms > 0 and queries.sql_minute_ms > 0

    rendered = report.render({"p6": result.as_dict(), "machine": report.machine(), "measured_on": {}})
    assert "## P6: MQTT readings ingested and stored" in rendered
    assert "| P6 MQTT readings stored, 20 devices, 200 msg/s offered at QoS 1, 1 ingest process |" in rendered
    assert "| bare broker → paho subscriber (baseline) |" in rendered
