"""A small run of the packet-loss benchmark (bench/rtc_loss.py), so that ``python -m bench
rtc-loss`` cannot rot: under 10% loss in the benchmark's own network namespace the socket
still brings every tick (TCP resends), and the data channel keeps bringing usable states
(each a whole one or a delta from a state the client said it holds) without falling back
to the socket, so a lost frame never breaks the ones after it. Never its speed. Also how
the figures are drawn from the arrivals."""

from __future__ import annotations

import pytest

from bench import rtc_loss

pytestmark = [pytest.mark.bench_smoke, pytest.mark.xdist_group("bench")]


def test_the_figures_come_from_the_arrivals() -> None:
    # ticks 0..9 on time (10 ms of path), tick 5 lost, tick 7 held back 120 ms
    arrivals = [(tick, tick * 0.05 + 0.01) for tick in range(10) if tick != 5]
    arrivals = [(tick, at + (0.12 if tick == 7 else 0)) for tick, at in arrivals]

    figures = rtc_loss.summarize(arrivals, seconds=1.0)

    assert figures["frames"] == 9
    assert figures["received"] == pytest.approx(0.9)
    assert figures["late_p50_ms"] == pytest.approx(0.0, abs=1e-6)
    assert figures["late_p99_ms"] == pytest.approx(120.0, abs=0.5)
    # tick 4 is held from 0.21 s until tick 6 at 0.31 s: 100 ms of age, less the 10 ms of path
    assert 95.0 <= figures["age_max_ms"] <= 110.0, figures
    assert figures["gap_max_ms"] == pytest.approx(100.0, abs=0.5)


def test_under_loss_the_socket_brings_every_tick_and_the_channel_goes_on_without_them(template: str) -> None:
    result = rtc_loss.run(template=template, losses=(10.0,), seconds=3.0, warmup=0.5)

    assert result["loss_tool"] in ("netem", "nftables")
    rows = {row["path"]: row for row in result["runs"]}
    assert set(rows) == {"socket", "rtc"}
    assert rows["socket"]["received"] == 1.0, rows["socket"]
    channel = rows["rtc"]
    assert channel["frames"] > 20 and not channel["fell_back"], channel
    assert 0.5 < channel["received"] < 1.0, "10% of the frames dropped, and the rest usable"
    text = "\n".join(rtc_loss.section({"rtc_loss": result}))
    assert "| 10% | data channel |" in text and "| 10% | websocket |" in text
