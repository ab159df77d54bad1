"""Inline SVG charts for the staff pages, rendered on the server (no chart library, no CDN).

Pure functions: series in, an ``<svg>`` string out; no model or settings access, so they
are unit-tested on their own. Every label and name is escaped here; the caller marks the
returned string safe where it puts it into a page.

Values are non-negative quantities (counts, latencies): the y axis starts at zero and a
negative value is drawn at zero. ``None`` is a gap (no measurement), not a zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

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

_FONT_SIZE = 11
_CHAR_WIDTH = 6.2  # approximate advance of an 11px sans-serif character, for layout only
_LEGEND_ROW = 14
_PAD_LEFT = 48
_PAD_RIGHT = 10
_PAD_BOTTOM = 18
_MIN_PLOT_HEIGHT = 40

Series = Mapping[str, Sequence[float | None]]


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 × 10^k that is at least ``value`` (1 for nothing to
    show), so the axis maximum is a round number the eye can read."""
    if not math.isfinite(value) or value <= 0:
        return 1.0
    exponent = math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        candidate = step * 10.0**exponent
        if candidate >= value * (1 - 1e-9):
            return candidate
    return 10.0 ** (exponent + 1)  # pragma: no cover - the loop always returns


def _number(value: float) -> str:
    """A coordinate or label: one decimal at most, no trailing ``.0``."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _axis_label(value: float, unit: str) -> str:
    if value >= 10_000:
        text = f"{value / 1000:g}k"
    elif value == int(value):
        text = str(int(value))
    else:
        text = f"{value:g}"
    return f"{text} {unit}" if unit else text


@dataclass(frozen=True)
class _Frame:
    width: int
    height: int
    x0: float
    x1: float
    y0: float
    y1: float
    parts: list[str]


def _normalise(series: Series, length: int) -> dict[str, list[float | None]]:
    """Each series cut or padded (with gaps) to ``length``, negatives drawn at zero."""
    result: dict[str, list[float | None]] = {}
    for name, values in series.items():
        row: list[float | None] = [None if v is None else max(0.0, float(v)) for v in values[:length]]
        row.extend([None] * (length - len(row)))
        result[str(name)] = row
    return result


def _colors_for(names: Sequence[str], colors: Mapping[str, str] | None) -> dict[str, str]:
    chosen: dict[str, str] = {}
    for index, name in enumerate(names):
        given = (colors or {}).get(name)
        chosen[name] = given if given else DEFAULT_COLORS[index % len(DEFAULT_COLORS)]
    return chosen


def _legend_rows(names: Sequence[str], width: float) -> list[list[tuple[str, float]]]:
    """Legend items laid out left to right, wrapped at ``width``: rows of (name, x offset)."""
    rows: list[list[tuple[str, float]]] = []
    row: list[tuple[str, float]] = []
    x = 0.0
    for name in names:
        item_width = 14 + len(name) * _CHAR_WIDTH + 12
        if row and x + item_width > width:
            rows.append(row)
            row, x = [], 0.0
        row.append((name, x))
        x += item_width
    if row:
        rows.append(row)
    return rows


def _frame(
    *,
    names: Sequence[str],
    colors: Mapping[str, str],
    labels: Sequence[str],
    y_max: float | None,
    width: int,
    height: int,
    title: str,
    unit: str,
) -> _Frame:
    """The svg's opening, title, legend, axes and labels; ``y_max`` None: nothing to plot."""
    plot_width = width - _PAD_LEFT - _PAD_RIGHT
    legend = _legend_rows(names, plot_width)
    top = (18 if title else 6) + len(legend) * _LEGEND_ROW + 6
    height = max(height, top + _PAD_BOTTOM + _MIN_PLOT_HEIGHT)
    x0, x1 = float(_PAD_LEFT), float(width - _PAD_RIGHT)
    y0, y1 = float(top), float(height - _PAD_BOTTOM)
    label = escape(title or "chart", quote=True)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{label}" '
        f'font-family="sans-serif" font-size="{_FONT_SIZE}">',
        f"<title>{label}</title>",
    ]
    if title:
        parts.append(f'<text x="{_number(x0)}" y="13" font-weight="bold" fill="currentColor">{label}</text>')
    legend_top = (18 if title else 6) + 2
    for row_index, row in enumerate(legend):
        row_y = legend_top + row_index * _LEGEND_ROW
        for name, offset in row:
            x = x0 + offset
            parts.append(
                f'<rect x="{_number(x)}" y="{row_y}" width="10" height="10" fill="{escape(colors[name], quote=True)}"/>'
                f'<text x="{_number(x + 14)}" y="{row_y + 9}" fill="currentColor">{escape(name)}</text>'
            )
    axis = 'stroke="currentColor" stroke-opacity="0.35" stroke-width="1"'
    parts.append(
        f'<line x1="{_number(x0)}" y1="{_number(y1)}" x2="{_number(x1)}" y2="{_number(y1)}" {axis}/>'
    )
    parts.append(
        f'<line x1="{_number(x0)}" y1="{_number(y0)}" x2="{_number(x0)}" y2="{_number(y1)}" {axis}/>'
    )
    if y_max is None:
        parts.append(
            f'<text x="{_number((x0 + x1) / 2)}" y="{_number((y0 + y1) / 2 + 4)}" text-anchor="middle" '
            f'fill="currentColor" fill-opacity="0.6">No data</text>'
        )
    else:
        grid = 'stroke="currentColor" stroke-opacity="0.12" stroke-dasharray="3 3"'
        mid = (y0 + y1) / 2
        parts.append(
            f'<line x1="{_number(x0)}" y1="{_number(y0)}" x2="{_number(x1)}" y2="{_number(y0)}" {grid}/>'
        )
        parts.append(
            f'<line x1="{_number(x0)}" y1="{_number(mid)}" x2="{_number(x1)}" y2="{_number(mid)}" {grid}/>'
        )
        for value, y in ((y_max, y0), (y_max / 2, mid), (0.0, y1)):
            parts.append(
                f'<text class="y-label" x="{_number(x0 - 4)}" y="{_number(y + 4)}" text-anchor="end" '
                f'fill="currentColor">{escape(_axis_label(value, unit))}</text>'
            )
    if labels:
        shown = (
            sorted({0, len(labels) // 2, len(labels) - 1}) if len(labels) > 2 else list(range(len(labels)))
        )
        for index in shown:
            if len(labels) == 1:
                x, anchor = (x0 + x1) / 2, "middle"
            else:
                x = x0 + index * (x1 - x0) / (len(labels) - 1)
                anchor = "start" if index == 0 else "end" if index == len(labels) - 1 else "middle"
            parts.append(
                f'<text class="x-label" x="{_number(x)}" y="{_number(y1 + 13)}" text-anchor="{anchor}" '
                f'fill="currentColor">{escape(str(labels[index]))}</text>'
            )
    return _Frame(width, height, x0, x1, y0, y1, parts)


def _value_max(rows: Mapping[str, Sequence[float | None]]) -> float | None:
    values = [v for row in rows.values() for v in row if v is not None]
    return max(values) if values else None


def line_chart_svg(
    series: Series,
    *,
    labels: Sequence[str],
    width: int = 640,
    height: int = 180,
    colors: Mapping[str, str] | None = None,
    title: str = "",
    unit: str = "",
) -> str:
    """A line per series over ``labels`` (the x axis, one value per label), with a legend
    and a y axis from 0 to a round maximum. Returns a self-contained ``<svg>`` string;
    without any value it is an empty frame saying "No data"."""
    rows = _normalise(series, len(labels))
    palette = _colors_for(list(rows), colors)
    highest = _value_max(rows)
    y_max = None if highest is None else nice_ceiling(highest)
    frame = _frame(
        names=list(rows),
        colors=palette,
        labels=labels,
        y_max=y_max,
        width=width,
        height=height,
        title=title,
        unit=unit,
    )
    parts = frame.parts
    if y_max is not None:
        count = len(labels)

        def x_at(index: int) -> float:
            if count == 1:
                return (frame.x0 + frame.x1) / 2
            return frame.x0 + index * (frame.x1 - frame.x0) / (count - 1)

        def y_at(value: float) -> float:
            return frame.y1 - value / y_max * (frame.y1 - frame.y0)

        for name, values in rows.items():
            color = escape(palette[name], quote=True)
            commands: list[str] = []
            singles: list[tuple[float, float]] = []
            run: list[tuple[float, float]] = []
            # A gap (None) ends a run: the line is not drawn through missing minutes.
            for index, value in enumerate([*values, None]):
                if value is None:
                    if len(run) == 1:
                        singles.append(run[0])
                    elif run:
                        commands.append("M" + " L".join(f"{_number(x)} {_number(y)}" for x, y in run))
                    run = []
                else:
                    run.append((x_at(index), y_at(value)))
            name_text = escape(name)
            parts.append(
                f'<g class="series" data-series="{escape(name, quote=True)}"><title>{name_text}</title>'
            )
            if commands:
                parts.append(
                    f'<path d="{" ".join(commands)}" fill="none" stroke="{color}" stroke-width="1.5" '
                    f'stroke-linejoin="round"/>'
                )
            for x, y in singles:
                parts.append(f'<circle cx="{_number(x)}" cy="{_number(y)}" r="2" fill="{color}"/>')
            parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def bar_chart_svg(
    series: Series,
    *,
    labels: Sequence[str],
    width: int = 640,
    height: int = 180,
    colors: Mapping[str, str] | None = None,
    title: str = "",
    unit: str = "",
) -> str:
    """Stacked bars, one per label: each series a segment, in the order given (the first
    at the bottom). Each bar has a tooltip with its label and values. Returns a
    self-contained ``<svg>`` string; without any value it says "No data"."""
    rows = _normalise(series, len(labels))
    palette = _colors_for(list(rows), colors)
    totals = [sum(row[i] or 0.0 for row in rows.values()) for i in range(len(labels))]
    has_values = any(v is not None for row in rows.values() for v in row)
    y_max = nice_ceiling(max(totals)) if has_values and totals else None
    frame = _frame(
        names=list(rows),
        colors=palette,
        labels=labels,
        y_max=y_max,
        width=width,
        height=height,
        title=title,
        unit=unit,
    )
    parts = frame.parts
    if y_max is not None:
        slot = (frame.x1 - frame.x0) / len(labels)
        bar = max(1.0, slot * 0.8)
        scale = (frame.y1 - frame.y0) / y_max
        for index, label in enumerate(labels):
            if not totals[index]:
                continue
            x = frame.x0 + index * slot + (slot - bar) / 2
            tip = escape(
                f"{label}: " + ", ".join(f"{name} {_number(row[index] or 0.0)}" for name, row in rows.items())
            )
            parts.append(f'<g class="bar"><title>{tip}</title>')
            base = frame.y1
            for name, row in rows.items():
                value = row[index] or 0.0
                if value <= 0:
                    continue
                h = value * scale
                parts.append(
                    f'<rect x="{_number(x)}" y="{_number(base - h)}" width="{_number(bar)}" '
                    f'height="{_number(h)}" fill="{escape(palette[name], quote=True)}"/>'
                )
                base -= h
            parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)
