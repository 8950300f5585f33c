"""Merging many stored sketches at once (rollups merge hundreds per series and partition).

:meth:`LogSketch.from_bytes` decodes one sketch with a Python loop over its varints, which
made sketch rollups the bulk of maintenance time. :func:`merge_groups` decodes every sketch of
a batch in one vectorised pass over the documented version-1 encoding of
:mod:`statsyard_agent._sketch` (all-varint form: ``version, flags, n_neg, n_pos, zero, keys...,
counts...``), adds bucket counts per group with ``np.bincount`` and encodes each merged group
with :meth:`LogSketch.to_bytes`. Anything else (float counts, another version, a blob that
does not parse) goes through ``LogSketch.from_bytes`` / ``merge_all``, so the result is always
what ``merge_all`` gives; a test holds the two paths to byte equality.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from statsyard_agent._exceptions import CorruptDataError
from statsyard_agent._sketch import KEY_MAX, KEY_MIN, LogSketch

log = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]
_SPAN = KEY_MAX - KEY_MIN + 1
_MAX_COUNT = 2**53


def merge_groups(blobs: Sequence[bytes], groups: Sequence[int]) -> dict[int, bytes]:
    """``group -> merged sketch bytes`` for sketches ``blobs[i]`` of group ``groups[i]``.

    A group of one sketch keeps its bytes unchanged; a sketch that does not decode is skipped
    (logged); a group left with no sketch is absent from the result.
    """
    by_group: dict[int, list[int]] = {}
    for i, group in enumerate(groups):
        by_group.setdefault(int(group), []).append(i)
    out: dict[int, bytes] = {}
    fast: list[int] = []
    for group, members in by_group.items():
        if len(members) == 1:
            out[group] = blobs[members[0]]
        else:
            fast.extend(members)
    if not fast:
        return out
    decoded = _decode_all([blobs[i] for i in fast])
    slow_groups: set[int] = set()
    if decoded is None:
        slow_groups = {int(groups[i]) for i in fast}
    else:
        ok, blob_of, neg, keys, counts, zero = decoded
        member_groups = np.array([groups[i] for i in fast], dtype=np.int64)
        slow_groups = set(member_groups[~ok].tolist())
        good_blob = ok & ~np.isin(member_groups, list(slow_groups))
        out.update(_merge_decoded(member_groups, good_blob, blob_of, neg, keys, counts, zero))
    for group in slow_groups:
        merged = _merge_slowly([blobs[i] for i in by_group[group]])
        if merged is not None:
            out[group] = merged
    return out


def _merge_slowly(blobs: list[bytes]) -> bytes | None:
    sketches = []
    for blob in blobs:
        try:
            sketches.append(LogSketch.from_bytes(blob))
        except CorruptDataError:
            log.warning("skipping a stored sketch that does not decode")
    return LogSketch.merge_all(sketches).to_bytes() if sketches else None


_Decoded = tuple[npt.NDArray[np.bool_], IntArray, npt.NDArray[np.bool_], IntArray, IntArray, IntArray]


def _decode_all(blobs: list[bytes]) -> _Decoded | None:
    """Vectorised decode of all-varint version-1 sketches.

    Returns ``(ok per blob, then per bucket: blob index, is-negative, key, count; and the zero
    count per blob)``; buckets of blobs that are not ``ok`` must be ignored. None when no blob
    is in the fast form.
    """
    n = len(blobs)
    heads = np.array([b[:2] if len(b) >= 2 else b"\xff\xff" for b in blobs], dtype="S2")
    head_bytes = np.frombuffer(heads.tobytes(), dtype=np.uint8).reshape(n, 2)
    ok = (head_bytes[:, 0] == 1) & (head_bytes[:, 1] == 0)
    if not ok.any():
        return None
    bodies = [b[2:] if good else b"" for b, good in zip(blobs, ok.tolist(), strict=True)]
    sizes = np.array([len(b) for b in bodies], dtype=np.int64)
    data = np.frombuffer(b"".join(bodies), dtype=np.uint8)
    blob_start = np.concatenate([[0], np.cumsum(sizes)])
    ends = np.flatnonzero(data < 0x80)
    if len(ends) == 0:
        return None
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    values = np.zeros(len(ends), dtype=np.uint64)
    longest = int(lengths.max()) if len(lengths) else 0
    if longest > 9:  # beyond what keys and counts below 2**53 need: not ours
        return None
    for j in range(longest):
        has = lengths > j
        values[has] |= (data[starts[has] + j] & 0x7F).astype(np.uint64) << np.uint64(7 * j)
    # Varint k belongs to the blob whose byte range holds its first byte.
    owner = np.searchsorted(blob_start, starts, side="right") - 1
    per_blob = np.bincount(owner, minlength=n)
    first = np.concatenate([[0], np.cumsum(per_blob)])[:-1]
    # A blob's varints must end exactly at its last byte (no varint straddles two blobs).
    tail_ok = np.ones(n, dtype=bool)
    has_any = per_blob > 0
    last_end = np.full(n, -1, dtype=np.int64)
    last_end[has_any] = ends[first[has_any] + per_blob[has_any] - 1]
    tail_ok = last_end == blob_start[1:] - 1
    ok &= has_any & tail_ok & (per_blob >= 3)
    safe_first = np.where(ok, first, 0)
    n_neg = np.where(ok, values[np.minimum(safe_first, len(values) - 1)], 0).astype(np.int64)
    n_pos = np.where(ok, values[np.minimum(safe_first + 1, len(values) - 1)], 0).astype(np.int64)
    zero = np.where(ok, values[np.minimum(safe_first + 2, len(values) - 1)], 0).astype(np.int64)
    buckets = n_neg + n_pos
    ok &= per_blob == 3 + 2 * buckets
    ok &= (n_neg >= 0) & (n_pos >= 0) & (zero < _MAX_COUNT)
    buckets = np.where(ok, buckets, 0)
    n_neg = np.where(ok, n_neg, 0)
    total = int(buckets.sum())
    blob_of = np.repeat(np.arange(n, dtype=np.int64), buckets)
    bucket_start = np.concatenate([[0], np.cumsum(buckets)])[:-1]
    rank = np.arange(total, dtype=np.int64) - bucket_start[blob_of]
    key_items = values[first[blob_of] + 3 + rank].astype(np.int64)
    counts = values[first[blob_of] + 3 + buckets[blob_of] + rank].astype(np.int64)
    neg = rank < n_neg[blob_of]
    store_first = (rank == 0) | (rank == n_neg[blob_of])
    # First key of a store: zigzag; then distances, descending for the negative store.
    base = (key_items >> 1) ^ -(key_items & 1)
    step = np.where(neg, -key_items, key_items)
    signed = np.where(store_first, base, step)
    running = np.cumsum(signed)
    segment = np.cumsum(store_first) - 1
    seg_start = np.flatnonzero(store_first)
    offset = np.concatenate([[0], running[seg_start[1:] - 1]]) if len(seg_start) else running[:0]
    keys = running - offset[segment] if total else running
    bad = (
        (keys < KEY_MIN)
        | (keys > KEY_MAX)
        | (counts < 1)
        | (counts >= _MAX_COUNT)
        | (~store_first & ((key_items == 0) | (key_items > _SPAN)))
    )
    if bad.any():
        ok[np.unique(blob_of[bad])] = False
    return ok, blob_of, neg, keys, counts, zero


def _merge_decoded(
    member_groups: IntArray,
    good_blob: npt.NDArray[np.bool_],
    blob_of: IntArray,
    neg: npt.NDArray[np.bool_],
    keys: IntArray,
    counts: IntArray,
    zero: IntArray,
) -> dict[int, bytes]:
    use = good_blob[blob_of]
    group = member_groups[blob_of[use]]
    # Buckets in the encoding's order: per group the negative store by descending key (value
    # order), then the positive store by ascending key.
    positive = ~neg[use]
    order_key = np.where(positive, keys[use] - KEY_MIN, KEY_MAX - keys[use])
    packed = (group * 2 + positive.astype(np.int64)) * _SPAN + order_key
    unique, inverse = np.unique(packed, return_inverse=True)
    summed = np.zeros(len(unique), dtype=np.int64)
    np.add.at(summed, inverse, counts[use])
    u_group = unique // (2 * _SPAN)
    u_positive = (unique // _SPAN) % 2 == 1
    u_order = unique % _SPAN
    u_key = np.where(u_positive, u_order + KEY_MIN, KEY_MAX - u_order)
    good_groups = member_groups[good_blob]
    out_groups = np.unique(good_groups)
    zeros = np.zeros(len(out_groups), dtype=np.int64)
    np.add.at(zeros, np.searchsorted(out_groups, good_groups), zero[good_blob])
    bounds = np.searchsorted(u_group, out_groups)
    n_all = np.diff(np.append(bounds, len(unique)))
    n_neg = np.bincount(np.searchsorted(out_groups, u_group[~u_positive]), minlength=len(out_groups))
    if (summed >= _MAX_COUNT).any() or (zeros >= _MAX_COUNT).any():
        return _encode_with_sketch(out_groups, bounds, n_all, u_positive, u_key, summed, zeros)
    encoded = _encode(n_neg, n_all - n_neg, zeros, u_group, u_positive, u_key, summed, out_groups)
    return dict(zip(out_groups.tolist(), encoded, strict=True))


def _encode(
    n_neg: IntArray,
    n_pos: IntArray,
    zeros: IntArray,
    u_group: IntArray,
    u_positive: npt.NDArray[np.bool_],
    u_key: IntArray,
    counts: IntArray,
    out_groups: IntArray,
) -> list[bytes]:
    """The version-1, all-varint encoding of each group (same bytes as ``to_bytes``)."""
    buckets = n_neg + n_pos
    store = u_group * 2 + u_positive
    first = np.ones(len(store), dtype=bool)
    first[1:] = store[1:] != store[:-1]
    distance = np.zeros(len(store), dtype=np.int64)
    distance[1:] = np.abs(u_key[1:] - u_key[:-1])
    zigzag = (u_key << 1) ^ (u_key >> 63)
    key_items = np.where(first, zigzag, distance)
    per_group = 5 + 2 * buckets
    item_start = np.concatenate([[0], np.cumsum(per_group)])
    items = np.zeros(int(item_start[-1]), dtype=np.uint64)
    head = item_start[:-1]
    items[head] = 1
    items[head + 2] = n_neg
    items[head + 3] = n_pos
    items[head + 4] = zeros
    slot = np.searchsorted(out_groups, u_group)
    rank = np.arange(len(u_group)) - np.concatenate([[0], np.cumsum(buckets)])[:-1][slot]
    items[head[slot] + 5 + rank] = key_items
    items[head[slot] + 5 + buckets[slot] + rank] = counts
    data, byte_start = _varints(items)
    starts = byte_start[item_start].tolist()
    return [data[a:b] for a, b in itertools.pairwise(starts)]


def _varints(items: npt.NDArray[np.uint64]) -> tuple[bytes, IntArray]:
    """LEB128 of every item, concatenated; and the byte offset of each item (plus the end)."""
    lengths = np.ones(len(items), dtype=np.int64)
    for j in range(1, 10):
        lengths += items >= np.uint64(1 << (7 * j))
    byte_start = np.concatenate([[0], np.cumsum(lengths)])
    buf = np.zeros(int(byte_start[-1]), dtype=np.uint8)
    for j in range(int(lengths.max()) if len(lengths) else 0):
        has = np.flatnonzero(lengths > j)
        byte = ((items[has] >> np.uint64(7 * j)) & np.uint64(0x7F)).astype(np.uint8)
        more = lengths[has] > j + 1
        buf[byte_start[has] + j] = byte | (more.astype(np.uint8) << np.uint8(7))
    return buf.tobytes(), byte_start


def _encode_with_sketch(
    out_groups: IntArray,
    bounds: IntArray,
    n_all: IntArray,
    u_positive: npt.NDArray[np.bool_],
    u_key: IntArray,
    counts: IntArray,
    zeros: IntArray,
) -> dict[int, bytes]:
    out = {}
    for at, g in enumerate(out_groups.tolist()):
        lo, hi = int(bounds[at]), int(bounds[at] + n_all[at])
        pos = u_positive[lo:hi]
        k, c = u_key[lo:hi], counts[lo:hi].astype(np.float64)
        neg_order = np.argsort(k[~pos])
        sketch = LogSketch(float(zeros[at]), (k[~pos][neg_order], c[~pos][neg_order]), (k[pos], c[pos]))
        out[g] = sketch.to_bytes()
    return out
