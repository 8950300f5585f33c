"""Render functions on hand-made series: values and names as graphite-web 1.1 gives them.

A fake fetcher serves series defined at every time (value = f(t)), so functions that look
outside the requested range (movingAverage, timeShift) can be checked exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statsyard_agent._exceptions import QueryError
from statsyard_agent._graphite_funcs import (
    AGGREGATIONS,
    FUNCTIONS,
    Context,
    Series,
    TagExpression,
    consolidate,
    evaluate,
    functions_json,
    normalize,
    parse_tag_expression,
)
from statsyard_agent.storage import Glob

NAN = math.nan
T0 = 1_700_000_400  # a multiple of 60 and 3600


@dataclass
class FakeSeries:
    name: str
    step: int
    value: Callable[[int], float]
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class FakeFetcher:
    """Serves :class:`FakeSeries` for any range; records every call."""

    series: list[FakeSeries]
    calls: list[tuple[str, int, int, int | None]] = field(default_factory=list)

    def _make(self, s: FakeSeries, start: int, end: int, expression: str) -> Series:
        first = -(-start // s.step) * s.step
        stamps = range(first, end, s.step)
        values = np.array([s.value(t) for t in stamps], dtype=np.float64)
        name = s.name + "".join(f";{k}={v}" for k, v in sorted(s.tags.items()))
        return Series(name, {**s.tags, "name": s.name}, first, s.step, values, expression)

    def fetch_path(self, path: str, start: int, end: int, max_points: int | None) -> list[Series]:
        self.calls.append((path, start, end, max_points))
        glob = Glob(path)
        return [self._make(s, start, end, path) for s in self.series if glob.match(s.name)]

    def fetch_tagged(
        self, expressions: Sequence[TagExpression], start: int, end: int, max_points: int | None
    ) -> list[Series]:
        self.calls.append(("seriesByTag", start, end, max_points))
        return [
            self._make(s, start, end, "x")
            for s in self.series
            if all(e.matches({**s.tags, "name": s.name}) for e in expressions)
        ]


def table(values: dict[int, float]) -> Callable[[int], float]:
    return lambda t: values.get(t, NAN)


def run(
    target: str, fetcher: FakeFetcher, start: int = T0, end: int = T0 + 60, max_points: int | None = None
) -> list[Series]:
    return evaluate(target, Context(fetcher, start, end, end, max_points))


def vals(series: Series) -> list[float | None]:
    return [None if math.isnan(v) else v for v in series.values.tolist()]


def points(*values: float, start: int = T0, step: int = 10) -> Callable[[int], float]:
    return table({start + i * step: v for i, v in enumerate(values)})


@pytest.fixture
def fetcher() -> FakeFetcher:
    return FakeFetcher(
        [
            FakeSeries("a.x", 10, points(1, 2, NAN, 4, 5, 6)),
            FakeSeries("a.y", 10, points(10, NAN, 30, 40, NAN, 60)),
            FakeSeries("a.z", 10, points(NAN, NAN, NAN, NAN, NAN, NAN)),
            FakeSeries("b.tagged", 10, points(7, 7, 7, 7, 7, 7), {"env": "prod", "dc": "eu"}),
            FakeSeries("b.other", 10, points(1, 1, 1, 1, 1, 1), {"env": "dev", "dc": "eu"}),
        ]
    )


# -- combine -----------------------------------------------------------------------------------

COMBINE = [
    ("sumSeries(a.{x,y})", "sumSeries(a.{x,y})", [11, 2, 30, 44, 5, 66]),
    ("sum(a.x, a.y)", "sumSeries(a.x,a.y)", [11, 2, 30, 44, 5, 66]),
    ("averageSeries(a.{x,y})", "averageSeries(a.{x,y})", [5.5, 2, 30, 22, 5, 33]),
    ("avg(a.*)", "averageSeries(a.*)", [5.5, 2, 30, 22, 5, 33]),
    ("maxSeries(a.*)", "maxSeries(a.*)", [10, 2, 30, 40, 5, 60]),
    ("minSeries(a.*)", "minSeries(a.*)", [1, 2, 30, 4, 5, 6]),
    ("aggregate(a.*, 'count')", "countSeries(a.*)", [2, 1, 1, 2, 1, 2]),
    ("sumSeries(a.z)", "sumSeries(a.z)", [None] * 6),
]


@pytest.mark.parametrize(("target", "name", "expected"), COMBINE)
def test_combining_functions(
    fetcher: FakeFetcher, target: str, name: str, expected: list[float | None]
) -> None:
    [out] = run(target, fetcher)
    assert out.name == name
    assert vals(out) == expected
    assert (out.start, out.step) == (T0, 10)


def test_aggregated_series_keep_common_tags_and_say_how(fetcher: FakeFetcher) -> None:
    [out] = run("sumSeries(b.*)", fetcher)
    assert out.tags == {"dc": "eu", "name": "sumSeries(b.*)", "aggregatedBy": "sum"}


def test_combining_nothing_gives_nothing(fetcher: FakeFetcher) -> None:
    assert run("sumSeries(nothing.*)", fetcher) == []
    assert run("percentileOfSeries(nothing.*, 50)", fetcher) == []


def test_series_of_different_steps_combine_on_the_common_multiple() -> None:
    fetcher = FakeFetcher(
        [
            FakeSeries("s.ten", 10, points(1, 3, 5, 7, 9, 11)),
            FakeSeries("s.twenty", 20, points(100, 200, 300, step=20)),
        ]
    )
    [out] = run("sumSeries(s.*)", fetcher)
    assert out.step == 20
    # the 10 s series is averaged in pairs (its consolidation), then added
    assert vals(out) == [102, 206, 310]


def test_series_starting_at_different_times_are_aligned_by_time() -> None:
    fetcher = FakeFetcher(
        [
            FakeSeries("s.early", 10, points(1, 1, 1, 1, 1, 1)),
            FakeSeries("s.late", 10, points(5, 5, 5, start=T0 + 30)),
        ]
    )
    a, b = run("s.*", fetcher)
    _matrix, start, step = normalize([a, b])
    assert (start, step) == (T0, 10)
    [out] = run("sumSeries(s.*)", fetcher)
    assert vals(out) == [1, 1, 1, 6, 6, 6]


# -- aggregation functions on one row, nulls ignored -------------------------------------------------

ROW = [4.0, NAN, 1.0, 3.0, 2.0]
AGG_EXPECTED = {
    "average": 2.5,
    "avg": 2.5,
    "avg_zero": 2.0,
    "median": 3.0,
    "sum": 10.0,
    "total": 10.0,
    "min": 1.0,
    "max": 4.0,
    "diff": -2.0,
    "stddev": math.sqrt(1.25),
    "count": 4.0,
    "range": 3.0,
    "rangeOf": 3.0,
    "multiply": 24.0,
    "first": 4.0,
    "last": 2.0,
    "current": 2.0,
}


@pytest.mark.parametrize("name", sorted(AGGREGATIONS))
def test_aggregation_functions(name: str) -> None:
    matrix = np.array([ROW, [NAN] * 5])
    out = AGGREGATIONS[name](matrix, 1)
    assert out[0] == pytest.approx(AGG_EXPECTED[name])
    empty = 0.0 if name == "avg_zero" else None
    assert (None if math.isnan(out[1]) else out[1]) == empty


# -- consolidation ---------------------------------------------------------------------------------


def test_consolidate_aligns_buckets_to_their_width() -> None:
    s = Series("s", {"name": "s"}, T0 + 10, 10, np.array([1.0, 2, 3, 4, 5, 6, 7]), "s")
    out = consolidate(s, 3, "sum")
    assert (out.start, out.step) == (T0, 30)  # T0 is a multiple of 30
    assert vals(out) == [3, 12, 13]


@pytest.mark.parametrize(
    ("func", "expected"),
    [("average", [1.5, 3.5, 5]), ("max", [2, 4, 5]), ("last", [2, 4, 5]), ("first", [1, 3, 5])],
)
def test_consolidate_by_function(func: str, expected: list[float]) -> None:
    s = Series("s", {"name": "s"}, T0, 10, np.array([1.0, 2, 3, 4, 5]), "s")
    assert vals(consolidate(s, 2, func)) == expected


# -- alias -----------------------------------------------------------------------------------------

ALIASES = [
    ("alias(a.x, 'nice name')", ["nice name"]),
    ("aliasByNode(a.*, 1)", ["x", "y", "z"]),
    ("aliasByNode(a.*, 0, -1)", ["a.x", "a.y", "a.z"]),
    ("aliasByNode(scale(a.x, 2), 1)", ["x"]),
    ("aliasByNode(b.tagged, 'env', 1)", ["prod.tagged"]),
    ("aliasByNode(b.tagged, 9)", [""]),
    ("aliasSub(a.x, '^a\\.(.*)$', 'got \\1')", ["got x"]),
    ("seriesByTag('env=prod')|aliasByNode('dc', 0)", ["eu.b"]),
]


@pytest.mark.parametrize(("target", "names"), ALIASES)
def test_alias_functions(fetcher: FakeFetcher, target: str, names: list[str]) -> None:
    assert [s.name for s in run(target, fetcher)] == names


# -- transforms ------------------------------------------------------------------------------------

TRANSFORMS = [
    ("scale(a.x, 2)", "scale(a.x,2)", [2, 4, None, 8, 10, 12]),
    ("scale(a.x, 0.5)", "scale(a.x,0.5)", [0.5, 1, None, 2, 2.5, 3]),
    ("offset(a.x, -1)", "offset(a.x,-1)", [0, 1, None, 3, 4, 5]),
    ("absolute(scale(a.x, -1))", "absolute(scale(a.x,-1))", [1, 2, None, 4, 5, 6]),
    ("perSecond(c.counter)", "perSecond(c.counter)", [None, 0.2, 0.3, None, None, None]),
    ("perSecond(c.counter, 10)", "perSecond(c.counter)", [None, 0.2, 0.3, 0.7, None, None]),
    ("nonNegativeDerivative(c.counter)", "nonNegativeDerivative(c.counter)", [None, 2, 3, None, None, None]),
    ("derivative(c.counter)", "derivative(c.counter)", [None, 2, 3, -4, None, None]),
    ("integral(a.x)", "integral(a.x)", [1, 3, None, 7, 12, 18]),
    ("transformNull(a.x)", "transformNull(a.x,0)", [1, 2, 0, 4, 5, 6]),
    ("transformNull(a.x, -1)", "transformNull(a.x,-1)", [1, 2, -1, 4, 5, 6]),
    ("keepLastValue(a.y)", "keepLastValue(a.y)", [10, 10, 30, 40, 40, 60]),
    ("keepLastValue(c.gaps, 1)", "keepLastValue(c.gaps)", [1, None, None, 4, 4, 6]),
]


@pytest.mark.parametrize(("target", "name", "expected"), TRANSFORMS)
def test_transforms(fetcher: FakeFetcher, target: str, name: str, expected: list[float | None]) -> None:
    fetcher.series += [
        FakeSeries("c.counter", 10, points(1, 3, 6, 2, NAN, 10)),
        FakeSeries("c.gaps", 10, points(1, NAN, NAN, 4, NAN, 6)),
    ]
    [out] = run(target, fetcher)
    assert out.name == name
    assert vals(out) == pytest.approx(expected)


def test_transforms_record_themselves_in_tags(fetcher: FakeFetcher) -> None:
    [out] = run("scale(a.x, 2)", fetcher)
    assert out.tags == {"name": "a.x", "scale": "2"}
    assert out.path_expression == "scale(a.x,2)"


def test_summarize_sums_into_interval_buckets() -> None:
    fetcher = FakeFetcher([FakeSeries("s", 10, lambda t: (t - T0) // 10)])
    [out] = run("summarize(s, '1min')", fetcher, T0, T0 + 180)
    assert out.name == 'summarize(s, "1min", "sum")'
    assert (out.start, out.step) == (T0, 60)
    assert vals(out) == [15, 51, 87]  # 0..5, 6..11, 12..17
    assert out.tags["summarize"] == "1min"
    [out] = run("summarize(s, '1min', 'max')", fetcher, T0 + 30, T0 + 150)
    assert (out.start, vals(out)) == (T0, [5, 11, 14])


def test_summarize_align_to_from() -> None:
    fetcher = FakeFetcher([FakeSeries("s", 10, lambda t: 1)])
    [out] = run("summarize(s, '1min', 'sum', true)", fetcher, T0 + 30, T0 + 150)
    assert out.name == 'summarize(s, "1min", "sum", true)'
    assert (out.start, vals(out)) == (T0 + 30, [6, 6])


def test_moving_average_looks_back_before_the_range(fetcher: FakeFetcher) -> None:
    fetcher.series = [FakeSeries("m", 10, lambda t: float((t - T0) // 10))]
    [out] = run("movingAverage(m, 3)", fetcher, T0, T0 + 50, max_points=100)
    assert out.name == "movingAverage(m,3)"
    assert out.start == T0
    # each point: the mean of the 3 points before it (graphite-web 1.1), -3..-1 for the first
    assert vals(out) == [-2, -1, 0, 1, 2]
    assert all(call[3] is None for call in fetcher.calls), "its input is read at full resolution"
    [out] = run("movingAverage(m, '30s')", fetcher, T0, T0 + 50)
    assert out.name == 'movingAverage(m,"30s")'
    assert vals(out) == [-2, -1, 0, 1, 2]


def test_moving_average_window_with_too_few_points_is_null() -> None:
    fetcher = FakeFetcher([FakeSeries("m", 10, points(1, NAN, NAN, NAN, 5, start=T0 - 30))])
    [out] = run("movingAverage(m, 2, 0.5)", fetcher, T0, T0 + 40)
    # windows (the 2 points before each): [nan,nan] [nan,nan] [nan,5] [5,nan]; 1 of 2 is enough
    assert vals(out) == [None, None, 5, 5]
    [out] = run("movingAverage(m, 2, 1)", fetcher, T0, T0 + 40)
    assert vals(out) == [None, None, None, None]
    [out] = run("movingAverage(m, 3)", fetcher, T0 - 20, T0 + 30)
    assert vals(out) == [1, 1, 1, None, 5]


def test_time_shift_reads_the_past_and_draws_it_now(fetcher: FakeFetcher) -> None:
    fetcher.series = [FakeSeries("t", 10, lambda t: float(t - T0))]
    [out] = run("timeShift(t, '1min')", fetcher, T0, T0 + 30, max_points=50)
    assert out.name == 'timeShift(t, "-1min")'
    assert (out.start, out.step) == (T0, 10)
    assert vals(out) == [-60, -50, -40]
    assert fetcher.calls[-1] == ("t", T0 - 60, T0 - 30, 50)
    [out] = run("timeShift(t, '+1min')", fetcher, T0, T0 + 30)
    assert vals(out) == [60, 70, 80]


def test_consolidate_by_sets_the_function_and_reads_full_resolution(fetcher: FakeFetcher) -> None:
    [out] = run("consolidateBy(a.x, 'max')", fetcher, max_points=2)
    assert out.name == 'consolidateBy(a.x,"max")'
    assert out.consolidation == "max"
    assert fetcher.calls[-1][3] is None
    assert vals(consolidate(out, 3)) == [2, 6]


def test_plain_paths_are_consolidated_by_the_reader(fetcher: FakeFetcher) -> None:
    run("scale(a.x, 2)", fetcher, max_points=3)
    assert fetcher.calls[-1][3] == 3


def test_constant_line_spans_the_range(fetcher: FakeFetcher) -> None:
    [out] = run("constantLine(100)", fetcher, T0, T0 + 3600)
    assert out.name == "100"
    assert (out.start, out.step, vals(out)) == (T0, 1800, [100, 100, 100])
    [out] = run("constantLine(1.5)", fetcher)
    assert out.name == "1.5"


# -- percentileOfSeries against graphite-web's own algorithm ----------------------------------------


def graphite_percentile(points: list[float | None], n: float, interpolate: bool) -> float | None:
    """graphite-web 1.1's ``_getPercentile``, as the oracle."""
    ordered = sorted(p for p in points if p is not None)
    if not ordered:
        return None
    fractional = (n / 100.0) * (len(ordered) + 1)
    rank = int(fractional)
    fraction = fractional - rank
    if not interpolate:
        rank += math.ceil(fraction)
    if rank == 0:
        value = ordered[0]
    elif rank - 1 == len(ordered):
        value = ordered[-1]
    else:
        value = ordered[rank - 1]
    if interpolate and rank != len(ordered):
        value = value + fraction * (ordered[rank] - value)
    return value


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(
        st.lists(st.one_of(st.none(), st.integers(-50, 50).map(float)), min_size=4, max_size=4),
        min_size=1,
        max_size=7,
    ),
    n=st.one_of(st.sampled_from([1.0, 25.0, 50.0, 75.0, 90.0, 99.0]), st.floats(0.5, 99.5)),
    interpolate=st.booleans(),
)
def test_percentile_of_series_matches_graphite(
    rows: list[list[float | None]], n: float, interpolate: bool
) -> None:
    series = [
        FakeSeries(f"p.s{i}", 10, points(*[NAN if v is None else v for v in row]))
        for i, row in enumerate(rows)
    ]
    fetcher = FakeFetcher(series)
    [out] = run(f"percentileOfSeries(p.*, {n!r}, {str(interpolate).lower()})", fetcher, T0, T0 + 40)
    columns = list(zip(*rows, strict=True))
    expected = [graphite_percentile(list(col), n, interpolate) for col in columns]
    assert vals(out) == pytest.approx(expected)


def test_percentile_of_series_name(fetcher: FakeFetcher) -> None:
    [out] = run("percentileOfSeries(a.*, 50)", fetcher)
    assert out.name == "percentileOfSeries(a.*,50)"
    with pytest.raises(QueryError, match="greater than 0"):
        run("percentileOfSeries(a.*, 0)", fetcher)


# -- tags ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tags", "matches"),
    [
        ("env=prod", {"env": "prod"}, True),
        ("env=prod", {}, False),
        ("env!=prod", {"env": "dev"}, True),
        ("env!=prod", {}, True),
        ("env=~pr", {"env": "prod"}, True),
        ("env=~rod", {"env": "prod"}, False),  # anchored at the start, as graphite-web
        ("env!=~d.v", {"env": "dev"}, False),
        ("env=", {}, True),
        ("name=a.b", {"name": "a.b"}, True),
    ],
)
def test_tag_expressions(text: str, tags: dict[str, str], matches: bool) -> None:
    assert parse_tag_expression(text).matches(tags) is matches


def test_series_by_tag_selects_and_names(fetcher: FakeFetcher) -> None:
    found = run("seriesByTag('dc=eu', 'env!=dev')", fetcher)
    assert [s.name for s in found] == ["b.tagged;dc=eu;env=prod"]
    assert found[0].path_expression == "seriesByTag('dc=eu','env!=dev')"
    with pytest.raises(QueryError, match="non-empty value"):
        run("seriesByTag('env!=x')", fetcher)
    with pytest.raises(QueryError, match="bad tag expression"):
        run("seriesByTag('nonsense')", fetcher)
    with pytest.raises(QueryError, match="bad regular expression"):
        run("seriesByTag('env=~(')", fetcher)


# -- errors ----------------------------------------------------------------------------------------

ERRORS = [
    ("nope(a.x)", "unknown function 'nope'"),
    ("sumSeries(nope(a.x))", "unknown function 'nope'"),
    ("scale(a.x)", "scale: missing required argument 'factor'"),
    ("scale(a.x, 1, 2)", "scale: too many arguments"),
    ("scale(a.x, 'two')", "scale: argument 'factor' must be a number"),
    ("scale(a.x, factor=2, factor=3)", "given twice"),
    ("scale(a.x, size=2)", "unknown keyword argument 'size'"),
    ("alias(a.x, 5)", "must be a quoted string"),
    ("sumSeries(5)", "must be a series list"),
    ("consolidateBy(a.x, 'mean')", "unknown aggregation 'mean'"),
    ("summarize(a.x, 'fortnight')", "bad interval"),
    ("movingAverage(a.x, -2)", "positive number of points or an interval"),
    ("'just a string'", "expected a series"),
]


@pytest.mark.parametrize(("target", "message"), ERRORS)
def test_errors_name_the_function_and_argument(fetcher: FakeFetcher, target: str, message: str) -> None:
    with pytest.raises(QueryError) as caught:
        run(target, fetcher)
    assert message in str(caught.value)


def test_keyword_arguments_bind_by_name(fetcher: FakeFetcher) -> None:
    [out] = run("scale(seriesList=a.x, factor=3)", fetcher)
    assert vals(out)[:2] == [3, 6]


def test_functions_json_is_what_grafana_parses() -> None:
    described = functions_json()
    assert set(described) == set(FUNCTIONS)
    required = {
        "sumSeries",
        "averageSeries",
        "maxSeries",
        "minSeries",
        "alias",
        "aliasByNode",
        "scale",
        "perSecond",
        "summarize",
        "consolidateBy",
        "movingAverage",
        "timeShift",
        "percentileOfSeries",
        "seriesByTag",
        "constantLine",
    }
    assert required <= set(described)
    for name, spec in described.items():
        assert spec["name"] == name
        assert isinstance(spec["group"], str)
        assert spec["group"]
        params = spec["params"]
        assert isinstance(params, list)
        for param in params:
            assert {"name", "type"} <= set(param)
    assert described["sumSeries"]["params"] == [
        {"name": "seriesLists", "type": "seriesList", "required": True, "multiple": True}
    ]
    summarize = described["summarize"]["params"]
    assert isinstance(summarize, list)
    assert summarize[2] == {
        "name": "func",
        "type": "aggFunc",
        "default": "sum",
        "options": list(AGGREGATIONS),
    }
