"""Percentiles that survive rollup: stored sketches merged per slot, in every tier."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statsyard_agent._exceptions import CorruptDataError
from statsyard_agent._sketch import LogSketch
from statsyard_agent._types import FlushBatch, Rollup, SketchPoint, Tags
from statsyard_agent.storage import TSDB, Reader, SeriesKey, StorageConfig, parse_retention
from statsyard_agent.storage._sketches import merge_groups

T0 = 1_700_000_000 - 1_700_000_000 % 86400
CONFIG = StorageConfig(retention=parse_retention("10s:1h,1m:6h,10m:2d"), fsync=False)
BASE = "stats.timers.api"
TAGS: Tags = (("host", "a"),)
QUANTILES = {"p50": 0.5, "p75": 0.75, "p90": 0.9, "p95": 0.95, "p99": 0.99, "p999": 0.999}


def samples_per_flush(flushes: int, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(flushes):
        n = int(rng.integers(0, 40))
        # a drifting, heavy-tailed latency distribution, with some flushes empty
        out.append(rng.lognormal(mean=3 + np.sin(k / 50), sigma=0.8, size=n))
    return out


def write(data: Path, samples: list[np.ndarray], *, maintain: bool, interval: float = 10) -> None:
    step = int(interval)
    with TSDB.open(data, CONFIG) as db:
        for k, values in enumerate(samples):
            ts = T0 + step * k
            sketches = (
                (SketchPoint(BASE, TAGS, LogSketch.from_values(values).to_bytes()),) if len(values) else ()
            )
            db.write(
                FlushBatch(
                    ts,
                    interval,
                    (f"{BASE}.count",),
                    (TAGS,),
                    (Rollup.SUM,),
                    np.array([float(len(values))]),
                    sketches,
                )
            )
            if maintain:
                db.maintain(ts + 5, budget=None)


def check(
    series_values: np.ndarray, start: int, bucket: int, samples: list[np.ndarray], q: float, step: int
) -> int:
    """Compare each slot with numpy's exact (lower) quantile of all its samples; returns the
    number of slots checked."""
    checked = 0
    for i, got in enumerate(series_values.tolist()):
        lo = (start + i * bucket - T0) // step
        hi = (start + (i + 1) * bucket - T0) // step
        chunk = [s for s in samples[max(lo, 0) : max(hi, 0)] if len(s)]
        if not chunk:
            assert np.isnan(got)
            continue
        everything = np.concatenate(chunk)
        exact = float(np.quantile(everything, q, method="lower"))
        assert got == pytest.approx(exact, rel=0.0101), (i, q, len(everything))
        checked += 1
    return checked


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[np.ndarray]]:
    samples = samples_per_flush(6 * 360)  # six hours
    maintained = tmp_path_factory.mktemp("maintained")
    raw = tmp_path_factory.mktemp("raw")
    write(maintained, samples, maintain=True)
    write(raw, samples, maintain=False)
    return maintained, raw, samples


def test_find_lists_the_virtual_percentiles(stored: tuple[Path, Path, list[np.ndarray]]) -> None:
    maintained, _raw, _samples = stored
    reader = Reader(maintained)
    assert reader.find(f"{BASE}.p*") == [SeriesKey(f"{BASE}.{s}", TAGS) for s in sorted(QUANTILES)]
    assert reader.find(f"{BASE}.p99", tags={"host": "b"}) == []
    assert [k.name for k in reader.find(f"{BASE}.*")] == [f"{BASE}.count"] + [
        f"{BASE}.{s}" for s in sorted(QUANTILES)
    ]


@pytest.mark.parametrize("which", ["maintained", "raw"])
@pytest.mark.parametrize(("offset", "step"), [(0, 10), (2 * 3600, 60), (7 * 3600, 600)])
def test_percentiles_of_every_tier_are_true_percentiles(
    stored: tuple[Path, Path, list[np.ndarray]], which: str, offset: int, step: int
) -> None:
    maintained, raw, samples = stored
    data = maintained if which == "maintained" else raw
    end = T0 + 6 * 3600
    start = end - 3000
    reader = Reader(data)
    checked = 0
    for suffix in ("p50", "p99", "p999"):
        [series] = reader.query(f"{BASE}.{suffix}", start, end, now=start + offset)
        assert (series.step, series.tags) == (step, dict(TAGS))
        checked += check(series.values, series.start, step, samples, QUANTILES[suffix], 10)
    assert checked >= 0.9 * 3 * (3000 // step)  # a few 10 s flushes had no samples


def test_consolidated_percentiles_merge_the_sketches_of_each_bucket(
    stored: tuple[Path, Path, list[np.ndarray]],
) -> None:
    maintained, _raw, samples = stored
    end = T0 + 6 * 3600
    [series] = Reader(maintained).query(f"{BASE}.p95", end - 3600, end, max_points=7, now=end - 3600)
    assert len(series.values) <= 7
    assert check(series.values, series.start, series.step, samples, 0.95, 10) >= 6


def test_several_flushes_in_one_slot_merge_their_sketches(tmp_path: Path) -> None:
    samples = samples_per_flush(100, seed=4)
    write(tmp_path, samples, maintain=False, interval=2)
    [series] = Reader(tmp_path).query(f"{BASE}.p90", T0, T0 + 200, now=T0)
    assert series.step == 10
    assert check(series.values, series.start, 10, samples, 0.9, 2) == 20


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(
                st.one_of(
                    st.floats(-1e6, 1e6, allow_nan=False),
                    st.integers(-500, 500).map(float),
                    st.just(0.0),
                ),
                max_size=30,
            ),
            st.integers(0, 5),
            st.booleans(),
        ),
        min_size=1,
        max_size=25,
    )
)
def test_vectorised_merge_equals_merge_all(entries: list[tuple[list[float], int, bool]]) -> None:
    """The rollup's batch merge gives merge_all's bytes (fast path and fallbacks alike)."""
    blobs, groups = [], []
    for values, group, weighted in entries:
        array = np.array(values)
        weights = np.full(len(array), 2.5) if weighted else None
        blobs.append(LogSketch.from_values(array, weights).to_bytes())
        groups.append(group)
    blobs.append(b"\x01\x00garbage\xff")
    groups.append(0)
    merged = merge_groups(blobs, groups)
    for group in set(groups):
        members = [b for b, g in zip(blobs, groups, strict=True) if g == group]
        if len(members) == 1:
            assert merged[group] == members[0]
            continue
        sketches = []
        for blob in members:
            with contextlib.suppress(CorruptDataError):
                sketches.append(LogSketch.from_bytes(blob))
        expected = LogSketch.merge_all(sketches)
        assert LogSketch.from_bytes(merged[group]) == expected
        if not any(w for _v, g, w in entries if g == group):
            assert merged[group] == expected.to_bytes()
