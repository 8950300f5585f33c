"""The fast paths of the flush build: each must give exactly what its plain counterpart gives.

``build_flush_batch``'s semantics are covered by test_aggregate.py (against an Etsy model) and
test_flush_golden.py; here the shortcuts are compared with the straightforward code they replace:
the integer key of ``group_argsort``, the slot-descriptor construction of the sketch points
and the lazily concatenated names.
"""

from __future__ import annotations

import math
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statsyard_agent import _sketch
from statsyard_agent._aggregate import Aggregator, AggregatorConfig, build_flush_batch
from statsyard_agent._types import (
    Metric,
    MetricKind,
    PointNames,
    SketchColumns,
    SketchPoint,
    Tags,
    join_names,
)


def _reference_order(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    # lexsort is stable and sorts by the last key first: (group, value), ties in input order.
    return np.lexsort((values, groups))


whole_floats = st.one_of(
    st.integers(-1000, 1000).map(float),
    st.sampled_from([0.0, -0.0, 2.0**52, -(2.0**52), 2.0**53, 2.0**62, -(2.0**62), -(2.0**63)]),
)


def _check_key_sort(pairs: list[tuple[int, float]], must_take_the_key: bool) -> None:
    """The integer key's permutation (when it takes one) and group_argsort's are the reference."""
    groups = np.array([g for g, _ in pairs], dtype=np.int64)
    values = np.array([v for _, v in pairs])
    expected = _reference_order(values, groups)
    assert np.array_equal(_sketch._complex_group_argsort(values, groups), expected)
    fast = _sketch._integer_group_argsort(values, groups)
    if must_take_the_key:
        assert fast is not None
    if fast is not None:
        assert fast.dtype == np.int64
        assert np.array_equal(fast, expected)
    assert np.array_equal(_sketch.group_argsort(values, groups), expected)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), whole_floats), min_size=1, max_size=200))
def test_integer_sort_key_gives_the_stable_permutation(pairs: list[tuple[int, float]]) -> None:
    span = int(max(v for _, v in pairs)) - int(min(v for _, v in pairs))
    _check_key_sort(pairs, max(g for g, _ in pairs).bit_length() + span.bit_length() <= 63)


decimal_floats = st.one_of(
    st.tuples(st.integers(-(10**6), 10**6), st.integers(0, 4)).map(lambda p: p[0] / 10 ** p[1]),
    st.sampled_from([0.1, 0.2, 0.30000000000000004, 0.3, 0.7, -0.0, 1e-3, 2.5e-4]),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), decimal_floats), min_size=1, max_size=200))
def test_decimal_sort_key_gives_the_stable_permutation(pairs: list[tuple[int, float]]) -> None:
    # Decimals with up to 3 fraction digits take the integer key (scaled); others (4 digits,
    # 0.1 + 0.2) must fall back; either way the permutation is the reference one.
    _check_key_sort(pairs, all(round(v, 3) == v and abs(v) < 1e6 for _, v in pairs))


@pytest.mark.parametrize(
    "values",
    [
        pytest.param([3.0, 1.0, 0.5001], id="four-fraction-digits"),
        pytest.param([0.1 + 0.2, 0.3], id="not-a-short-decimal"),
        pytest.param([3.0, math.nan, 1.0], id="nan"),
        pytest.param([3.0, math.inf, 1.0], id="inf"),
        pytest.param([3.0, -math.inf, 1.0], id="-inf"),
        pytest.param([1e19, 1.0, 2.0], id="beyond-int64"),
        pytest.param([1e18, 0.5, 2.0], id="beyond-int64-once-scaled"),
        pytest.param([2.0**63, 1.0, 2.0], id="two-to-the-63"),
        pytest.param([-(2.0**62), 2.0**62, 0.0], id="span-too-wide-for-the-groups"),
    ],
)
def test_integer_sort_key_declines_what_it_cannot_order(values: list[float]) -> None:
    array = np.array(values * 4)
    groups = np.repeat(np.arange(4, dtype=np.int64), len(values))
    assert _sketch._integer_group_argsort(array, groups) is None
    assert np.array_equal(_sketch.group_argsort(array, groups), _sketch._complex_group_argsort(array, groups))


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 63).flatmap(
        lambda bits: st.tuples(st.just(bits), st.lists(st.integers(0, 2**bits - 1), max_size=300))
    )
)
def test_radix_sort_gives_the_stable_permutation(case: tuple[int, list[int]]) -> None:
    bits, keys = case
    key = np.array(keys, dtype=np.int64)
    expected = np.argsort(key, kind="stable")
    assert np.array_equal(_sketch._radix_argsort(key, bits), expected)


def test_shuffled_groups_take_the_radix_sort_and_runs_take_timsort() -> None:
    rng = np.random.default_rng(3)
    values = rng.integers(0, 1000, 20_000).astype(np.float64)
    shuffled = rng.integers(0, 5_000, 20_000)
    runs = np.sort(shuffled)
    for groups in (shuffled, runs):
        assert np.array_equal(_sketch.group_argsort(values, groups), _reference_order(values, groups))
    assert np.count_nonzero(shuffled[1:] < shuffled[:-1]) > shuffled.size // _sketch._RADIX_WHEN_RUNS_BELOW
    assert np.count_nonzero(runs[1:] < runs[:-1]) <= runs.size // _sketch._RADIX_WHEN_RUNS_BELOW


def test_integer_sort_key_accepts_narrow_group_dtypes() -> None:
    values = np.array([5.0, -3.0, 5.0, 0.0, -0.0, 7.0])
    groups = np.array([1, 0, 1, 0, 0, 1], dtype=np.int32)
    order = _sketch._integer_group_argsort(values, groups)  # type: ignore[arg-type]
    assert order is not None
    assert order.tolist() == [1, 3, 4, 0, 2, 5]


def test_integer_sort_key_leaves_empty_input_to_the_general_path() -> None:
    empty = np.zeros(0)
    assert _sketch._integer_group_argsort(empty, np.zeros(0, dtype=np.int64)) is None
    assert _sketch.group_argsort(empty, np.zeros(0, dtype=np.int64)).size == 0


def test_sketch_columns_read_like_the_tuple_of_points() -> None:
    bases = [f"stats.timers.t{i}" for i in range(1000)]
    tags: list[Tags] = [(("k", str(i % 3)),) if i % 2 else () for i in range(1000)]
    encoded = [bytes([1, 0, 0, 0, i % 200]) for i in range(1000)]
    columns = SketchColumns(bases, tags, encoded)
    expected = tuple(map(SketchPoint, bases, tags, encoded))
    assert len(columns) == 1000
    assert columns._made is None  # nothing made until read
    assert columns == expected
    assert columns[7] == expected[7]
    assert type(columns[7]) is SketchPoint
    assert columns[2:4] == expected[2:4]
    assert list(columns) == list(expected)
    restored = pickle.loads(pickle.dumps(columns))
    assert type(restored) is tuple
    assert restored == expected
    with pytest.raises(ValueError, match="same length"):
        SketchColumns(bases, tags, encoded[:-1])


def _metric(name: str, kind: MetricKind, values: tuple[float, ...], rate: float = 1.0) -> Metric:
    return Metric(name, kind, values, (), rate, (), False, None, None)


def test_batch_columns_line_up_for_every_kind_of_timer_series() -> None:
    aggregator = Aggregator(AggregatorConfig(percentiles=(90.0, -50.0)))
    aggregator.add(_metric("plain", MetricKind.TIMER, (3.0, 1.0, 2.0)))
    aggregator.add(_metric("sampled", MetricKind.HISTOGRAM, (4.0, 0.5), rate=0.5))
    aggregator.add(_metric("both", MetricKind.DISTRIBUTION, (1.5,)))
    aggregator.add(_metric("both", MetricKind.DISTRIBUTION, (2.5,), rate=0.25))
    aggregator.add(_metric("hollow", MetricKind.TIMER, ()))
    aggregator.add(_metric("hits", MetricKind.COUNTER, (2.0,)))
    snapshot = aggregator.take_snapshot(1_700_000_010, 10.0)
    batch = build_flush_batch(snapshot)
    assert isinstance(batch.names, PointNames)  # made when read (see test_point_names_*)
    assert type(batch.tags) is tuple
    assert type(batch.rollups) is tuple
    assert len(batch.names) == len(batch.tags) == len(batch.rollups) == batch.values.size
    got = dict(zip(batch.names, batch.values.tolist(), strict=True))
    assert len(got) == len(batch.names)  # no name twice
    assert got["stats.timers.plain.median"] == 2.0
    assert got["stats.histograms.sampled.count"] == 4.0
    assert got["stats.distributions.both.count"] == 5.0
    assert got["stats.distributions.both.sum"] == 4.0
    assert got["stats.timers.hollow.count"] == 0.0
    assert "stats.timers.hollow.sum" not in got
    assert got["stats.counters.hits.rate"] == 0.2
    assert [s.name for s in batch.sketches] == [
        "stats.timers.plain",
        "stats.histograms.sampled",
        "stats.distributions.both",
    ]
    again = build_flush_batch(snapshot)
    for field in ("names", "tags", "rollups", "sketches"):
        assert getattr(again, field) == getattr(batch, field)
    assert np.array_equal(again.values, batch.values)


def test_point_names_read_like_a_tuple_and_join_without_making_every_name() -> None:
    blocks: list[tuple[str, list[str], str]] = [
        ("", ["a", "bb"], ".count"),
        ("", ["c"], ""),
        ("x.", [], ".n"),
        ("s.", ["dd", "e", "f"], ".p90"),
    ]
    expected = ("a.count", "bb.count", "c", "s.dd.p90", "s.e.p90", "s.f.p90")
    names = PointNames(blocks)
    assert len(names) == 6
    for start in range(7):
        for stop in range(start, 7):
            assert names.joined(start, stop, "\n") == "\n".join(expected[start:stop])
            assert join_names(names, start, stop, "|") == "|".join(expected[start:stop])
    assert names._made is None  # joined made no tuple
    assert names == expected
    assert names == list(expected)
    assert names != expected[:-1]
    assert names[3] == "s.dd.p90"
    assert names[1:3] == ("bb.count", "c")
    assert tuple(names) == expected
    assert pickle.loads(pickle.dumps(names)) == expected
    assert type(pickle.loads(pickle.dumps(names))) is tuple
    assert names.joined(1, 4, "|") == "bb.count|c|s.dd.p90"  # from the made tuple now
    assert PointNames([]) == ()
    assert PointNames([]).joined(0, 0, "\n") == ""


def test_suffixed_point_names_are_blocks_of_the_same_names() -> None:
    bases = PointNames([("stats.timers.", ["a", "bb"], ""), ("stats.sets.", ["c"], "")])
    suffixed = PointNames([*bases.suffixed(".count"), ("", ["plain"], ""), *bases.suffixed("")])
    expected = ("stats.timers.a.count", "stats.timers.bb.count", "stats.sets.c.count", "plain", *bases)
    for start in range(len(expected) + 1):
        for stop in range(start, len(expected) + 1):
            assert suffixed.joined(start, stop, "\n") == "\n".join(expected[start:stop])
    assert bases._made is not None  # (read above), while the suffixed names were only joined
    assert suffixed._made is None
    assert suffixed == expected


def test_the_agent_keeps_numpy_off_transparent_huge_pages() -> None:
    # Zeroing fresh huge pages for the flush's short-lived arrays cost 100-200 ms per flush.
    probe = (
        "import statsyard_agent, numpy._core.multiarray as m; "
        "print(m._get_madvise_hugepage() if hasattr(m, '_get_madvise_hugepage') else 'absent')"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    if out.stdout.strip() == "absent":
        pytest.skip("this numpy has no huge page switch")
    assert out.stdout.strip() == "False"
