"""``storage_stats`` and ``verify_storage``: what they report, progress, safety beside a writer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from statsyard_agent._exceptions import StorageError
from statsyard_agent._sketch import LogSketch
from statsyard_agent._types import FlushBatch, Rollup, SketchPoint
from statsyard_agent.storage import (
    TSDB,
    StorageConfig,
    parse_retention,
    storage_stats,
    verify_storage,
)

T0 = 1_700_000_000 - 1_700_000_000 % 86400
CONFIG = StorageConfig(retention=parse_retention("10s:1h,1m:6h"), fsync=False)
NAMES = tuple(f"s.{i}" for i in range(20))


def flush(k: int) -> FlushBatch:
    sketch = LogSketch.from_values(np.array([1.0, 2.0, float(k % 7 + 1)])).to_bytes()
    return FlushBatch(
        T0 + 10 * k,
        10.0,
        NAMES,
        ((),) * len(NAMES),
        (Rollup.SUM,) * len(NAMES),
        np.full(len(NAMES), float(k % 3)),
        (SketchPoint("s.timer", (), sketch),),
    )


def fill(data: Path, flushes: int) -> TSDB:
    db = TSDB.open(data, CONFIG)
    for k in range(flushes):
        db.write(flush(k))
        db.maintain(T0 + 10 * k + 5, budget=None)
    return db


def test_stats_report_tiers_points_and_sizes(tmp_path: Path) -> None:
    fill(tmp_path, 400).close()
    calls: list[tuple[int, int]] = []
    stats = storage_stats(tmp_path, progress=lambda done, total: calls.append((done, total)))
    json.dumps(stats)  # JSON-serialisable
    assert (stats["series"], stats["sketch_series"]) == (20, 1)
    assert stats["groups"] == {"g0": "10s:1h,1m:6h"}
    fine, coarse = stats["tiers"]["g0/10s"], stats["tiers"]["g0/60s"]
    assert fine["retention"] == "10s:1h"
    assert coarse["retention"] == "1m:6h"
    # 400 flushes; the head keeps what is not sealed (the last window), the rest is on disk
    sealed_flushes = fine["points"] // len(NAMES)
    assert 300 <= sealed_flushes < 400
    assert fine["sketch_slots"] == sealed_flushes
    assert coarse["points"] > 0
    assert stats["points"] == fine["points"] + coarse["points"]
    assert 0 < fine["bytes_per_point"] < 4
    assert stats["bytes_total"] >= stats["wal_bytes"] + stats["index_bytes"]
    assert stats["quarantined"] == 0
    # progress: once per file, counting up to the total
    assert [c[0] for c in calls] == list(range(1, len(calls) + 1))
    assert {c[1] for c in calls} == {len(calls)}
    assert len(calls) == 1 + stats["wal_segments"] + stats["partitions"]


def test_verify_reports_damage_in_each_kind_of_file(tmp_path: Path) -> None:
    fill(tmp_path, 200).close()
    assert verify_storage(tmp_path) == []
    segment = max((tmp_path / "wal").glob("*.wal"), key=lambda p: p.stat().st_size)
    with open(segment, "r+b") as fh:
        fh.seek(40)
        byte = fh.read(1)
        fh.seek(40)
        fh.write(bytes([byte[0] ^ 1]))
    index = tmp_path / "series.idx"
    index.write_bytes(index.read_bytes()[:-3])  # a torn index tail
    problems = verify_storage(tmp_path)
    assert len(problems) == 2
    assert any(str(segment) in p for p in problems)
    assert any(str(index) in p for p in problems)


def test_stats_and_verify_are_safe_beside_a_running_writer(tmp_path: Path) -> None:
    db = fill(tmp_path, 100)
    try:
        for k in range(100, 160):
            db.write(flush(k))
            db.maintain(T0 + 10 * k + 5, budget=None)
            assert storage_stats(tmp_path)["series"] == 20
            assert verify_storage(tmp_path) == []
        # an append in progress at the very end of the live segment is not a problem
        live = max((tmp_path / "wal").glob("*.wal"))
        with open(live, "ab") as fh:
            fh.write(b"\x40\x00")
        assert verify_storage(tmp_path) == []
    finally:
        db.close()
    assert len(verify_storage(tmp_path)) == 1  # no writer: now it is a torn tail


@pytest.mark.parametrize("call", [storage_stats, verify_storage])
def test_refuses_a_directory_that_is_not_storage(tmp_path: Path, call: object) -> None:
    with pytest.raises(StorageError, match="not a StatsYard data directory"):
        call(tmp_path)  # type: ignore[operator]
