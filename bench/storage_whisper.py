"""Skeleton: the same StatsD-like workload stored by StatsYard's TSDB and by Graphite Whisper.

Usage: python bench/storage_whisper.py [--series N] [--hours H] [--whisper-series M]
                                      [--retention SPEC] [--no-fsync] [--data-dir DIR]

Writes ``--series`` series flushed every 10 s for ``--hours`` simulated hours (timestamps end
at the current time, so Whisper accepts them) through :class:`statsyard_agent.storage.TSDB`,
calling ``maintain`` after every flush with the simulated clock, and prints the flush write
time, points per second and what the data directory holds (``storage_stats``).

Whisper side: the size a Whisper file takes for the retention (files are pre-allocated, so
it does not depend on the data) is always printed. When the ``whisper`` package is
importable (it is not a dependency: ``pip install whisper``), the first ``--whisper-series``
series are also written to real Whisper files with carbon's aggregation methods matching our
rollups and xFilesFactor 0, and both are printed side by side.

This is a skeleton for the storage engineer's fuller ``bench/storage.py``: it measures disk
footprint and write cost only, not reads, RSS or sketches.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from statsyard_agent._types import FlushBatch, Rollup, Tags
from statsyard_agent.storage import TSDB, StorageConfig, Tier, parse_retention, storage_stats

INTERVAL = 10
WHISPER_RETENTION = "10s:7d,1m:90d,1h:2y"
# Carbon's aggregationMethod closest to each rollup (RATE and MEAN have no exact equivalent).
WHISPER_METHOD = {
    Rollup.SUM: "sum",
    Rollup.MIN: "min",
    Rollup.MAX: "max",
    Rollup.LAST: "last",
    Rollup.AVERAGE: "average",
    Rollup.RATE: "average",
    Rollup.MEAN: "average",
}
# (stat suffix, rollup, share of the series): counters, gauges and timer stats.
KINDS = (
    ("count", Rollup.SUM, 0.35),
    ("gauge", Rollup.LAST, 0.15),
    ("upper", Rollup.MAX, 0.15),
    ("lower", Rollup.MIN, 0.15),
    ("mean", Rollup.MEAN, 0.20),
)


class Workload:
    """Series names, rollups and a generator of one flush's values (vectorised)."""

    def __init__(self, series: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        counts = [round(series * share) for _, _, share in KINDS]
        counts[0] += series - sum(counts)
        self.names: list[str] = []
        self.rollups: list[Rollup] = []
        self.kind: list[int] = []
        for kind, ((stat, rollup, _), count) in enumerate(zip(KINDS, counts, strict=True)):
            for i in range(count):
                self.names.append(f"bench.host{i % 50:02d}.metric{i}.{stat}")
                self.rollups.append(rollup)
                self.kind.append(kind)
        self.kinds = np.array(self.kind)
        self.gauges = self.rng.integers(0, 1000, series).astype(np.float64)
        self.tags: tuple[Tags, ...] = ((("bench", "storage"),),) * series

    def values(self) -> npt.NDArray[np.float64]:
        n = len(self.names)
        out = np.empty(n)
        latency = np.round(self.rng.lognormal(3.0, 0.7, n), 3)
        change = self.rng.random(n) < 0.02
        self.gauges[change] = self.rng.integers(0, 1000, int(change.sum()))
        out[self.kinds == 0] = self.rng.poisson(5, n)[self.kinds == 0]
        out[self.kinds == 1] = self.gauges[self.kinds == 1]
        out[self.kinds == 2] = (latency * 3)[self.kinds == 2]
        out[self.kinds == 3] = (latency / 3)[self.kinds == 3]
        out[self.kinds == 4] = self.rng.lognormal(3.0, 0.2, n)[self.kinds == 4]
        return out

    def batch(self, timestamp: int) -> FlushBatch:
        return FlushBatch(
            timestamp=timestamp,
            interval=float(INTERVAL),
            names=tuple(self.names),
            tags=self.tags,
            rollups=tuple(self.rollups),
            values=self.values(),
        )


def whisper_file_bytes(tiers: tuple[Tier, ...]) -> int:
    """A Whisper file's size: 16 B header, 12 B per archive, 12 B per point (pre-allocated)."""
    return 16 + 12 * len(tiers) + 12 * sum(t.points for t in tiers)


def load_whisper() -> ModuleType | None:
    try:
        return importlib.import_module("whisper")
    except ImportError:
        return None


def run(args: argparse.Namespace, data_dir: Path) -> None:
    workload = Workload(args.series, args.seed)
    flushes = int(args.hours * 3600 // INTERVAL)
    end = int(time.time()) // INTERVAL * INTERVAL
    start = end - flushes * INTERVAL
    tiers = parse_retention(args.retention)
    config = StorageConfig(retention=tiers, fsync=not args.no_fsync)
    whisper = load_whisper()
    whisper_points: list[list[tuple[int, float]]] = [[] for _ in range(args.whisper_series)]

    print(f"{args.series} series x {flushes} flushes of {INTERVAL} s into {data_dir}")
    write_times: list[float] = []
    started = time.perf_counter()
    with TSDB.open(data_dir / "statsyard", config) as tsdb:
        for i in range(flushes):
            batch = workload.batch(start + (i + 1) * INTERVAL)
            t0 = time.perf_counter()
            tsdb.write(batch)
            write_times.append(time.perf_counter() - t0)
            tsdb.maintain(float(batch.timestamp))
            if whisper is not None:
                for j, points in enumerate(whisper_points):
                    points.append((batch.timestamp, float(batch.values[j])))
        writer = tsdb.stats
    elapsed = time.perf_counter() - started
    stats: dict[str, Any] = storage_stats(data_dir / "statsyard")
    points = args.series * flushes
    write_times.sort()
    print(
        f"statsyard: flush write median {statistics.median(write_times) * 1e3:.1f} ms, "
        f"p99 {write_times[int(0.99 * (len(write_times) - 1))] * 1e3:.1f} ms; "
        f"{points / elapsed:,.0f} points/s overall (maintain included)"
    )
    print(
        f"statsyard: {stats['bytes_total']:,} B on disk ({stats['wal_bytes']:,} B WAL, "
        f"{stats['partitions']} partitions) = {stats['bytes_total'] / points:.2f} B/point "
        f"written; sealed partitions {stats['bytes_per_point']} B/point; "
        f"{writer.points_written:,} points written"
    )
    whisper_tiers = parse_retention(WHISPER_RETENTION)
    per_file = whisper_file_bytes(whisper_tiers)
    print(
        f"whisper ({WHISPER_RETENTION}): {per_file:,} B per series, pre-allocated = "
        f"{per_file * args.series / points:.2f} B/point written after {args.hours:g} h"
    )
    if whisper is None:
        print("whisper: package not installed, real files skipped (pip install whisper)")
        return
    write_whisper(whisper, workload, whisper_points, data_dir / "whisper", whisper_tiers)


def write_whisper(
    whisper: ModuleType,
    workload: Workload,
    series_points: list[list[tuple[int, float]]],
    root: Path,
    tiers: tuple[Tier, ...],
) -> None:
    root.mkdir(parents=True, exist_ok=True)
    archives = [(t.step, t.points) for t in tiers]
    started = time.perf_counter()
    apparent = allocated = written = 0
    for j, points in enumerate(series_points):
        path = root / f"series{j}.wsp"
        method = WHISPER_METHOD[workload.rollups[j]]
        whisper.create(str(path), archives, xFilesFactor=0.0, aggregationMethod=method)
        whisper.update_many(str(path), points)
        written += len(points)
        info = path.stat()
        apparent += info.st_size
        allocated += info.st_blocks * 512
    elapsed = time.perf_counter() - started
    print(
        f"whisper: {len(series_points)} files, {written / elapsed:,.0f} points/s, "
        f"{apparent:,} B apparent / {allocated:,} B allocated = "
        f"{allocated / max(written, 1):.2f} B/point written"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--whisper-series", type=int, default=100)
    parser.add_argument("--retention", default=WHISPER_RETENTION)
    parser.add_argument("--no-fsync", action="store_true")
    parser.add_argument("--data-dir", default="", help="kept afterwards (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    args.whisper_series = min(args.whisper_series, args.series)
    if args.data_dir:
        run(args, Path(args.data_dir))
        return
    with tempfile.TemporaryDirectory(prefix="statsyard-bench-") as tmp:
        run(args, Path(tmp))


if __name__ == "__main__":
    main()
