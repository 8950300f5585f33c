"""Read-side figures: Graphite API requests against a real data directory, and the
/metrics/statsd exporter folding and rendering large batches. Prints a table; asserts nothing.

    python bench/read_api.py [--series 20000] [--points 360]

The data directory holds ``--series`` counter series (``bench.svcNN.hostNN.reqNN.count``, half of
them tagged) with ``--points`` flushes 10 s apart on a 10 s tier. Each request is timed through
the same code the HTTP routes run (in the calling thread, without the socket).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from statsyard_agent._aggregate import Aggregator, AggregatorConfig, build_flush_batch
from statsyard_agent._graphite import (
    GraphiteConfig,
    RenderRequest,
    all_series,
    find_nodes,
    render_json,
    run_render,
)
from statsyard_agent._promexport import StatsdExporter, parse_prometheus_config
from statsyard_agent._protocol import Parser, ParserConfig
from statsyard_agent._types import FlushBatch, Rollup
from statsyard_agent.storage import TSDB, Reader, StorageConfig, parse_retention


def timed(work: Callable[[], object], repeat: int = 5) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def build(data: Path, series: int, points: int, now: int) -> None:
    db = TSDB.open(data, StorageConfig(retention=parse_retention("10s:7d,1m:90d"), fsync=False))
    names = tuple(
        f"bench.svc{i % 20:02d}.host{i // 20 % 50:02d}.req{i // 1000:02d}.count" for i in range(series)
    )
    tags = tuple(((("env", "dev" if i % 4 == 1 else "prod"),) if i % 2 else ()) for i in range(series))
    rollups = (Rollup.SUM,) * series
    rng = np.random.default_rng(1)
    start = now - points * 10
    for k in range(points):
        db.write(
            FlushBatch(start + k * 10, 10.0, names, tags, rollups, rng.integers(0, 100, series).astype(float))
        )
    db.maintain(now + 3600, budget=None)
    db.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--series", type=int, default=20_000)
    parser.add_argument("--points", type=int, default=360)
    args = parser.parse_args()
    now = int(time.time()) // 10 * 10
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        started = time.perf_counter()
        build(data, args.series, args.points, now)
        rows.append(
            (f"build {args.series} series x {args.points} points", f"{time.perf_counter() - started:.1f} s")
        )
        reader = Reader(data)
        config = GraphiteConfig()
        names = all_series(reader)[0]
        elapsed, _ = timed(lambda: all_series(reader))
        rows.append(("list every series (cached index)", f"{elapsed * 1e3:.1f} ms"))
        for query in ("*", "bench.*", "bench.svc01.*", "bench.svc01.host0*.*"):
            elapsed, nodes = timed(lambda q=query: find_nodes(names, q, limit=100_000))  # type: ignore[misc]
            rows.append((f"/metrics/find {query} ({len(nodes)} nodes)", f"{elapsed * 1e3:.1f} ms"))  # type: ignore[arg-type]
        span = args.points * 10
        for target, mdp in (
            ("bench.svc01.host01.req00.count", 1000),
            ("bench.svc01.*.*.count", 1000),
            ("sumSeries(bench.svc01.*.*.count)", 1000),
            ("aliasByNode(bench.*.host01.*.count, 1)", 500),
            ("seriesByTag('env=dev')", 100),
            ("summarize(bench.svc01.host0*.*.count, '10min', 'sum')", 1000),
        ):
            request = RenderRequest((target,), now - span, now, now, "json", mdp, False, 800, 300, "")
            elapsed, result = timed(lambda r=request: render_json(run_render(reader, r, config)))  # type: ignore[misc]
            size = len(result)  # type: ignore[arg-type]
            rows.append(
                (f"/render {target} maxDataPoints={mdp} ({size / 1e3:.0f} kB)", f"{elapsed * 1e3:.1f} ms")
            )
        reader.close()

    # The exporter: fold one flush of many counters and timers, then render.
    for counters, timers in ((10_000, 0), (100_000, 0), (10_000, 1_000)):
        feed_parser, aggregator = Parser(ParserConfig()), Aggregator(AggregatorConfig())
        lines = [f"c{i}.hits:1|c".encode() for i in range(counters)]
        lines += [f"t{i}.lat:{v}|ms".encode() for i in range(timers) for v in (5, 10, 20, 40)]
        for chunk in range(0, len(lines), 200):
            result = feed_parser.parse_datagram(b"\n".join(lines[chunk : chunk + 200]))
            for metric in result.metrics:
                aggregator.add(metric)
        batch = build_flush_batch(aggregator.take_snapshot(now, 10.0))
        exporter = StatsdExporter(parse_prometheus_config({"enabled": True, "max_series": 200_000}), "stats")
        exporter.observe(batch)
        started = time.perf_counter()
        exporter.fold_pending()
        fold = time.perf_counter() - started
        exporter.observe(batch)
        started = time.perf_counter()
        exporter.fold_pending()
        refold = time.perf_counter() - started
        elapsed, text = timed(exporter.render, repeat=3)
        label = f"{counters} counters + {timers} timers ({len(batch)} points)"
        rows.append((f"exporter fold, first flush: {label}", f"{fold * 1e3:.0f} ms"))
        rows.append((f"exporter fold, next flush: {label}", f"{refold * 1e3:.0f} ms"))
        rows.append((f"/metrics/statsd render ({len(text) / 1e6:.1f} MB)", f"{elapsed * 1e3:.0f} ms"))  # type: ignore[arg-type]

    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value:>10}")


if __name__ == "__main__":
    main()
