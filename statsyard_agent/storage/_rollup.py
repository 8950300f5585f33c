"""Rollup functions: how a series' points combine into a coarser step (pure numpy, no IO).

One function, :func:`rollup`, serves every consolidation the engine does: building a coarser
tier when a finer partition is sealed, filling the not yet materialised recent part of a coarse
tier at query time, and ``max_points`` consolidation. Each row of the input is one series with
its own :class:`~statsyard_agent._types.Rollup`:

========  ==============================================================================
SUM       the present values add up (counts, sums).
MIN/MAX   the smallest / largest present value (``lower``, ``upper``; set counts use MAX,
          because the distinct members of several intervals cannot be recovered from their
          counts and the largest interval count is a lower bound of the true number).
LAST      the latest present value (gauges).
AVERAGE   the mean of the present values (median, std: no exact combination exists).
RATE      per-second rates: ``sum(v * fine_step) / coarse_step``, missing slots counting as 0,
          i.e. the count over the whole coarse step divided by its length.
MEAN      ``sum(mean_i * count_i) / sum(count_i)`` with ``count_i`` the sibling count series
          at the same fine slot; when the sibling is absent for any present value (or all
          weights are 0) the slot falls back to AVERAGE.
========  ==============================================================================

Completeness (Whisper's xFilesFactor): a coarse slot is null when no fine value is present,
or when ``present / factor < xff``. NaN means null everywhere; an infinite input is kept (a
sum that meets +inf and -inf becomes NaN, i.e. null, as it would in Graphite).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from statsyard_agent._types import FloatArray, Rollup

CodeArray = npt.NDArray[np.uint8]


def rollup(
    values: FloatArray,
    codes: CodeArray,
    factor: int,
    *,
    xff: float = 0.0,
    weights: FloatArray | None = None,
) -> FloatArray:
    """Consolidate every ``factor`` consecutive columns of ``values`` into one.

    ``values`` is ``(rows, n * factor)`` with NaN for absent points; ``codes[r]`` is row r's
    Rollup value; ``weights`` (same shape as ``values``) carries the sibling count of MEAN rows
    (NaN where unknown; ignored for other rows). Returns ``(rows, n)``. ``factor == 1`` still
    applies the xff rule (a no-op for it) and returns a copy.
    """
    rows, width = values.shape
    if factor < 1 or width % factor:
        raise ValueError(f"width {width} is not a multiple of the factor {factor}")
    n = width // factor
    out = np.full((rows, n), np.nan)
    if rows == 0 or n == 0:
        return out
    cube = values.reshape(rows, n, factor)
    present = ~np.isnan(cube)
    count = present.sum(axis=2)
    with np.errstate(all="ignore"):
        for code in np.unique(codes).tolist():
            sel = codes == code
            sub = cube[sel]
            here = present[sel]
            out[sel] = _one(Rollup(code), sub, here, count[sel], factor, weights, sel)
    keep = count > 0
    if xff > 0:
        keep &= count >= xff * factor - 1e-9
    out[~keep] = np.nan
    return out


def _one(
    code: Rollup,
    sub: npt.NDArray[np.float64],
    here: npt.NDArray[np.bool_],
    count: npt.NDArray[np.int64],
    factor: int,
    weights: FloatArray | None,
    sel: npt.NDArray[np.bool_],
) -> npt.NDArray[np.float64]:
    result: npt.NDArray[np.float64]
    if code == Rollup.MIN:
        result = np.fmin.reduce(sub, axis=2)
        return result
    if code == Rollup.MAX:
        result = np.fmax.reduce(sub, axis=2)
        return result
    if code == Rollup.LAST:
        last = factor - 1 - np.argmax(here[:, :, ::-1], axis=2)
        result = np.take_along_axis(sub, last[:, :, None], axis=2)[:, :, 0]
        return result
    total: npt.NDArray[np.float64] = np.where(here, sub, 0.0).sum(axis=2)
    if code == Rollup.SUM:
        return total
    if code == Rollup.RATE:
        result = total / factor
        return result
    average = _divide(total, count)
    if code == Rollup.MEAN and weights is not None:
        w = weights.reshape(weights.shape[0], -1, factor)[sel]
        weighted = here & ~np.isnan(w) & (w > 0)
        usable = ~(here & ~weighted).any(axis=2)
        num = np.where(weighted, sub * w, 0.0).sum(axis=2)
        den = np.where(weighted, w, 0.0).sum(axis=2)
        return np.where(usable & (den > 0), _divide(num, den), average)
    return average


def _divide(num: npt.NDArray[np.float64], den: npt.NDArray[np.int64] | FloatArray) -> FloatArray:
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def single_flush_value(values: FloatArray, codes: CodeArray, interval: float, step: int) -> FloatArray:
    """What a slot holds when exactly one flush landed in it.

    Every rollup keeps the flushed value, except RATE from a flush shorter than the step:
    ``v * interval / step`` (the rest of the step counts as 0). A flush at least as long as
    the step keeps its value, so with ``flush interval == step`` a slot holds exactly what was
    flushed.
    """
    if interval >= step:
        return values
    out = values.copy()
    rate = codes == Rollup.RATE
    if rate.any():
        out[rate] = values[rate] * (interval / step)
    return out
