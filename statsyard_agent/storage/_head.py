"""The head: the not yet sealed part of the finest tier, in memory, rebuilt from the WAL.

The writer and every reader hold their own head, built by applying the same WAL records in the
same order through the same code, so they agree on every value.

A head is per retention group (each group has its own finest step). It is cut into windows of
:data:`WINDOW_SLOTS` slots; a window is a dense float64 matrix (NaN = null) over the series seen
in that window and its slots, which makes a sealed window one array write and a query one fancy
index. It is stored slot-major and a slot's column is only initialised when the slot receives
its first flush, so a window's memory grows with the slots written, not all at once (the first
flush of 800k new series touches 6 MB, not 384 MB). A slot whose only flush covered less than
2/3 of the rows (idle series: a timer emits 2 points of its 14) is kept as row/value pairs
instead, and becomes a column only if a second flush lands in it. A flush with end time ``t``
lands in the slot ``t - t % step`` (the slot Whisper would store a point stamped ``t`` in).

Several flushes in one slot (a flush interval shorter than the step, or a partial shutdown
flush) combine with the series' rollup: SUM adds, MIN/MAX keep the extreme, LAST the latest,
AVERAGE averages, RATE is ``sum(v * interval) / max(step, sum(interval))`` (missing time counts
as 0, a flush longer than the step keeps its rate), MEAN is weighted by the sibling count of
each flush (AVERAGE when a flush lacks it). The accumulators this needs exist only for slots
that received a second flush, so the common one-flush-per-slot case costs one column write.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from statsyard_agent._types import FloatArray, Rollup

from ._index import LOST_KIND, SKETCH_KIND, SeriesIndex
from ._rollup import CodeArray, single_flush_value
from ._wal import FlushRecord

#: Slots per head window (10 minutes at a 10 s step). Memory: 8 bytes x series x slots
#: written, or 12 bytes per point for a slot that one flush covered sparsely.
WINDOW_SLOTS = 60
#: A slot's single flush is kept as (int32 row, float64 value) pairs when that is smaller than
#: the dense column (8 bytes a row): when it covers fewer than 2/3 of the window's rows.
_SPARSE_POINT_BYTES = 12

IntArray = npt.NDArray[np.int64]


@dataclass(slots=True)
class _SlotAccumulator:
    """Running sums for one slot that received more than one flush (arrays over rows)."""

    n: npt.NDArray[np.int32]
    total: FloatArray  # SUM, AVERAGE: sum v; RATE: sum v*interval; MEAN: sum v*weight
    weight: FloatArray  # RATE: sum interval; MEAN: sum weight
    plain: FloatArray  # MEAN: sum v (the AVERAGE fallback)
    weighted: npt.NDArray[np.int32]  # MEAN: contributions that carried a weight

    @classmethod
    def empty(cls, rows: int) -> _SlotAccumulator:
        return cls(
            n=np.zeros(rows, dtype=np.int32),
            total=np.zeros(rows),
            weight=np.zeros(rows),
            plain=np.zeros(rows),
            weighted=np.zeros(rows, dtype=np.int32),
        )

    def grow(self, rows: int) -> None:
        for name in ("n", "total", "weight", "plain", "weighted"):
            old = getattr(self, name)
            new = np.zeros(rows, dtype=old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)


@dataclass(slots=True)
class HeadWindow:
    """``slots`` consecutive slots of one group starting at ``start``."""

    start: int
    step: int
    slots: int
    n_rows: int = 0
    #: Series id of each row; int32 like the index's key tables (4 bytes a row, not 8).
    row_ids: npt.NDArray[np.int32] = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    row_codes: CodeArray = field(default_factory=lambda: np.zeros(0, dtype=np.uint8))
    row_of: npt.NDArray[np.int32] = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    #: ``slots x capacity``; column ``s`` holds rows ``[0, n_rows)`` (NaN = null) once
    #: ``flushes[s] > 0`` and is uninitialised (all null) before that.
    values: FloatArray = field(default_factory=lambda: np.zeros((0, 0)))
    flushes: npt.NDArray[np.int32] = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    first_interval: FloatArray = field(default_factory=lambda: np.zeros(0))
    #: slot -> ``(rows ascending, values)`` of a slot whose single flush covered few rows; its
    #: column in ``values`` is then untouched (not resident) until a second flush needs it.
    #: Why: a flush of idle series (a timer's 2 idle points of 14, zeros and last gauge values)
    #: would otherwise cost 8 bytes per *row* of the window in every slot. A slot equal to the
    #: one before it shares that slot's arrays (idle series repeat their points every flush).
    sparse: dict[int, tuple[npt.NDArray[np.int32], FloatArray]] = field(default_factory=dict)
    accumulators: dict[int, _SlotAccumulator] = field(default_factory=dict)
    #: slot -> one ``(ids, joined sketches, end offsets)`` per flush into that slot, in WAL
    #: order. Why not ``sid -> list[bytes]``: that is a bytes object, a list and a dict entry
    #: per timer and slot (~170 bytes), small objects allocated among a flush's temporaries
    #: that keep whole allocator arenas resident; this is the sketch bytes plus 12 per sketch.
    sketch_chunks: dict[int, list[tuple[npt.NDArray[np.int32], bytes, IntArray]]] = field(
        default_factory=dict
    )

    def __post_init__(self) -> None:
        self.values = np.empty((self.slots, 0))
        self.flushes = np.zeros(self.slots, dtype=np.int32)
        self.first_interval = np.zeros(self.slots)

    @property
    def end(self) -> int:
        return self.start + self.slots * self.step

    @property
    def points(self) -> int:
        return sum(
            int(np.count_nonzero(~np.isnan(self._column(s)))) for s in np.flatnonzero(self.flushes).tolist()
        )

    def _dense_written(self) -> list[int]:
        """The slots written whose column lives in ``values``."""
        return [s for s in np.flatnonzero(self.flushes).tolist() if s not in self.sparse]

    def _column(self, slot: int) -> FloatArray:
        """Rows ``[0, n_rows)`` of written slot ``slot`` (a view when dense, else a new array)."""
        held = self.sparse.get(slot)
        if held is None:
            return self.values[slot, : self.n_rows]
        column = np.full(self.n_rows, np.nan)
        column[held[0]] = held[1]
        return column

    def _densify(self, slot: int) -> None:
        rows, values = self.sparse.pop(slot)
        column = self.values[slot]
        column[: self.n_rows] = np.nan
        column[rows] = values

    def rows_for(self, ids: IntArray, codes: CodeArray) -> npt.NDArray[np.int64]:
        """Row of each (unique) id, creating rows for ids new to this window."""
        if len(ids) == 0:
            return np.zeros(0, dtype=np.int64)
        top = int(ids.max()) + 1
        if len(self.row_of) < top:
            # Grown by 1/8, not doubled: every slot is written (-1), so all of it is resident,
            # 4 bytes per series id for each head window.
            grown = np.full(max(top + top // 8, len(self.row_of) + len(self.row_of) // 8), -1, dtype=np.int32)
            grown[: len(self.row_of)] = self.row_of
            self.row_of = grown
        rows = self.row_of[ids].astype(np.int64)
        new = rows < 0
        if new.any():
            count = int(new.sum())
            first = self.n_rows
            self._reserve(first + count)
            fresh = np.arange(first, first + count, dtype=np.int64)
            rows[new] = fresh
            self.row_of[ids[new]] = fresh
            self.row_ids[fresh] = ids[new]
            self.row_codes[fresh] = codes[new]
            written = self._dense_written()  # (a sparse slot's absent rows are null already)
            if written:
                self.values[written, first : first + count] = np.nan
            self.n_rows += count
        return rows

    def _reserve(self, rows: int) -> None:
        capacity = len(self.row_ids)
        if rows <= capacity:
            return
        size = max(rows, 2 * capacity, 64)
        # np.empty: only the columns of written slots are ever touched (and copied).
        values = np.empty((self.slots, size))
        for slot in self._dense_written():
            values[slot, : self.n_rows] = self.values[slot, : self.n_rows]
        self.values = values
        row_ids = np.zeros(size, dtype=np.int32)
        row_ids[:capacity] = self.row_ids
        self.row_ids = row_ids
        row_codes = np.zeros(size, dtype=np.uint8)
        row_codes[:capacity] = self.row_codes
        self.row_codes = row_codes
        for acc in self.accumulators.values():
            acc.grow(size)

    def apply(
        self,
        slot: int,
        interval: float,
        ids: IntArray,
        values: FloatArray,
        codes: CodeArray,
        weights: FloatArray,
        siblings: IntArray,
    ) -> None:
        """Add one flush's points (unique ids, no NaN) to slot index ``slot``."""
        rows = self.rows_for(ids, codes)
        if self.flushes[slot] == 0:
            single = single_flush_value(values, codes, interval, self.step)
            if _SPARSE_POINT_BYTES * len(rows) < 8 * self.n_rows:
                order = np.argsort(rows)
                self.sparse[slot] = self._shared_with_previous(
                    slot, rows[order].astype(np.int32), single[order]
                )
            else:
                column = self.values[slot]
                if len(rows) < self.n_rows:  # (rows are unique: all equal means every row is set)
                    column[: self.n_rows] = np.nan
                column[rows] = single
            self.first_interval[slot] = interval
        else:
            if slot in self.sparse:
                self._densify(slot)
            acc = self.accumulators.get(slot)
            if acc is None:
                acc = self._start_accumulating(slot, siblings)
            self._accumulate(acc, slot, rows, interval, values, codes, weights)
        self.flushes[slot] += 1

    def _shared_with_previous(
        self, slot: int, rows: npt.NDArray[np.int32], values: FloatArray
    ) -> tuple[npt.NDArray[np.int32], FloatArray]:
        """A sparse slot's arrays, each replaced by the previous slot's when equal (both are only
        ever read). Why: idle series write the same points every flush (counters and timer counts
        0, gauges their last value), 12 bytes a point per slot otherwise: ~20 bytes per idle series
        and flush, ~1.2 KB per series by the time a 10-minute window is sealed."""
        previous = self.sparse.get(slot - 1)
        if previous is not None:
            if np.array_equal(previous[0], rows):
                rows = previous[0]
            if np.array_equal(previous[1], values):
                values = previous[1]
        return rows, values

    def _start_accumulating(self, slot: int, siblings: IntArray) -> _SlotAccumulator:
        """Turn the single flush stored in column ``slot`` into accumulator form."""
        acc = _SlotAccumulator.empty(len(self.row_ids))
        column = self.values[slot, : self.n_rows]
        present = ~np.isnan(column)
        codes = self.row_codes[: self.n_rows]
        interval = float(self.first_interval[slot])
        acc.n[: self.n_rows] = present
        stored = np.where(present, column, 0.0)
        rate = codes == Rollup.RATE
        # The stored RATE value was v * interval / step for a short flush, v otherwise.
        original_count = stored * (self.step if interval < self.step else interval)
        acc.total[: self.n_rows] = np.where(rate, original_count, stored)
        acc.weight[: self.n_rows] = np.where(rate & present, interval, 0.0)
        mean = np.flatnonzero((codes == Rollup.MEAN) & present)
        if len(mean):
            acc.plain[mean] = column[mean]
            weight = self._sibling_values(self.row_ids[mean].astype(np.int64), slot, siblings)
            ok = ~np.isnan(weight) & (weight > 0)
            acc.total[mean] = np.where(ok, column[mean] * weight, 0.0)
            acc.weight[mean] = np.where(ok, weight, 0.0)
            acc.weighted[mean] = ok
        self.accumulators[slot] = acc
        return acc

    def _sibling_values(self, ids: IntArray, slot: int, siblings: IntArray) -> FloatArray:
        sib = siblings[ids] if len(siblings) else np.full(len(ids), -1, dtype=np.int64)
        out = np.full(len(ids), np.nan)
        known = (sib >= 0) & (sib < len(self.row_of))
        rows = np.full(len(ids), -1, dtype=np.int64)
        rows[known] = self.row_of[sib[known]]
        has = rows >= 0
        out[has] = self.values[slot, rows[has]]
        return out

    def _accumulate(
        self,
        acc: _SlotAccumulator,
        slot: int,
        rows: npt.NDArray[np.int64],
        interval: float,
        values: FloatArray,
        codes: CodeArray,
        weights: FloatArray,
    ) -> None:
        acc.n[rows] += 1
        first = acc.n[rows] == 1
        rate = codes == Rollup.RATE
        mean = codes == Rollup.MEAN
        plain = ~(rate | mean)
        acc.total[rows[plain]] += values[plain]
        acc.total[rows[rate]] += values[rate] * interval
        acc.weight[rows[rate]] += interval
        if mean.any():
            mrows = rows[mean]
            mv = values[mean]
            w = weights[mean]
            ok = ~np.isnan(w) & (w > 0)
            acc.plain[mrows] += mv
            acc.total[mrows] += np.where(ok, mv * w, 0.0)
            acc.weight[mrows] += np.where(ok, w, 0.0)
            acc.weighted[mrows] += ok
        old = self.values[slot, rows]
        new = np.empty(len(rows))
        with np.errstate(all="ignore"):
            for code in np.unique(codes).tolist():
                sel = codes == code
                r = rows[sel]
                v = values[sel]
                n = acc.n[r]
                if code == Rollup.SUM:
                    new[sel] = acc.total[r]
                elif code == Rollup.MIN:
                    new[sel] = np.fmin(old[sel], v)
                elif code == Rollup.MAX:
                    new[sel] = np.fmax(old[sel], v)
                elif code == Rollup.LAST:
                    new[sel] = v
                elif code == Rollup.AVERAGE:
                    new[sel] = acc.total[r] / n
                elif code == Rollup.RATE:
                    new[sel] = acc.total[r] / np.maximum(acc.weight[r], self.step)
                else:  # MEAN
                    weighted_ok = (acc.weighted[r] == n) & (acc.weight[r] > 0)
                    new[sel] = np.where(weighted_ok, acc.total[r] / acc.weight[r], acc.plain[r] / n)
        single = single_flush_value(values, codes, interval, self.step)
        new[first] = single[first]
        self.values[slot, rows] = new

    def add_sketches(self, slot: int, ids: IntArray, blobs: list[bytes]) -> None:
        if len(ids) != len(blobs):
            raise ValueError("add_sketches: ids and blobs differ in length")
        if blobs:
            ends = np.cumsum(np.fromiter(map(len, blobs), np.int64, len(blobs)))
            self.sketch_chunks.setdefault(slot, []).append((ids.astype(np.int32), b"".join(blobs), ends))

    @property
    def sketches(self) -> dict[int, dict[int, list[bytes]]]:
        """slot -> sketch series id -> the sketches flushed into that slot, in WAL order (slots
        and ids in order of first appearance). Built on each call from :attr:`sketch_chunks`."""
        out: dict[int, dict[int, list[bytes]]] = {}
        for slot, chunks in self.sketch_chunks.items():
            by_id = out[slot] = {}
            for ids, joined, ends in chunks:
                start = 0
                for sid, end in zip(ids.tolist(), ends.tolist(), strict=True):
                    by_id.setdefault(sid, []).append(joined[start:end])
                    start = end
        return out

    def read(self, ids: IntArray, first_slot: int, last_slot: int) -> FloatArray:
        """Values of ``ids`` for slot indexes ``[first_slot, last_slot)`` (NaN when absent)."""
        out = np.full((len(ids), last_slot - first_slot), np.nan)
        if self.n_rows == 0 or len(ids) == 0:
            return out
        known = ids < len(self.row_of)
        rows = np.full(len(ids), -1, dtype=np.int64)
        rows[known] = self.row_of[ids[known]]
        has = np.flatnonzero(rows >= 0)
        if len(has) == 0:
            return out
        rows_has = rows[has]
        for slot in range(first_slot, last_slot):
            if not self.flushes[slot]:
                continue
            held = self.sparse.get(slot)
            if held is None:
                out[has, slot - first_slot] = self.values[slot, rows_has]
            elif len(held[0]):
                at = np.minimum(np.searchsorted(held[0], rows_has), len(held[0]) - 1)
                found = held[0][at] == rows_has
                out[has[found], slot - first_slot] = held[1][at[found]]
        return out

    def export(self) -> tuple[IntArray, FloatArray]:
        """``(ids ascending, values rows x slots)`` of every series with a point."""
        written = np.flatnonzero(self.flushes)
        if self.n_rows == 0 or len(written) == 0:
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.slots))
        columns = np.empty((len(written), self.n_rows))
        for j, slot in enumerate(written.tolist()):
            columns[j] = self._column(slot)
        keep = ~np.isnan(columns).all(axis=0)
        ids = self.row_ids[: self.n_rows][keep].astype(np.int64)
        order = np.argsort(ids, kind="stable")
        out = np.full((len(order), self.slots), np.nan)
        out[:, written] = columns[:, keep][:, order].T
        return ids[order], out


class GroupHead:
    """All head windows of one retention group (finest step ``step``)."""

    def __init__(self, step: int, window_slots: int = WINDOW_SLOTS) -> None:
        self.step = step
        self.window_slots = window_slots
        self.span = step * window_slots
        self.windows: dict[int, HeadWindow] = {}

    def window_start(self, timestamp: int) -> int:
        return timestamp - timestamp % self.span

    def _window(self, timestamp: int) -> tuple[HeadWindow, int]:
        slot_time = timestamp - timestamp % self.step
        start = self.window_start(timestamp)
        window = self.windows.get(start)
        if window is None:
            window = self.windows[start] = HeadWindow(start, self.step, self.window_slots)
        return window, (slot_time - start) // self.step

    def apply(
        self,
        timestamp: int,
        interval: float,
        ids: IntArray,
        values: FloatArray,
        codes: CodeArray,
        weights: FloatArray,
        siblings: IntArray,
    ) -> None:
        if len(ids):
            window, slot = self._window(timestamp)
            window.apply(slot, interval, ids, values, codes, weights, siblings)

    def add_sketches(self, timestamp: int, ids: IntArray, blobs: list[bytes]) -> None:
        if len(ids):
            window, slot = self._window(timestamp)
            window.add_sketches(slot, ids, blobs)

    def read(self, ids: IntArray, start: int, end: int) -> FloatArray:
        """Values of ``ids`` over ``[start, end)`` (both multiples of the step)."""
        out = np.full((len(ids), (end - start) // self.step), np.nan)
        for wstart, window in self.windows.items():
            lo, hi = max(start, wstart), min(end, window.end)
            if lo >= hi:
                continue
            part = window.read(ids, (lo - wstart) // self.step, (hi - wstart) // self.step)
            out[:, (lo - start) // self.step : (hi - start) // self.step] = part
        return out

    def sketches(self, ids: IntArray, start: int, end: int) -> dict[int, dict[int, list[bytes]]]:
        """``slot time -> id -> sketches`` of ``ids`` within ``[start, end)``."""
        wanted = np.unique(ids)
        out: dict[int, dict[int, list[bytes]]] = {}
        for wstart, window in self.windows.items():
            for slot, chunks in window.sketch_chunks.items():
                t = wstart + slot * self.step
                if not start <= t < end:
                    continue
                picked: dict[int, list[bytes]] = {}
                for chunk_ids, joined, ends in chunks:
                    for i in np.flatnonzero(np.isin(chunk_ids, wanted)).tolist():
                        begin = int(ends[i - 1]) if i else 0
                        picked.setdefault(int(chunk_ids[i]), []).append(joined[begin : int(ends[i])])
                if picked:
                    out[t] = picked
        return out

    def drop_before(self, frontier: int) -> None:
        """Forget windows that end at or before ``frontier`` (they are sealed)."""
        for wstart in [w for w, window in self.windows.items() if window.end <= frontier]:
            del self.windows[wstart]

    @property
    def first_time(self) -> int | None:
        return min(self.windows) if self.windows else None


class HeadSet:
    """The heads of every retention group, fed WAL records through :meth:`apply`.

    ``frontier[gid]`` is where the group's sealed data ends: a record stamped before it is
    already in a partition and is skipped, and windows ending at or before it are dropped.
    """

    def __init__(self, index: SeriesIndex) -> None:
        self.index = index
        self.heads: dict[int, GroupHead] = {}
        self.frontier: dict[int, int] = {}

    def head(self, gid: int) -> GroupHead:
        head = self.heads.get(gid)
        if head is None:
            head = self.heads[gid] = GroupHead(self.index.groups[gid][0].step)
        return head

    def sealed(self, gid: int, timestamp: int) -> bool:
        return timestamp < self.frontier.get(gid, -(2**62))

    def advance(self, gid: int, frontier: int) -> None:
        """Move group ``gid``'s frontier forward (never back) and drop what it covers."""
        if frontier > self.frontier.get(gid, -(2**62)):
            self.frontier[gid] = frontier
            if gid in self.heads:
                self.heads[gid].drop_before(frontier)

    def apply(self, record: FlushRecord) -> None:
        """Add one WAL record to the heads (ids unknown to the index are ignored)."""
        index = self.index
        known = len(index)
        ids, values = record.ids, record.values
        if len(ids) and int(ids.max()) >= known:
            keep = ids < known
            ids, values = ids[keep], values[keep]
        kinds = index.kinds[ids]
        if len(ids) and (unusable := (kinds == LOST_KIND) | (kinds == SKETCH_KIND)).any():
            ids, values, kinds = ids[~unusable], values[~unusable], kinds[~unusable]
        if len(ids):
            siblings = index.siblings
            weights = np.full(len(ids), np.nan)
            mean = np.flatnonzero(kinds == Rollup.MEAN)
            if len(mean):
                position = np.full(known, -1, dtype=np.int64)
                position[ids] = np.arange(len(ids))
                sib = siblings[ids[mean]]
                has = sib >= 0
                pos = np.full(len(mean), -1, dtype=np.int64)
                pos[has] = position[sib[has]]
                found = pos >= 0
                weights[mean[found]] = values[pos[found]]
            gids = index.gids_of(ids)
            for gid, sel in _split_by_group(gids):
                if self.sealed(gid, record.timestamp):
                    continue
                if sel is None:
                    self.head(gid).apply(
                        record.timestamp, record.interval, ids, values, kinds, weights, siblings
                    )
                else:
                    self.head(gid).apply(
                        record.timestamp,
                        record.interval,
                        ids[sel],
                        values[sel],
                        kinds[sel],
                        weights[sel],
                        siblings,
                    )
        sketch_ids = record.sketch_ids
        if len(sketch_ids):
            in_range = sketch_ids < known
            in_range[in_range] = index.kinds[sketch_ids[in_range]] == SKETCH_KIND
            keep_list = in_range.tolist()
            blobs = [b for b, ok in zip(record.sketches, keep_list, strict=True) if ok]
            sketch_ids = sketch_ids[np.array(keep_list, dtype=bool)]
            for gid, sel in _split_by_group(index.gids_of(sketch_ids)):
                if self.sealed(gid, record.timestamp):
                    continue
                if sel is None:
                    self.head(gid).add_sketches(record.timestamp, sketch_ids, blobs)
                else:
                    picked = [blobs[i] for i in np.flatnonzero(sel).tolist()]
                    self.head(gid).add_sketches(record.timestamp, sketch_ids[sel], picked)


def _split_by_group(
    gids: IntArray,
) -> list[tuple[int, npt.NDArray[np.bool_] | None]]:
    """``[(gid, mask)]``; the mask is None when every element belongs to that one group."""
    if len(gids) == 0:
        return []
    first = int(gids[0])
    if (gids == first).all():
        return [(first, None)]
    return [(int(g), gids == g) for g in np.unique(gids).tolist()]
