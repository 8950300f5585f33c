"""Benchmark the aggregator: add() throughput, take_snapshot and build_flush_batch times, memory.

Usage: ``python bench/aggregate.py [--series N] [--samples M] [--kind timer|mixed]
[--percentiles 90,99,-10] [--repeat R]``. The default is the target workload: 100,000 timer
series and 1,000,000 samples in one interval (one series in ten at sample rate 0.5). ``mixed``
spreads the series evenly over counters, gauges, timers, histograms, distributions and sets.

Prints figures only; it never asserts on time.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import time
import tracemalloc

import numpy as np

from statsyard_agent._aggregate import Aggregator, AggregatorConfig, build_flush_batch
from statsyard_agent._types import Metric, MetricKind

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def make_metrics(n_series: int, n_samples: int, kind: str, seed: int = 1) -> list[Metric]:
    rng = np.random.default_rng(seed)
    kinds = (
        [MetricKind.TIMER]
        if kind == "timer"
        else [
            MetricKind.COUNTER,
            MetricKind.GAUGE,
            MetricKind.TIMER,
            MetricKind.HISTOGRAM,
            MetricKind.DISTRIBUTION,
            MetricKind.SET,
        ]
    )
    names = [f"svc{i % 97}.endpoint{i}.latency" for i in range(n_series)]
    tags = [(("env", "prod"), ("host", f"web{i % 50:02d}")) for i in range(n_series)]
    series_kind = [kinds[i % len(kinds)] for i in range(n_series)]
    # Every series gets at least one sample; the rest are spread at random.
    which = np.concatenate((np.arange(n_series), rng.integers(0, n_series, max(0, n_samples - n_series))))
    rng.shuffle(which)
    values = np.round(rng.lognormal(3.0, 1.0, which.size), 3).tolist()
    # Sample rates belong to call sites: one series in ten is sampled at 0.5.
    series_rate = np.where(rng.random(n_series) < 0.1, 0.5, 1.0)
    rates = series_rate[which].tolist()
    out = []
    for i, v, r in zip(which.tolist(), values, rates, strict=True):
        k = series_kind[i]
        if k is MetricKind.SET:
            out.append(Metric(names[i], k, (), (str(int(v)),), 1.0, tags[i], False, None, None))
        else:
            rate = 1.0 if k is MetricKind.GAUGE else r
            out.append(Metric(names[i], k, (v,), (), rate, tags[i], False, None, None))
    return out


def bare_dict_ns(metrics: list[Metric]) -> float:
    """ns/line of the least any dict-based aggregator does: build the key, get, set."""
    table: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    t0 = time.perf_counter()
    for m in metrics:
        key = (m.name, m.tags)
        total = table.get(key)
        table[key] = (0.0 if total is None else total) + m.values[0] if m.values else 0.0
    return (time.perf_counter() - t0) * 1e9 / len(metrics)


def held_bytes_per_series(metrics: list[Metric], config: AggregatorConfig) -> float:
    """Python heap held per series between flushes (keys, TTL book-keeping), via tracemalloc."""
    first = {(m.kind, m.name, m.tags): m for m in metrics}

    def fresh(text: str) -> str:  # a new str object, as the parser would make per datagram
        return text.encode().decode()

    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    aggregator = Aggregator(config)
    for m in first.values():
        tags = tuple((fresh(k), fresh(v)) for k, v in m.tags)
        aggregator.add(m._replace(name=fresh(m.name), tags=tags))
    aggregator.take_snapshot(10, 10.0)  # dropped at once: what stays is the idle state
    held = tracemalloc.get_traced_memory()[0] - start
    tracemalloc.stop()
    return held / max(1, aggregator.active_series)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--kind", choices=("timer", "mixed"), default="timer")
    parser.add_argument("--percentiles", default="90")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    percentiles = tuple(float(p) for p in args.percentiles.split(","))
    config = AggregatorConfig(percentiles=percentiles, max_series=10 * args.series)

    print(
        f"workload: {args.series:,} {args.kind} series, {args.samples:,} samples, percentiles {percentiles}"
    )
    metrics = make_metrics(args.series, args.samples, args.kind)
    # The replayed lines would not exist in a real agent (the parser makes them one datagram at a
    # time); keep the collector from rescanning them so it does not skew the figures.
    gc.collect()
    gc.freeze()
    baseline = bare_dict_ns(metrics)

    adds, snaps, builds = [], [], []
    batch = None
    rss_base = rss_bytes()
    rss_open = 0
    aggregator = Aggregator(config)
    for round_ in range(args.repeat):
        batch = None
        gc.collect()
        add = aggregator.add
        t0 = time.perf_counter()
        for m in metrics:
            add(m)
        t1 = time.perf_counter()
        rss_open = max(rss_open, rss_bytes())
        snapshot = aggregator.take_snapshot(10 * (round_ + 1), 10.0)
        t2 = time.perf_counter()
        batch = build_flush_batch(snapshot)
        t3 = time.perf_counter()
        del snapshot
        adds.append(t1 - t0)
        snaps.append(t2 - t1)
        builds.append(t3 - t2)
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    assert batch is not None
    idle_t0 = time.perf_counter()
    idle_snapshot = aggregator.take_snapshot(10 * (args.repeat + 1), 10.0)
    idle_t1 = time.perf_counter()
    build_flush_batch(idle_snapshot)
    idle_t2 = time.perf_counter()

    n = len(metrics)
    series = aggregator.active_series
    sketch_bytes = sum(len(s.sketch) for s in batch.sketches)

    def ms(times: list[float]) -> str:
        median, low, high = (statistics.median(times) * 1e3, min(times) * 1e3, max(times) * 1e3)
        return f"{median:.1f} ms (min {low:.1f}, max {high:.1f})"

    print(f"active series:         {series:,}")
    print(
        f"points per flush:      {len(batch):,} (+ {len(batch.sketches):,} sketches, "
        f"{sketch_bytes / max(1, len(batch.sketches)):.0f} B/sketch on average)"
    )
    print(
        f"add():                 {statistics.median(adds) * 1e9 / n:.0f} ns/line "
        f"({n / statistics.median(adds) / 1e6:.2f} M lines/s; "
        f"a bare dict get+set loop: {baseline:.0f} ns/line)"
    )
    print(f"take_snapshot:         {ms(snaps)}   [median of {args.repeat} flushes]")
    print(f"build_flush_batch:     {ms(builds)}")
    print(
        f"all idle:              take_snapshot {(idle_t1 - idle_t0) * 1e3:.1f} ms, "
        f"build {(idle_t2 - idle_t1) * 1e3:.1f} ms"
    )
    print(
        f"RSS, interval open:    {(rss_open - rss_base) / series:,.0f} B/series "
        f"(keys + {n / series:.0f} samples each)"
    )
    print(
        f"RSS, peak of a flush:  {(rss_peak - rss_base) / series:,.0f} B/series (incl. the batch being built)"
    )
    print(f"heap held when idle:   {held_bytes_per_series(metrics, config):,.0f} B/series (tracemalloc)")


if __name__ == "__main__":
    main()
