"""A small run of P9 (bench/p9_streams.py), so that ``python -m bench p9`` cannot rot: ffmpeg
alone does the ladder of the source file, the platform's ingest does it for the looped
publish, the chat's messages reach every viewer (and the bare publish every bare socket),
the clock burned into the frames is read back from the decoded HLS of both renditions,
and the report renders the three rows and the section. Never its speed."""

from __future__ import annotations

import math
import time

import pytest

from bench import p9_streams, report

pytestmark = [pytest.mark.bench_smoke, pytest.mark.xdist_group("bench")]


def test_the_clock_burned_into_a_frame_reads_back_and_a_damaged_one_does_not() -> None:
    made = int(time.time() * 1000)
    frame = p9_streams.clock_frame(made)
    band_height = p9_streams.CODE_ROWS * p9_streams.BLOCK
    band = frame[: p9_streams.WIDTH * band_height]

    assert len(frame) == p9_streams.WIDTH * p9_streams.HEIGHT
    assert p9_streams.read_clock(band, p9_streams.WIDTH, band_height) == made
    # halved, as the viewer scales the source (every other pixel of every other row)
    halved = bytes(
        band[y * p9_streams.WIDTH + x]
        for y in range(0, band_height, 2)
        for x in range(0, p9_streams.WIDTH, 2)
    )
    assert p9_streams.read_clock(halved, p9_streams.WIDTH // 2, band_height // 2) == made
    # one bit flipped: the CRC refuses it
    bits = p9_streams.clock_bits(made)
    bits[20] ^= 1
    assert p9_streams.bits_clock(bits) is None


def test_p9_ladder_glass_to_glass_and_chat_give_figures_and_report(template: str) -> None:
    result = p9_streams.run(
        template=template,
        seconds=3,
        warmup=2,
        source_seconds=3,
        latency_seconds=6,
        viewers=4,
        chat_rate=2,
        chat_seconds=2,
        client_processes=1,
        progress=False,
    )

    # ffmpeg alone and the platform's ingest both did the ladder, and were measured
    alone, ladder = result.baseline, result.ladder
    assert ladder is not None, result.notes
    assert alone.cores["transcoder"] > 0 and alone.segments > 0, alone
    assert ladder.pids["transcoder"] and ladder.pids["nginx"], ladder.pids
    assert ladder.cores["transcoder"] > 0 and ladder.segments > 0, ladder
    assert 0 < ladder.ladder_share < 1 and ladder.cores["machine"] > 0, ladder
    # the clock came back from both renditions' segments
    assert [r.rendition for r in result.latency] == ["360p", "source"]
    for rendition in result.latency:
        assert rendition.segments > 0 and rendition.read > 0, rendition
        assert rendition.read >= rendition.frames * 0.9, "the clock is read from (nearly) every frame"
        assert 0 < rendition.p50_s <= rendition.p95_s <= rendition.max_s, rendition
        assert rendition.target_duration_s >= 1 and rendition.player_p95_s > rendition.p95_s, rendition
    # every message reached every viewer, on the chat and on the bare baseline
    chat, bare = result.chat, result.chat_baseline
    assert chat is not None and bare is not None, result.notes
    for run in (chat, bare):
        assert run.connected == 4 and run.messages == 4, run
        assert run.delivered == run.expected == 16 and run.duplicates == 0, run
        assert 0 < run.p50_ms <= run.p95_ms <= run.max_ms, run
    assert not chat.refused and not math.isnan(chat.stored_p50_ms), chat
    assert chat.cpu_seconds["web"] > 0 and bare.cpu_seconds["bare server"] >= 0

    data = result.as_dict()
    assert {"ladder_meets_target", "latency_meets_target", "chat_meets_target"} <= set(data)
    rendered = report.render({"p9": data, "machine": report.machine(), "measured_on": {}})
    assert "## P9: live streams" in rendered
    assert "| P9 ladder (passthrough + 480p + 360p) of a 720p30 stream, one live stream |" in rendered
    assert "| P9 glass-to-glass, a clock burned into the source read back from the decoded HLS |" in rendered
    assert "| P9 chat fan-out to 4 viewers, 2 messages/s |" in rendered
    assert "| ffmpeg alone |" in rendered and "| 360p |" in rendered and "| chat |" in rendered
