"""The WAL and the series index: framing, torn tails at every byte, zero-filled tails."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from statsyard_agent._types import FlushBatch, Rollup
from statsyard_agent.storage import TSDB, Reader, StorageConfig, _records, _wal, parse_retention

T0 = 1_700_000_000 - 1_700_000_000 % 3600
CONFIG = StorageConfig(retention=parse_retention("10s:1d"), fsync=False)


def flush(ts: int, names: list[str], value: float) -> FlushBatch:
    return FlushBatch(
        ts,
        10.0,
        tuple(names),
        ((),) * len(names),
        (Rollup.SUM,) * len(names),
        np.full(len(names), value),
    )


def _segments(data: Path) -> list[Path]:
    return sorted((data / "wal").glob("*.wal"))


def _write_history(data: Path) -> tuple[Path, int, int]:
    """Four flushes; the last one also creates a new series. Returns the WAL segment, the
    offset where its last record starts, and the index size before the last flush."""
    with TSDB.open(data, CONFIG) as db:
        for i in range(3):
            db.write(flush(T0 + 10 * i, ["a", "b"], float(i + 1)))
        index_before = (data / "series.idx").stat().st_size
        [segment] = [s for s in _segments(data) if s.stat().st_size > 8]
        last_start = segment.stat().st_size
        db.write(flush(T0 + 30, ["a", "b", "c"], 4.0))
    return segment, last_start, index_before


def _intact(data: Path, flushes: int) -> None:
    reader = Reader(data)
    [a] = reader.query("a", T0, T0 + 40, now=T0)
    expected = [1.0, 2.0, 3.0, 4.0][:flushes] + [float("nan")] * (4 - flushes)
    np.testing.assert_array_equal(a.values, expected)


def test_torn_wal_tail_at_every_byte_of_the_last_record(tmp_path: Path) -> None:
    pristine = tmp_path / "pristine"
    segment, last_start, _ = _write_history(pristine)
    size = segment.stat().st_size
    work = tmp_path / "work"
    for cut in range(last_start, size):
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(pristine, work)
        wal = work / "wal" / segment.name
        with open(wal, "r+b") as fh:
            fh.truncate(cut)
        _intact(work, 3)  # a reader skips the partial record
        with TSDB.open(work, CONFIG) as db:
            assert db.write(flush(T0 + 30, ["a"], 4.0)) == 1
        assert wal.stat().st_size == last_start  # the torn tail was cut off
        _intact(work, 4)


def test_torn_index_tail_at_every_byte_of_the_last_record(tmp_path: Path) -> None:
    pristine = tmp_path / "pristine"
    _segment, _, index_before = _write_history(pristine)
    size = (pristine / "series.idx").stat().st_size
    work = tmp_path / "work"
    for cut in range(index_before, size):
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(pristine, work)
        with open(work / "series.idx", "r+b") as fh:
            fh.truncate(cut)
        # The WAL record using series "c" survives; without "c" in the index it is ignored
        # for "c", never misattributed.
        with TSDB.open(work, CONFIG) as db:
            assert db.stats.series == 2
            db.write(flush(T0 + 40, ["c"], 9.0))
        reader = Reader(work)
        [c] = reader.query("c", T0, T0 + 50, now=T0)
        assert np.nansum(c.values) == 9.0
        _intact(work, 4)


def test_zero_filled_tail_is_not_a_record(tmp_path: Path) -> None:
    segment, _, _ = _write_history(tmp_path)
    size = segment.stat().st_size
    with open(segment, "ab") as fh:
        fh.write(bytes(4096))
    _intact(tmp_path, 4)
    with TSDB.open(tmp_path, CONFIG):
        pass
    assert segment.stat().st_size == size


def test_garbage_segment_is_refused_with_advice(tmp_path: Path) -> None:
    _write_history(tmp_path)
    (tmp_path / "wal" / "0000000099.wal").write_bytes(b"definitely not a wal segment")
    with pytest.raises(Exception, match="move the file out"):
        TSDB.open(tmp_path, CONFIG)


@given(st.binary(max_size=200), st.integers(0, 64))
def test_scan_never_returns_a_bad_record(noise: bytes, cut: int) -> None:
    good = _records.frame(b"\x01hello") + _records.frame(b"\x02world")
    out: list[memoryview] = []
    scan = _records.scan(good + noise, 0, out)
    assert [bytes(p) for p in out[:2]] == [b"\x01hello", b"\x02world"]
    assert scan.end <= len(good) + len(noise)
    out = []
    scan = _records.scan(good[: len(good) - 1 - cut % len(good)], 0, out)
    assert all(bytes(p) in (b"\x01hello", b"\x02world") for p in out)


def test_flush_record_round_trip_and_same_ids() -> None:
    ids = np.array([5, 1, 9], dtype=np.int64)
    record = _wal.FlushRecord(
        T0, 9.5, ids, np.array([1.5, -0.0, np.inf]), np.array([3], dtype=np.int64), [b"sk"]
    )
    first = _wal.decode_flush(_wal.encode_flush(record, same_ids=False), None)
    again = _wal.decode_flush(_wal.encode_flush(record, same_ids=True), first.ids)
    for got in (first, again):
        assert (got.timestamp, got.interval, got.sketches) == (T0, 9.5, [b"sk"])
        assert got.ids.tolist() == [5, 1, 9]
        assert got.sketch_ids.tolist() == [3]
        assert got.values.view(np.uint64).tolist() == record.values.view(np.uint64).tolist()
    small = len(_wal.encode_flush(record, same_ids=True))
    assert small == len(_wal.encode_flush(record, same_ids=False)) - 12
