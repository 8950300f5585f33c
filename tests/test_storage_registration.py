"""Bulk registration of new series: the writer's in-memory index, the record format, the head.

The writer registers a batch of new series in bulk and adds them to its in-memory index from
the columns it just made durable (it does not decode its own record); a reader (or a reopen)
decodes the record. These tests pin that both ways give the same index, that the record bytes
are the format earlier versions wrote and read, and the lazily initialised head columns.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from statsyard_agent._types import FlushBatch, Rollup, SketchPoint, Tags
from statsyard_agent.storage import TSDB, Reader, StorageConfig, _records, parse_retention
from statsyard_agent.storage._head import HeadWindow
from statsyard_agent.storage._index import (
    _MEAN_NODE,
    LOST_KIND,
    SKETCH_KIND,
    SeriesIndex,
    _add_first,
    encode_series,
    sibling_count_name,
)
from statsyard_agent.storage._keytable import KeyTable

T0 = 1_700_000_000 - 1_700_000_000 % 3600
CONFIG = StorageConfig(retention=parse_retention("10s:1d,1m:7d"), fsync=False)

HOSTILE = [
    "plain.name",
    "naïve.ünïcode.名前",
    "nul\x00inside",
    "new\nline",
    "../../etc/passwd",
    "lone\udcffsurrogate",
    "pair\ud83d\ude00as.two",
    "emoji.😀",
    "",
    "x" * 5000,
]


def _batch(
    ts: int,
    names: Sequence[str],
    tags: Sequence[Tags],
    rollups: Sequence[Rollup],
    sketches: tuple[SketchPoint, ...] = (),
) -> FlushBatch:
    return FlushBatch(
        timestamp=ts,
        interval=10.0,
        names=tuple(names),
        tags=tuple(tags),
        rollups=tuple(rollups),
        values=np.arange(len(names), dtype=np.float64),
        sketches=sketches,
    )


def _snapshot(index: SeriesIndex) -> dict[str, object]:
    return {
        "names": list(index.names),
        "tags": list(index.tags),
        "kinds": index.kinds.tolist(),
        "gids": index.gids.tolist(),
        "siblings": index.siblings.tolist(),
        "point_ids": list(index.point_ids.items()),
        "sketch_ids": list(index.sketch_ids.items()),
        "pending": {k: list(v) for k, v in index._pending_mean.items()},
        "groups": dict(index.groups),
    }


def _replayed(path: Path) -> SeriesIndex:
    index = SeriesIndex(path / "series.idx")
    index.refresh()
    return index


def test_writer_index_equals_the_replayed_index(tmp_path: Path) -> None:
    config = StorageConfig(
        retention=parse_retention("10s:1d"),
        schemas=(("^slow", parse_retention("1m:7d")), ("^also_slow", parse_retention("1m:7d"))),
        fsync=False,
    )
    tag_a: Tags = (("host", "a"), ("dc", "é\x00"))
    with TSDB.open(tmp_path, config) as db:
        # Hostile names, no tags (the all-ASCII fast path does not apply).
        db.write(_batch(T0, HOSTILE, [()] * len(HOSTILE), [Rollup.LAST] * len(HOSTILE)))
        # Tags, MEAN before its count in one batch, a MEAN whose count comes later, a MEAN
        # without any count, duplicates within the batch (the first rollup wins), schemas
        # (two rules with equal tiers share one group), and sketches.
        names = ["t.mean", "t.count", "u.mean_90", "solo.mean", "slow.a", "also_slow.b", "d", "d"]
        tags: list[Tags] = [tag_a, tag_a, (), (), (), (), tag_a, tag_a]
        rollups = [Rollup.MEAN, Rollup.SUM, Rollup.MEAN, Rollup.MEAN, Rollup.SUM, Rollup.SUM]
        rollups += [Rollup.MAX, Rollup.MIN]
        sketches = (
            SketchPoint("t", tag_a, b"s1"),
            SketchPoint("t", tag_a, b"s2"),
            SketchPoint("v", (), b"s3"),
        )
        db.write(_batch(T0 + 10, names, tags, rollups, sketches))
        # The count of u.mean_90 arrives later, mixed with known series.
        db.write(_batch(T0 + 20, ["u.count_90", "d", "t.count"], [(), tag_a, tag_a], [Rollup.SUM] * 3))
        writer = _snapshot(db._index)
        assert db._index.point_ids[("d", tag_a)] == db._index.point_ids[("d", tag_a)]
        assert db._index.kind(db._index.point_ids[("d", tag_a)]) == Rollup.MAX
    replayed = _snapshot(_replayed(tmp_path))
    assert writer == replayed
    with TSDB.open(tmp_path, config) as db:
        assert _snapshot(db._index) == writer
    index = _replayed(tmp_path)
    ids = index.point_ids
    assert index.sibling(ids[("t.mean", tag_a)]) == ids[("t.count", tag_a)]
    assert index.sibling(ids[("u.mean_90", ())]) == ids[("u.count_90", ())]
    assert index.sibling(ids[("solo.mean", ())]) == -1
    assert ("solo.count", ()) in index._pending_mean
    assert index.gid(ids[("slow.a", ())]) == index.gid(ids[("also_slow.b", ())])
    assert index.gid(ids[("slow.a", ())]) != index.gid(ids[("d", tag_a)])
    assert set(index.sketch_ids) == {("t", tag_a), ("v", ())}
    assert index.names[ids[("pair\ud83d\ude00as.two", ())]] == "pair\ud83d\ude00as.two"
    [series] = Reader(tmp_path).query("d", T0, T0 + 30, now=T0 + 30)
    assert series.values.tolist()[1] == 7.0  # the last duplicate's value, the first's rollup


def _old_encode_series(first_id: int, series: Sequence[tuple[str, Tags, int, int]]) -> bytes:
    """The SERIES encoder of earlier versions, verbatim but for the NewSeries dataclass."""
    strings: list[bytes] = []
    tag_counts = []
    for name, tags, _kind, _gid in series:
        strings.append(name.encode("utf-8", "surrogatepass"))
        tag_counts.append(len(tags))
        for key, value in tags:
            strings.append(key.encode("utf-8", "surrogatepass"))
            strings.append(value.encode("utf-8", "surrogatepass"))
    head = struct.pack("<BxxxIII", 2, first_id, len(series), len(strings))
    return b"".join(
        [
            head,
            np.array([s[2] for s in series], dtype="<u1").tobytes(),
            np.array([s[3] for s in series], dtype="<u4").tobytes(),
            np.array(tag_counts, dtype="<u4").tobytes(),
            np.array([len(b) for b in strings], dtype="<u4").tobytes(),
            *strings,
        ]
    )


@pytest.mark.parametrize("tagged", [False, True])
@pytest.mark.parametrize("ascii_only", [False, True])
def test_series_record_bytes_are_unchanged(tagged: bool, ascii_only: bool) -> None:
    names = [n for n in HOSTILE if n.isascii()] if ascii_only else HOSTILE
    tags: list[Tags] = [
        ((f"k{i}", "v" if ascii_only else "vé"),) if tagged and i % 2 else () for i in range(len(names))
    ]
    kinds = [int(Rollup.SUM), SKETCH_KIND, LOST_KIND] * len(names)
    series = [(n, t, kinds[i], i % 3) for i, (n, t) in enumerate(zip(names, tags, strict=True))]
    new = encode_series(7, names, tags, [s[2] for s in series], [s[3] for s in series])
    assert new == _old_encode_series(7, series)


def test_an_index_written_by_the_old_encoder_still_opens(tmp_path: Path) -> None:
    with TSDB.open(tmp_path, CONFIG) as db:
        db.write(_batch(T0, ["a"], [()], [Rollup.SUM]))
    # Append a record made by the earlier encoder, as an older agent would have.
    old = _old_encode_series(
        1, [("b", (("k", "v"),), int(Rollup.MAX), 0), ("c.mean", (), int(Rollup.MEAN), 0)]
    )
    with open(tmp_path / "series.idx", "ab") as fh:
        fh.write(_records.frame(old))
    with TSDB.open(tmp_path, CONFIG) as db:
        assert db._index.point_ids == {("a", ()): 0, ("b", (("k", "v"),)): 1, ("c.mean", ()): 2}
        db.write(_batch(T0 + 10, ["c.count", "b"], [(), (("k", "v"),)], [Rollup.SUM] * 2))
        assert db._index.sibling(2) == 3
        assert len(db._index) == 4


def test_add_first_first_definition_wins() -> None:
    names: list[str] = ["a", "b", "c", "b", "d", "a", "d"]
    tags: list[Tags] = [()] * len(names)
    ids = KeyTable(names, tags)
    _add_first(ids, np.arange(4), names[:4], tags[:4])
    assert list(ids.items()) == [(("a", ()), 0), (("b", ()), 1), (("c", ()), 2)]
    _add_first(ids, np.arange(4, 7), names[4:], tags[4:])
    assert list(ids.items()) == [(("a", ()), 0), (("b", ()), 1), (("c", ()), 2), (("d", ()), 4)]


def test_replayed_duplicate_series_keep_the_first_id(tmp_path: Path) -> None:
    index = SeriesIndex(tmp_path / "x")
    index.apply(struct.pack("<BxxxII", 1, 0, 1) + struct.pack("<IQ", 10, 86400))
    names = ["a", "b", "a", "", "m.mean", "m.count", "m.count"]
    kinds = [1, 2, 3, LOST_KIND, int(Rollup.MEAN), 1, 1]
    index.apply(encode_series(0, names, [()] * 7, kinds, [0] * 7))
    assert index.point_ids == {("a", ()): 0, ("b", ()): 1, ("m.mean", ()): 4, ("m.count", ()): 5}
    assert index.siblings.tolist() == [-1, -1, -1, -1, 5, -1, -1]
    assert len(index) == 7


def test_bad_rollup_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with TSDB.open(tmp_path, CONFIG) as db:
        db.write(_batch(T0, ["a"], [()], [Rollup.SUM]))
        size = (tmp_path / "series.idx").stat().st_size
        for bad in (0, 99, 300, -1):
            with pytest.raises(ValueError, match="Rollup"):
                db.write(_batch(T0 + 10, ["a", "new"], [(), ()], [Rollup.SUM, bad]))  # type: ignore[list-item]
        assert (tmp_path / "series.idx").stat().st_size == size
        assert db.write(_batch(T0 + 10, ["a", "new"], [(), ()], [Rollup.SUM] * 2)) == 2
    assert _replayed(tmp_path).point_ids == {("a", ()): 0, ("new", ()): 1}


def test_head_columns_are_initialised_per_slot() -> None:
    window = HeadWindow(start=T0, step=10, slots=6)
    sums = np.full(3, Rollup.SUM, dtype=np.uint8)
    nan = np.full(3, np.nan)
    no_siblings = np.zeros(0, dtype=np.int64)

    def put(slot: int, ids: list[int], values: list[float]) -> None:
        k = len(ids)
        window.apply(slot, 10.0, np.array(ids), np.array(values), sums[:k], nan[:k], no_siblings)

    put(1, [5, 7], [1.0, 2.0])
    put(3, [7, 9, 11], [3.0, 4.0, 5.0])  # new rows: NaN in slot 1
    put(1, [9], [6.0])  # a second flush into slot 1 (accumulates)
    put(4, [5], [7.0])  # not every row: the rest of the column is null
    got = window.read(np.array([5, 7, 9, 11, 13]), 0, 6)
    expected = [
        [np.nan, 1.0, np.nan, np.nan, 7.0, np.nan],
        [np.nan, 2.0, np.nan, 3.0, np.nan, np.nan],
        [np.nan, 6.0, np.nan, 4.0, np.nan, np.nan],
        [np.nan, np.nan, np.nan, 5.0, np.nan, np.nan],
        [np.nan] * 6,
    ]
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(window.read(np.array([9, 5]), 3, 5), [[4.0, np.nan], [np.nan, 7.0]])
    assert window.points == 7
    ids, values = window.export()
    assert ids.tolist() == [5, 7, 9, 11]
    np.testing.assert_array_equal(values, expected[:4])
    # Growing past the capacity keeps the written columns.
    many = list(range(100, 300))
    for first in range(0, 200, 3):
        chunk = many[first : first + 3]
        put(2, chunk, [float(i) for i in chunk])
    np.testing.assert_array_equal(window.read(np.array([5, 150]), 1, 3), [[1.0, np.nan], [np.nan, 150.0]])
    assert window.points == 207


def test_empty_window_exports_nothing() -> None:
    window = HeadWindow(start=T0, step=10, slots=4)
    ids, values = window.export()
    assert ids.tolist() == []
    assert values.shape == (0, 4)
    assert window.points == 0
    assert np.isnan(window.read(np.array([1]), 0, 4)).all()


@pytest.mark.parametrize(
    "name",
    [
        "a.mean",
        "mean",
        "a.b.mean_90",
        "mean_",
        "a.mean_9.x",
        "a.xmean",
        "a.mean\n",
        "a.mean_9\n",
        "a.mean\nb",
        "a.meanx",
        "x.mean.y",
        "a..mean",
        ".mean",
        "a.mean_ü",
        "",
    ],
)
def test_sibling_count_name_matches_the_regex(name: str) -> None:
    match = _MEAN_NODE.search(name)
    expected = None if match is None else f"{name[: match.start()]}count{match.group(1) or ''}"
    assert sibling_count_name(name) == expected
