"""Vectorised timer statistics against a plain-Python port of Etsy's lib/process_metrics.js."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statsyard_agent._timerstats import js_round, percentile_label, timer_stats, timer_stats_sorted

LABELS = {90.0: "90", 99.9: "99_9", -10.0: "top10", 50.0: "50", 1.0: "1", -99.9: "top99_9", 100.0: "100"}
LABELS |= {-100.0: "top100", 0.5: "0_5", 75.0: "75", -50.0: "top50"}


def js_math_round(x: float) -> int:
    """ECMAScript Math.round: the closest integer, halves towards +infinity."""
    floor = math.floor(x)
    return floor + 1 if x - floor >= 0.5 else floor


def etsy_timer(values: list[float], count: float, interval: float, pcts: list[float]) -> dict[str, float]:
    """process_metrics.js for one timer key, line by line (flushInterval in ms = interval * 1000).

    One deliberate change: for a negative pct with numInThreshold == count, Etsy reads
    cumulativeValues[-1] (undefined, giving NaN); here it counts as 0, i.e. the sum of all.
    """
    values = sorted(values)
    n = len(values)
    low, high = values[0], values[n - 1]
    cumulative = [low]
    cumulative_squares = [low * low]
    for i in range(1, n):
        cumulative.append(values[i] + cumulative[i - 1])
        cumulative_squares.append(values[i] * values[i] + cumulative_squares[i - 1])

    def before(index: int, sums: list[float]) -> float:
        return sums[index] if index >= 0 else 0.0

    out: dict[str, float] = {}
    total, total_squares, mean, boundary = low, low * low, low, high
    for pct in pcts:
        k = n
        if n > 1:
            k = js_math_round(abs(pct) / 100 * n)
            if k == 0:
                continue
            if pct > 0:
                boundary = values[k - 1]
                total = cumulative[k - 1]
                total_squares = cumulative_squares[k - 1]
            else:
                boundary = values[n - k]
                total = cumulative[n - 1] - before(n - k - 1, cumulative)
                total_squares = cumulative_squares[n - 1] - before(n - k - 1, cumulative_squares)
            mean = total / k
        label = LABELS[pct]
        out["count_" + label] = k
        out["mean_" + label] = mean
        out[("upper_" if pct > 0 else "lower_") + label] = boundary
        out["sum_" + label] = total
        out["sum_squares_" + label] = total_squares

    total = cumulative[n - 1]
    total_squares = cumulative_squares[n - 1]
    mean = total / n
    sum_of_diffs = 0.0
    for value in values:
        sum_of_diffs += (value - mean) * (value - mean)
    mid = n // 2
    median = values[mid] if n % 2 else (values[mid - 1] + values[mid]) / 2
    out |= {
        "std": math.sqrt(sum_of_diffs / n),
        "upper": high,
        "lower": low,
        "count": count,
        "count_ps": count / (interval * 1000 / 1000),
        "sum": total,
        "sum_squares": total_squares,
        "mean": mean,
        "median": median,
    }
    return out


def vectorised(
    values: list[list[float]], counts: list[float], interval: float, pcts: list[float]
) -> list[dict[str, float]]:
    """timer_stats over all series at once, unpacked into one Etsy-style dict per series."""
    lengths = [len(v) for v in values]
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    flat = np.array([x for v in values for x in v], dtype=np.float64)
    # Shuffle inside each series: the function must not rely on the input order.
    rng = np.random.default_rng(len(flat))
    for lo, hi in itertools.pairwise(offsets):
        rng.shuffle(flat[lo:hi])
    weights = np.repeat(np.array(counts) / np.array(lengths), lengths)
    stats = timer_stats(flat, offsets, weights, interval=interval, percentiles=pcts)
    out = []
    for i in range(len(values)):
        row = {
            name: float(getattr(stats, name)[i])
            for name in ("count", "count_ps", "sum", "sum_squares", "mean", "median", "lower", "upper", "std")
        }
        for p in stats.percentiles:
            if p.present[i]:
                bound = ("upper_" if p.pct > 0 else "lower_") + p.label
                row |= {
                    "count_" + p.label: float(p.count[i]),
                    "mean_" + p.label: float(p.mean[i]),
                    bound: float(p.bound[i]),
                    "sum_" + p.label: float(p.sum[i]),
                    "sum_squares_" + p.label: float(p.sum_squares[i]),
                }
        out.append(row)
    return out


def assert_matches_etsy(got: dict[str, float], want: dict[str, float], values: list[float]) -> None:
    assert got.keys() == want.keys()
    # Etsy sums left to right and takes differences of running sums; numpy sums per range. The
    # results agree up to rounding relative to the magnitudes involved.
    scale = max(abs(v) for v in values) * len(values) + 1e-300
    for name, expected in want.items():
        if "squares" in name:
            tolerance = 1e-9 * scale * scale
        elif name.startswith(("count", "lower", "upper")) or name == "median":
            tolerance = 0.0 if name != "count" and name != "count_ps" else 1e-9 * expected
        elif name == "std":
            tolerance = 1e-6 * scale
        else:
            tolerance = 1e-9 * scale
        assert got[name] == pytest.approx(expected, rel=1e-9, abs=tolerance), name


@pytest.mark.parametrize(
    ("values", "pcts", "expected"),
    [
        # Hand-checked against process_metrics.js semantics.
        (
            [float(v) for v in range(1, 11)],
            [90.0, -10.0],
            {
                "count_90": 9,
                "mean_90": 5.0,
                "upper_90": 9.0,
                "sum_90": 45.0,
                "sum_squares_90": 285.0,
                "count_top10": 1,
                "mean_top10": 10.0,
                "lower_top10": 10.0,
                "sum_top10": 10.0,
                "sum_squares_top10": 100.0,
                "median": 5.5,
                "std": math.sqrt(8.25),
            },
        ),
        # n = 1: every threshold takes the single sample.
        ([7.0], [90.0, -10.0, 1.0], {"count_90": 1, "upper_90": 7.0, "lower_top10": 7.0, "count_1": 1}),
        # n = 2: 90 % of 2 is 1.8 -> 2; 50 % is exactly 1; 1 % rounds to 0 and is skipped.
        ([3.0, 1.0], [90.0, 50.0], {"count_90": 2, "upper_90": 3.0, "count_50": 1, "upper_50": 1.0}),
        # JavaScript rounds the half up: 50 % of 5 = 2.5 -> 3 (Python's round would give 2).
        ([5.0, 1.0, 4.0, 2.0, 3.0], [50.0, -50.0], {"count_50": 3, "upper_50": 3.0, "lower_top50": 3.0}),
        # Ties.
        ([2.0, 2.0, 2.0, 1.0], [75.0], {"count_75": 3, "upper_75": 2.0, "median": 2.0, "sum_75": 5.0}),
        # 99.9 % of 10 rounds to 10.
        ([float(v) for v in range(10)], [99.9], {"count_99_9": 10, "upper_99_9": 9.0, "mean_99_9": 4.5}),
    ],
)
def test_known_values(values: list[float], pcts: list[float], expected: dict[str, float]) -> None:
    got = vectorised([values], [float(len(values))], 10.0, pcts)[0]
    for name, value in expected.items():
        assert got[name] == pytest.approx(value), name
    assert_matches_etsy(got, etsy_timer(values, float(len(values)), 10.0, pcts), values)


def test_percentile_skipped_when_it_rounds_to_zero() -> None:
    got = vectorised([[1.0, 2.0, 3.0]], [3.0], 10.0, [1.0])[0]
    assert not any(name.endswith("_1") for name in got)


def test_top_percentile_covering_every_sample_is_the_whole_sum() -> None:
    # Etsy reports NaN here (it reads cumulativeValues[-1]); the statistic means "all samples".
    got = vectorised([[1.0, 2.0]], [2.0], 10.0, [-100.0])[0]
    assert got["count_top100"] == 2
    assert got["sum_top100"] == 3.0
    assert got["mean_top100"] == 1.5
    assert got["lower_top100"] == 1.0


@pytest.mark.parametrize(
    ("x", "expected"),
    [(0.0, 0), (0.4, 0), (0.5, 1), (1.5, 2), (2.5, 3), (4.5, 5), (0.49999999999999994, 0), (9.99, 10)],
)
def test_js_round(x: float, expected: int) -> None:
    assert int(js_round(np.array([x]))[0]) == expected == js_math_round(x)


@pytest.mark.parametrize(
    ("pct", "label"),
    [
        (90, "90"),
        (90.0, "90"),
        (99.9, "99_9"),
        (-10, "top10"),
        (-99.9, "top99_9"),
        (0.5, "0_5"),
        (99.99, "99_99"),
        (1e-7, "1etop7"),  # JavaScript prints 1e-7, and Etsy replaces its first "-" too
    ],
)
def test_percentile_label(pct: float, label: str) -> None:
    assert percentile_label(pct) == label


samples = st.lists(
    st.one_of(
        st.integers(-1000, 1000).map(float),
        st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, allow_subnormal=False),
    ),
    min_size=1,
    max_size=60,
)
rates = st.sampled_from([1.0, 0.5, 0.25, 0.1, 0.3])


@settings(max_examples=150, deadline=None)
@given(
    series=st.lists(st.tuples(samples, rates), min_size=1, max_size=12),
    pcts=st.lists(st.sampled_from(sorted(LABELS)), min_size=0, max_size=5, unique=True),
    interval=st.sampled_from([1.0, 10.0, 0.5, 7.3]),
)
def test_matches_etsy_reference(
    series: list[tuple[list[float], float]], pcts: list[float], interval: float
) -> None:
    values = [v for v, _ in series]
    counts = [len(v) / r for v, r in series]
    got = vectorised(values, counts, interval, pcts)
    for row, (v, r), count in zip(got, series, counts, strict=True):
        assert_matches_etsy(row, etsy_timer(v, count, interval, pcts), v)
        assert row["count"] == pytest.approx(len(v) / r)


def test_sorted_entry_point_and_unweighted_counts() -> None:
    stats = timer_stats(np.array([3.0, 1.0, 2.0, 5.0]), np.array([0, 3, 4]), interval=2.0, percentiles=[90.0])
    assert stats.count.tolist() == [3.0, 1.0]
    assert stats.count_ps.tolist() == [1.5, 0.5]
    again = timer_stats_sorted(
        np.array([1.0, 2.0, 3.0, 5.0]), np.array([0, 3, 4]), stats.count, interval=2.0, percentiles=[90.0]
    )
    assert again.median.tolist() == stats.median.tolist() == [2.0, 5.0]


def test_no_series() -> None:
    stats = timer_stats(np.zeros(0), np.array([0]), interval=10.0, percentiles=[90.0])
    assert stats.count.size == 0
    assert stats.percentiles[0].label == "90"


@pytest.mark.parametrize(
    ("offsets", "interval", "pcts", "message"),
    [
        ([0, 0, 2], 10.0, [90.0], "non-empty"),
        ([0, 1], 10.0, [90.0], "offsets"),
        ([0, 2], 0.0, [90.0], "interval"),
        ([0, 2], math.nan, [90.0], "interval"),
        ([0, 2], 10.0, [0.0], "percentile"),
        ([0, 2], 10.0, [100.5], "percentile"),
        ([0, 2], 10.0, [math.nan], "percentile"),
    ],
)
def test_invalid_arguments(offsets: list[int], interval: float, pcts: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        timer_stats(np.array([1.0, 2.0]), np.array(offsets), interval=interval, percentiles=pcts)
