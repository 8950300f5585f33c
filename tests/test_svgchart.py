"""Server-side SVG charts: well-formed, the drawn dots carry the values, hostile names escaped."""

from __future__ import annotations

import itertools
import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from statsyard_agent._graphite_funcs import Series
from statsyard_agent._svgchart import MAX_DOTS, nice_ticks, render_svg, time_ticks

SVG = "{http://www.w3.org/2000/svg}"
T0 = 1_700_000_000


def series(name: str, values: list[float], start: int = T0, step: int = 10) -> Series:
    return Series(name, {"name": name}, start, step, np.array(values, dtype=np.float64), name)


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def test_dots_carry_time_and_value_and_long_gaps_break_the_line() -> None:
    values = [1, 2, math.nan, 4, 5, math.nan, math.nan, math.nan, 9]
    svg = parse(render_svg([series("a.b", values)], width=600, height=300, start=T0, end=T0 + 90))
    dots = svg.findall(f".//{SVG}circle")
    assert [(int(d.get("data-t", "")), float(d.get("data-v", ""))) for d in dots] == [
        (T0, 1.0),
        (T0 + 10, 2.0),
        (T0 + 30, 4.0),
        (T0 + 40, 5.0),
        (T0 + 80, 9.0),
    ]
    # a one-slot gap is joined (points may come once per flush), a four-slot one is not
    lines = svg.findall(f".//{SVG}polyline")
    assert [len(line.get("points", "").split()) for line in lines] == [4]
    group = svg.find(f".//{SVG}g[@class='series']")
    assert group is not None
    assert group.get("data-target") == "a.b"
    assert (svg.get("width"), svg.get("height")) == ("600", "300")


def test_points_sparser_than_the_step_are_joined() -> None:
    values = [1.0 if i % 3 == 0 else math.nan for i in range(30)]
    svg = parse(render_svg([series("s", values, step=1)], width=600, height=300, start=T0, end=T0 + 30))
    lines = svg.findall(f".//{SVG}polyline")
    assert [len(line.get("points", "").split()) for line in lines] == [10]


def test_higher_values_are_drawn_higher() -> None:
    svg = parse(render_svg([series("a", [1, 5, 3])], width=400, height=200, start=T0, end=T0 + 30))
    ys = [float(d.get("cy", "")) for d in svg.findall(f".//{SVG}circle")]
    assert ys[1] < ys[2] < ys[0]


def test_hostile_names_are_escaped() -> None:
    evil = '<script>alert(1)</script>" onload="x'
    svg_text = render_svg(
        [series(evil, [1, 2])], width=400, height=200, start=T0, end=T0 + 20, title="<b>t</b>"
    )
    assert "<script>" not in svg_text
    assert "<b>" not in svg_text
    svg = parse(svg_text)
    assert not [e for e in svg.iter() if any(k.startswith("on") for k in e.attrib)]
    group = svg.find(f".//{SVG}g[@class='series']")
    assert group is not None
    assert group.get("data-target") == evil


def test_empty_chart_says_so() -> None:
    svg = parse(render_svg([], width=400, height=200, start=T0, end=T0 + 60))
    empty = svg.find(f".//{SVG}text[@class='empty']")
    assert empty is not None
    assert empty.text == "no data in this range"
    svg = parse(render_svg([series("a", [math.nan] * 3)], width=400, height=200, start=T0, end=T0 + 60))
    assert svg.find(f".//{SVG}text[@class='empty']") is not None


def test_many_points_draw_lines_without_dots() -> None:
    values = list(np.sin(np.arange(MAX_DOTS + 1) / 10))
    svg = parse(
        render_svg([series("s", values, step=1)], width=800, height=300, start=T0, end=T0 + MAX_DOTS + 1)
    )
    assert not svg.findall(f".//{SVG}circle")
    assert len(svg.findall(f".//{SVG}polyline")) == 1


def test_legend_lists_series_and_counts_the_rest() -> None:
    many = [series(f"s{i}", [float(i)]) for i in range(9)]
    svg = parse(render_svg(many, width=800, height=400, start=T0, end=T0 + 10))
    legend = svg.find(f".//{SVG}g[@class='legend']")
    assert legend is not None
    texts = [t.text or "" for t in legend.findall(f"{SVG}text")]
    assert texts[0].startswith("s0")
    assert texts[-1] == "and 3 more"


@given(st.floats(-1e12, 1e12, allow_nan=False), st.floats(1e-6, 1e12, allow_nan=False))
def test_nice_ticks_are_round_and_cover_the_range(low: float, span: float) -> None:
    high = low + span
    assume(high > low)
    ticks = nice_ticks(low, high)
    assert 2 <= len(ticks) <= 20
    assert ticks == sorted(ticks)
    magnitude = max(abs(low), abs(high), 1.0)
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert max(gaps) - min(gaps) <= 1e-6 * max(gaps) + 1e-9 * magnitude
    assert ticks[0] >= low - 1e-9 * magnitude
    assert ticks[-1] <= high + 1e-9 * magnitude


@pytest.mark.parametrize(
    ("span", "step"), [(60, 10), (300, 60), (3600, 600), (86400, 21600), (7 * 86400, 86400 * 2)]
)
def test_time_ticks_are_round(span: int, step: int) -> None:
    ticks = time_ticks(T0, T0 + span)
    assert 2 <= len(ticks) <= 7
    assert all(t % step == 0 for t in ticks)
    assert ticks[0] >= T0
    assert ticks[-1] <= T0 + span
