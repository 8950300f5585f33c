"""The read side: find series and query their values, safe beside a running writer.

A :class:`Reader` never writes nor locks anything. Each call catches up with the directory:
it reads the WAL bytes appended since the last call (complete records only, so it never sees
half a flush), then the series index (which the writer always extends *before* logging points
that use new series), then lists the partitions. A range covered by a partition is read from
it; the rest comes from the head rebuilt from the WAL, so the latest flush is visible before
it is sealed.

Query semantics follow graphite-web's render API:

* ``pattern`` is a Graphite glob on the series name, ``tags`` exact ``key=value`` filters;
* each series is read from the finest tier of its retention group whose retention covers
  ``start`` (the coarsest one when none does); a coarse tier's recent part that is not yet
  materialised is rolled up on the fly from the finer tier, with the same code as at seal time;
* output slots are ``ceil(start / step) * step + i * step`` for every slot ``< end``, null
  (NaN) where nothing is stored;
* with ``max_points``, a series with more points is consolidated by the smallest integer
  factor that brings it to at most ``max_points``, using its own rollup function. Buckets are
  aligned to multiples of ``factor * step`` (so a refreshing dashboard does not jitter); the
  first one may therefore start up to ``factor * step`` before ``start``.

Percentiles: for every stored sketch series (a timer's base name, e.g. ``stats.timers.api``)
the reader serves the virtual series ``<base>.p50``, ``.p75``, ``.p90``, ``.p95``, ``.p99`` and
``.p999``. Each output slot (after any ``max_points`` consolidation) is the quantile of the
merge of every sketch in it, i.e. a true percentile of all the samples of the slot within the
sketch's 1 % relative error, whatever the tier. ``find`` lists them; a real series of the same
name is listed first.
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from statsyard_agent._exceptions import CorruptDataError, QueryError, StorageError
from statsyard_agent._sketch import LogSketch
from statsyard_agent._types import FloatArray, Rollup, Tags

from . import _files, _wal
from ._catalog import PartitionCache, PartRef, cover, list_tier
from ._glob import Glob
from ._head import HeadSet
from ._index import SeriesIndex
from ._rollup import rollup
from ._sketches import merge_groups
from ._wal import FlushRecord, SegmentState

log = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]

#: Rows x slots fetched at once: bounds a query's working memory (32 MB of float64).
_FETCH_CELLS = 4_000_000
#: Times a fetch lists a tier again when a partition vanished under it.
_ATTEMPTS = 5
#: The virtual series served for every sketch: ``<base>.<suffix>`` is that quantile.
PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p50", 0.5),
    ("p75", 0.75),
    ("p90", 0.9),
    ("p95", 0.95),
    ("p99", 0.99),
    ("p999", 0.999),
)


@dataclass(frozen=True, slots=True)
class SeriesKey:
    """One stored series: its name and its tags as a sorted tuple of ``(key, value)`` pairs."""

    name: str
    tags: Tags


@dataclass(frozen=True, slots=True)
class SeriesData:
    """Values of one series: ``values[i]`` is the slot starting at ``start + i * step``.

    NaN means null (no point). ``tags`` maps each tag key to its value (a bare DogStatsD tag
    has the value ``""``).
    """

    name: str
    tags: dict[str, str]
    start: int
    step: int
    values: FloatArray


class Reader:
    """Reads a data directory, any number of them, in any process, beside a running writer.

    One Reader is not thread-safe (it caches the head and open partitions): give each thread
    its own. It holds at most 64 partition files open; :meth:`close` releases them.
    """

    def __init__(self, data_dir: Path) -> None:
        """Raises StorageError when ``data_dir`` is not a StatsYard data directory."""
        self.data_dir = Path(data_dir)
        meta = _files.read_marker(self.data_dir)
        xff = meta.get("xfiles_factor", 0.0)
        self.xfiles_factor = float(xff) if isinstance(xff, int | float) else 0.0
        self._index = SeriesIndex(self.data_dir / _files.INDEX)
        self._heads = HeadSet(self._index)
        self._segments: dict[int, SegmentState] = {}
        self._sorted_version = -1
        self._sorted_names: list[str] = []
        self._sorted_targets: list[_Target] = []
        self._cache = PartitionCache()
        self._reported: set[str] = set()

    def close(self) -> None:
        """Release the partitions this reader keeps mapped (it may still be used after)."""
        self._cache.clear()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- catching up -----------------------------------------------------------------------

    def refresh(self) -> None:
        """Catch up with the writer (called by every find/query)."""
        records = self._read_wal()
        self._index.refresh()
        for gid, tiers in self._index.groups.items():
            parts = list_tier(self.data_dir, gid, tiers[0].step)
            if parts:
                self._heads.advance(gid, max(p.end for p in parts))
        for record in records:
            self._heads.apply(record)

    def _read_wal(self) -> list[FlushRecord]:
        records: list[FlushRecord] = []
        listed = _files.list_wal_segments(self.data_dir)
        seen = set()
        for seq, path in listed:
            seen.add(seq)
            state = self._segments.get(seq)
            if state is None:
                state = self._segments[seq] = SegmentState(seq, path)
            try:
                _wal.read_segment(state, records)
            except FileNotFoundError:
                # Sealed and deleted between the listing and the open: partitions hold it.
                self._segments.pop(seq, None)
        for seq in [s for s in self._segments if s not in seen]:
            del self._segments[seq]
        return records

    # -- finding ---------------------------------------------------------------------------

    def find(self, pattern: str, *, tags: Mapping[str, str] | None = None) -> list[SeriesKey]:
        """Series whose name matches the Graphite glob ``pattern`` and carry every tag in
        ``tags``, sorted by name then tags; the virtual percentile series of every sketch
        (``<base>.p50`` ... ``<base>.p999``) are listed too. Raises QueryError for a bad glob."""
        glob = Glob(pattern)
        self.refresh()
        return [SeriesKey(t.name, t.tags) for t in self._match(glob, tags)]

    def _match(self, glob: Glob, tags: Mapping[str, str] | None) -> list[_Target]:
        self._sort_names()
        names = self._sorted_names
        prefix = glob.literal_prefix
        lo = bisect.bisect_left(names, prefix)
        hi = bisect.bisect_left(names, prefix + "\U0010ffff", lo) if prefix else len(names)
        wanted = tuple(sorted(tags.items())) if tags else ()
        match = glob.match
        targets = self._sorted_targets
        out = []
        for i in range(lo, hi):
            if match(names[i]):
                target = targets[i]
                if wanted and not _has_tags(target.tags, wanted):
                    continue
                out.append(target)
        return out

    def _sort_names(self) -> None:
        if self._sorted_version == self._index.version:
            return
        index = self._index
        targets = [_Target(name, tags, sid, None) for (name, tags), sid in index.point_ids.items()]
        for (base, tags), sid in index.sketch_ids.items():
            targets.extend(_Target(f"{base}.{suffix}", tags, sid, q) for suffix, q in PERCENTILES)
        targets.sort(key=lambda t: (t.name, t.tags, t.quantile is not None))
        self._sorted_names = [t.name for t in targets]
        self._sorted_targets = targets
        self._sorted_version = index.version

    # -- querying --------------------------------------------------------------------------

    def query(
        self,
        pattern: str,
        start: int,
        end: int,
        *,
        tags: Mapping[str, str] | None = None,
        max_points: int | None = None,
        max_series: int = 10_000,
        max_total_points: int = 5_000_000,
        now: int | None = None,
    ) -> list[SeriesData]:
        """Values of every matching series over ``[start, end)`` (see the module docstring).

        ``now`` (default: the clock) decides which tiers still cover ``start``. Raises
        QueryError for a bad glob, ``max_points < 1``, more than ``max_series`` matching series
        or more than ``max_total_points`` points in the answer; the message ends with
        ``(limit N)``. An empty range gives series with no values.
        """
        glob = Glob(pattern)
        if max_points is not None and max_points < 1:
            raise QueryError(f"max_points must be at least 1, got {max_points}")
        self.refresh()
        targets = self._match(glob, tags)
        if len(targets) > max_series:
            raise QueryError(
                f"{pattern!r} matches {len(targets)} series, more than a query may return "
                f"(limit {max_series})"
            )
        clock = int(time.time()) if now is None else int(now)
        plans = [self._plan(row, t, start, end, clock, max_points) for row, t in enumerate(targets)]
        total = sum(p.count for p in plans)
        if total > max_total_points:
            raise QueryError(
                f"{pattern!r} over [{start}, {end}) needs {total} points, more than a query "
                f"may return (limit {max_total_points})"
            )
        groups: dict[tuple[int, int, int, int, int], list[_Plan]] = {}
        results: list[SeriesData | None] = [None] * len(plans)
        for plan in plans:
            if plan.target.quantile is None:
                groups.setdefault(plan.key, []).append(plan)
            else:
                results[plan.row] = self._percentiles(plan)
        for group in groups.values():
            self._run(group, results)
        return [r for r in results if r is not None]

    def _plan(
        self, row: int, target: _Target, start: int, end: int, now: int, max_points: int | None
    ) -> _Plan:
        gid = self._index.gid(target.sid)
        tiers = self._index.groups[gid]
        level = len(tiers) - 1
        for i, tier in enumerate(tiers):
            if now - tier.retention <= start:
                level = i
                break
        step = tiers[level].step
        first = -(-start // step) * step
        count = max(0, -(-(end - first) // step))
        factor = 1
        if max_points is not None and count > max_points:
            factor = math.ceil(count / max_points)
            while True:
                bucket = factor * step
                lo = first // bucket * bucket
                hi = -(-(first + count * step) // bucket) * bucket
                if (hi - lo) // bucket <= max_points:
                    break
                factor += 1
            first, count = lo, (hi - lo) // bucket
        return _Plan(row, target, gid, level, step, first, count, factor)

    def _run(self, plans: list[_Plan], results: list[SeriesData | None]) -> None:
        head = plans[0]
        step = head.step
        width = head.count * head.factor
        rows_per_fetch = max(1, _FETCH_CELLS // max(width, 1))
        index = self._index
        for at in range(0, len(plans), rows_per_fetch):
            chunk = plans[at : at + rows_per_fetch]
            ids = np.array([p.target.sid for p in chunk], dtype=np.int64)
            codes = index.kinds[ids]
            end = head.first + width * step
            if head.factor > 1 and width:
                fetch_ids, weights_at = _with_siblings(ids, codes, index.siblings)
                fine = self._fetch(head.gid, head.level, fetch_ids, head.first, end)
                weights = _weights(fine, weights_at)
                values = rollup(fine[: len(ids)], codes, head.factor, xff=self.xfiles_factor, weights=weights)
            else:
                values = self._fetch(head.gid, head.level, ids, head.first, end)
            for row, plan in enumerate(chunk):
                results[plan.row] = plan.result(values[row].copy())

    def _percentiles(self, plan: _Plan) -> SeriesData:
        """A virtual percentile series: the quantile of the merged sketch of each output slot
        (every sample of the slot, however many flushes and tiers it went through)."""
        bucket = plan.step * plan.factor
        end = plan.first + plan.count * bucket
        found = self._fetch_sketches(plan.gid, plan.level, plan.target.sid, plan.first, end)
        blobs: list[bytes] = []
        slots: list[int] = []
        for t, in_slot in found.items():
            blobs.extend(in_slot)
            slots.extend([(t - plan.first) // bucket] * len(in_slot))
        values = np.full(plan.count, np.nan)
        q = plan.target.quantile
        assert q is not None
        for slot, merged in merge_groups(blobs, slots).items():
            try:
                values[slot] = LogSketch.from_bytes(merged).quantile(q)
            except CorruptDataError:
                log.warning("skipping a stored sketch that does not decode")
        return plan.result(values)

    def _fetch_sketches(self, gid: int, level: int, sid: int, start: int, end: int) -> dict[int, list[bytes]]:
        """``slot time -> sketches`` of sketch series ``sid`` in a tier over ``[start, end)``."""
        for _attempt in range(_ATTEMPTS):
            try:
                return self._fetch_sketches_once(gid, level, sid, start, end)
            except FileNotFoundError:
                continue
        raise StorageError(f"{self.data_dir}: partitions keep disappearing while being read; try again")

    def _fetch_sketches_once(
        self, gid: int, level: int, sid: int, start: int, end: int
    ) -> dict[int, list[bytes]]:
        tiers = self._index.groups[gid]
        step = tiers[level].step
        out: dict[int, list[bytes]] = {}
        if start >= end:
            return out
        parts = list_tier(self.data_dir, gid, step)
        materialised = max((p.end for p in parts), default=-(2**62))
        for part in cover(parts, start, min(end, materialised)):
            try:
                found = self._cache.get(part.path).read_sketches(sid)
            except CorruptDataError as exc:
                self._damaged(exc)
                continue
            for slot, blob in found.items():
                t = part.start + slot * step
                if start <= t < end:
                    out[t] = [blob]
        rest = max(start, materialised)
        if rest >= end:
            return out
        ids = np.array([sid], dtype=np.int64)
        if level == 0:
            for t, by_id in self._heads.head(gid).sketches(ids, rest, end).items():
                out[t] = list(by_id[sid])
            return out
        for t, found_blobs in self._fetch_sketches(gid, level - 1, sid, rest, end).items():
            out.setdefault(t - t % step, []).extend(found_blobs)
        return out

    def _fetch(self, gid: int, level: int, ids: IntArray, start: int, end: int) -> FloatArray:
        """Values of ``ids`` in tier ``level`` of group ``gid`` over ``[start, end)``."""
        for _attempt in range(_ATTEMPTS):
            try:
                return self._fetch_once(gid, level, ids, start, end)
            except FileNotFoundError:
                continue  # compacted, expired or quarantined meanwhile: list again
        raise StorageError(f"{self.data_dir}: partitions keep disappearing while being read; try again")

    def _fetch_once(self, gid: int, level: int, ids: IntArray, start: int, end: int) -> FloatArray:
        tiers = self._index.groups[gid]
        step = tiers[level].step
        out = np.full((len(ids), max(0, (end - start) // step)), np.nan)
        if start >= end or len(ids) == 0:
            return out
        parts = list_tier(self.data_dir, gid, step)
        materialised = max((p.end for p in parts), default=-(2**62))
        for part in cover(parts, start, min(end, materialised)):
            self._read_partition(part, ids, start, end, step, out)
        rest = max(start, materialised)
        if rest >= end:
            return out
        if level == 0:
            out[:, (rest - start) // step :] = self._heads.head(gid).read(ids, rest, end)
            return out
        finer = tiers[level - 1].step
        oldest = self._oldest(gid, level - 1)
        if oldest is None:
            return out
        rest = max(rest, oldest // step * step)
        if rest >= end:
            return out
        codes = self._index.kinds[ids]
        fetch_ids, weights_at = _with_siblings(ids, codes, self._index.siblings)
        fine = self._fetch(gid, level - 1, fetch_ids, rest, end)
        rolled = rollup(
            fine[: len(ids)],
            codes,
            step // finer,
            xff=self.xfiles_factor,
            weights=_weights(fine, weights_at),
        )
        out[:, (rest - start) // step :] = rolled
        return out

    def _read_partition(
        self, part: PartRef, ids: IntArray, start: int, end: int, step: int, out: FloatArray
    ) -> None:
        """Copy what ``part`` holds for ``ids`` within ``[start, end)`` into ``out``.

        A damaged partition or chunk reads as nulls (the writer quarantines it); a vanished
        one raises FileNotFoundError so that the caller lists the tier again.
        """
        try:
            opened = self._cache.get(part.path)
        except CorruptDataError as exc:
            self._damaged(exc)
            return
        lo, hi = max(start, part.start), min(end, part.end)
        values = opened.read_points(ids, self._damaged)
        out[:, (lo - start) // step : (hi - start) // step] = values[
            :, (lo - part.start) // step : (hi - part.start) // step
        ]

    def _damaged(self, exc: CorruptDataError) -> None:
        message = str(exc)
        if message not in self._reported:
            self._reported.add(message)
            log.warning("reading around damaged data: %s", message)

    def _oldest(self, gid: int, level: int) -> int | None:
        """The earliest time a tier may hold data, materialised or rolled up on the fly from
        finer tiers (None when it holds none)."""
        candidates = [self._oldest_partition(gid, level)]
        if level == 0:
            candidates.append(self._heads.head(gid).first_time)
        else:
            candidates.append(self._oldest(gid, level - 1))
        known = [c for c in candidates if c is not None]
        return min(known) if known else None

    def _oldest_partition(self, gid: int, level: int) -> int | None:
        parts = list_tier(self.data_dir, gid, self._index.groups[gid][level].step)
        return parts[0].start if parts else None


@dataclass(frozen=True, slots=True)
class _Target:
    """A matched series: a point series, or (``quantile`` set) a sketch's percentile."""

    name: str
    tags: Tags
    sid: int
    quantile: float | None


@dataclass(frozen=True, slots=True)
class _Plan:
    row: int
    target: _Target
    gid: int
    level: int
    step: int
    first: int
    count: int
    factor: int

    @property
    def key(self) -> tuple[int, int, int, int, int]:
        return (self.gid, self.level, self.first, self.count, self.factor)

    def result(self, values: FloatArray) -> SeriesData:
        return SeriesData(
            name=self.target.name,
            tags=dict(self.target.tags),
            start=self.first,
            step=self.step * self.factor,
            values=values,
        )


def _has_tags(series_tags: Tags, wanted: Tags) -> bool:
    have = set(series_tags)
    return all(pair in have for pair in wanted)


def _with_siblings(
    ids: IntArray, codes: npt.NDArray[np.uint8], siblings: IntArray
) -> tuple[IntArray, IntArray]:
    """``ids`` followed by the count siblings of its MEAN rows, and for each row of ``ids``
    the row of its sibling in that array (-1 when none)."""
    at = np.full(len(ids), -1, dtype=np.int64)
    mean = np.flatnonzero(codes == Rollup.MEAN)
    if len(mean) == 0:
        return ids, at
    sib = siblings[ids[mean]]
    has = sib >= 0
    extra = sib[has]
    at[mean[has]] = len(ids) + np.arange(len(extra))
    return np.concatenate([ids, extra]), at


def _weights(fine: FloatArray, weights_at: IntArray) -> FloatArray | None:
    """Rows of sibling counts aligned with the first ``len(weights_at)`` rows of ``fine``."""
    if not (weights_at >= 0).any():
        return None
    out = np.full((len(weights_at), fine.shape[1]), np.nan)
    has = weights_at >= 0
    out[has] = fine[weights_at[has]]
    return out
