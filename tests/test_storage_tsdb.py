"""The writer: durability, recovery, locking, failure handling and hostile series names."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from statsyard_agent._exceptions import StorageError
from statsyard_agent._types import FlushBatch, Rollup, Tags
from statsyard_agent.storage import TSDB, Reader, StorageConfig, _wal, parse_retention

T0 = 1_700_000_000 - 1_700_000_000 % 3600  # an hour boundary
CONFIG = StorageConfig(retention=parse_retention("10s:1d,1m:7d"), fsync=False)


def batch(
    ts: int,
    points: dict[str, float],
    *,
    rollup: Rollup = Rollup.SUM,
    interval: float = 10.0,
    tags: Tags = (),
) -> FlushBatch:
    names = tuple(points)
    return FlushBatch(
        timestamp=ts,
        interval=interval,
        names=names,
        tags=(tags,) * len(names),
        rollups=(rollup,) * len(names),
        values=np.array([points[n] for n in names], dtype=np.float64),
    )


def values_of(data_dir: Path, name: str, start: int, end: int, **kw: object) -> list[float]:
    [series] = Reader(data_dir).query(name, start, end, now=end, **kw)  # type: ignore[arg-type]
    values: list[float] = series.values.tolist()
    return values


def test_write_then_read_bit_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    specials = np.array([-0.0, 5e-324, np.inf, -np.inf, 1e308, 0.1])
    sent = np.concatenate([specials, rng.normal(size=30)])
    with TSDB.open(tmp_path, CONFIG) as db:
        for i, value in enumerate(sent):
            assert db.write(batch(T0 + 10 * i, {"g": float(value)}, rollup=Rollup.LAST)) == 1
    [series] = Reader(tmp_path).query("g", T0, T0 + 10 * len(sent), now=T0)
    assert series.start == T0
    assert series.step == 10
    assert series.values.view(np.uint64).tolist() == sent.view(np.uint64).tolist()


def test_nan_is_skipped_and_duplicates_keep_the_last(tmp_path: Path) -> None:
    with TSDB.open(tmp_path, CONFIG) as db:
        dup = FlushBatch(
            T0,
            10.0,
            ("a", "b", "a"),
            ((), (), ()),
            (Rollup.SUM,) * 3,
            np.array([1.0, np.nan, 3.0]),
        )
        assert db.write(dup) == 1
    assert values_of(tmp_path, "a", T0, T0 + 10) == [3.0]
    assert np.isnan(values_of(tmp_path, "b", T0, T0 + 10)).all()


def test_reopen_rebuilds_the_head_from_the_wal(tmp_path: Path) -> None:
    with TSDB.open(tmp_path, CONFIG) as db:
        for i in range(5):
            db.write(batch(T0 + 10 * i, {"c": float(i), "d": 2.0 * i}))
    with TSDB.open(tmp_path, CONFIG) as db:
        assert db.stats.series == 2
        db.write(batch(T0 + 50, {"c": 5.0}))
    assert values_of(tmp_path, "c", T0, T0 + 60) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert values_of(tmp_path, "d", T0, T0 + 60)[:5] == [0.0, 2.0, 4.0, 6.0, 8.0]


def test_second_writer_is_refused_naming_the_lock(tmp_path: Path) -> None:
    with TSDB.open(tmp_path, CONFIG), pytest.raises(StorageError) as info:
        TSDB.open(tmp_path, CONFIG)
    message = str(info.value)
    assert str(tmp_path / "LOCK") in message
    assert str(os.getpid()) in message
    TSDB.open(tmp_path, CONFIG).close()  # released on close


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("missing", "does not exist"),
        ("empty", "not a StatsYard data directory"),
        ("foreign", "not a StatsYard data directory"),
    ],
)
def test_reader_refuses_what_is_not_a_data_dir(tmp_path: Path, setup: str, expected: str) -> None:
    target = tmp_path / "d"
    if setup != "missing":
        target.mkdir()
    if setup == "foreign":
        (target / "statsyard.json").write_text('{"format": "other"}')
    with pytest.raises(StorageError, match=expected):
        Reader(target)


def test_writer_refuses_a_foreign_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("not metrics")
    with pytest.raises(StorageError, match="not empty"):
        TSDB.open(tmp_path, CONFIG)
    assert (tmp_path / "precious.txt").read_text() == "not metrics"


class _Fault:
    """Make the n-th call of a function raise an OSError (the only mock these tests use)."""

    def __init__(self, real: object, code: int, *, after: int = 0) -> None:
        self.real = real
        self.code = code
        self.after = after
        self.calls = 0

    def __call__(self, *args: object) -> object:
        self.calls += 1
        if self.calls > self.after:
            raise OSError(self.code, os.strerror(self.code))
        return self.real(*args)  # type: ignore[operator]


@pytest.mark.parametrize(
    ("target", "code"),
    [
        ("write_all", errno.ENOSPC),
        ("write_all", errno.EACCES),
        ("fsync", errno.EIO),
    ],
)
def test_failed_write_leaves_no_trace_and_retry_stores_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str, code: int
) -> None:
    config = StorageConfig(retention=CONFIG.retention, fsync=True)
    with TSDB.open(tmp_path, config) as db:
        db.write(batch(T0, {"n": 1.0}))
        wal_size = db.stats.wal_bytes
        real = getattr(_wal, "write_all") if target == "write_all" else os.fsync  # noqa: B009
        fault = _Fault(real, code)
        if target == "write_all":
            monkeypatch.setattr(_wal, "write_all", fault)
        else:
            monkeypatch.setattr(os, "fsync", fault)
        failing = batch(T0 + 10, {"n": 2.0, "new.series": 5.0})
        with pytest.raises(StorageError, match=os.strerror(code)):
            db.write(failing)
        assert db.stats.wal_bytes == wal_size
        monkeypatch.undo()
        assert db.write(failing) == 2
        assert db.write(failing) == 2  # a second retry is recognised too
    assert values_of(tmp_path, "n", T0, T0 + 20) == [1.0, 2.0]
    assert values_of(tmp_path, "new.series", T0 + 10, T0 + 20) == [5.0]
    with TSDB.open(tmp_path, CONFIG) as db:
        assert db.stats.series == 2


def test_removed_directory_is_reported(tmp_path: Path) -> None:
    data = tmp_path / "data"
    db = TSDB.open(data, CONFIG)
    db.write(batch(T0, {"x": 1.0}))
    shutil.rmtree(data)
    with pytest.raises(StorageError, match=r"gone|removed"):
        db.write(batch(T0 + 10, {"x": 1.0}))
    db.close()
    with TSDB.open(data, CONFIG) as db:  # a restart starts afresh
        assert db.write(batch(T0 + 20, {"x": 1.0})) == 1


def test_closed_tsdb_refuses_writes(tmp_path: Path) -> None:
    db = TSDB.open(tmp_path, CONFIG)
    db.close()
    db.close()
    with pytest.raises(StorageError, match="closed"):
        db.write(batch(T0, {"x": 1.0}))


HOSTILE = [
    "../../../../etc/passwd",
    "..",
    "a/b/../../c",
    "nul\x00inside",
    "new\nline\r\n",
    "ünïcødé.名前.🙂",
    "x" * 10_240,
    "spaces and\ttabs",
    "%s%n%x",
]


def test_hostile_names_stay_inside_the_data_directory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    tags: Tags = (("../k", "v\x00"), ("path", "/etc"))
    with TSDB.open(data, CONFIG) as db:
        for i in range(3):
            db.write(batch(T0 + 10 * i, {n: float(i) for n in HOSTILE}, tags=tags))
    assert [p.name for p in tmp_path.iterdir()] == ["data"]
    allowed = {"LOCK", "statsyard.json", "series.idx", "wal", "data", "quarantine"}
    assert {p.name for p in data.iterdir()} <= allowed
    for _root, dirs, files in os.walk(data):
        for name in dirs + files:
            assert name.isascii(), name
            assert len(name) < 64, name
    reader = Reader(data)
    for name in HOSTILE:
        [found] = reader.find(name)
        assert (found.name, found.tags) == (name, tags)
        [series] = reader.query(name, T0, T0 + 30, now=T0)
        assert series.values.tolist() == [0.0, 1.0, 2.0]
        assert series.tags == dict(tags)


def test_many_series_do_not_open_many_files(tmp_path: Path) -> None:
    names = {f"s.{i}": float(i) for i in range(5000)}
    with TSDB.open(tmp_path, CONFIG) as db:
        db.write(batch(T0, names))
        fds = len(os.listdir("/proc/self/fd"))
        db.write(batch(T0 + 10, names))
        assert len(os.listdir("/proc/self/fd")) == fds
    assert sum(len(f) for _r, _d, f in os.walk(tmp_path)) < 10


def test_stats_count_points_and_bytes(tmp_path: Path) -> None:
    with TSDB.open(tmp_path, CONFIG) as db:
        db.write(batch(T0, {"a": 1.0, "b": 2.0}))
        db.write(batch(T0 + 10, {"a": 1.0}))
        stats = db.stats
    assert (stats.points_written, stats.series, stats.quarantined_partitions) == (3, 2, 0)
    on_disk = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert stats.wal_bytes > 0
    assert stats.bytes_on_disk <= on_disk


def test_schemas_pick_the_tiers_of_new_series(tmp_path: Path) -> None:
    config = StorageConfig(
        retention=parse_retention("10s:1d"),
        schemas=(("^slow\\.", parse_retention("1m:7d")),),
        fsync=False,
    )
    with TSDB.open(tmp_path, config) as db:
        for i in range(12):
            db.write(batch(T0 + 10 * i, {"slow.x": 1.0, "fast.x": 1.0}))
    reader = Reader(tmp_path)
    [slow] = reader.query("slow.x", T0, T0 + 120, now=T0)
    [fast] = reader.query("fast.x", T0, T0 + 120, now=T0)
    assert (slow.step, slow.values.tolist()) == (60, [6.0, 6.0])
    assert (fast.step, len(fast.values)) == (10, 12)
