"""A mergeable quantile sketch with a relative-error guarantee (DDSketch-style), in numpy.

A :class:`LogSketch` keeps weighted counts in logarithmic buckets: with ``a`` the relative
accuracy and ``gamma = (1 + a) / (1 - a)``, a value ``v`` with ``|v| >= 1e-9`` falls in bucket
``k = ceil(log_gamma(|v|))`` of the positive or the negative store (by its sign); smaller
magnitudes land in one zero bucket. Bucket ``k`` covers ``(gamma**(k-1), gamma**k]`` and is
represented by ``2 * gamma**k / (gamma + 1)``, which is within ``a`` (relative) of every value
in it. Merging adds counts bucket by bucket, so the sketch of a union is the merge of the
sketches, exactly when the weights are integers (and up to float rounding otherwise).

Besides the single-sketch API there are vectorised builders for many series at once
(:func:`sketches_from_segments`, :func:`sketch_bytes_from_segments`): the aggregator uses them
to sketch every timer of an interval with one sort and a handful of numpy passes.

The byte encoding (version 1) is, all integers as LEB128 varints::

    version=1, flags (bit 0: counts are little-endian float64, else varints),
    n_neg, n_pos, zero_count,
    keys:   n_neg negative-store keys in value order (key descending), then n_pos positive-store
            keys ascending; the first key of each store is zigzag-encoded, each next one is the
            (positive) distance from the previous key,
    counts: n_neg + n_pos bucket counts in the same order.

Counts are varints when every count is a whole number below 2**53 (the usual case: sample
rates 1, 0.5, 0.1 give integer weights), float64 otherwise. A typical latency sketch of a few
hundred samples takes about two bytes per non-empty bucket. This module is pure: no IO.
"""

from __future__ import annotations

import itertools
import math
import struct
import sys
from collections.abc import Iterable, Sequence
from typing import ClassVar, Final

import numpy as np
import numpy.typing as npt

from ._exceptions import CorruptDataError
from ._types import FloatArray

IntArray = npt.NDArray[np.int64]
_U64Array = npt.NDArray[np.uint64]

__all__ = [
    "LogSketch",
    "group_argsort",
    "segment_argsort",
    "sketch_bytes_from_segments",
    "sketches_from_segments",
]

_ALPHA = 0.01
_GAMMA = (1.0 + _ALPHA) / (1.0 - _ALPHA)
_LN_GAMMA = math.log(_GAMMA)
#: Magnitudes below this count in the zero bucket (and are reported as 0).
ZERO_THRESHOLD = 1e-9
#: ln of the representative's factor 2 / (gamma + 1), added in the log domain.
_LN_REPR_FACTOR = math.log(2.0 / (_GAMMA + 1.0))
_LN_MAX_FLOAT = math.log(sys.float_info.max)
#: The smallest and largest keys a finite value can produce; decoding rejects anything outside.
KEY_MIN = math.ceil(math.log(ZERO_THRESHOLD) / _LN_GAMMA) - 1
KEY_MAX = math.ceil(_LN_MAX_FLOAT / _LN_GAMMA) + 1
_KEY_SPAN = KEY_MAX - KEY_MIN + 1

_VERSION = 1
_FLAG_F64 = 1
_MAX_EXACT = 2.0**53
#: Up to this many buckets, encoding and decoding one sketch in plain Python beats numpy's
#: per-call overhead (a typical interval's sketch has a few dozen buckets).
_SMALL = 64

# Bucket classes, in value order within one series: negatives, zero, positives.
_NEG, _ZERO, _POS = 0, 1, 2
_CLASS_STRIDE = 3 * _KEY_SPAN


class LogSketch:
    """An immutable, mergeable sketch of a weighted set of numbers.

    ``quantile(q)`` returns a value within ``RELATIVE_ACCURACY`` (relative) of the weighted
    lower ``q``-quantile: the smallest sample ``x`` such that the weight of samples ``<= x`` is
    greater than ``q * (count - 1)``; with unit weights that is numpy's
    ``np.quantile(values, q, method="lower")``. Magnitudes below ``1e-9`` are reported as 0.
    Non-finite values cannot be sketched and are skipped by the builders.
    """

    RELATIVE_ACCURACY: ClassVar[float] = _ALPHA

    __slots__ = ("_count", "_neg_counts", "_neg_keys", "_pos_counts", "_pos_keys", "_zero")

    def __init__(
        self,
        zero_count: float = 0.0,
        negative: tuple[IntArray, FloatArray] | None = None,
        positive: tuple[IntArray, FloatArray] | None = None,
    ) -> None:
        """Wrap already-bucketed counts; use :meth:`from_values` to build from data.

        ``negative`` / ``positive`` are ``(keys, counts)`` with keys strictly ascending and
        counts positive. The arrays are copied and frozen, so the sketch stays immutable.
        """
        self._zero = float(zero_count)
        self._neg_keys, self._neg_counts = _frozen_store(negative)
        self._pos_keys, self._pos_counts = _frozen_store(positive)
        self._count = self._zero + float(self._neg_counts.sum()) + float(self._pos_counts.sum())

    @classmethod
    def _wrap(
        cls,
        zero: float,
        neg_keys: IntArray,
        neg_counts: FloatArray,
        pos_keys: IntArray,
        pos_counts: FloatArray,
    ) -> LogSketch:
        """Adopt freshly built, already valid arrays without copying them (internal)."""
        sketch = cls.__new__(cls)
        for array in (neg_keys, neg_counts, pos_keys, pos_counts):
            array.flags.writeable = False
        sketch._zero = zero
        sketch._neg_keys, sketch._neg_counts = neg_keys, neg_counts
        sketch._pos_keys, sketch._pos_counts = pos_keys, pos_counts
        sketch._count = zero + float(neg_counts.sum()) + float(pos_counts.sum())
        return sketch

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def from_values(cls, values: FloatArray, weights: FloatArray | None = None) -> LogSketch:
        """Sketch ``values`` (any order), each weighted by ``weights`` (default 1).

        Non-finite values are skipped. Raises ``ValueError`` if ``weights`` does not match
        ``values`` in length or holds a weight that is not finite and positive.
        """
        values = np.asarray(values, dtype=np.float64).ravel()
        offsets = np.array([0, values.size], dtype=np.int64)
        if values.size == 0:
            if weights is not None and np.asarray(weights).size != 0:
                raise ValueError("weights must have the same length as values")
            return cls()
        return sketches_from_segments(values, weights, offsets)[0]

    @classmethod
    def merge_all(cls, sketches: Iterable[LogSketch]) -> LogSketch:
        """Merge any number of sketches at once (an empty iterable gives an empty sketch)."""
        items = list(sketches)
        if not items:
            return cls()
        if len(items) == 1:
            return items[0]
        zero = math.fsum(s._zero for s in items)
        neg = _sum_buckets([s._neg_keys for s in items], [s._neg_counts for s in items])
        pos = _sum_buckets([s._pos_keys for s in items], [s._pos_counts for s in items])
        return cls._wrap(zero, *neg, *pos)

    def merge(self, other: LogSketch) -> LogSketch:
        """The sketch of both inputs' samples; neither input changes."""
        return LogSketch.merge_all((self, other))

    # -- queries ----------------------------------------------------------------------------

    @property
    def count(self) -> float:
        """Total weight of the sketched samples (0 for an empty sketch)."""
        return self._count

    @property
    def zero_count(self) -> float:
        """Weight of the samples with magnitude below 1e-9."""
        return self._zero

    @property
    def negative(self) -> tuple[IntArray, FloatArray]:
        """Read-only ``(keys ascending, counts)`` of the negative store (keys of ``|v|``)."""
        return self._neg_keys, self._neg_counts

    @property
    def positive(self) -> tuple[IntArray, FloatArray]:
        """Read-only ``(keys ascending, counts)`` of the positive store."""
        return self._pos_keys, self._pos_counts

    def quantile(self, q: float) -> float:
        """The ``q``-quantile, ``q`` in [0, 1]; nan when the sketch is empty.

        Raises ``ValueError`` for ``q`` outside [0, 1] (or nan).
        """
        return float(self.quantiles([q])[0])

    def quantiles(self, qs: Sequence[float] | FloatArray) -> FloatArray:
        """Vectorised :meth:`quantile` for several ``q`` at once (same contract)."""
        q = np.asarray(qs, dtype=np.float64).ravel()
        if not np.all((q >= 0.0) & (q <= 1.0)):
            raise ValueError("quantiles must lie in [0, 1]")
        if self._count <= 0.0:
            return np.full(q.shape, np.nan)
        # Buckets in value order: most negative first, then zero, then positives.
        counts = np.concatenate((self._neg_counts[::-1], np.array([self._zero]), self._pos_counts))
        cum = np.cumsum(counts)
        rank = q * (cum[-1] - 1.0)
        idx = np.searchsorted(cum, rank, side="right")
        idx = np.minimum(idx, counts.size - 1)
        n_neg = self._neg_keys.size
        out = np.zeros(q.shape)
        neg = idx < n_neg
        pos = idx > n_neg
        out[neg] = -_representatives(self._neg_keys[::-1][idx[neg]])
        out[pos] = _representatives(self._pos_keys[idx[pos] - n_neg - 1])
        return out

    # -- bytes ------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The compact version-1 encoding (see the module docstring)."""
        if self._neg_keys.size + self._pos_keys.size <= _SMALL:
            return _encode_small(
                self._zero,
                self._neg_keys[::-1].tolist(),
                self._pos_keys.tolist(),
                self._neg_counts[::-1].tolist() + self._pos_counts.tolist(),
            )
        keys = np.concatenate((self._neg_keys[::-1], self._pos_keys))
        counts = np.concatenate((self._neg_counts[::-1], self._pos_counts))
        classes = np.concatenate(
            (
                np.full(self._neg_keys.size, _NEG, dtype=np.int64),
                np.full(self._pos_keys.size, _POS, dtype=np.int64),
            )
        )
        buckets = _Buckets(
            n_series=1,
            series=np.zeros(keys.size, dtype=np.int64),
            classes=classes,
            keys=keys,
            counts=counts,
            zero=np.array([self._zero]),
        )
        return buckets.encode()[0]

    @classmethod
    def from_bytes(cls, data: bytes) -> LogSketch:
        """Decode :meth:`to_bytes` output; raises ``CorruptDataError`` on any malformed input."""
        try:
            return _decode(bytes(data))
        except CorruptDataError:
            raise
        except (ValueError, IndexError, OverflowError, TypeError) as exc:
            raise CorruptDataError(f"bad sketch bytes: {exc}") from exc

    # -- dunder -----------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LogSketch):
            return NotImplemented
        return (
            self._zero == other._zero
            and np.array_equal(self._neg_keys, other._neg_keys)
            and np.array_equal(self._neg_counts, other._neg_counts)
            and np.array_equal(self._pos_keys, other._pos_keys)
            and np.array_equal(self._pos_counts, other._pos_counts)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"LogSketch(count={self._count!r}, zero={self._zero!r}, "
            f"neg_buckets={self._neg_keys.size}, pos_buckets={self._pos_keys.size})"
        )


# -- vectorised builders -------------------------------------------------------------------


def segment_argsort(values: FloatArray, offsets: IntArray) -> IntArray:
    """The permutation that sorts each segment ``values[offsets[i]:offsets[i+1]]`` ascending.

    ``offsets`` must start at 0, be non-decreasing and end at ``len(values)``. Within a
    segment NaNs sort last (among any +inf). See :func:`group_argsort` for the method.
    """
    lengths = np.diff(offsets)
    return group_argsort(values, np.repeat(np.arange(lengths.size, dtype=np.int64), lengths))


def group_argsort(values: FloatArray, groups: IntArray) -> IntArray:
    """The permutation that sorts by ``(groups, values)``: grouped, each group ascending.

    One sort for all groups: the pairs are packed into complex numbers, which numpy orders
    lexicographically (real part first). The sort is stable, so equal values keep their input
    order and whatever is summed per group afterwards does not depend on the other groups;
    it is also fastest here, as the input usually arrives grouped already (runs for timsort).
    ``groups`` must be below 2**53 (exact as floats). A NaN sorts like +inf, at the end of
    its group (numpy would move complex numbers with a NaN part behind every group).

    When every value is a decimal with at most three fraction digits (timers in ms usually are)
    and the groups and the span of the scaled values fit in 63 bits together, the pairs are
    packed into one int64 instead: ``group << bits | (key - min)`` orders exactly as
    ``(group, value)`` does, ties included (``-0.0`` and ``0.0`` tie in both; see
    :func:`_integer_group_argsort`), so the stable sort gives the same permutation, faster
    (integer compares, half the memory).
    """
    fast = _integer_group_argsort(values, groups)
    return _complex_group_argsort(values, groups) if fast is None else fast


def _complex_group_argsort(values: FloatArray, groups: IntArray) -> IntArray:
    packed = np.empty(values.size, dtype=np.complex128)
    packed.real = groups
    nan = np.isnan(values)
    packed.imag = np.where(nan, np.inf, values) if nan.any() else values
    return np.argsort(packed, kind="stable").astype(np.int64, copy=False)


def _integer_group_argsort(values: FloatArray, groups: IntArray) -> IntArray | None:
    """:func:`group_argsort` through one int64 key, or None when the values are not all decimals
    with at most three fraction digits (NaN and infinities are not) or the key would not fit
    in 63 bits.

    Each value is replaced by the integer ``k = rint(value * 10**d)`` for the smallest ``d``
    (0..3) where ``k / 10**d == value`` for every value. Then ``k`` determines the value, so
    distinct values get distinct keys, and ``rint(x * 10**d)`` never decreases as ``x`` grows:
    the keys order exactly as the values do, ties (``-0.0`` and ``0.0`` included) tie.
    """
    if values.size == 0:
        return None
    with np.errstate(invalid="ignore", over="ignore"):
        for scale in _DECIMAL_SCALES:
            # NaN, infinities and magnitudes beyond int64 convert to garbage that fails the check.
            whole = (np.rint(values * scale) if scale != 1.0 else values).astype(np.int64)
            if np.array_equal(whole / scale if scale != 1.0 else whole, values):
                break
        else:
            return None
    low, high = int(whole.min()), int(whole.max())
    first, last = int(groups.min()), int(groups.max())
    bits = (high - low).bit_length()
    if first < 0 or last.bit_length() + bits > 63:
        return None
    key = groups.astype(np.int64)
    key <<= bits
    if low:
        whole -= low
    key |= whole
    # Timsort is quick on groups that arrive in runs (one array per series); samples merged from
    # the workers' shipments arrive nearly shuffled, where an LSD radix sort in 16-bit digits
    # (numpy's stable sort of uint16 is a counting sort) is ~3x faster. Both are stable.
    shuffled = np.count_nonzero(groups[1:] < groups[:-1]) > groups.size // _RADIX_WHEN_RUNS_BELOW
    if not shuffled:
        return np.argsort(key, kind="stable").astype(np.int64, copy=False)
    return _radix_argsort(key, last.bit_length() + bits)


#: :func:`_integer_group_argsort` sorts by radix when groups fall back more often than once
#: per this many samples (runs shorter than that).
_RADIX_WHEN_RUNS_BELOW: Final = 64


def _radix_argsort(key: IntArray, bits: int) -> IntArray:
    """Stable argsort of non-negative ``key`` below ``2**bits``: least significant 16-bit
    digit first, each pass a stable sort of one digit of the keys in the order so far."""
    order = np.argsort(key.astype(np.uint16), kind="stable")  # the cast keeps the low 16 bits
    for shift in range(16, bits, 16):
        digit = key[order]
        digit >>= shift
        order = order[np.argsort(digit.astype(np.uint16), kind="stable")]
    return order.astype(np.int64, copy=False)


#: Powers of ten tried by :func:`_integer_group_argsort` (timers in ms with up to µs digits).
_DECIMAL_SCALES: Final = (1.0, 10.0, 100.0, 1000.0)


def sketches_from_segments(
    values: FloatArray,
    weights: FloatArray | None,
    offsets: IntArray,
    *,
    presorted: bool = False,
) -> list[LogSketch]:
    """One sketch per segment ``values[offsets[i]:offsets[i+1]]`` (weights aligned, default 1).

    ``presorted=True`` promises that each segment is already sorted ascending (as after
    :func:`segment_argsort`), which saves the sort. Empty segments give empty sketches.
    Raises ``ValueError`` on mismatched lengths, bad offsets or non-positive weights.
    """
    return _bucketize(values, weights, offsets, presorted).sketches()


def sketch_bytes_from_segments(
    values: FloatArray,
    weights: FloatArray | None,
    offsets: IntArray,
    *,
    presorted: bool = False,
) -> list[bytes]:
    """Like :func:`sketches_from_segments` but returns each sketch's ``to_bytes()`` directly.

    The encoding is done for all segments in one vectorised pass, so it costs a few numpy
    passes plus one slice per segment, not a Python-level encode per sketch.
    """
    return _bucketize(values, weights, offsets, presorted).encode()


class _Buckets:
    """Non-empty buckets of many series, flat and in (series, value) order.

    ``classes`` is ``_NEG`` or ``_POS`` (zero buckets are folded into ``zero``); within one
    series the negative buckets come first with keys strictly descending, then the positive
    ones with keys strictly ascending.
    """

    __slots__ = ("classes", "counts", "keys", "n_series", "series", "zero")

    def __init__(
        self,
        n_series: int,
        series: IntArray,
        classes: IntArray,
        keys: IntArray,
        counts: FloatArray,
        zero: FloatArray,
    ) -> None:
        self.n_series = n_series
        self.series = series
        self.classes = classes
        self.keys = keys
        self.counts = counts
        self.zero = zero

    def sketches(self) -> list[LogSketch]:
        bounds = np.searchsorted(self.series, np.arange(self.n_series + 1)).tolist()
        neg_sizes = np.bincount(self.series[self.classes == _NEG], minlength=self.n_series).tolist()
        zero = self.zero.tolist()
        keys = self.keys
        counts = self.counts
        out: list[LogSketch] = []
        for i in range(self.n_series):
            lo, hi = bounds[i], bounds[i + 1]
            mid = lo + neg_sizes[i]
            out.append(
                LogSketch._wrap(
                    zero[i],
                    keys[lo:mid][::-1].copy(),
                    counts[lo:mid][::-1].copy(),
                    keys[mid:hi].copy(),
                    counts[mid:hi].copy(),
                )
            )
        return out

    def encode(self) -> list[bytes]:
        n = self.n_series
        if n == 0:
            return []
        b = self.keys.size
        series = self.series
        per_series = np.bincount(series, minlength=n)
        is_neg = self.classes == _NEG
        n_neg = np.bincount(series[is_neg], minlength=n) if is_neg.any() else np.zeros(n, dtype=np.int64)
        del is_neg
        n_pos = per_series - n_neg

        counts = self.counts
        whole = (counts == np.floor(counts)) & (counts < _MAX_EXACT)
        zero = self.zero
        zero_whole = (zero == np.floor(zero)) & (zero >= 0.0) & (zero < _MAX_EXACT)
        if whole.all() and zero_whole.all():
            return self._encode_varints(per_series, n_neg, n_pos)
        f64 = (np.bincount(series[~whole], minlength=n) > 0) | ~zero_whole

        # Key items: zigzag of the first key of each store, then distances between keys.
        store = series * 2 + (self.classes == _POS)
        first = np.ones(b, dtype=bool)
        first[1:] = store[1:] != store[:-1]
        keys = self.keys
        dist = np.zeros(b, dtype=np.int64)
        dist[1:] = np.abs(keys[1:] - keys[:-1])
        key_items = np.where(first, _zigzag(keys), dist.astype(np.uint64))

        # Item layout per series: 5 header items, its keys, then its counts.
        items_per_series = 5 + 2 * per_series
        item_start = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(items_per_series, out=item_start[1:])
        bucket_start = np.zeros(n, dtype=np.int64)
        np.cumsum(per_series[:-1], out=bucket_start[1:])
        total_items = int(item_start[-1])
        item_val = np.zeros(total_items, dtype=np.uint64)
        item_f64 = np.zeros(total_items, dtype=bool)

        head = item_start[:-1]
        item_val[head] = _VERSION
        item_val[head + 1] = f64.astype(np.uint64) * _FLAG_F64
        item_val[head + 2] = n_neg.astype(np.uint64)
        item_val[head + 3] = n_pos.astype(np.uint64)
        item_f64[head + 4] = f64
        item_val[head + 4] = np.where(f64, zero.view(np.uint64), _as_u64(zero, ~f64))

        key_pos = (head + 5 - bucket_start)[series] + np.arange(b, dtype=np.int64)
        count_pos = key_pos + per_series[series]
        bucket_f64 = f64[series]
        item_val[key_pos] = key_items
        item_val[count_pos] = np.where(bucket_f64, counts.view(np.uint64), _as_u64(counts, ~bucket_f64))
        item_f64[count_pos] = bucket_f64

        data, byte_start = _write_items(item_val, item_f64)
        starts = byte_start[item_start[:-1]].tolist()
        ends = [*starts[1:], len(data)]
        return [data[s:e] for s, e in zip(starts, ends, strict=True)]

    def _encode_varints(self, per_series: IntArray, n_neg: IntArray, n_pos: IntArray) -> list[bytes]:
        """:meth:`encode` when every count (and zero count) is a whole number below 2**53, so
        every item is a varint (the usual case); same bytes, fewer passes."""
        n = self.n_series
        b = self.keys.size
        keys = self.keys
        bucket_start = np.zeros(n, dtype=np.int64)
        np.cumsum(per_series[:-1], out=bucket_start[1:])
        # Key items: distances from the previous key, except the first key of each store
        # (the first bucket of a series, and its first positive one after negative ones),
        # which is zigzag-encoded.
        key_items = np.empty(b, dtype=np.int64)
        if b:
            key_items[0] = 0
            np.subtract(keys[1:], keys[:-1], out=key_items[1:])
            np.abs(key_items, out=key_items)
        firsts = np.concatenate(
            (bucket_start[per_series > 0], (bucket_start + n_neg)[(n_neg > 0) & (n_pos > 0)])
        )
        first_keys = keys[firsts]
        key_items[firsts] = (first_keys << 1) ^ (first_keys >> 63)

        key_u64 = key_items.view(np.uint64)
        count_u64 = self.counts.astype(np.uint64)
        zero_u64 = self.zero.astype(np.uint64)
        n_neg_u64 = n_neg.astype(np.uint64)
        n_pos_u64 = n_pos.astype(np.uint64)
        key_len = _varint_lengths(key_u64)
        count_len = _varint_lengths(count_u64)
        # Byte layout per series: version, flags, n_neg, n_pos, zero, its keys, its counts;
        # positions come from running sums of the varint lengths, per section.
        # np.empty, not zeros: calloc would hand out fresh pages that fault on first write.
        # (Widened first, then summed in place: a cumsum that casts as it goes is ~5x slower.)
        key_cum = np.empty(b + 1, dtype=np.int64)
        key_cum[0] = 0
        key_cum[1:] = key_len
        np.cumsum(key_cum[1:], out=key_cum[1:])
        count_cum = np.empty(b + 1, dtype=np.int64)
        count_cum[0] = 0
        count_cum[1:] = count_len
        np.cumsum(count_cum[1:], out=count_cum[1:])
        bucket_end = bucket_start + per_series
        key_bytes = key_cum[bucket_end] - key_cum[bucket_start]
        count_bytes = count_cum[bucket_end] - count_cum[bucket_start]
        n_neg_len = _varint_lengths(n_neg_u64)
        n_pos_len = _varint_lengths(n_pos_u64)
        zero_len = _varint_lengths(zero_u64)
        sizes = n_neg_len + n_pos_len.astype(np.int64) + zero_len + 2 + key_bytes + count_bytes
        series_start = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(sizes, out=series_start[1:])
        buf = np.empty(int(series_start[-1]), dtype=np.uint8)

        head = series_start[:-1]
        buf[head] = _VERSION
        buf[head + 1] = 0
        pos = head + 2
        for values, lengths in ((n_neg_u64, n_neg_len), (n_pos_u64, n_pos_len), (zero_u64, zero_len)):
            _put_varints(buf, pos, values, lengths)
            pos = pos + lengths
        key_pos = np.repeat(pos - key_cum[bucket_start], per_series)
        key_pos += key_cum[:-1]
        _put_varints(buf, key_pos, key_u64, key_len)
        del key_pos, key_cum, key_u64, key_len, key_items
        count_pos = np.repeat(pos + key_bytes - count_cum[bucket_start], per_series)
        count_pos += count_cum[:-1]
        _put_varints(buf, count_pos, count_u64, count_len)
        del count_pos, count_cum

        data = buf.tobytes()
        starts = series_start.tolist()
        return [data[s:e] for s, e in itertools.pairwise(starts)]


def _bucketize(
    values: FloatArray, weights: FloatArray | None, offsets: IntArray, presorted: bool
) -> _Buckets:
    values = np.asarray(values, dtype=np.float64)
    offsets = np.asarray(offsets, dtype=np.int64)
    if values.ndim != 1 or offsets.ndim != 1 or offsets.size < 1:
        raise ValueError("values and offsets must be 1-D, offsets non-empty")
    lengths = np.diff(offsets)
    if offsets[0] != 0 or offsets[-1] != values.size or np.any(lengths < 0):
        raise ValueError("offsets must run from 0 to len(values), non-decreasing")
    n_series = lengths.size
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != values.shape:
            raise ValueError("weights must have the same length as values")
        if not np.all(np.isfinite(w) & (w > 0.0)):
            raise ValueError("weights must be finite and positive")
    if presorted:
        fast = _bucketize_sorted(values, None if weights is None else w, lengths)
        if fast is not None:
            return fast
    if weights is None:
        w = np.ones(values.size)
    series = np.repeat(np.arange(n_series, dtype=np.int64), lengths)
    x = values
    if not presorted:
        order = segment_argsort(values, offsets)
        x, w = values[order], w[order]
    finite = np.isfinite(x)
    if not finite.all():
        x, w, series = x[finite], w[finite], series[finite]

    mag = np.abs(x)
    is_zero = mag < ZERO_THRESHOLD
    with np.errstate(divide="ignore"):
        keys = np.ceil(np.log(mag) / _LN_GAMMA)
    keys = np.clip(np.where(is_zero, 0.0, keys), KEY_MIN, KEY_MAX).astype(np.int64)
    classes = np.where(is_zero, _ZERO, np.where(x < 0.0, _NEG, _POS)).astype(np.int64)
    # A code that increases with value inside a series: negative keys count down.
    rel = np.where(classes == _NEG, KEY_MAX - keys, keys - KEY_MIN)
    code = series * _CLASS_STRIDE + classes * _KEY_SPAN + np.where(is_zero, 0, rel)
    resorted = code.size > 1 and bool(np.any(code[1:] < code[:-1]))
    if resorted:
        # log() is not guaranteed monotone to the last ulp; never trust the order blindly.
        order = np.argsort(code, kind="stable")
        code, w = code[order], w[order]
    if code.size:
        run_start = np.flatnonzero(np.concatenate(([True], code[1:] != code[:-1])))
        run_code = code[run_start]
        run_weight = np.add.reduceat(w, run_start)
    else:
        run_start = np.zeros(0, dtype=np.int64)
        run_code = np.zeros(0, dtype=np.int64)
        run_weight = np.zeros(0)
    if resorted:
        run_series = run_code // _CLASS_STRIDE
        run_class = (run_code % _CLASS_STRIDE) // _KEY_SPAN
        run_rel = run_code % _KEY_SPAN
        run_keys = np.where(run_class == _NEG, KEY_MAX - run_rel, run_rel + KEY_MIN)
    else:  # gathering from the elements is cheaper than decoding the codes
        run_series, run_class, run_keys = series[run_start], classes[run_start], keys[run_start]
    zero_runs = run_class == _ZERO
    zero = np.bincount(run_series[zero_runs], weights=run_weight[zero_runs], minlength=n_series)
    keep = ~zero_runs
    return _Buckets(
        n_series=n_series,
        series=run_series[keep],
        classes=run_class[keep],
        keys=run_keys[keep],
        counts=run_weight[keep],
        zero=zero.astype(np.float64),
    )


#: Offset that makes every bucket's signed key of :func:`_bucketize_sorted` non-zero, and the
#: stride between two series' codes there (larger than the span of signed keys).
_SIGNED_OFFSET = 1 - KEY_MIN
_SIGNED_STRIDE = 2 * (KEY_MAX + _SIGNED_OFFSET) + 1


def _bucketize_sorted(values: FloatArray, weights: FloatArray | None, lengths: IntArray) -> _Buckets | None:
    """The common case of :func:`_bucketize`: finite samples sorted within each segment.

    Gives the same buckets with a few in-place passes over the samples: each sample's bucket is
    one float, its *signed key* ``-(key + off)`` (negative), 0 (zero bucket) or ``key + off``
    (positive), which increases with the value inside a series, and its series' code adds
    ``series * stride``; runs of equal codes are the buckets. Returns None (the caller takes
    the general path) for a non-finite sample or when the codes are not monotone (unsorted
    input, or a ``log`` that is not monotone to the last ulp), so the result never depends on
    which path ran.
    """
    n_series = lengths.size
    size = values.size
    if size == 0 or n_series * _SIGNED_STRIDE >= _MAX_EXACT:
        return None
    signed = np.abs(values)
    # abs() keeps NaN and inf: the checks on it replace a separate isfinite pass.
    if not signed.max() < math.inf:
        return None
    is_zero = signed < ZERO_THRESHOLD
    with np.errstate(divide="ignore"):
        np.log(signed, out=signed)
    # The same operations as the general path, in place: bit-identical keys.
    np.divide(signed, _LN_GAMMA, out=signed)
    np.ceil(signed, out=signed)
    np.clip(signed, KEY_MIN, KEY_MAX, out=signed)
    signed += _SIGNED_OFFSET
    np.copysign(signed, values, out=signed)
    if is_zero.any():
        signed[is_zero] = 0.0
    del is_zero
    code = np.repeat(np.arange(n_series, dtype=np.float64) * _SIGNED_STRIDE, lengths)
    code += signed
    if np.less(code[1:], code[:-1]).any():
        return None
    starts = np.empty(size, dtype=bool)
    starts[0] = True
    np.not_equal(code[1:], code[:-1], out=starts[1:])
    del code
    run_start = np.flatnonzero(starts)
    del starts
    run_signed = signed[run_start]
    del signed
    if weights is None:
        run_weight = np.diff(run_start, append=size).astype(np.float64)
    else:
        run_weight = np.add.reduceat(weights, run_start)
    # Every non-empty series starts a run (codes of two series never meet).
    offsets = np.zeros(n_series + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    series_runs = np.searchsorted(run_start, offsets)
    del run_start
    zero = np.zeros(n_series)
    zero_runs = np.flatnonzero(run_signed == 0.0)
    if zero_runs.size:
        zero[np.searchsorted(series_runs, zero_runs, side="right") - 1] = run_weight[zero_runs]
        keep = np.ones(run_signed.size, dtype=bool)
        keep[zero_runs] = False
        run_signed, run_weight = run_signed[keep], run_weight[keep]
        series_runs = series_runs - np.searchsorted(zero_runs, series_runs)
    negative = run_signed < 0.0
    keys = np.abs(run_signed).astype(np.int64)
    keys -= _SIGNED_OFFSET
    return _Buckets(
        n_series=n_series,
        series=np.repeat(np.arange(n_series, dtype=np.int64), np.diff(series_runs)),
        classes=np.where(negative, _NEG, _POS).astype(np.int64),
        keys=keys,
        counts=run_weight,
        zero=zero,
    )


# -- helpers ---------------------------------------------------------------------------------


def _frozen_store(store: tuple[IntArray, FloatArray] | None) -> tuple[IntArray, FloatArray]:
    if store is None:
        keys: IntArray = np.zeros(0, dtype=np.int64)
        counts: FloatArray = np.zeros(0)
    else:
        keys = np.array(store[0], dtype=np.int64)
        counts = np.array(store[1], dtype=np.float64)
        if keys.shape != counts.shape or keys.ndim != 1:
            raise ValueError("store keys and counts must be 1-D and of equal length")
    keys.flags.writeable = False
    counts.flags.writeable = False
    return keys, counts


def _sum_buckets(keys: list[IntArray], counts: list[FloatArray]) -> tuple[IntArray, FloatArray]:
    all_keys = np.concatenate(keys)
    all_counts = np.concatenate(counts)
    uniq, inverse = np.unique(all_keys, return_inverse=True)
    sums = np.bincount(inverse.ravel(), weights=all_counts, minlength=uniq.size)
    return uniq.astype(np.int64), sums.astype(np.float64, copy=False)


def _representatives(keys: IntArray) -> FloatArray:
    """``2 * gamma**k / (gamma + 1)``, computed in the log domain and capped at float max."""
    exponent = np.minimum(keys * _LN_GAMMA + _LN_REPR_FACTOR, _LN_MAX_FLOAT)
    rep: FloatArray = np.minimum(np.exp(exponent), sys.float_info.max)
    return rep


def _as_u64(v: FloatArray, valid: npt.NDArray[np.bool_]) -> _U64Array:
    """Cast whole floats to uint64 where ``valid`` (0 elsewhere, so the cast never warns)."""
    return np.where(valid, v, 0.0).astype(np.uint64)


def _zigzag(v: IntArray) -> _U64Array:
    return ((v << 1) ^ (v >> 63)).astype(np.uint64)


def _unzigzag(u: int) -> int:
    return (u >> 1) ^ -(u & 1)


def _varint_lengths(v: _U64Array) -> npt.NDArray[np.uint8]:
    """LEB128 length of each value (exact below 2**53: the float exponent is the bit length)."""
    lengths = np.ones(v.size, dtype=np.uint8)
    big = np.flatnonzero(v >= 0x80)
    if big.size:
        _, exponent = np.frexp(v[big].astype(np.float64))
        lengths[big] = (exponent + 6) // 7
    return lengths


def _write_items(values: _U64Array, is_f64: npt.NDArray[np.bool_]) -> tuple[bytes, IntArray]:
    """Serialise items (varints below 2**53, or raw little-endian 8-byte words where
    ``is_f64``); returns the bytes and each item's start offset."""
    lengths = _varint_lengths(values)
    lengths[is_f64] = 8
    start = np.zeros(values.size, dtype=np.int64)
    if values.size:
        start[1:] = lengths[:-1]
        np.cumsum(start[1:], out=start[1:])
    total = int(start[-1]) + int(lengths[-1]) if values.size else 0
    buf = np.zeros(total, dtype=np.uint8)
    # Raw words are written last, over the placeholder byte _put_varints leaves at their start.
    _put_varints(buf, start, values, np.where(is_f64, 1, lengths))
    raw = np.flatnonzero(is_f64)
    if raw.size:
        words = values[raw].astype("<u8").view(np.uint8).reshape(-1, 8)
        buf[start[raw][:, None] + np.arange(8)] = words
    return buf.tobytes(), start


def _put_varints(
    buf: npt.NDArray[np.uint8], pos: IntArray, values: _U64Array, lengths: npt.NDArray[np.uint8]
) -> None:
    """Write each ``values[i]`` as a LEB128 varint of ``lengths[i]`` bytes at ``buf[pos[i]:]``."""
    # Most fit one byte: every first byte in one pass, then the longer ones whole.
    buf[pos] = values.astype(np.uint8)
    idx = np.flatnonzero(lengths > 1)
    v = values[idx]
    at = pos[idx]
    rest = lengths[idx]
    for j in range(10):
        if v.size == 0:
            break
        more = rest > j + 1
        byte = ((v >> np.uint64(7 * j)) & np.uint64(0x7F)).astype(np.uint8)
        buf[at + j] = byte | (more.astype(np.uint8) << np.uint8(7))
        v, at, rest = v[more], at[more], rest[more]


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = 0
    for shift in range(0, 70, 7):
        if pos >= len(data):
            raise CorruptDataError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            if result >= 1 << 64:
                raise CorruptDataError("varint overflows 64 bits")
            return result, pos
    raise CorruptDataError("varint longer than 10 bytes")


def _read_varints(data: bytes, pos: int, count: int) -> tuple[_U64Array, int]:
    """Decode ``count`` varints starting at ``pos``, vectorised; returns values and end."""
    if count == 0:
        return np.zeros(0, dtype=np.uint64), pos
    buf = np.frombuffer(data, dtype=np.uint8, offset=pos)
    ends = np.flatnonzero(buf < 0x80)
    if ends.size < count:
        raise CorruptDataError("truncated varint section")
    ends = ends[:count]
    starts = np.empty(count, dtype=np.int64)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    if np.any(lengths > 10):
        raise CorruptDataError("varint longer than 10 bytes")
    if np.any((lengths == 10) & (buf[np.minimum(ends, buf.size - 1)] > 1)):
        raise CorruptDataError("varint overflows 64 bits")
    out = np.zeros(count, dtype=np.uint64)
    for j in range(10):
        has = lengths > j
        if not has.any():
            break
        chunk = (buf[starts[has] + j] & 0x7F).astype(np.uint64)
        out[has] |= chunk << np.uint64(7 * j)
    return out, pos + int(ends[-1]) + 1


def _decode(data: bytes) -> LogSketch:
    if len(data) < 5:
        raise CorruptDataError("sketch shorter than its header")
    if data[0] != _VERSION:
        raise CorruptDataError(f"unknown sketch version {data[0]}")
    flags = data[1]
    if flags & ~_FLAG_F64:
        raise CorruptDataError(f"unknown sketch flags {flags:#x}")
    f64 = bool(flags & _FLAG_F64)
    n_neg, pos = _read_varint(data, 2)
    n_pos, pos = _read_varint(data, pos)
    n = n_neg + n_pos
    # Every bucket needs at least one key byte and one count byte.
    if 2 * n > len(data) - pos:
        raise CorruptDataError("bucket counts exceed the data")
    if f64:
        if pos + 8 > len(data):
            raise CorruptDataError("truncated zero count")
        (zero,) = struct.unpack_from("<d", data, pos)
        pos += 8
    else:
        zero_int, pos = _read_varint(data, pos)
        if zero_int >= _MAX_EXACT:
            raise CorruptDataError("zero count too large")
        zero = float(zero_int)
    if not (math.isfinite(zero) and zero >= 0.0):
        raise CorruptDataError("zero count must be finite and non-negative")

    if n <= _SMALL:
        return _decode_small(data, pos, zero, n_neg, n_pos, f64)
    key_items, pos = _read_varints(data, pos, n)
    if f64:
        if pos + 8 * n != len(data):
            raise CorruptDataError("float count section does not match the data length")
        counts = np.frombuffer(data, dtype="<f8", count=n, offset=pos).astype(np.float64)
        pos += 8 * n
        if not np.all(np.isfinite(counts) & (counts > 0.0)):
            raise CorruptDataError("bucket counts must be finite and positive")
    else:
        raw_counts, pos = _read_varints(data, pos, n)
        if np.any(raw_counts == 0) or np.any(raw_counts >= np.uint64(1 << 53)):
            raise CorruptDataError("bucket counts must be in [1, 2**53)")
        counts = raw_counts.astype(np.float64)
    if pos != len(data):
        raise CorruptDataError("trailing bytes after the sketch")

    neg_keys = _decode_keys(key_items[:n_neg], descending=True)
    pos_keys = _decode_keys(key_items[n_neg:], descending=False)
    return LogSketch._wrap(
        zero, neg_keys[::-1].copy(), counts[:n_neg][::-1].copy(), pos_keys, counts[n_neg:].copy()
    )


def _decode_small(data: bytes, pos: int, zero: float, n_neg: int, n_pos: int, f64: bool) -> LogSketch:
    """The plain-Python twin of the numpy decoder, for sketches of at most ``_SMALL`` buckets."""
    n = n_neg + n_pos
    items = []
    for _ in range(n):
        item, pos = _read_varint(data, pos)
        items.append(item)
    if f64:
        if pos + 8 * n != len(data):
            raise CorruptDataError("float count section does not match the data length")
        counts = list(struct.unpack_from(f"<{n}d", data, pos))
        if not all(math.isfinite(c) and c > 0.0 for c in counts):
            raise CorruptDataError("bucket counts must be finite and positive")
    else:
        counts = []
        for _ in range(n):
            count, pos = _read_varint(data, pos)
            if not 0 < count < _MAX_EXACT:
                raise CorruptDataError("bucket counts must be in [1, 2**53)")
            counts.append(float(count))
        if pos != len(data):
            raise CorruptDataError("trailing bytes after the sketch")
    neg_keys = _keys_from_items(items[:n_neg], -1)
    pos_keys = _keys_from_items(items[n_neg:], 1)
    return LogSketch._wrap(
        zero,
        np.array(neg_keys[::-1], dtype=np.int64),
        np.array(counts[n_neg - 1 :: -1] if n_neg else [], dtype=np.float64),
        np.array(pos_keys, dtype=np.int64),
        np.array(counts[n_neg:], dtype=np.float64),
    )


def _keys_from_items(items: list[int], direction: int) -> list[int]:
    if not items:
        return []
    key = _unzigzag(items[0])
    keys = [key]
    for step in items[1:]:
        if not 0 < step <= _KEY_SPAN:
            raise CorruptDataError("bucket keys must be strictly ordered and in range")
        key += direction * step
        keys.append(key)
    if not (KEY_MIN <= keys[0] <= KEY_MAX and KEY_MIN <= key <= KEY_MAX):
        raise CorruptDataError("bucket key out of range")
    return keys


def _encode_small(zero: float, neg_keys: list[int], pos_keys: list[int], counts: list[float]) -> bytes:
    """The plain-Python twin of :meth:`_Buckets.encode` for one sketch (same bytes).

    ``neg_keys`` are in value order (descending), ``counts`` follow the negative then the
    positive keys.
    """
    f64 = not (zero.is_integer() and 0.0 <= zero < _MAX_EXACT) or not all(
        c.is_integer() and c < _MAX_EXACT for c in counts
    )
    out = bytearray((_VERSION, _FLAG_F64 if f64 else 0))
    _put_varint(out, len(neg_keys))
    _put_varint(out, len(pos_keys))
    if f64:
        out += struct.pack("<d", zero)
    else:
        _put_varint(out, int(zero))
    for keys in (neg_keys, pos_keys):
        previous = None
        for key in keys:
            _put_varint(out, (key << 1) ^ (key >> 63) if previous is None else abs(key - previous))
            previous = key
    if f64:
        out += struct.pack(f"<{len(counts)}d", *counts)
    else:
        for count in counts:
            _put_varint(out, int(count))
    return bytes(out)


def _put_varint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _decode_keys(items: _U64Array, *, descending: bool) -> IntArray:
    if items.size == 0:
        return np.zeros(0, dtype=np.int64)
    first = _unzigzag(int(items[0]))
    if not KEY_MIN <= first <= KEY_MAX:
        raise CorruptDataError("bucket key out of range")
    steps = items[1:]
    if np.any(steps == 0) or np.any(steps > np.uint64(_KEY_SPAN)):
        raise CorruptDataError("bucket keys must be strictly ordered and in range")
    sign = -1 if descending else 1
    keys = first + sign * np.concatenate(([0], np.cumsum(steps.astype(np.int64))))
    if keys[-1] < KEY_MIN or keys[-1] > KEY_MAX:
        raise CorruptDataError("bucket key out of range")
    return keys.astype(np.int64)
