"""A batch of series the writer already knows: recognised by comparing names run by run.

The writer keeps the ids of its previous batch; when the next batch has the same length it asks
the index whether those ids still name the batch's series (``SeriesIndex.same_keys``), which
compares names as bytes one run of consecutive ids at a time, and otherwise looks every key up by
hash. These tests pin that the answer is right in both directions (a wrong "same" would store
points under other series) and that points land on their own series whatever path was taken;
the aggregator's side (points in first-seen order) is pinned in ``test_aggregate``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from statsyard_agent._sketch import LogSketch
from statsyard_agent._types import (
    FlushBatch,
    PointNames,
    Rollup,
    SketchColumns,
    SketchPoint,
    Tags,
)
from statsyard_agent.storage import TSDB, Reader, StorageConfig, parse_retention
from statsyard_agent.storage._index import _MAX_RUNS, SeriesIndex

T0 = 1_700_000_000 - 1_700_000_000 % 3600
CONFIG = StorageConfig(retention=parse_retention("10s:1d,1m:7d"), fsync=False)


def _batch(ts: int, names: list[str], values: list[float], tags: list[Tags] | None = None) -> FlushBatch:
    return FlushBatch(
        timestamp=ts,
        interval=10.0,
        names=tuple(names),
        tags=tuple(tags if tags is not None else [()] * len(names)),
        rollups=(Rollup.LAST,) * len(names),
        values=np.array(values, dtype=np.float64),
    )


def _index_of(db: TSDB) -> SeriesIndex:
    index: SeriesIndex = db._index
    return index


def _values(data_dir: Path, pattern: str, end: int) -> dict[str, list[float]]:
    found = Reader(data_dir).query(pattern, T0, end, now=end, max_series=10_000)
    return {series.name: series.values.tolist() for series in found}


def test_same_keys_compares_run_by_run(tmp_path: Path) -> None:
    names = [f"s.{i:04d}" for i in range(600)]
    tags: list[Tags] = [(("k", str(i % 3)),) for i in range(600)]
    with TSDB.open(tmp_path, CONFIG) as db:
        # Three blocks registered one after another: ids 0-199, 200-399, 400-599.
        for block in range(3):
            part = slice(200 * block, 200 * (block + 1))
            db.write(_batch(T0, names[part], [0.0] * 200, tags[part]))
        index = _index_of(db)
        # The batch order the aggregator keeps: block 2, then blocks 0 and 1 (three runs).
        ids = np.concatenate([np.arange(400, 600), np.arange(0, 400)])
        batch_names = names[400:] + names[:400]
        batch_tags = tags[400:] + tags[:400]
        assert index.same_keys(ids, batch_names, batch_tags)
        assert index.same_keys(ids[:0], [], [])

        renamed = list(batch_names)
        renamed[450] = "s.x450"  # same length, other bytes, inside the middle run
        assert not index.same_keys(ids, renamed, batch_tags)
        retagged = list(batch_tags)
        retagged[599] = (("k", "other"),)
        assert not index.same_keys(ids, batch_names, retagged)
        swapped = list(batch_names)
        swapped[0], swapped[1] = swapped[1], swapped[0]  # same names, other order
        assert not index.same_keys(ids, swapped, batch_tags)
        assert not index.same_keys(ids, batch_names[:-1], batch_tags[:-1])  # lengths differ
        assert not index.same_keys(ids[:-1], batch_names, batch_tags)


def test_too_many_runs_are_left_to_the_hash_lookup(tmp_path: Path) -> None:
    names = [f"s.{i:04d}" for i in range(4 * _MAX_RUNS)]
    with TSDB.open(tmp_path, CONFIG) as db:
        db.write(_batch(T0, names, [0.0] * len(names)))
        index = _index_of(db)
        ids = np.arange(len(names))
        scattered = np.concatenate([ids[0::2], ids[1::2]])  # runs of one id each
        tags: list[Tags] = [()] * len(names)
        assert index.same_keys(ids, names, tags)
        assert not index.same_keys(scattered, [names[i] for i in scattered], tags)


@pytest.mark.parametrize("order", ["same", "reversed", "shuffled", "grown", "shrunk"])
def test_points_land_on_their_series_whatever_the_order(tmp_path: Path, order: str) -> None:
    """Flush after flush of the same series (values i * 1000 + series number), the second in
    another order or with series added or gone: every stored value is its own series'."""
    rng = np.random.default_rng(3)
    names = [f"s.{i:04d}" for i in range(300)]
    with TSDB.open(tmp_path, CONFIG) as db:
        for step in range(4):
            current = list(range(300))
            if step >= 2 and order == "reversed":
                current.reverse()
            elif step >= 2 and order == "shuffled":
                current = rng.permutation(300).tolist()
            elif step >= 2 and order == "shrunk":
                current = current[::2]
            if order == "grown" and step >= 2:
                names_now = names + [f"t.{i:04d}" for i in range(50)]
                current = list(range(350))
            else:
                names_now = names
            db.write(
                _batch(
                    T0 + 10 * step,
                    [names_now[i] for i in current],
                    [step * 1000.0 + i for i in current],
                )
            )
    end = T0 + 40
    stored = _values(tmp_path, "s.*", end)
    assert len(stored) == 300
    for i, name in enumerate(names):
        expected = [step * 1000.0 + i for step in range(4)]
        if order == "shrunk" and i % 2:
            assert stored[name][:2] == expected[:2]
            assert np.isnan(stored[name][2:]).all()
        else:
            assert stored[name] == expected, name
    if order == "grown":
        added = _values(tmp_path, "t.*", end)
        assert added[f"t.{49:04d}"][2:] == [2000.0 + 349, 3000.0 + 349]


def test_sketch_points_land_on_their_series_when_reordered(tmp_path: Path) -> None:
    def sketches(ts: int, order: list[int]) -> FlushBatch:
        points = tuple(
            SketchPoint(f"lat.{i:03d}", (), LogSketch.from_values(np.full(3, i + 1.0)).to_bytes())
            for i in order
        )
        return FlushBatch(ts, 10.0, (), (), (), np.zeros(0), points)

    with TSDB.open(tmp_path, CONFIG) as db:
        db.write(sketches(T0, list(range(40))))
        db.write(sketches(T0 + 10, list(range(40))))  # known, same order
        db.write(sketches(T0 + 20, list(range(40))[::-1]))  # known, reversed
    reader = Reader(tmp_path)
    for i in (0, 17, 39):
        [series] = reader.query(f"lat.{i:03d}.p50", T0, T0 + 30, now=T0 + 30)
        assert series.values.tolist() == pytest.approx([i + 1.0] * 3, rel=0.02)


def test_point_names_are_compared_joined_without_making_them(tmp_path: Path) -> None:
    bases = [f"s.{i:04d}" for i in range(300)]
    stored = [base + ".count" for base in bases] + [base + ".rate" for base in bases]
    tags: list[Tags] = [()] * 600
    with TSDB.open(tmp_path, CONFIG) as db:
        db.write(_batch(T0, stored, [0.0] * 600))
        index = _index_of(db)
        ids = np.arange(600)
        same = PointNames([("", bases[:100], ".count"), ("", bases[100:], ".count"), ("", bases, ".rate")])
        assert index.same_keys(ids, same, tags)
        assert same._made is None  # compared joined, run by run
        other = PointNames([("", bases, ".count"), ("", [*bases[:-1], "s.9999"], ".rate")])
        assert not index.same_keys(ids, other, tags)
        shifted = PointNames([("", bases, ".rate"), ("", bases, ".count")])
        assert not index.same_keys(ids, shifted, tags)
        # A batch named by blocks lands like a tuple-named one, on the cached path too.
        for step in (1, 2):
            values = np.full(600, float(step))
            db.write(FlushBatch(T0 + 10 * step, 10.0, same, tuple(tags), (Rollup.LAST,) * 600, values))
    stored_values = _values(tmp_path, "s.*.rate", T0 + 30)
    assert stored_values["s.0299.rate"] == [0.0, 1.0, 2.0]


def test_prefixed_point_and_sketch_names_are_compared_without_making_them(tmp_path: Path) -> None:
    """The aggregator's batches: base names as prefix + metric name segments, in points and in
    sketch columns; recognised joined (no name made), and a changed prefix is told apart."""
    metric_names = [f"api.{i:03d}" for i in range(200)]
    tags: list[Tags] = [()] * 400
    blobs = [LogSketch.from_values(np.full(2, i + 1.0)).to_bytes() for i in range(200)]

    def batch(ts: int, prefix: str, value: float) -> FlushBatch:
        bases = PointNames([(prefix, metric_names[:50], ""), (prefix, metric_names[50:], "")])
        names = PointNames([*bases.suffixed(".count"), *bases.suffixed(".upper")])
        sketches = SketchColumns(PointNames([(prefix, metric_names, "")]), [()] * 200, blobs)
        return FlushBatch(ts, 10.0, names, tuple(tags), (Rollup.LAST,) * 400, np.full(400, value), sketches)

    with TSDB.open(tmp_path, CONFIG) as db:
        db.write(batch(T0, "stats.timers.", 1.0))
        index = _index_of(db)
        ids = np.arange(400)
        again = batch(T0 + 10, "stats.timers.", 2.0)
        assert index.same_keys(ids, again.names, tags)
        assert not index.same_keys(ids, batch(T0 + 10, "stats.histograms.", 2.0).names, tags)
        db.write(again)
        assert isinstance(again.names, PointNames)
        assert again.names._made is None  # compared joined, never made
        assert isinstance(again.sketches, SketchColumns)
        assert isinstance(again.sketches.names, PointNames)
        assert again.sketches.names._made is None
        db.write(batch(T0 + 20, "stats.histograms.", 3.0))  # new series: looked up and made
    stored = _values(tmp_path, "stats.*.api.007.*", T0 + 30)
    assert stored["stats.timers.api.007.count"][:2] == [1.0, 2.0]
    assert math.isnan(stored["stats.timers.api.007.count"][2])  # no point: the other series got it
    assert stored["stats.histograms.api.007.upper"][-1] == 3.0
    [sketch] = Reader(tmp_path).query("stats.timers.api.007.p50", T0, T0 + 20, now=T0 + 20)
    assert sketch.values.tolist()[:2] == pytest.approx([8.0, 8.0], rel=0.02)
