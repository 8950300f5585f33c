"""Storage benchmark: a StatsD-like workload through the real TSDB, and the same into Whisper.

    python bench/storage.py                              # 100 000 series, a simulated day
    python bench/storage.py --series 10000 --hours 2     # a quick run
    python bench/storage.py --whisper-series 0           # skip the Whisper comparison

Workload (simulated timestamps, a flush every 10 s, fsync on unless --no-fsync), with the
series mix of an Etsy statsd flush: 40 % counter series (``.count`` integers, often 0, and
``.rate``), 40 % timer series (15 per timer: integer-millisecond samples give integer sums,
medians and extremes, and noisy floats for mean/std/mean_90; plus one quantile sketch per
timer), 15 % gauges (a value with one decimal that changes now and then) and 5 % set counts.
Every series carries a ``host`` tag. ``maintain()`` runs after every write with the agent's
default budget, as the agent does.

Printed: write time per flush (median, p99, max), points per second, maintenance time,
bytes per point per tier (sketches reported apart), RSS, and query times for one series over
the simulated day and for a 1 000-series glob over the last hour (first query of a fresh
reader, which loads the WAL head, and warm). Timings are figures, never assertions.

The Whisper comparison (if the ``whisper`` package is importable) writes the first
``--whisper-series`` series for ``--whisper-hours`` into Whisper files with retention
``10s:7d,1m:90d,1h:2y`` (xFilesFactor 0, aggregation from each series' rollup), one
``update_many`` per file per flush as carbon-cache would, and scales its figures to the full
series count.
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from statsyard_agent._sketch import segment_argsort, sketch_bytes_from_segments
from statsyard_agent._types import FlushBatch, Rollup, SketchPoint, Tags
from statsyard_agent.storage import TSDB, Reader, StorageConfig, storage_stats

FLUSH = 10
T0 = 1_700_000_000 - 1_700_000_000 % 86400
HOSTS = 16
TIMER_STATS: tuple[tuple[str, Rollup], ...] = (
    ("count", Rollup.SUM),
    ("count_ps", Rollup.RATE),
    ("sum", Rollup.SUM),
    ("sum_squares", Rollup.SUM),
    ("mean", Rollup.MEAN),
    ("median", Rollup.AVERAGE),
    ("lower", Rollup.MIN),
    ("upper", Rollup.MAX),
    ("std", Rollup.AVERAGE),
    ("count_90", Rollup.SUM),
    ("mean_90", Rollup.MEAN),
    ("sum_90", Rollup.SUM),
    ("sum_squares_90", Rollup.SUM),
    ("upper_90", Rollup.MAX),
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass
class Workload:
    """Names, tags and rollups of every series, and per-family state for generating values."""

    names: tuple[str, ...]
    tags: tuple[Tags, ...]
    rollups: tuple[Rollup, ...]
    counter_at: slice
    gauge_at: slice
    set_at: slice
    timer_at: slice
    counter_rate: FloatArray
    gauge: FloatArray
    set_mean: FloatArray
    timer_rate: FloatArray
    timer_scale: FloatArray
    timer_names: tuple[str, ...]
    timer_tags: tuple[Tags, ...]
    rng: np.random.Generator

    def flush(self, ts: int) -> FlushBatch:
        rng = self.rng
        values = np.empty(len(self.names))
        counts = rng.poisson(self.counter_rate * FLUSH).astype(np.float64)
        values[self.counter_at] = np.column_stack([counts, counts / FLUSH]).ravel()
        moving = rng.random(len(self.gauge)) < 0.05
        self.gauge[moving] = np.round(self.gauge[moving] + rng.normal(0, 5, moving.sum()), 1)
        values[self.gauge_at] = self.gauge
        values[self.set_at] = rng.poisson(self.set_mean).astype(np.float64)
        stats, sketches = self._timers(ts)
        values[self.timer_at] = stats.ravel()
        return FlushBatch(ts, float(FLUSH), self.names, self.tags, self.rollups, values, sketches)

    def _timers(self, ts: int) -> tuple[FloatArray, tuple[SketchPoint, ...]]:
        rng = self.rng
        n = rng.poisson(self.timer_rate)
        offsets = np.concatenate([[0], np.cumsum(n)]).astype(np.int64)
        owner = np.repeat(np.arange(len(n)), n)
        raw = np.maximum(1.0, np.round(rng.lognormal(0, 0.6, offsets[-1]) * self.timer_scale[owner]))
        samples = raw[segment_argsort(raw, offsets)]
        out = np.full((len(n), len(TIMER_STATS)), np.nan)
        count = n.astype(np.float64)
        out[:, 0] = count
        out[:, 1] = count / FLUSH
        busy = n > 0
        starts, ends = offsets[:-1][busy], offsets[1:][busy]
        nb = count[busy]
        csum = np.concatenate([[0.0], np.cumsum(samples)])
        csq = np.concatenate([[0.0], np.cumsum(samples * samples)])
        total = csum[ends] - csum[starts]
        squares = csq[ends] - csq[starts]
        mean = total / nb
        mid = starts + (n[busy] - 1) // 2
        median = np.where(
            n[busy] % 2 == 1, samples[mid], (samples[mid] + samples[np.minimum(mid + 1, ends - 1)]) / 2
        )
        k = np.maximum(1, np.floor(0.9 * n[busy] + 0.5).astype(np.int64))
        sum90 = csum[starts + k] - csum[starts]
        sq90 = csq[starts + k] - csq[starts]
        out[busy, 2] = total
        out[busy, 3] = squares
        out[busy, 4] = mean
        out[busy, 5] = median
        out[busy, 6] = samples[starts]
        out[busy, 7] = samples[ends - 1]
        out[busy, 8] = np.sqrt(np.maximum(squares / nb - mean * mean, 0.0))
        out[busy, 9] = k
        out[busy, 10] = sum90 / k
        out[busy, 11] = sum90
        out[busy, 12] = sq90
        out[busy, 13] = samples[starts + k - 1]
        blobs = sketch_bytes_from_segments(samples, None, offsets, presorted=True)
        sketches = tuple(
            SketchPoint(self.timer_names[i], self.timer_tags[i], blobs[i])
            for i in np.flatnonzero(busy).tolist()
        )
        return out, sketches


def build_workload(series: int, seed: int = 1) -> Workload:
    rng = np.random.default_rng(seed)
    n_timers = max(1, round(0.4 * series / len(TIMER_STATS)))
    n_counters = max(1, round(0.4 * series / 2))
    n_gauges = max(1, round(0.15 * series))
    n_sets = max(1, series - n_timers * len(TIMER_STATS) - 2 * n_counters - n_gauges)
    names: list[str] = []
    tags: list[Tags] = []
    rollups: list[Rollup] = []

    def host(i: int) -> Tags:
        return (("host", f"web{i % HOSTS:02d}"),)

    for i in range(n_counters):
        base = f"stats.counters.svc{i // 1000:03d}.c{i % 1000:03d}"
        names += [f"{base}.count", f"{base}.rate"]
        tags += [host(i)] * 2
        rollups += [Rollup.SUM, Rollup.RATE]
    counter_at = slice(0, len(names))
    for i in range(n_gauges):
        names.append(f"stats.gauges.svc{i // 1000:03d}.g{i % 1000:03d}")
        tags.append(host(i))
        rollups.append(Rollup.LAST)
    gauge_at = slice(counter_at.stop, len(names))
    for i in range(n_sets):
        names.append(f"stats.sets.svc{i // 1000:03d}.s{i % 1000:03d}.count")
        tags.append(host(i))
        rollups.append(Rollup.MAX)
    set_at = slice(gauge_at.stop, len(names))
    timer_names, timer_tags = [], []
    for i in range(n_timers):
        base = f"stats.timers.svc{i // 1000:03d}.t{i % 1000:03d}"
        timer_names.append(base)
        timer_tags.append(host(i))
        for stat, rollup in TIMER_STATS:
            names.append(f"{base}.{stat}")
            tags.append(host(i))
            rollups.append(rollup)
    timer_at = slice(set_at.stop, len(names))
    counter_rate = np.where(rng.random(n_counters) < 0.3, 0.01, rng.lognormal(0, 1.5, n_counters))
    return Workload(
        names=tuple(names),
        tags=tuple(tags),
        rollups=tuple(rollups),
        counter_at=counter_at,
        gauge_at=gauge_at,
        set_at=set_at,
        timer_at=timer_at,
        counter_rate=counter_rate,
        gauge=np.round(rng.normal(500, 200, n_gauges), 1),
        set_mean=rng.lognormal(2, 1, n_sets),
        timer_rate=np.where(rng.random(n_timers) < 0.2, 0.3, rng.lognormal(2.5, 0.8, n_timers)),
        timer_scale=rng.lognormal(3, 1, n_timers),
        timer_names=tuple(timer_names),
        timer_tags=tuple(timer_tags),
        rng=rng,
    )


# -- measuring -----------------------------------------------------------------------------


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size in MiB."""
    current = 0.0
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                current = int(line.split()[1]) / 1024
    return current, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


def run_tsdb(args: argparse.Namespace, workload: Workload, data: Path) -> dict[str, Any]:
    flushes = int(args.hours * 3600 // FLUSH)
    config = StorageConfig(fsync=not args.no_fsync)
    writes: list[float] = []
    maintains: list[float] = []
    points = 0
    generate = 0.0
    db = TSDB.open(data, config)
    progress_every = max(1, flushes // 20)
    for k in range(flushes):
        ts = T0 + FLUSH * (k + 1)
        took, batch = timed(functools.partial(workload.flush, ts))
        generate += took
        took, written = timed(functools.partial(db.write, batch))
        writes.append(took)
        points += written
        took, _ = timed(functools.partial(db.maintain, ts + 5))
        maintains.append(took)
        if (k + 1) % progress_every == 0:
            print(
                f"  {k + 1}/{flushes} flushes, write median {ms(statistics.median(writes))}, "
                f"maintain max so far {ms(max(maintains))}",
                file=sys.stderr,
                flush=True,
            )
    end = T0 + FLUSH * flushes
    # A day later everything due is sealed, compacted and rolled up (nothing expires yet).
    final, _ = timed(lambda: db.maintain(end + 86400, budget=None))
    rss_after_write = rss_mb()
    writer_stats = db.stats
    db.close()
    stats = storage_stats(data)

    reader = Reader(data)
    rng = np.random.default_rng(7)
    picks = rng.choice(len(workload.names), size=20, replace=False).tolist()
    day_start = max(T0, end - 86400)
    first_query, _ = timed(
        lambda: reader.query(
            workload.names[picks[0]], day_start, end, tags=dict(workload.tags[picks[0]]), now=end
        )
    )
    one_series = []
    for i in picks:
        query = functools.partial(
            reader.query, workload.names[i], day_start, end, tags=dict(workload.tags[i]), now=end
        )
        took, result = timed(query)
        assert len(result) == 1
        one_series.append(took)
    glob = "stats.counters.svc000.*.count"
    glob_times = []
    matched = 0
    for _ in range(5):
        took, result = timed(lambda: reader.query(glob, end - 3600, end, now=end))
        glob_times.append(took)
        matched = len(result)
    fresh = Reader(data)
    cold_glob, _ = timed(lambda: fresh.query(glob, end - 3600, end, now=end))
    return {
        "flushes": flushes,
        "series": len(workload.names),
        "timers": len(workload.timer_names),
        "points": points,
        "writes": writes,
        "maintains": maintains,
        "final_maintain": final,
        "generate": generate,
        "rss_after_write": rss_after_write,
        "rss_after_query": rss_mb(),
        "writer_stats": writer_stats,
        "stats": stats,
        "first_query": first_query,
        "one_series": one_series,
        "glob": glob_times,
        "glob_cold": cold_glob,
        "glob_matched": matched,
        "day": end - day_start,
    }


# -- whisper --------------------------------------------------------------------------------

_WHISPER_AGG = {
    Rollup.SUM: "sum",
    Rollup.MIN: "min",
    Rollup.MAX: "max",
    Rollup.LAST: "last",
    Rollup.AVERAGE: "average",
    Rollup.MEAN: "average",
    Rollup.RATE: "average",
}


def run_whisper(args: argparse.Namespace, workload: Workload, root: Path) -> dict[str, Any] | None:
    try:
        import whisper  # type: ignore[import-untyped]
    except ImportError:
        return None
    count = min(args.whisper_series, len(workload.names))
    if count <= 0:
        return None
    archives = [(10, 7 * 8640), (60, 90 * 1440), (3600, 2 * 365 * 24)]
    picks = np.linspace(0, len(workload.names) - 1, count).astype(int).tolist()
    paths: list[str] = []
    for i in picks:
        paths.append(str(root / f"{i}.wsp"))
        whisper.create(
            paths[-1], archives, xFilesFactor=0.0, aggregationMethod=_WHISPER_AGG[workload.rollups[i]]
        )
    flushes = int(args.whisper_hours * 3600 // FLUSH)
    replay = build_workload(len(workload.names))
    times = []
    points = 0
    for k in range(flushes):
        ts = T0 + FLUSH * (k + 1)
        values = replay.flush(ts).values[picks]
        started = time.perf_counter()
        for path, value in zip(paths, values.tolist(), strict=True):
            if value == value:  # not NaN
                whisper.update_many(path, [(ts, value)], now=ts)
                points += 1
        times.append(time.perf_counter() - started)
    end = T0 + FLUSH * flushes
    size = sum(os.path.getsize(p) for p in paths)
    one = []
    for path in paths[:20]:
        started = time.perf_counter()
        whisper.fetch(path, end - 86400, end, now=end)
        one.append(time.perf_counter() - started)
    started = time.perf_counter()
    for path in paths[: min(1000, len(paths))]:
        whisper.fetch(path, end - 3600, end, now=end)
    glob = (time.perf_counter() - started) * 1000 / min(1000, len(paths))
    return {
        "series": count,
        "flushes": flushes,
        "points": points,
        "times": times,
        "bytes": size,
        "one_series": one,
        "glob_per_1000": glob,
    }


# -- report ---------------------------------------------------------------------------------


def report(ours: dict[str, Any], theirs: dict[str, Any] | None, fsync: bool) -> None:
    writes = ours["writes"]
    per_flush = ours["points"] / ours["flushes"]
    stats = ours["stats"]
    print(
        f"\nStatsYard TSDB: {ours['series']} series ({ours['timers']} timers with sketches), "
        f"{ours['flushes']} flushes of {FLUSH} s ({ours['flushes'] * FLUSH / 3600:g} h "
        f"simulated), fsync {'on' if fsync else 'off'}"
    )
    print(f"  points per flush        {per_flush:12.0f}")
    print(
        f"  write per flush         median {ms(statistics.median(writes))}   "
        f"p99 {ms(pct(writes, 99))}   max {ms(max(writes))}"
    )
    slowest = sorted(range(len(writes)), key=writes.__getitem__)[-3:][::-1]
    print(
        "  slowest writes          "
        + ", ".join(f"flush {k}: {writes[k] * 1000:.0f} ms" for k in slowest)
        + " (flush 0 registers every series)"
    )
    print(
        f"  write throughput        {per_flush / statistics.median(writes):12,.0f} points/s "
        f"(median flush), {ours['points'] / sum(writes):,.0f} points/s overall"
    )
    maintains = ours["maintains"]
    print(
        f"  maintain per call       median {ms(statistics.median(maintains))}   "
        f"p99 {ms(pct(maintains, 99))}   max {ms(max(maintains))}   "
        f"total {sum(maintains):.1f} s (+ final {ours['final_maintain']:.1f} s)"
    )
    print(f"  workload generation     {ours['generate']:.1f} s (not counted above)")
    print(
        f"  bytes per point         overall {stats['bytes_per_point']} "
        f"({stats['bytes_per_point_all_in']} with the sketches; "
        f"{stats['points']:,} points in {stats['partitions']} partitions)"
    )
    for key, tier in stats["tiers"].items():
        print(
            f"    {key:10s} {tier['retention'] or '':10s} {tier['bytes_per_point']!s:>8} B/point "
            f"({tier['bytes_per_point_all_in']!s:>8} all-in)  "
            f"{tier['points']:>12,} points  {tier['bytes'] / 2**20:8.1f} MiB  "
            f"sketches {tier['sketch_bytes'] / 2**20:6.1f} MiB for {tier['sketch_slots']:,}"
        )
    print(
        f"  index {stats['index_bytes'] / 2**20:.1f} MiB, WAL {stats['wal_bytes'] / 2**20:.1f} MiB "
        f"in {stats['wal_segments']} segments, total {stats['bytes_total'] / 2**20:.1f} MiB"
    )
    cur, peak = ours["rss_after_write"]
    cur2, peak2 = ours["rss_after_query"]
    print(
        f"  RSS                     after writes {cur:.0f} MiB (peak {peak:.0f}), after "
        f"queries {cur2:.0f} MiB (peak {peak2:.0f}); includes the workload generator"
    )
    print(
        f"  query 1 series {ours['day'] / 3600:g} h    median {ms(statistics.median(ours['one_series']))}   "
        f"max {ms(max(ours['one_series']))}   (first query of a new reader, loading the WAL "
        f"head: {ms(ours['first_query'])})"
    )
    print(
        f"  query {ours['glob_matched']}-series glob 1 h   median {ms(statistics.median(ours['glob']))}   "
        f"(new reader: {ms(ours['glob_cold'])})"
    )
    if theirs is None:
        print("\nWhisper: not run (package not importable or --whisper-series 0)")
        return
    scale = ours["series"] / theirs["series"]
    per_file = theirs["bytes"] / theirs["series"]
    whisper_flush = statistics.median(theirs["times"]) * scale
    print(
        f"\nWhisper (10s:7d,1m:90d,1h:2y): {theirs['series']} series for "
        f"{theirs['flushes'] * FLUSH / 3600:g} h, scaled x{scale:g} to {ours['series']} series"
    )
    print(f"  write per flush         median {ms(whisper_flush)} (scaled)")
    print(
        f"  disk                    {per_file / 2**20:.2f} MiB per series, preallocated: "
        f"{per_file * ours['series'] / 2**30:.1f} GiB for {ours['series']} series"
    )
    slots = 7 * 8640 + 90 * 1440 + 2 * 365 * 24
    print(
        f"  bytes per point         12 per stored point in every archive "
        f"({per_file / slots:.2f} per slot incl. header)"
    )
    print(f"  query 1 series 1 d      median {ms(statistics.median(theirs['one_series']))}")
    print(
        f"  query 1000 files 1 h    {theirs['glob_per_1000']:.2f} ms per file -> "
        f"{theirs['glob_per_1000'] * 1000:.0f} ms per 1000"
    )
    ours_disk = stats["bytes_total"]
    hours = ours["flushes"] * FLUSH / 3600
    print("\nSide by side                        StatsYard        Whisper")
    print(
        f"  write per flush ({ours['series']} series) {ms(statistics.median(writes))}   {ms(whisper_flush)}"
    )
    print(
        f"  disk after {hours:g} h               {ours_disk / 2**20:9.1f} MiB  "
        f"{per_file * ours['series'] / 2**20:9.1f} MiB"
    )
    print(
        f"  query 1 series 1 d            {ms(statistics.median(ours['one_series']))}   "
        f"{ms(statistics.median(theirs['one_series']))}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--series", type=int, default=100_000)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--dir", type=Path, help="data directory (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    parser.add_argument("--no-fsync", action="store_true")
    parser.add_argument("--whisper-series", type=int, default=1000)
    parser.add_argument("--whisper-hours", type=float, default=1.0)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="statsyard-bench-", dir=args.dir))
    try:
        workload = build_workload(args.series)
        print(
            f"writing {len(workload.names)} series for {args.hours:g} simulated hours into {root}",
            file=sys.stderr,
        )
        ours = run_tsdb(args, workload, root / "tsdb")
        whisper_dir = root / "whisper"
        whisper_dir.mkdir()
        theirs = run_whisper(args, workload, whisper_dir)
        report(ours, theirs, not args.no_fsync)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
