"""Etsy statsd timer statistics for many series at once, vectorised with numpy.

Every timer-like series (``ms``, ``h``, ``d``) of one interval is one *segment* of a flat array of
samples, ``values[offsets[i]:offsets[i+1]]``. :func:`timer_stats` sorts all segments with one
sort and computes every statistic of ``lib/process_metrics.js`` with a fixed number of numpy
passes (``reduceat`` over segment bounds and index arithmetic), never a Python loop per series.

Semantics follow process_metrics.js; with the samples of one series sorted ascending and
``n`` of them:

* ``count`` is the sample-rate-weighted count (``sum(1 / rate)``, passed in), ``count_ps`` is
  ``count / interval``; ``sum``, ``sum_squares``, ``mean = sum / n``, ``lower``, ``upper``;
  ``median`` is the middle sample or the average of the two middle ones; ``std`` is the
  population standard deviation ``sqrt(sum((x - mean)**2) / n)``.
* For each percentile ``pct``: if ``n > 1``, ``k = Math.round(|pct| / 100 * n)`` (round half
  up, as JavaScript, not Python's banker's rounding) and the percentile is *absent* for the
  series when ``k == 0``; if ``n == 1`` then ``k = 1``. ``pct > 0`` summarises the ``k``
  smallest samples (bound ``upper_X`` = the largest of them), ``pct < 0`` the ``k`` largest
  (bound ``lower_X`` = the smallest of them).

One deliberate difference: for ``pct < 0`` with ``k == n`` Etsy reads ``cumulativeValues[-1]``
(undefined) and reports ``NaN`` for ``sum_topX``, ``mean_topX`` and ``sum_squares_topX``; here
they are the sums over all ``n`` samples, which is what the statistic means.

Sums are taken per segment with ``np.add.reduceat`` (not differences of one global running
sum), so a small series next to large ones keeps its precision; they may differ from Etsy's
sequential left-to-right sums in the last bits. This module is pure numpy: no IO.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ._sketch import segment_argsort
from ._types import FloatArray

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

__all__ = [
    "PercentileStats",
    "TimerStats",
    "js_round",
    "percentile_label",
    "timer_stats",
    "timer_stats_sorted",
]


@dataclass(frozen=True, slots=True, eq=False)
class PercentileStats:
    """One percentile threshold's statistics for every series (arrays indexed by series).

    Where ``present`` is false (``k == 0``) the series emits nothing for this percentile and
    the other arrays hold ``nan`` (``count`` holds 0).
    """

    pct: float
    label: str
    present: BoolArray
    count: FloatArray
    mean: FloatArray
    sum: FloatArray
    sum_squares: FloatArray
    #: ``upper_X`` when ``pct > 0``, ``lower_X`` when ``pct < 0``.
    bound: FloatArray


@dataclass(frozen=True, slots=True, eq=False)
class TimerStats:
    """The per-series statistics of one interval's timer-like series (arrays by series)."""

    n: IntArray
    count: FloatArray
    count_ps: FloatArray
    sum: FloatArray
    sum_squares: FloatArray
    mean: FloatArray
    median: FloatArray
    lower: FloatArray
    upper: FloatArray
    std: FloatArray
    percentiles: tuple[PercentileStats, ...]


def js_round(x: FloatArray) -> IntArray:
    """JavaScript ``Math.round`` for non-negative ``x``: halves round up (2.5 -> 3, 0.5 -> 1).

    ``x - floor(x)`` is exact in binary floating point, so this is exact too (unlike
    ``floor(x + 0.5)``, which rounds 0.49999999999999994 up).
    """
    floor = np.floor(x)
    return (floor + (x - floor >= 0.5)).astype(np.int64)


def percentile_label(pct: float) -> str:
    """The stat-name suffix Etsy derives from a percentile: ``('' + pct)`` with the first ``.``
    replaced by ``_`` and the first ``-`` by ``top`` (90 -> ``90``, 99.9 -> ``99_9``,
    -10 -> ``top10``). The number is printed as JavaScript prints it (no trailing ``.0``).
    """
    return _js_number_text(pct).replace(".", "_", 1).replace("-", "top", 1)


def _js_number_text(x: float) -> str:
    if not math.isfinite(x):
        return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")
    if x == 0:
        return "0"
    if 1e-6 <= abs(x) < 1e21:
        return np.format_float_positional(x, unique=True, trim="-")
    mantissa, exponent = repr(x).split("e")
    return f"{mantissa.removesuffix('.0')}e{'+' if int(exponent) > 0 else '-'}{abs(int(exponent))}"


def timer_stats(
    values: FloatArray,
    offsets: IntArray,
    weights: FloatArray | None = None,
    *,
    interval: float,
    percentiles: Sequence[float],
) -> TimerStats:
    """Statistics of every segment ``values[offsets[i]:offsets[i+1]]`` (any order inside).

    ``weights`` are the per-sample ``1 / rate`` (default 1), whose per-segment sum is
    ``count``. Every segment must be non-empty; ``interval`` must be positive; every
    percentile must satisfy ``0 < |pct| <= 100``. Raises ``ValueError`` otherwise.
    """
    values = np.asarray(values, dtype=np.float64)
    offsets = np.asarray(offsets, dtype=np.int64)
    _check_segments(values, offsets)
    order = segment_argsort(values, offsets)
    if weights is None:
        counts = np.diff(offsets).astype(np.float64)
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != values.shape:
            raise ValueError("weights must have the same length as values")
        counts = np.add.reduceat(w, offsets[:-1]) if values.size else np.zeros(0)
    return timer_stats_sorted(values[order], offsets, counts, interval=interval, percentiles=percentiles)


def timer_stats_sorted(
    sorted_values: FloatArray,
    offsets: IntArray,
    counts: FloatArray,
    *,
    interval: float,
    percentiles: Sequence[float],
) -> TimerStats:
    """Like :func:`timer_stats` for segments already sorted ascending (see
    :func:`statsyard_agent._sketch.segment_argsort`), with the weighted ``counts`` given.
    """
    x = np.asarray(sorted_values, dtype=np.float64)
    offsets = np.asarray(offsets, dtype=np.int64)
    _check_segments(x, offsets)
    if not (interval > 0 and math.isfinite(interval)):
        raise ValueError("interval must be a positive number of seconds")
    for pct in percentiles:
        if not (math.isfinite(pct) and 0 < abs(pct) <= 100):
            raise ValueError(f"percentile {pct!r} must satisfy 0 < |pct| <= 100")
    counts = np.asarray(counts, dtype=np.float64)
    n_series = offsets.size - 1
    if counts.shape != (n_series,):
        raise ValueError("counts must hold one value per segment")

    starts = offsets[:-1]
    ends = offsets[1:]
    n = ends - starts
    nf = n.astype(np.float64)
    if n_series == 0:
        empty = np.zeros(0)
        return TimerStats(
            n=n,
            count=empty,
            count_ps=empty,
            sum=empty,
            sum_squares=empty,
            mean=empty,
            median=empty,
            lower=empty,
            upper=empty,
            std=empty,
            percentiles=tuple(_absent(p) for p in percentiles),
        )

    # A trailing 0 lets reduceat take ranges that end at the last sample.
    xp = np.concatenate((x, [0.0]))
    sq = xp * xp
    total = np.add.reduceat(x, starts)
    total_sq = np.add.reduceat(sq[:-1], starts)
    mean = total / nf
    # In place (the same operations): each temporary is as large as all samples together.
    dev = np.repeat(mean, n)
    np.subtract(x, dev, out=dev)
    np.multiply(dev, dev, out=dev)
    std = np.sqrt(np.add.reduceat(dev, starts) / nf)
    del dev
    mid = starts + n // 2
    odd = (n % 2) == 1
    median = np.where(odd, x[mid], (x[np.maximum(mid - 1, 0)] + x[mid]) / 2.0)

    stats = []
    many = n > 1
    for pct in percentiles:
        k = np.where(many, js_round(abs(pct) / 100.0 * nf), 1)
        present = k > 0
        kk = np.maximum(k, 1)
        if pct > 0:
            lo, hi = starts, starts + kk
            bound = x[hi - 1]
        else:
            lo, hi = ends - kk, ends
            bound = x[lo]
        pairs = np.empty(2 * n_series, dtype=np.int64)
        pairs[0::2] = lo
        pairs[1::2] = hi
        part = np.add.reduceat(xp, pairs)[0::2]
        part_sq = np.add.reduceat(sq, pairs)[0::2]
        kf = kk.astype(np.float64)
        nan = np.nan
        stats.append(
            PercentileStats(
                pct=float(pct),
                label=percentile_label(pct),
                present=present,
                count=np.where(present, kf, 0.0),
                mean=np.where(present, part / kf, nan),
                sum=np.where(present, part, nan),
                sum_squares=np.where(present, part_sq, nan),
                bound=np.where(present, bound, nan),
            )
        )

    return TimerStats(
        n=n,
        count=counts,
        count_ps=counts / interval,
        sum=total,
        sum_squares=total_sq,
        mean=mean,
        median=median,
        lower=x[starts],
        upper=x[ends - 1],
        std=std,
        percentiles=tuple(stats),
    )


def _check_segments(values: FloatArray, offsets: IntArray) -> None:
    if values.ndim != 1 or offsets.ndim != 1 or offsets.size < 1:
        raise ValueError("values and offsets must be 1-D, offsets non-empty")
    if offsets[0] != 0 or offsets[-1] != values.size or np.any(np.diff(offsets) <= 0):
        raise ValueError("offsets must run from 0 to len(values) with non-empty segments")


def _absent(pct: float) -> PercentileStats:
    empty = np.zeros(0)
    return PercentileStats(
        pct=float(pct),
        label=percentile_label(pct),
        present=np.zeros(0, dtype=bool),
        count=empty,
        mean=empty,
        sum=empty,
        sum_squares=empty,
        bound=empty,
    )
