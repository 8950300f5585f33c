"""Line charts as standalone SVG, rendered on the server (no JavaScript chart library needed).

:func:`render_svg` draws every series of a render request on one time axis: a polyline through
its non-null points (broken where a gap is well beyond their usual spacing), a dot per point
when there are few enough to see them (each dot carries ``data-t`` / ``data-v`` and a
``<title>`` tooltip, so a browser test can read what is drawn),
"nice" value ticks, UTC time ticks and a legend. Every piece of text is XML-escaped: series
names and tags come from the network. Only presentation attributes are used (no ``style``),
so the SVG can be inlined under a strict Content-Security-Policy.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Sequence
from html import escape

import numpy as np

from ._graphite_funcs import Series

__all__ = ["PALETTE", "nice_ticks", "render_svg", "time_ticks"]

PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
#: Dots are drawn (and carry their values) up to this many points per chart.
MAX_DOTS = 400
_LEGEND_LINES = 6
_TIME_STEPS = (
    1,
    2,
    5,
    10,
    15,
    30,
    60,
    120,
    300,
    600,
    900,
    1800,
    3600,
    7200,
    10800,
    21600,
    43200,
    86400,
    2 * 86400,
    7 * 86400,
    14 * 86400,
    30 * 86400,
)


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values within ``[low, high]`` (steps of 1, 2, 2.5 or 5 times a power of 10);
    just the two ends when the range is too narrow for its magnitude to step through."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low]
    raw = (high - low) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first, last = math.ceil(low / step), math.floor(high / step)
    if first * step + step == first * step or first > last:  # beyond float precision here
        return [low, high]
    return [round(k * step, 12) for k in range(first, last + 1)][: 4 * count]


def time_ticks(start: int, end: int, count: int = 6) -> list[int]:
    """Round UTC times in ``[start, end]``, about ``count`` of them."""
    span = max(end - start, 1)
    step = next((s for s in _TIME_STEPS if span / s <= count), _TIME_STEPS[-1])
    first = -(-start // step) * step
    return list(range(first, end + 1, step))


def _format_value(value: float) -> str:
    magnitude = abs(value)
    for threshold, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if magnitude >= threshold:
            return f"{value / threshold:.4g}{suffix}"
    if magnitude and magnitude < 1e-3:
        return f"{value:.2e}"
    return f"{value:.4g}"


def _format_time(stamp: int, span: int) -> str:
    moment = datetime.datetime.fromtimestamp(stamp, datetime.UTC)
    if span > 2 * 86400:
        return moment.strftime("%m-%d %H:%M")
    if span <= 600:
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%H:%M")


def _attr(value: object) -> str:
    return escape(str(value), quote=True)


def render_svg(
    series_list: Sequence[Series], *, width: int, height: int, start: int, end: int, title: str = ""
) -> str:
    """One chart of every series over ``[start, end)`` as an SVG document (a string)."""
    legend = min(len(series_list), _LEGEND_LINES) + (1 if len(series_list) > _LEGEND_LINES else 0)
    top = 28 if title else 12
    left, right, bottom = 64, 16, 34 + 16 * legend
    plot_w = max(width - left - right, 10)
    plot_h = max(height - top - bottom, 10)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_attr(title or "chart")}" '
        f'data-from="{start}" data-until="{end}" font-family="sans-serif" font-size="11">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
    ]
    if title:
        out.append(
            f'<text x="{left}" y="18" font-size="13" font-weight="bold" fill="#222">{escape(title)}</text>'
        )

    finite = [s.values[np.isfinite(s.values)] for s in series_list]
    values = np.concatenate(finite) if finite else np.array([])
    if values.size:
        low, high = float(values.min()), float(values.max())
        if low >= 0:
            low = 0.0
        if high == low:
            pad = abs(high) * 0.1 or 1.0
            high, low = high + pad, (low - pad if low < 0 else low)
        ticks = nice_ticks(low, high)
        low, high = min(low, ticks[0]), max(high, ticks[-1])
    else:
        low, high, ticks = 0.0, 1.0, []

    t0, t1 = start, max(end, start + 1)

    def x_of(t: float) -> float:
        return left + (t - t0) / (t1 - t0) * plot_w

    def y_of(v: float) -> float:
        return top + plot_h - (v - low) / (high - low) * plot_h

    out.append('<g class="grid" stroke="#e6e6e6" stroke-width="1">')
    for tick in ticks:
        y = y_of(tick)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}"/>')
    for stamp in time_ticks(t0, t1):
        x = x_of(stamp)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}"/>')
    out.append("</g>")
    out.append('<g class="axis" fill="#555">')
    for tick in ticks:
        out.append(
            f'<text x="{left - 6}" y="{y_of(tick) + 4:.1f}" text-anchor="end">'
            f"{escape(_format_value(tick))}</text>"
        )
    for stamp in time_ticks(t0, t1):
        out.append(
            f'<text x="{x_of(stamp):.1f}" y="{top + plot_h + 15}" text-anchor="middle">'
            f"{escape(_format_time(stamp, t1 - t0))}</text>"
        )
    out.append(f'<text x="{left + plot_w}" y="{top + plot_h + 28}" text-anchor="end" fill="#888">UTC</text>')
    out.append("</g>")
    out.append(
        f'<rect class="frame" x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" '
        f'fill="none" stroke="#bbb"/>'
    )

    if not values.size:
        out.append(
            f'<text class="empty" x="{left + plot_w / 2:.1f}" y="{top + plot_h / 2:.1f}" '
            f'text-anchor="middle" fill="#999" font-size="14">no data in this range</text>'
        )

    dots = sum(int(f.size) for f in finite) <= MAX_DOTS
    for index, s in enumerate(series_list):
        color = PALETTE[index % len(PALETTE)]
        out.append(
            f'<g class="series" data-target="{_attr(s.name)}" data-index="{index}" '
            f'stroke="{color}" fill="{color}">'
        )
        stamps = s.start + np.arange(len(s.values), dtype=np.int64) * s.step
        shown = np.flatnonzero(np.isfinite(s.values) & (stamps >= t0) & (stamps <= t1))
        # Points arrive once per flush, which may be coarser than the step: consecutive points
        # are joined unless the gap is well beyond their usual spacing (a real outage).
        gaps = np.diff(shown)
        longest = 2 * float(np.median(gaps)) if gaps.size else 1.0
        runs = np.split(shown, np.flatnonzero(gaps > max(longest, 1.0)) + 1) if shown.size else []
        for run in runs:
            if run.size > 1:
                coords = " ".join(f"{x_of(int(stamps[i])):.1f},{y_of(float(s.values[i])):.1f}" for i in run)
                out.append(f'<polyline fill="none" stroke-width="1.5" points="{coords}"/>')
        if dots:
            for t, v in zip(stamps.tolist(), s.values.tolist(), strict=True):
                if math.isfinite(v) and t0 <= t <= t1:
                    label = f"{s.name}\n{_format_time(t, 0)} UTC\n{v:g}"
                    out.append(
                        f'<circle class="point" cx="{x_of(t):.1f}" cy="{y_of(v):.1f}" r="2.5" '
                        f'stroke="none" data-t="{t}" data-v="{v!r}"><title>{escape(label)}'
                        "</title></circle>"
                    )
        out.append("</g>")

    out.append('<g class="legend" font-size="12">')
    base = top + plot_h + 34
    for index, s in enumerate(series_list[:_LEGEND_LINES]):
        color = PALETTE[index % len(PALETTE)]
        y = base + 16 * index
        present = s.values[np.isfinite(s.values)]
        last = f"  last {_format_value(float(present[-1]))}" if present.size else "  no data"
        out.append(f'<rect x="{left}" y="{y - 9}" width="10" height="10" fill="{color}"/>')
        out.append(f'<text x="{left + 16}" y="{y}" fill="#222">{escape(s.name)}{escape(last)}</text>')
    if len(series_list) > _LEGEND_LINES:
        y = base + 16 * _LEGEND_LINES
        out.append(f'<text x="{left}" y="{y}" fill="#666">and {len(series_list) - _LEGEND_LINES} more</text>')
    out.append("</g></svg>")
    return "\n".join(out)
