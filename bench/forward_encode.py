"""Encoding cost of one flush for the forwarding sinks; prints figures, asserts nothing.

    python bench/forward_encode.py [SERIES]

Compares, for a flush of SERIES points (default 20000) with realistic StatsD names and tags:

* remote write, our hand-written encoder (label bytes cached per series: the steady state,
  and cold: first flush after start);
* remote write with the `protobuf` package (upb backend): build the WriteRequest, serialize;
* snappy block compression of the request with `cramjam` (time and ratio);
* Graphite plaintext lines.

The protobuf package is only needed for this comparison (it is a test dependency).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import cramjam
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from statsyard_agent._types import FlushBatch, Rollup
from statsyard_agent.forward._encode import (
    GraphiteEncoder,
    RemoteWriteEncoder,
    series_labels,
)
from tests import prompb

STATS = ("count", "rate", "mean", "upper", "lower", "upper_90", "mean_90", "sum", "std", "median")


def make_batch(series: int, timestamp: int = 1_700_000_000) -> FlushBatch:
    names = []
    tags = []
    for i in range(series):
        names.append(f"stats.timers.service{i // 500}.endpoint{i // 10 % 50}.latency.{STATS[i % 10]}")
        tags.append((("env", "prod"), ("host", f"web-{i % 37:02d}"), ("region", "eu-west-1")))
    values = np.random.default_rng(1).gamma(2.0, 30.0, series).round(3)
    return FlushBatch(timestamp, 10.0, tuple(names), tuple(tags), (Rollup.LAST,) * series, values)


def best_of(runs: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def protobuf_request(
    batch: FlushBatch, cache: dict[tuple[str, object], list[tuple[str, str]]] | None = None
) -> bytes:
    """With ``cache``, the sanitized label lists are reused, so only protobuf's work is timed."""
    request = prompb.WriteRequest()
    ts_ms = batch.timestamp * 1000
    for name, tags, value in zip(batch.names, batch.tags, batch.values.tolist(), strict=True):
        series = request.timeseries.add()
        labels = cache.get((name, tags)) if cache is not None else None
        if labels is None:
            labels = series_labels(name, list(tags))
            if cache is not None:
                cache[(name, tags)] = labels
        for k, v in labels:
            series.labels.add(name=k, value=v)
        series.samples.add(value=value, timestamp=ts_ms)
    return bytes(request.SerializeToString())


def main() -> None:
    series = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    batch = make_batch(series)
    rw = RemoteWriteEncoder(max_points=series)
    body = b"".join(r.payload for r in rw.encode(batch).records)  # warms the label cache
    cold = best_of(3, lambda: RemoteWriteEncoder(max_points=series).encode(batch))
    warm = best_of(5, lambda: rw.encode(batch))
    lib = best_of(3, lambda: protobuf_request(batch))
    label_cache: dict[tuple[str, object], list[tuple[str, str]]] = {}
    protobuf_request(batch, label_cache)
    lib_cached = best_of(3, lambda: protobuf_request(batch, label_cache))
    lib_body = protobuf_request(batch)
    assert prompb.decode(lib_body) == prompb.decode(body), "encoders disagree"
    snappy = best_of(5, lambda: cramjam.snappy.compress_raw(body))
    compressed = len(bytes(cramjam.snappy.compress_raw(body)))
    graphite = GraphiteEncoder(max_points=series)
    graphite.encode(batch)
    graphite_warm = best_of(5, lambda: graphite.encode(batch))
    lines = sum(len(r.payload) for r in graphite.encode(batch).records)

    def row(label: str, seconds: float, extra: str = "") -> None:
        print(f"  {label:<44} {seconds * 1e3:8.1f} ms  {series / seconds / 1e3:8.0f} k points/s  {extra}")

    print(f"one flush of {series} points (best of several runs)")
    row("remote write, hand-written, cached labels", warm, f"{len(body)} B")
    row("remote write, hand-written, cold", cold)
    row("remote write, protobuf package (upb)", lib, f"{len(lib_body)} B")
    row("remote write, protobuf package, cached labels", lib_cached)
    row("snappy compress_raw (cramjam)", snappy, f"{compressed} B, ratio {len(body) / compressed:.1f}x")
    row("graphite plaintext, cached prefixes", graphite_warm, f"{lines} B")


if __name__ == "__main__":
    main()
