"""LogSketch: accuracy against numpy's exact quantiles, merging, bytes, and the vectorised builders."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statsyard_agent import _sketch
from statsyard_agent._exceptions import CorruptDataError
from statsyard_agent._sketch import (
    LogSketch,
    _bucketize,
    group_argsort,
    segment_argsort,
    sketch_bytes_from_segments,
    sketches_from_segments,
)

ALPHA = LogSketch.RELATIVE_ACCURACY
QS = (0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0)
# The guarantee is relative; magnitudes below 1e-9 are reported as 0 (absolute error < 1e-9).
ZERO_SLACK = 1e-9


def assert_within_alpha(estimate: float, exact: float) -> None:
    bound = ALPHA * abs(exact) * (1 + 1e-9) + ZERO_SLACK
    assert abs(estimate - exact) <= bound, (estimate, exact)


def _dataset(kind: str) -> np.ndarray:
    rng = np.random.default_rng(sum(map(ord, kind)))
    if kind == "lognormal":
        return rng.lognormal(3.0, 1.5, 20_000)
    if kind == "uniform":
        return rng.uniform(0.0, 1000.0, 20_000)
    if kind == "with_negatives":
        return rng.normal(0.0, 50.0, 20_000)
    if kind == "with_zeros":
        x = rng.exponential(5.0, 20_000)
        x[::7] = 0.0
        x[1::11] = -x[1::11]
        return x
    if kind == "wide_range":
        return np.concatenate((rng.lognormal(0, 30, 5_000), -rng.lognormal(0, 30, 5_000)))
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["lognormal", "uniform", "with_negatives", "with_zeros", "wide_range"])
def test_quantiles_within_relative_accuracy_of_numpy(kind: str) -> None:
    x = _dataset(kind)
    sketch = LogSketch.from_values(x)
    assert sketch.count == x.size
    estimates = sketch.quantiles(QS)
    for q, estimate in zip(QS, estimates, strict=True):
        assert_within_alpha(float(estimate), float(np.quantile(x, q, method="lower")))
        assert sketch.quantile(q) == estimate


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(
        st.floats(min_value=-1e12, max_value=1e12, allow_nan=False, allow_infinity=False),
        min_size=1,
        max_size=80,
    ),
    q=st.floats(min_value=0.0, max_value=1.0),
)
def test_any_quantile_is_within_relative_accuracy(values: list[float], q: float) -> None:
    x = np.array(values)
    assert_within_alpha(LogSketch.from_values(x).quantile(q), float(np.quantile(x, q, method="lower")))


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([], 0.5, math.nan),
        ([0.0], 0.5, 0.0),
        ([5e-10, -5e-10], 1.0, 0.0),  # below the zero threshold
        ([1.0], 0.0, 1.0),
        ([-3.0, 7.0], 0.0, -3.0),
        ([-3.0, 7.0], 1.0, 7.0),
        ([1.7e308], 1.0, 1.7e308),  # the representative must not overflow to inf
        ([-1.7e308, 1.7e308], 0.0, -1.7e308),
    ],
)
def test_quantile_edge_cases(values: list[float], q: float, expected: float) -> None:
    estimate = LogSketch.from_values(np.array(values, dtype=np.float64)).quantile(q)
    if math.isnan(expected):
        assert math.isnan(estimate)
    else:
        assert math.isfinite(estimate)
        assert_within_alpha(estimate, expected)


@pytest.mark.parametrize("q", [-0.1, 1.1, math.nan])
def test_quantile_outside_unit_interval_raises(q: float) -> None:
    with pytest.raises(ValueError, match="quantiles"):
        LogSketch.from_values(np.array([1.0])).quantile(q)


def test_non_finite_values_are_skipped() -> None:
    sketch = LogSketch.from_values(np.array([math.nan, 1.0, math.inf, 2.0, -math.inf]))
    assert sketch.count == 2.0
    assert_within_alpha(sketch.quantile(1.0), 2.0)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([1.0], "same length"),
        ([1.0, 0.0], "positive"),
        ([1.0, math.inf], "positive"),
        ([1.0, -2.0], "positive"),
    ],
)
def test_bad_weights_raise(weights: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LogSketch.from_values(np.array([1.0, 2.0]), np.array(weights))


def test_integer_weights_equal_repetition() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(10.0, 30.0, 2_000)
    w = rng.integers(1, 11, x.size)
    weighted = LogSketch.from_values(x, w.astype(np.float64))
    assert weighted == LogSketch.from_values(np.repeat(x, w))
    # Sample rate 0.1 means each sample stands for 10: the percentiles shift accordingly.
    assert_within_alpha(weighted.quantile(0.5), float(np.quantile(np.repeat(x, w), 0.5, method="lower")))


def test_fractional_weights_keep_total_weight() -> None:
    x = np.arange(1.0, 101.0)
    sketch = LogSketch.from_values(x, np.full(x.size, 1 / 0.3))
    assert sketch.count == pytest.approx(100 / 0.3)
    assert_within_alpha(sketch.quantile(1.0), 100.0)
    assert LogSketch.from_bytes(sketch.to_bytes()) == sketch


def test_merge_of_many_equals_sketch_of_union() -> None:
    rng = np.random.default_rng(3)
    parts = [rng.lognormal(2.0, 1.0, int(n)) * rng.choice([-1, 1]) for n in rng.integers(0, 300, 200)]
    union = np.concatenate(parts)
    sketches = [LogSketch.from_values(p) for p in parts]
    merged = LogSketch.merge_all(sketches)
    assert merged == LogSketch.from_values(union)
    assert merged.count == union.size
    # Pairwise merging in any order reaches the same sketch.
    folded = LogSketch()
    for s in reversed(sketches):
        folded = s.merge(folded)
    assert folded == merged


def test_merge_is_pure_and_handles_empty() -> None:
    a = LogSketch.from_values(np.array([1.0, 2.0]))
    b = LogSketch.from_values(np.array([-4.0, 0.0]))
    before_a, before_b = a.to_bytes(), b.to_bytes()
    merged = a.merge(b)
    assert a.to_bytes() == before_a
    assert b.to_bytes() == before_b
    assert merged.count == 4.0
    assert LogSketch.merge_all([]) == LogSketch()
    assert LogSketch.merge_all([a]) == a
    assert a.merge(LogSketch()) == a
    with pytest.raises(ValueError, match="read-only"):
        a.positive[1][0] = 99.0


@pytest.mark.parametrize(
    "values",
    [
        [],
        [0.0, 0.0],
        [1.0],
        [-1.0, -2.0, -1000.0],
        [1e-9, 1e-300, -1e-12, 1e300, -1.7e308, 1.7e308],
        list(np.linspace(-50, 50, 1001)),
    ],
)
def test_bytes_round_trip(values: list[float]) -> None:
    sketch = LogSketch.from_values(np.array(values, dtype=np.float64))
    data = sketch.to_bytes()
    assert LogSketch.from_bytes(data) == sketch
    assert LogSketch.from_bytes(data).to_bytes() == data


def test_encoding_is_compact() -> None:
    x = np.round(np.random.default_rng(5).lognormal(3.0, 1.0, 1_000), 3)
    sketch = LogSketch.from_values(x)
    buckets = sketch.positive[0].size
    # Integer counts: a key step and a count of one byte each for nearly every bucket.
    assert len(sketch.to_bytes()) <= 2.2 * buckets + 10
    assert LogSketch().to_bytes() == b"\x01\x00\x00\x00\x00"


@contextlib.contextmanager
def codec_path(path: str) -> Iterator[None]:
    """Force the plain-Python ("small") or the numpy ("large") encoder and decoder."""
    saved = _sketch._SMALL
    _sketch._SMALL = 10**9 if path == "small" else -1
    try:
        yield
    finally:
        _sketch._SMALL = saved


@pytest.mark.parametrize("kind", ["lognormal", "with_zeros", "wide_range"])
@pytest.mark.parametrize("fractional", [False, True])
def test_python_and_numpy_codecs_agree(kind: str, fractional: bool) -> None:
    x = _dataset(kind)[:3000]
    weights = np.full(x.size, 1 / 0.3) if fractional else None
    sketch = LogSketch.from_values(x, weights)
    with codec_path("small"):
        small = sketch.to_bytes()
        assert LogSketch.from_bytes(small) == sketch
    with codec_path("large"):
        assert sketch.to_bytes() == small
        assert LogSketch.from_bytes(small) == sketch
    assert sketch_bytes_from_segments(x, weights, np.array([0, x.size])) == [small]


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), path=st.sampled_from(["small", "large"]))
def test_from_bytes_on_garbage_raises_only_corrupt_data_error(data: bytes, path: str) -> None:
    with codec_path(path):
        try:
            sketch = LogSketch.from_bytes(data)
        except CorruptDataError:
            return
        # Whatever decodes must be a usable sketch.
        assert sketch.count >= 0
        sketch.quantile(0.5)
        assert LogSketch.from_bytes(sketch.to_bytes()) == sketch


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=40),
    fractional=st.booleans(),
    position=st.integers(min_value=0),
    byte=st.integers(0, 255),
)
def test_corrupted_encodings_raise_only_corrupt_data_error(
    values: list[float], fractional: bool, position: int, byte: int
) -> None:
    x = np.array(values)
    weights = np.full(x.size, 1 / 0.3) if fractional else None
    data = LogSketch.from_values(x, weights).to_bytes()
    for path in ("small", "large"):
        with codec_path(path):
            for cut in range(len(data)):
                with pytest.raises(CorruptDataError):
                    LogSketch.from_bytes(data[:cut])
            mutated = bytearray(data)
            mutated[position % len(data)] = byte
            with contextlib.suppress(CorruptDataError):
                LogSketch.from_bytes(bytes(mutated))
            with pytest.raises(CorruptDataError):
                LogSketch.from_bytes(data + b"\x00")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x02\x00\x00\x00\x00",  # unknown version
        b"\x01\x04\x00\x00\x00",  # unknown flag
        b"\x01\x00\x00\x01\x00\x02\x00",  # a bucket with count 0
        b"\x01\x00\x00\x02\x00\x02\x00\x01\x01",  # key step 0: keys not strictly ordered
        b"\x01\x00\x00\x01\x00\xff\xff\xff\xff\x0f\x01",  # key far out of range
        b"\x01\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01\x00\x00",  # absurd bucket count
        b"\x01\x01\x00\x00" + np.array([math.nan]).tobytes(),  # NaN zero count
        b"\x01\x00\x00\x00\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",  # varint > 10 bytes
    ],
)
@pytest.mark.parametrize("path", ["small", "large"])
def test_malformed_sketches_are_rejected(data: bytes, path: str) -> None:
    with codec_path(path), pytest.raises(CorruptDataError):
        LogSketch.from_bytes(data)


# -- vectorised builders ------------------------------------------------------------------------


def _segments(seed: int, n_series: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 40, n_series)
    lengths[::5] = 0
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    values = np.round(rng.normal(0.0, 100.0, int(offsets[-1])), 1)
    values[::13] = 0.0
    weights = rng.choice([1.0, 2.0, 10.0, 1 / 0.3], values.size)
    return values, weights, offsets


@pytest.mark.parametrize("weighted", [False, True])
def test_segment_builders_match_one_sketch_per_segment(weighted: bool) -> None:
    values, weights, offsets = _segments(11, 300)
    w = weights if weighted else None
    encoded = sketch_bytes_from_segments(values, w, offsets)
    sketches = sketches_from_segments(values, w, offsets)
    assert len(encoded) == len(sketches) == offsets.size - 1
    for i, (data, sketch) in enumerate(zip(encoded, sketches, strict=True)):
        lo, hi = offsets[i], offsets[i + 1]
        single = LogSketch.from_values(values[lo:hi], None if w is None else w[lo:hi])
        assert sketch == single
        assert data == single.to_bytes()
        assert LogSketch.from_bytes(data) == single


def test_presorted_and_fallback_paths_agree() -> None:
    values, weights, offsets = _segments(12, 100)
    order = segment_argsort(values, offsets)
    sorted_bytes = sketch_bytes_from_segments(values[order], weights[order], offsets, presorted=True)
    assert sorted_bytes == sketch_bytes_from_segments(values, weights, offsets)
    # Unsorted input wrongly flagged as presorted still groups correctly (the order is checked).
    flagged = _bucketize(values, weights, offsets, presorted=True).encode()
    assert [LogSketch.from_bytes(b) for b in flagged] == [LogSketch.from_bytes(b) for b in sorted_bytes]


def test_segment_builders_without_segments() -> None:
    empty = np.zeros(0)
    assert sketch_bytes_from_segments(empty, None, np.array([0])) == []
    assert sketches_from_segments(empty, None, np.array([0])) == []
    assert sketch_bytes_from_segments(empty, None, np.array([0, 0])) == [LogSketch().to_bytes()]


@pytest.mark.parametrize(
    ("offsets", "message"),
    [([1, 3], "offsets"), ([0, 2], "offsets"), ([0, 3, 2, 3], "offsets")],
)
def test_segment_builders_reject_bad_offsets(offsets: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sketches_from_segments(np.array([1.0, 2.0, 3.0]), None, np.array(offsets))


def test_group_argsort_orders_by_group_then_value_with_nan_last() -> None:
    rng = np.random.default_rng(2)
    values = rng.normal(size=500)
    values[::17] = math.nan
    values[::23] = -math.inf
    groups = rng.integers(0, 20, values.size)
    order = group_argsort(values, groups)
    assert sorted(order.tolist()) == list(range(values.size))
    g, v = groups[order], values[order]
    assert np.all(np.diff(g) >= 0)
    for group in range(20):
        inside = v[g == group]
        numbers = inside[~np.isnan(inside)]
        assert np.all(numbers[1:] >= numbers[:-1])
        assert not np.any(np.isnan(inside[: numbers.size]))  # NaNs only at the end
        assert np.array_equal(  # stable: equal values keep their input order
            order[g == group][inside == -math.inf], np.flatnonzero((groups == group) & (values == -math.inf))
        )
