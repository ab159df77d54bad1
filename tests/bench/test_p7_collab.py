"""A small run of P7 (bench/p7_collab.py), so that ``python -m bench p7`` cannot rot: the
trace replayed through both modes converges and is stored, the editing load delivers
every edit, storage is measured before and after compaction, and the report renders.
Never its speed. Also the trace generator's shape and the OT client's composition."""

from __future__ import annotations

import math
import random

import pytest

from bench import editing_trace, ot_text, p7_collab, report

pytestmark = [pytest.mark.bench_smoke, pytest.mark.xdist_group("bench")]


def test_the_trace_has_b4s_counts_and_final_length() -> None:
    trace = editing_trace.b4_shaped()

    assert len(trace.operations) == 259_778
    assert (trace.inserts, trace.deletes) == (182_315, 77_463)
    assert len(trace.final_text) == 104_852
    # the same seed gives the same trace
    assert editing_trace.b4_shaped().operations[:1000] == trace.operations[:1000]
    # mostly typing and backspacing where the last operation left the cursor, with jumps
    jumps = sum(
        1
        for (position, _, _), (previous, _, _) in zip(trace.operations[1:], trace.operations, strict=False)
        if abs(position - previous) > 1
    )
    assert 100 < jumps < len(trace.operations) * 0.05, jumps


def test_a_scaled_trace_replays_to_its_final_text() -> None:
    trace = editing_trace.scaled(3_000, seed=11)
    text = ""
    for position, deleted, inserted in trace.operations:
        text = text[:position] + inserted + text[position + deleted :]

    assert text == trace.final_text
    assert trace.inserts + trace.deletes == 3_000


def test_composed_ot_operations_do_what_they_did_one_by_one() -> None:
    rng = random.Random(3)
    for _ in range(500):
        text = "".join(rng.choice("abc") for _ in range(rng.randint(0, 12)))
        current, composed = text, None
        for _ in range(rng.randint(1, 8)):
            if current and rng.random() < 0.4:
                op = ot_text.op_at(rng.randrange(len(current)), delete=1)
            else:
                op = ot_text.op_at(rng.randint(0, len(current)), insert=rng.choice("XYZ"))
            current = ot_text.apply(current, op)
            composed = op if composed is None else ot_text.compose(composed, op)
        assert composed is not None and ot_text.apply(text, composed) == current


def test_p7_replays_the_trace_through_both_modes_and_measures_the_editing_load(template: str) -> None:
    result = p7_collab.run(
        template=template,
        operations=2_000,
        documents=2,
        editors=3,
        rate=5,
        seconds=2,
        sequential=30,
        progress=False,
    )

    # the trace went through /ws/docs: the peer and the server hold its final text
    assert result.yjs.converged and result.yjs.stored_matches, result.as_dict()
    assert result.yjs.frames_sent >= 2_000 and result.yjs.bytes_sent > result.baseline["update_bytes"]
    assert result.baseline["updates"] == 2_000 and result.baseline["apply_seconds"] > 0
    # and through the OT mode, composed into fewer frames
    assert result.ot is not None and result.ot.converged and result.ot.stored_matches, result.as_dict()
    assert 0 < result.ot.frames_sent <= 2_000
    # each mode one operation at a time
    assert [step.mode for step in result.one_at_a_time] == ["yjs", "ot"]
    assert all(step.operations == 30 and 0 < step.p50_ms <= step.p95_ms for step in result.one_at_a_time)
    # storage before compaction, and the snapshot after
    storage = result.storage
    assert storage.replay_converged and storage.rows_before >= 1
    assert 0 < storage.stored_bytes_compacted <= storage.stored_bytes_before, storage
    assert storage.ot_text_bytes == result.trace["final_characters"]
    # the editing load: every edit reached every other editor, and all converged
    load = result.load
    assert load is not None and load.edits == 2 * 3 * 10, result.as_dict()
    assert load.lost == 0 and load.received == load.expected == load.edits * 2, result.as_dict()
    assert load.converged
    assert 0 < load.p50_ms <= load.p95_ms <= load.p99_ms <= load.max_ms and not math.isnan(load.p99_ms)

    rendered = report.render({"p7": result.as_dict(), "machine": report.machine(), "measured_on": {}})
    assert "## P7: collaborative documents" in rendered
    assert "| P7 editing trace, 2,000 single-character operations through `/ws/docs`" in rendered
    assert "| P7 2 documents × 3 editors × 5 edits/s" in rendered
