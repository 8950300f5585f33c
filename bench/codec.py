"""Size and speed of statsyard_agent.storage._codec on synthetic StatsD-like columns.

Usage: python bench/codec.py [--points N ...] [--seed S] [--repeat R]

Methods: dec<k> = scaled integers with k decimals (+ ulp corrections), xor = XOR + byte
shuffle, xor-u = XOR unshuffled, raw = plain float64.

Each column is one series flushed every 10 s for N flushes (one stored chunk). The workload:

counters   ``count`` (integers) and ``rate`` (= count / 10 s, one decimal). Activity classes:
           idle (always 0), Poisson(0.3), Poisson(5), Poisson(1000).
gauges     integers changing on 2 % of flushes; 2-decimal values changing on 2 %; an integer
           random walk (-3..3 per flush); a noisy float refreshed about once a minute and
           repeated in between (StatsD gauges keep their last value).
timers     Poisson(20) samples per flush drawn from lognormal latencies, sent as whole ms,
           with 3 decimals, with 6 decimals (the python ``statsd`` client's '%0.6f'), or as
           full-precision floats (e.g. ``time.time()`` differences); StatsD's stats per
           flush: count, count_ps, lower, upper, mean, median, std, sum, sum_squares, p90.

The "realistic mix" weights every column by how many series of its kind an application
might emit: 100 counters (count + rate each) in the activity mix 30/40/20/10 %, 40 gauges
(40 % rare integers, 30 % rare 2-decimal, 20 % walks, 10 % noisy), 30 timers (40 % whole
ms, 20 % 3 decimals, 20 % 6 decimals, 20 % noisy) with 10 stats each. Timestamps (one
regular column per chunk) and the presence bitmap are reported separately; the engine may
share them between series.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import numpy.typing as npt

from statsyard_agent.storage._codec import (
    decode_bitmap,
    decode_timestamps,
    decode_values,
    encode_bitmap,
    encode_timestamps,
    encode_values,
)

FloatArray = npt.NDArray[np.float64]
INTERVAL = 10

TIMER_STATS = (
    "count",
    "count_ps",
    "lower",
    "upper",
    "mean",
    "median",
    "std",
    "sum",
    "sum_squares",
    "p90",
)
# (column name, series weight in the realistic mix)
COUNTER_CLASSES = (
    ("idle", None, 0.30),
    ("p0.3", 0.3, 0.40),
    ("p5", 5.0, 0.20),
    ("p1000", 1000.0, 0.10),
)
GAUGE_CLASSES = (("int rare", 0.40), ("2dec rare", 0.30), ("int walk", 0.20), ("noisy 1/min", 0.10))
TIMER_CLASSES = (
    ("whole ms", 0, 0.40),
    ("3 decimals", 3, 0.20),
    ("6 decimals", 6, 0.20),
    ("noisy", None, 0.20),
)
N_COUNTERS, N_GAUGES, N_TIMERS = 100, 40, 30
# First byte of an encoded values column (dec<k> = scaled integers with k decimals).
METHODS = {0x20: "raw", 0x30: "xor", 0x31: "xor-u"}


def workload(n: int, seed: int) -> list[tuple[str, FloatArray, float]]:
    """(column label, values, number of series of this kind in the mix)."""
    rng = np.random.default_rng(seed)
    out: list[tuple[str, FloatArray, float]] = []
    for label, lam, share in COUNTER_CLASSES:
        counts = np.zeros(n) if lam is None else rng.poisson(lam, n).astype(np.float64)
        out.append((f"counter {label} count", counts, N_COUNTERS * share))
        out.append((f"counter {label} rate", counts / INTERVAL, N_COUNTERS * share))
    for label, share in GAUGE_CLASSES:
        out.append((f"gauge {label}", _gauge(rng, label, n), N_GAUGES * share))
    for label, decimals, share in TIMER_CLASSES:
        stats = _timer(rng, decimals, n)
        for stat in TIMER_STATS:
            out.append((f"timer {label} {stat}", stats[stat], N_TIMERS * share))
    return out


def _gauge(rng: np.random.Generator, label: str, n: int) -> FloatArray:
    if label == "int walk":
        return 5000.0 + np.cumsum(rng.integers(-3, 4, n)).astype(np.float64)
    # The noisy gauge is refreshed every 6th flush (once a minute), the others on 2 %.
    change = np.arange(n) % 6 == 0 if label == "noisy 1/min" else rng.random(n) < 0.02
    index = np.cumsum(change)
    k = int(index[-1]) + 1
    if label == "int rare":
        levels = 1000.0 + rng.integers(-50, 50, k).astype(np.float64)
    elif label == "2dec rare":
        levels = np.round(rng.uniform(0, 100, k), 2)
    else:
        levels = rng.uniform(0, 100, k)
    gauge: FloatArray = levels[index]
    return gauge


def _timer(rng: np.random.Generator, decimals: int | None, n: int) -> dict[str, FloatArray]:
    stats = {stat: np.empty(n) for stat in TIMER_STATS}
    counts = np.maximum(rng.poisson(20, n), 1)
    for i, count in enumerate(counts.tolist()):
        samples = rng.lognormal(3.0, 0.7, count)
        if decimals is not None:
            samples = np.round(samples, decimals)
        samples.sort()
        stats["count"][i] = count
        stats["count_ps"][i] = count / INTERVAL
        stats["lower"][i] = samples[0]
        stats["upper"][i] = samples[-1]
        stats["mean"][i] = samples.mean()
        stats["median"][i] = np.median(samples)
        stats["std"][i] = samples.std()
        stats["sum"][i] = samples.sum()
        stats["sum_squares"][i] = (samples * samples).sum()
        stats["p90"][i] = samples[int(0.9 * (count - 1))]
    return stats


def best_time(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def run(n: int, seed: int, repeat: int) -> None:
    columns = workload(n, seed)
    print(f"\n== {n} points per chunk ({n * INTERVAL / 3600:g} h at {INTERVAL} s)")
    print(f"{'column':34s} {'method':>6s} {'B/point':>8s} {'enc us':>8s} {'dec us':>8s}")
    weighted_bytes = weighted_points = 0.0
    by_kind: dict[str, list[float]] = {}
    enc_times: list[float] = []
    for label, values, weight in columns:
        data = encode_values(values)
        assert np.array_equal(decode_values(data).view(np.uint64), values.view(np.uint64))
        enc = best_time(partial(encode_values, values), repeat)
        dec = best_time(partial(decode_values, data), repeat)
        enc_times.append(enc)
        per_point = len(data) / n
        method = METHODS.get(data[0], f"dec{data[0] & 0xF}")
        print(f"{label:34s} {method:>6s} {per_point:8.3f} {enc * 1e6:8.0f} {dec * 1e6:8.0f}")
        weighted_bytes += len(data) * weight
        weighted_points += n * weight
        kind = label.split()[0]
        by_kind.setdefault(kind, [0.0, 0.0])
        by_kind[kind][0] += len(data) * weight
        by_kind[kind][1] += n * weight

    timestamps = INTERVAL * np.arange(n, dtype=np.int64) + 1_700_000_000
    ts_data = encode_timestamps(timestamps)
    assert np.array_equal(decode_timestamps(ts_data), timestamps)
    jitter = timestamps + np.random.default_rng(seed).integers(-1, 2, n)
    jitter_data = encode_timestamps(jitter)
    present = np.random.default_rng(seed).random(n) < 0.99
    bitmap = encode_bitmap(present)
    assert np.array_equal(decode_bitmap(bitmap, n), present)

    print(f"{'timestamps, regular 10 s':34s} {'dod':>6s} {len(ts_data) / n:8.3f}")
    print(f"{'timestamps, +-1 s jitter':34s} {'dod':>6s} {len(jitter_data) / n:8.3f}")
    print(f"{'bitmap, 1 % of slots missing':34s} {'bits':>6s} {len(bitmap) / n:8.3f}")
    print("-- realistic mix (series-weighted), values only:")
    for kind, (size, points) in by_kind.items():
        print(f"   {kind:10s} {size / points:6.3f} B/point")
    mix = weighted_bytes / weighted_points
    print(f"   {'all':10s} {mix:6.3f} B/point")
    print(f"   with a timestamp column per series: {mix + len(ts_data) / n:6.3f} B/point")
    print(
        f"   encode time per column: median {statistics.median(enc_times) * 1e6:.0f} us, "
        f"max {max(enc_times) * 1e6:.0f} us"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, nargs="+", default=[360, 720, 8640])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    for n in args.points:
        run(n, args.seed, args.repeat)


if __name__ == "__main__":
    main()
