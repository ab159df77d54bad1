"""Charts of the staff pages: the server says what to draw, Chart.js draws it in the
browser (notifications/static/notifications/charts.js with the bundle of vendor/chart.js,
pinned in package.json).

Pure functions: series in, a chart (a spec and its HTML) out; no model or settings access.
A spec is plain JSON: ``{"type": "line" | "bar", "title", "unit", "labels", "stacked",
"series": [{"name", "color", "values"}]}``; ``None`` in values is a gap (no measurement),
not a zero. The HTML is a ``<figure>`` whose canvas carries the spec as an attribute
(escaped by Django's json_script rules), with the title as its caption and accessible
name, and a "No data" note when nothing is to be drawn.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

DEFAULT_COLORS = (
    "#2f7ed8",
    "#d9534f",
    "#5cb85c",
    "#f0ad4e",
    "#8e44ad",
    "#17a2b8",
    "#795548",
    "#e83e8c",
    "#6c757d",
    "#343a40",
)

Series = Mapping[str, Sequence[float | None]]


def _values(values: Sequence[float | None], length: int) -> list[float | None]:
    """``length`` values: cut or padded with gaps; negatives drawn at zero."""
    out = [None if v is None else max(0.0, float(v)) for v in list(values)[:length]]
    return out + [None] * (length - len(out))


def chart_spec(
    series: Series,
    *,
    kind: str,
    labels: Sequence[str],
    title: str,
    colors: Mapping[str, str] | None = None,
    unit: str = "",
    stacked: bool = False,
) -> dict[str, Any]:
    """What the browser draws: one dataset per series, in the order given."""
    palette = iter(DEFAULT_COLORS * (len(series) // len(DEFAULT_COLORS) + 1))
    return {
        "type": kind,
        "title": title,
        "unit": unit,
        "labels": [str(label) for label in labels],
        "stacked": stacked,
        "series": [
            {
                "name": str(name),
                "color": (colors or {}).get(name) or next(palette),
                "values": _values(values, len(labels)),
            }
            for name, values in series.items()
        ],
    }


def chart_has_data(spec: Mapping[str, Any]) -> bool:
    return any(v is not None and v > 0 for s in spec["series"] for v in s["values"])


def chart_html(spec: Mapping[str, Any], *, width: int = 720, height: int = 200) -> SafeString:
    """The figure the page's charts.js draws into; every text is escaped."""
    empty = "" if chart_has_data(spec) else mark_safe('<p class="chart-empty">No data in this window</p>')
    return format_html(
        '<figure class="chart" style="width:{}px;max-width:100%"><figcaption>{}</figcaption>{}'
        '<div class="chart-box" style="height:{}px"><canvas data-chart="{}" role="img" aria-label="{}">'
        "</canvas></div></figure>",
        width,
        spec["title"],
        empty,
        height,
        json.dumps(spec, separators=(",", ":")),
        spec["title"],
    )


def line_chart(series: Series, **options: Any) -> dict[str, Any]:
    return chart_spec(series, kind="line", **options)


def bar_chart(series: Series, **options: Any) -> dict[str, Any]:
    """Stacked bars: each label's bar is the sum of its series."""
    return chart_spec(series, kind="bar", stacked=True, **options)
