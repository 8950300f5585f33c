"""Rollup functions, one by one, plus the properties that make chained tiers consistent."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from statsyard_agent._types import Rollup
from statsyard_agent.storage._rollup import rollup, single_flush_value

NAN = float("nan")


def one(rollup_code: Rollup, values: list[float], factor: int, **kw: object) -> list[float]:
    out = rollup(
        np.array([values]),
        np.array([rollup_code], dtype=np.uint8),
        factor,
        **kw,  # type: ignore[arg-type]
    )
    result: list[float] = out[0].tolist()
    return result


@pytest.mark.parametrize(
    ("code", "values", "expected"),
    [
        (Rollup.SUM, [1, 2, NAN, 4, NAN, NAN], [3, 4, NAN]),
        (Rollup.MIN, [3, 2, NAN, -4, NAN, NAN], [2, -4, NAN]),
        (Rollup.MAX, [3, 2, NAN, -4, NAN, NAN], [3, -4, NAN]),
        (Rollup.LAST, [3, 2, 7, NAN, NAN, NAN], [2, 7, NAN]),
        (Rollup.AVERAGE, [3, 2, NAN, 4, NAN, NAN], [2.5, 4, NAN]),
        # per-second rates: the count over the coarse step, missing counting as 0
        (Rollup.RATE, [3, 2, NAN, 4, NAN, NAN], [2.5, 2, NAN]),
        # MEAN without weights falls back to AVERAGE
        (Rollup.MEAN, [3, 2, NAN, 4, NAN, NAN], [2.5, 4, NAN]),
        (Rollup.SUM, [np.inf, -np.inf, 1, 1, NAN, NAN], [NAN, 2, NAN]),
    ],
)
def test_each_rollup_function(code: Rollup, values: list[float], expected: list[float]) -> None:
    np.testing.assert_array_equal(one(code, values, 2), expected)


def test_mean_is_weighted_by_counts_and_falls_back_to_average() -> None:
    values = np.array([[10.0, 20.0, 5.0, 7.0, 1.0, 3.0]])
    weights = np.array([[1.0, 3.0, NAN, 2.0, 0.0, 0.0]])
    out = rollup(values, np.array([Rollup.MEAN], dtype=np.uint8), 2, weights=weights)
    # slot 1: one value lacks its count -> AVERAGE; slot 2: all weights 0 -> AVERAGE
    np.testing.assert_array_equal(out, [[(10 * 1 + 20 * 3) / 4, 6.0, 2.0]])


@pytest.mark.parametrize(
    ("xff", "expected"),
    [(0.0, [1.0, 2.0, 3.0]), (0.5, [1.0, 2.0, NAN]), (0.75, [1.0, NAN, NAN]), (1.0, [1.0, NAN, NAN])],
)
def test_xfiles_factor_nulls_incomplete_slots(xff: float, expected: list[float]) -> None:
    values = [1, 1, 1, 1, 2, 2, NAN, NAN, 3, NAN, NAN, NAN]
    np.testing.assert_array_equal(one(Rollup.LAST, values, 4, xff=xff), expected)


def test_rows_keep_their_own_rollup() -> None:
    values = np.array([[1.0, 2.0, 3.0, 4.0]] * 4)
    codes = np.array([Rollup.SUM, Rollup.MAX, Rollup.LAST, Rollup.RATE], dtype=np.uint8)
    np.testing.assert_array_equal(rollup(values, codes, 4), [[10.0], [4.0], [4.0], [2.5]])


def test_factor_must_divide_the_width() -> None:
    with pytest.raises(ValueError, match="multiple"):
        rollup(np.zeros((1, 5)), np.array([Rollup.SUM], dtype=np.uint8), 2)


@pytest.mark.parametrize(
    ("interval", "expected"),
    [(10.0, [5.0, 5.0]), (10.004, [5.0, 5.0]), (60.0, [5.0, 5.0]), (5.0, [5.0, 2.5])],
)
def test_single_flush_value(interval: float, expected: list[float]) -> None:
    codes = np.array([Rollup.SUM, Rollup.RATE], dtype=np.uint8)
    assert single_flush_value(np.array([5.0, 5.0]), codes, interval, 10).tolist() == expected


CHAINABLE = [Rollup.SUM, Rollup.MIN, Rollup.MAX, Rollup.LAST, Rollup.RATE]


@settings(max_examples=60, deadline=None)
@given(
    values=hnp.arrays(
        np.float64,
        st.just((3, 24)),
        elements=st.one_of(st.just(NAN), st.integers(-1000, 1000).map(float)),
    ),
    code=st.sampled_from(CHAINABLE),
    first=st.sampled_from([2, 3, 4]),
)
def test_rolling_up_twice_equals_rolling_up_once(values: np.ndarray, code: Rollup, first: int) -> None:
    """A 10 s -> 1 min -> 1 h chain gives what 10 s -> 1 h would (for exact rollups)."""
    codes = np.full(3, code, dtype=np.uint8)
    second = 24 // first // 2
    total = first * second
    chained = rollup(rollup(values, codes, first), codes, second)
    direct = rollup(values[:, : total * (24 // total)], codes, total)
    np.testing.assert_allclose(chained, direct, rtol=1e-12, equal_nan=True)


@settings(max_examples=40, deadline=None)
@given(
    means=hnp.arrays(np.float64, st.just((1, 12)), elements=st.floats(0, 100)),
    counts=hnp.arrays(np.float64, st.just((1, 12)), elements=st.integers(1, 50).map(float)),
)
def test_weighted_mean_chains_exactly(means: np.ndarray, counts: np.ndarray) -> None:
    mean_code = np.array([Rollup.MEAN], dtype=np.uint8)
    sum_code = np.array([Rollup.SUM], dtype=np.uint8)
    fine = rollup(means, mean_code, 3, weights=counts)
    fine_counts = rollup(counts, sum_code, 3)
    chained = rollup(fine, mean_code, 4, weights=fine_counts)
    direct = rollup(means, mean_code, 12, weights=counts)
    np.testing.assert_allclose(chained, direct, rtol=1e-9)
    expected = (means * counts).sum() / counts.sum()
    np.testing.assert_allclose(direct[0, 0], expected, rtol=1e-9)
