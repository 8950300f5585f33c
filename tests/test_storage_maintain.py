"""Sealing, compaction, rollup tiers, retention, WAL truncation, quarantine (simulated time)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from statsyard_agent._exceptions import StorageError
from statsyard_agent._types import FlushBatch, Rollup
from statsyard_agent.storage import (
    TSDB,
    Reader,
    StorageConfig,
    _partition,
    parse_retention,
    storage_stats,
    verify_storage,
)
from statsyard_agent.storage._plan import plan_tiers

T0 = 1_700_000_000 - 1_700_000_000 % 86400
# Small spans keep the test quick: 10 s tier in 30 min partitions, 1 min in 1.5 h, 10 min in 12 h.
RETENTION = parse_retention("10s:1h,1m:6h,10m:2d")
CONFIG = StorageConfig(retention=RETENTION, fsync=False)
FLUSHES = 8 * 360  # eight hours of 10 s flushes
NAMES = (
    "t.count",
    "t.mean",
    "t.count_ps",
    "t.upper",
    "t.lower",
    "g.last",
    "t.median",
    "set.count",
)
ROLLUPS = (
    Rollup.SUM,
    Rollup.MEAN,
    Rollup.RATE,
    Rollup.MAX,
    Rollup.MIN,
    Rollup.LAST,
    Rollup.AVERAGE,
    Rollup.MAX,
)


def history(seed: int = 5) -> np.ndarray:
    """Values per flush and series; about 10 % missing (NaN) to exercise null handling."""
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 50, size=(FLUSHES, len(NAMES))).astype(np.float64)
    values[:, 1] = rng.normal(100, 20, FLUSHES).round(3)
    values[rng.random(values.shape) < 0.1] = np.nan
    values[:, 0] = np.where(np.isnan(values[:, 1]), values[:, 0], np.nan_to_num(values[:, 0]) + 1)
    return values


def write_history(data: Path, values: np.ndarray, *, maintain: bool) -> TSDB:
    db = TSDB.open(data, CONFIG)
    for k, row in enumerate(values):
        ts = T0 + 10 * k
        db.write(FlushBatch(ts, 10.0, NAMES, ((),) * len(NAMES), ROLLUPS, row))
        if maintain:
            db.maintain(ts + 5, budget=None)
    return db


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    """The same history twice: maintained as it went, and never maintained (all in the head)."""
    values = history()
    maintained = tmp_path_factory.mktemp("maintained")
    raw = tmp_path_factory.mktemp("raw")
    write_history(maintained, values, maintain=True).close()
    write_history(raw, values, maintain=False).close()
    return maintained, raw, values


def test_plan_of_the_default_retention() -> None:
    plans = plan_tiers(parse_retention("10s:7d,1m:90d,1h:2y"))
    assert [(p.step, p.window, p.span) for p in plans] == [
        (10, 600, 7200),
        (60, 7200, 43200),
        (3600, 43200, 30 * 86400),
    ]


def test_partitions_are_sealed_compacted_and_rolled_up(sealed: tuple[Path, Path, np.ndarray]) -> None:
    maintained, _raw, _values = sealed
    stats = storage_stats(maintained)
    tiers = stats["tiers"]
    assert set(tiers) == {"g0/10s", "g0/60s", "g0/600s"}
    assert all(t["partitions"] > 0 for t in tiers.values())
    files = sorted((maintained / "data" / "g0" / "10s").iterdir())
    spans = {int(f.stem.split("-")[1]) - int(f.stem.split("-")[0]) for f in files}
    assert spans <= {600, 1800}  # sealed windows and compacted 30 min partitions
    assert 1800 in spans
    # only the segments of the unsealed tail of the WAL remain
    assert stats["wal_segments"] <= 2
    assert verify_storage(maintained) == []


@pytest.mark.parametrize(("now_offset", "step"), [(0, 10), (2 * 3600, 60), (7 * 3600, 600)])
def test_sealed_tiers_equal_the_same_rollups_done_on_the_fly(
    sealed: tuple[Path, Path, np.ndarray], now_offset: int, step: int
) -> None:
    maintained, raw, _values = sealed
    end = T0 + 10 * FLUSHES
    start = end - 3600 + 600  # inside every tier's retention
    now = start + now_offset
    a = Reader(maintained).query("*.*", start, end, now=now)
    b = Reader(raw).query("*.*", start, end, now=now)
    assert [s.name for s in a] == sorted(NAMES)
    for x, y in zip(a, b, strict=True):
        assert (x.name, x.step, x.start) == (y.name, step, y.start)
        np.testing.assert_array_equal(x.values, y.values, err_msg=x.name)


def test_coarse_tier_matches_a_numpy_reference(sealed: tuple[Path, Path, np.ndarray]) -> None:
    maintained, _raw, values = sealed
    factor = 6  # 10 s -> 1 min
    hour = FLUSHES // 360 - 2  # still within the 1 min tier's 6 h retention
    start = T0 + 3600 * hour
    result = {
        s.name: s.values for s in Reader(maintained).query("*.*", start, start + 3600, now=start + 7200)
    }
    fine = values[360 * hour : 360 * (hour + 1)].reshape(60, factor, len(NAMES))
    with np.errstate(all="ignore"):
        present = ~np.isnan(fine)
        counts = present.sum(axis=1)
        total = np.nansum(fine, axis=1)
        expected = {
            "t.count": np.where(counts[:, 0] > 0, total[:, 0], np.nan),
            "t.count_ps": np.where(counts[:, 2] > 0, total[:, 2] / factor, np.nan),
            "t.upper": np.where(counts[:, 3] > 0, np.nanmax(fine[:, :, 3], axis=1), np.nan),
            "t.median": np.where(counts[:, 6] > 0, total[:, 6] / counts[:, 6], np.nan),
        }
        last = [row[~np.isnan(row)][-1] if (~np.isnan(row)).any() else np.nan for row in fine[:, :, 5]]
        expected["g.last"] = np.array(last)
        mean, count = fine[:, :, 1], fine[:, :, 0]
        weighted = np.nansum(mean * count, axis=1) / np.nansum(np.where(np.isnan(mean), 0, count), axis=1)
        expected["t.mean"] = np.where(counts[:, 1] > 0, weighted, np.nan)
    for name, want in expected.items():
        np.testing.assert_allclose(result[name], want, rtol=1e-12, equal_nan=True, err_msg=name)


def test_retention_deletes_whole_partitions_once_rolled_up(tmp_path: Path) -> None:
    values = history()[: 4 * 360]
    db = write_history(tmp_path, values, maintain=True)
    end = T0 + 10 * len(values)
    later = end + 86400  # everything sealed; 10 s and 1 min data expired
    assert db.maintain(later, budget=None)
    fine_dir = tmp_path / "data" / "g0" / "10s"
    assert list(fine_dir.iterdir()) == []
    assert list((tmp_path / "data" / "g0" / "60s").iterdir()) == []
    coarse = sorted((tmp_path / "data" / "g0" / "600s").iterdir())
    assert coarse
    [segment] = (tmp_path / "wal").iterdir()  # the (empty) segment being written
    assert segment.stat().st_size == 8
    [count] = Reader(tmp_path).query("t.count", T0, end, now=later)
    assert count.step == 600
    assert np.nansum(count.values) == np.nansum(values[:, 0])
    # gone after the 10 min tier's 2 day retention (plus at most one 12 h span)
    db.maintain(end + 3 * 86400, budget=None)
    assert list((tmp_path / "data" / "g0" / "600s").iterdir()) == []
    assert db.stats.partitions == 0
    db.close()


def test_budgeted_maintenance_resumes_and_ends_the_same(tmp_path: Path) -> None:
    values = history(seed=9)[:720]
    whole = write_history(tmp_path / "whole", values, maintain=False)
    piecemeal = write_history(tmp_path / "piecemeal", values, maintain=False)
    later = T0 + 10 * len(values) + 86400
    assert whole.maintain(later, budget=None)
    calls = 1
    while not piecemeal.maintain(later, budget=0):
        calls += 1
    assert calls > 2
    whole.close()
    piecemeal.close()
    a = Reader(tmp_path / "whole").query("*.*", T0, later, now=T0)
    b = Reader(tmp_path / "piecemeal").query("*.*", T0, later, now=T0)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.values, y.values)
    assert not list((tmp_path / "piecemeal").rglob("*.tmp"))


def test_points_for_a_sealed_window_are_dropped_and_counted(tmp_path: Path) -> None:
    with TSDB.open(tmp_path, CONFIG) as db:
        db.write(FlushBatch(T0, 10.0, ("x",), ((),), (Rollup.SUM,), np.array([1.0])))
        db.maintain(T0 + 3600, budget=None)
        assert db.write(FlushBatch(T0 + 10, 10.0, ("x",), ((),), (Rollup.SUM,), np.array([2.0]))) == 0
        assert db.stats.late_points_dropped == 1
        assert db.write(FlushBatch(T0 + 3600, 10.0, ("x",), ((),), (Rollup.SUM,), np.array([3.0]))) == 1
    [x] = Reader(tmp_path).query("x", T0, T0 + 3610, now=T0)
    assert np.nansum(x.values) == 4.0


def test_reopen_after_sealing_keeps_everything_once(tmp_path: Path) -> None:
    values = history(seed=3)[:400]
    write_history(tmp_path, values[:200], maintain=True).close()
    db = TSDB.open(tmp_path, CONFIG)
    for k in range(200, 400):
        ts = T0 + 10 * k
        db.write(FlushBatch(ts, 10.0, NAMES, ((),) * len(NAMES), ROLLUPS, values[k]))
        db.maintain(ts + 5, budget=None)
    db.close()
    with TSDB.open(tmp_path, CONFIG):
        pass
    [count] = Reader(tmp_path).query("t.count", T0, T0 + 4000, now=T0)
    np.testing.assert_array_equal(count.values, values[:400, 0])


def _flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x5A]))


@pytest.mark.parametrize("where", ["chunk", "table", "header"])
def test_damaged_partition_is_quarantined_and_reads_go_on(tmp_path: Path, where: str) -> None:
    values = history(seed=11)[:720]
    write_history(tmp_path, values, maintain=True).close()
    # the newest compacted 10 s partition (older ones are past the 1 h retention)
    full = tmp_path / "data" / "g0" / "10s" / f"{T0 + 3600}-{T0 + 5400}.part"
    size = full.stat().st_size
    _flip_byte(full, {"chunk": 200, "table": size - 5, "header": 40}[where])
    problems = verify_storage(tmp_path)
    assert len(problems) == 1
    assert str(full) in problems[0]
    # a reader answers around the damage
    [count] = Reader(tmp_path).query("t.count", T0 + 3600, T0 + 7200, now=T0 + 3600)
    assert np.isnan(count.values[0])
    np.testing.assert_array_equal(count.values[180:], values[540:720, 0])
    with TSDB.open(tmp_path, CONFIG) as db:
        db.maintain(T0 + 7200 + 120, budget=None)
        assert db.stats.quarantined_partitions == 1
        db.write(FlushBatch(T0 + 7200, 10.0, ("x",), ((),), (Rollup.SUM,), np.array([1.0])))
    assert not full.exists()
    assert [p.name for p in (tmp_path / "quarantine").iterdir()] == [f"g0-10s-{full.name}"]
    assert verify_storage(tmp_path) == []
    assert storage_stats(tmp_path)["quarantined"] == 1


def test_disk_full_during_maintenance_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    values = history(seed=13)[:500]
    db = write_history(tmp_path, values, maintain=False)
    real = getattr(_partition, "write_all")  # noqa: B009
    calls = {"n": 0}

    def full_disk(fd: int, data: object) -> None:
        calls["n"] += 1
        if calls["n"] > 3:  # let a few partitions through, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, data)

    monkeypatch.setattr(_partition, "write_all", full_disk)
    later = T0 + 10 * len(values) + 120  # seals and compacts; nothing expires yet
    with pytest.raises(StorageError, match="disk is full"):
        db.maintain(later, budget=None)
    assert not list(tmp_path.rglob("*.tmp"))
    [count] = Reader(tmp_path).query("t.count", T0, T0 + 5000, now=T0)
    np.testing.assert_array_equal(count.values, values[:, 0])
    monkeypatch.undo()
    assert db.maintain(later, budget=None)
    db.close()
    [count] = Reader(tmp_path).query("t.count", T0, T0 + 5000, now=T0)
    np.testing.assert_array_equal(count.values, values[:, 0])
    assert verify_storage(tmp_path) == []


def test_each_schema_group_gets_its_own_tiers_on_disk(tmp_path: Path) -> None:
    config = StorageConfig(
        retention=parse_retention("10s:1h,1m:6h"),
        schemas=(("^slow[.]", parse_retention("1m:6h,10m:2d")),),
        fsync=False,
    )
    with TSDB.open(tmp_path, config) as db:
        for k in range(4 * 360):  # 4 h: the slow group's 1 min tier spans 3 h
            ts = T0 + 10 * k
            points = np.array([1.0, 2.0])
            db.write(FlushBatch(ts, 10.0, ("fast.x", "slow.x"), ((), ()), (Rollup.SUM,) * 2, points))
            db.maintain(ts + 5, budget=None)
    groups = {p.name: sorted(q.name for q in p.iterdir()) for p in (tmp_path / "data").iterdir()}
    assert groups == {"g0": ["10s", "60s"], "g1": ["600s", "60s"]}
    reader = Reader(tmp_path)
    end = T0 + 4 * 3600
    [fast] = reader.query("fast.x", end - 3600, end, now=end - 3600)
    [slow] = reader.query("slow.x", T0, T0 + 3600, now=T0)
    assert (fast.step, np.nansum(fast.values)) == (10, 360.0)
    assert (slow.step, slow.values.tolist()) == (60, [12.0] * 60)
    [slow] = reader.query("slow.x", T0, T0 + 3 * 3600, now=T0 + 86400)
    assert (slow.step, slow.values.tolist()) == (600, [120.0] * 18)
