"""The flush output pinned bit for bit: point names, tags, rollups, values and sketch bytes.

Sketches are stored on disk and compared across agent versions, and the Etsy statistics are
pinned elsewhere only up to their definitions; this digest catches any change in the exact
bytes, e.g. from a faster path through ``build_flush_batch``, ``Aggregator.merge`` or the sketch
encoder. The workload mixes every path those have: merged partials (the adopt-as-is path and
the per-series one), ``add`` with sample rates (weighted samples, float64 sketch counts),
negative, zero, tiny and huge values, packed series of up to a few thousand samples, idle
series, expiry, and several timer-like kinds.

The digest was computed with the implementation before the flush was vectorised further (the
one whose batches the storage already holds). If it ever has to change, that is a change of
the stored format: bump the sketch version instead.
"""

from __future__ import annotations

import hashlib
import random
from array import array

from statsyard_agent._aggregate import Aggregator, AggregatorConfig, Partial, build_flush_batch
from statsyard_agent._types import FlushBatch, Metric, MetricKind

KINDS = (MetricKind.TIMER, MetricKind.HISTOGRAM, MetricKind.DISTRIBUTION)


def _value(rng: random.Random) -> float:
    pick = rng.random()
    if pick < 0.6:
        return float(rng.randrange(1000))
    if pick < 0.7:
        return -float(rng.randrange(1, 50))
    if pick < 0.75:
        return rng.choice((0.0, -0.0, 1e-12, -3e-10))
    if pick < 0.8:
        return rng.choice((1e150, -2.5e120, 7e-9))
    return rng.uniform(-1e6, 1e6)


def _digest(batch: FlushBatch) -> str:
    """Order-independent: idle series come from set differences, whose order follows the
    per-process string hash seed (the batch's order carries no meaning)."""
    h = hashlib.sha256(repr((batch.timestamp, batch.interval)).encode())
    points = sorted(
        (name, repr(tags), rollup.value, value.tobytes())
        for name, tags, rollup, value in zip(
            batch.names, batch.tags, batch.rollups, batch.values, strict=True
        )
    )
    h.update(repr(points).encode())
    h.update(repr(sorted((p.name, repr(p.tags), p.sketch) for p in batch.sketches)).encode())
    return h.hexdigest()


def flush_digests() -> list[str]:
    """Three intervals of a deterministic workload; one digest per flushed batch."""
    rng = random.Random(20261125)
    agg = Aggregator(AggregatorConfig(percentiles=(90.0, -10.0, 99.9), idle_ttl=15.0, max_series=5000))
    digests = []
    for interval in range(3):
        partial = Partial()
        for i in range(300):
            if rng.random() < 0.8 or interval == 0:
                partial.counters[(f"c{i}", (("k", str(i % 3)),))] = float(rng.randrange(1, 9))
        for i in range(600):
            if interval and rng.random() < 0.2:
                continue  # idle this interval (and expired after the TTL)
            kind = KINDS[i % 3]
            n = rng.choice((1, 2, 3, 20, 200)) if i % 97 else 3000
            values = array("d", (_value(rng) for _ in range(n)))
            partial.samples[(kind, (f"t{i}", () if i % 5 else (("env", "x"),)), 1.0)] = values
        agg.merge(partial)
        # A second merge in the same interval takes the per-series path.
        extra = Partial()
        extra.samples[(MetricKind.TIMER, ("t0", ()), 1.0)] = array("d", [5.0, -5.0])
        extra.counters[("c1", (("k", "1"),))] = 2.0
        agg.merge(extra)
        for i in range(0, 600, 7):
            # Whole weights keep every sketch count a varint; 1 / 0.3 needs float64 counts,
            # which takes the general encoder for the whole batch (interval 1 only).
            rate = rng.choice((0.5, 0.1, 0.3) if interval == 1 else (0.5, 0.1))
            agg.add(
                Metric(f"t{i}", KINDS[i % 3], (_value(rng), _value(rng)), (), rate, (), False, None, None)
            )
        snapshot = agg.take_snapshot(1_800_000_000 + 10 * interval, 10.0)
        batch = build_flush_batch(snapshot)
        digests.append(_digest(batch))
        assert _digest(build_flush_batch(snapshot)) == digests[-1]  # a snapshot builds alike twice
    return digests


def test_flush_output_is_bit_for_bit_unchanged() -> None:
    assert flush_digests() == GOLDEN_DIGESTS


GOLDEN_DIGESTS = [
    "8d30a6916e4b4741df84c3f1bee6f4fffa67979383ba14f4633c8511a6f99756",
    "5ff140286f8da5a52665cf4a21a626de5783fc47d32fa02427bf41af08f7239b",
    "a717e77e76a2748a2bfb2e07224e0a0ca1476074b5fb44e678fbcf701378a434",
]
