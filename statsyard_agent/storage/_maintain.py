"""Background work of the writer: seal, compact, roll up, expire, scrub.

Everything here is recomputed from what is on disk each time, so :meth:`Maintenance.run` is
idempotent and a crash at any point only leaves ``*.tmp`` files (removed at the next open) or
partitions whose follow-up work simply happens on the next call. Per retention group, in this
order (each step only builds on what the previous ones made final):

1. **seal**: head windows that ended more than :data:`SEAL_GRACE` seconds ago become RAW
   partitions of the finest tier; the group's frontier moves past them (later points for them
   are dropped as late);
2. **compact** (each tier): once all the small partitions of a full span exist, they are merged
   into one compressed full partition, then deleted;
3. **roll up** (each tier but the last): every full partition not yet covered by the next tier
   is consolidated, series by series with its rollup function (and sketches merged), into a
   small partition of the next tier - rollups happen at seal time, never per update;
4. **retention**: a full partition older than its tier's retention is deleted, once the next
   tier holds its rollup (whole partitions only);
5. **scrub**: a few megabytes of partitions are checked against their checksums per call; a
   damaged one is moved to ``quarantine/``.

Builds of compressed partitions are resumable: :meth:`Maintenance.run` stops at its deadline
and the next call continues the same build, so maintenance never blocks writes for long.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from statsyard_agent._exceptions import CorruptDataError
from statsyard_agent._types import Rollup

from . import _files
from ._catalog import Catalog, PartRef
from ._head import HeadSet, HeadWindow
from ._index import SKETCH_KIND, SeriesIndex
from ._partition import (
    ENCODING_CODEC,
    ENCODING_RAW,
    PartitionFile,
    PartitionWriter,
    encode_points,
    encode_sketches,
)
from ._plan import TierPlan, plan_tiers
from ._rollup import rollup
from ._sketches import merge_groups

log = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]

#: A head window is sealed this long after its end (flushes arrive a little after their
#: interval; a point for a sealed window is dropped and counted).
SEAL_GRACE = 60
#: Point series per step of a resumable build.
_BATCH = 256
#: Sketch series per step (each may merge hundreds of sketches).
_SKETCH_BATCH = 16
#: Partition bytes checksummed per maintenance call.
_SCRUB_BYTES = 16 << 20
#: Seconds (real time) between the starts of two scrub passes over all partitions.
_SCRUB_PERIOD = 3600.0


@dataclass(slots=True)
class DiskUsage:
    """Running totals kept by the writer so that ``stats`` needs no disk access."""

    partitions: int = 0
    partition_bytes: int = 0
    quarantined: int = 0


def covered(parts: list[PartRef], start: int, end: int) -> bool:
    return any(p.start <= start and p.end >= end for p in parts)


class Maintenance:
    """The writer's maintenance state: plans, the build in progress, the scrub cursor."""

    def __init__(
        self,
        data_dir: Path,
        index: SeriesIndex,
        heads: HeadSet,
        usage: DiskUsage,
        *,
        fsync: bool,
        xff: float,
    ) -> None:
        self.data_dir = data_dir
        self.index = index
        self.heads = heads
        self.usage = usage
        self.fsync = fsync
        self.xff = xff
        self.build: _Build | None = None
        self.catalog = Catalog(data_dir)
        self.sealed = False
        self._plans: dict[int, tuple[TierPlan, ...]] = {}
        self._scrub_queue: list[Path] = []
        self._next_scrub = 0.0
        self._worked = False

    def plans(self, gid: int) -> tuple[TierPlan, ...]:
        plans = self._plans.get(gid)
        if plans is None:
            plans = self._plans[gid] = plan_tiers(self.index.groups[gid])
        return plans

    # -- the pass --------------------------------------------------------------------------

    def run(self, now: float, deadline: float) -> bool:
        """One maintenance pass; False when it stopped at the deadline (call again).

        Raises OSError from the filesystem (the caller translates it).
        """
        self.sealed = False
        self._worked = False
        self.seal(now)
        if self.build is not None and not self._continue(deadline):
            return False
        for gid in sorted(self.index.groups):
            if not self._tiers(gid, deadline):
                return False
        self.expire(now)
        self.scrub(deadline)
        return True

    def abort(self) -> None:
        if self.build is not None:
            self.build.abort()
            self.build = None

    # -- 1. seal -------------------------------------------------------------------------------

    def seal(self, now: float) -> None:
        for gid in sorted(self.index.groups):
            plan = self.plans(gid)[0]
            edge = math.floor((now - SEAL_GRACE) / plan.window) * plan.window
            head = self.heads.heads.get(gid)
            if head is not None:
                for start in sorted(head.windows):
                    window = head.windows[start]
                    if window.end <= edge:
                        self._seal_window(gid, window)
                        # Sealed for good: if a later window fails, this one is not redone.
                        self.heads.advance(gid, window.end)
            self.heads.advance(gid, edge)

    def _seal_window(self, gid: int, window: HeadWindow) -> None:
        ids, values = window.export()
        sketch_ids = sorted({sid for by_id in window.sketches.values() for sid in by_id})
        row = {sid: i for i, sid in enumerate(sketch_ids)}
        blobs: list[bytes] = []
        groups: list[int] = []
        for slot, by_id in window.sketches.items():
            for sid, flushed in by_id.items():
                blobs.extend(flushed)
                groups.extend([row[sid] * window.slots + slot] * len(flushed))
        sketches: dict[int, dict[int, bytes]] = {}
        for group, merged in merge_groups(blobs, groups).items():
            sid = sketch_ids[group // window.slots]
            sketches.setdefault(sid, {})[group % window.slots] = merged
        if len(ids) == 0 and not sketches:
            return
        path = _files.tier_dir(self.data_dir, gid, window.step) / _files.partition_name(
            window.start, window.end
        )
        writer = PartitionWriter(
            path,
            start=window.start,
            end=window.end,
            step=window.step,
            encoding=ENCODING_RAW,
            fsync=self.fsync,
        )
        writer.add_raw_block(ids, values)
        for sid in sorted(sketches):
            writer.add(
                sid,
                encode_sketches(window.slots, sketches[sid]),
                sketch_slots=len(sketches[sid]),
            )
        self.commit(gid, writer)
        self.sealed = True

    def commit(self, gid: int, writer: PartitionWriter) -> None:
        """Make a built partition appear (whole) and account for it."""
        size = writer.commit()
        self.catalog.add(gid, writer.step, PartRef(writer.start, writer.end, writer.path))
        self.usage.partitions += 1
        self.usage.partition_bytes += size

    # -- 2./3. compact and roll up -------------------------------------------------------------

    def _tiers(self, gid: int, deadline: float) -> bool:
        plans = self.plans(gid)
        complete = self.heads.frontier.get(gid, -(2**62))
        for level, plan in enumerate(plans):
            parts = self.catalog.tier(gid, plan.step)
            if plan.window != plan.span:
                pending: dict[int, list[PartRef]] = {}
                fulls = {p.start for p in parts if p.span == plan.span}
                for part in parts:
                    if part.span != plan.span:
                        pending.setdefault(part.start - part.start % plan.span, []).append(part)
                for start in sorted(pending):
                    if start + plan.span > complete:
                        break
                    if start in fulls:
                        for part in pending[start]:
                            self._delete(part.path)  # left over by a crash after compaction
                        continue
                    make: Callable[[], _Build] = functools.partial(
                        _Compaction, self, gid, plan, start, pending[start]
                    )
                    if not self._start(make, deadline):
                        return False
                parts = self.catalog.tier(gid, plan.step)
            if level + 1 < len(plans):
                upper = plans[level + 1]
                above = self.catalog.tier(gid, upper.step)
                for part in parts:
                    if part.span != plan.span or covered(above, part.start, part.end):
                        continue
                    make = functools.partial(_Rollup, self, gid, plan, upper, part)
                    if not self._start(make, deadline):
                        return False
            complete -= complete % plan.span
        return True

    def _start(self, make: Callable[[], _Build], deadline: float) -> bool:
        # Every call makes progress (at least one batch), then yields at the deadline.
        if self._worked and time.monotonic() > deadline:
            return False
        try:
            self.build = make()
        except _Damaged as exc:
            self.quarantine(exc.path, str(exc))
            return True
        return self._continue(deadline)

    def _continue(self, deadline: float) -> bool:
        build = self.build
        assert build is not None
        self._worked = True
        try:
            done = build.step(deadline)
        except CorruptDataError as exc:
            build.abort()
            self.build = None
            if build.culprit is not None:
                self.quarantine(build.culprit, str(exc))
            return True
        except BaseException:
            build.abort()
            self.build = None
            raise
        if done:
            self.build = None
        return done

    # -- 4. retention ----------------------------------------------------------------------

    def expire(self, now: float) -> None:
        for gid in sorted(self.index.groups):
            plans = self.plans(gid)
            for level, plan in enumerate(plans):
                horizon = now - plan.retention
                above = self.catalog.tier(gid, plans[level + 1].step) if level + 1 < len(plans) else None
                for part in self.catalog.tier(gid, plan.step):
                    if part.end > horizon or part.span != plan.span:
                        continue
                    if above is None or covered(above, part.start, part.end):
                        self._delete(part.path)

    def _delete(self, path: Path) -> None:
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return
        self.catalog.remove(path)
        self.usage.partitions -= 1
        self.usage.partition_bytes -= size
        if self.fsync:
            _files.fsync_dir(path.parent)

    # -- 5. integrity ----------------------------------------------------------------------

    def scrub(self, deadline: float) -> None:
        """Checksum up to :data:`_SCRUB_BYTES` of partitions per call; a new pass over all
        partitions starts at most every :data:`_SCRUB_PERIOD` seconds (the first at once)."""
        if not self._scrub_queue:
            if time.monotonic() < self._next_scrub:
                return
            self._next_scrub = time.monotonic() + _SCRUB_PERIOD
            self._scrub_queue = [p.path for _g, _s, parts in self.catalog.tiers() for p in parts]
            self._scrub_queue.reverse()
        checked = 0
        while self._scrub_queue and checked < _SCRUB_BYTES and time.monotonic() < deadline:
            path = self._scrub_queue.pop()
            try:
                with PartitionFile.open(path) as part:
                    for pos in range(len(part.ids)):
                        part.chunk_at(pos)
                    checked += part.header.table_offset
            except FileNotFoundError:
                continue
            except CorruptDataError as exc:
                self.quarantine(path, str(exc))

    def quarantine(self, path: Path, reason: str) -> None:
        """Move a damaged partition aside (``quarantine/``); reads and writes go on."""
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return
        relative = path.relative_to(self.data_dir / _files.DATA_DIR)
        base = "-".join(relative.parts)
        target = self.data_dir / _files.QUARANTINE_DIR / base
        n = 1
        while target.exists():
            n += 1
            target = target.with_name(f"{base}.{n}")
        target.parent.mkdir(exist_ok=True)
        os.replace(path, target)
        if self.fsync:
            _files.fsync_dir(path.parent)
            _files.fsync_dir(target.parent)
        self.catalog.remove(path)
        self.usage.partitions -= 1
        self.usage.partition_bytes -= size
        self.usage.quarantined += 1
        log.error("quarantined %s as %s: %s", path, target, reason)


class _Damaged(CorruptDataError):
    """A source partition that cannot be opened (to be quarantined)."""

    def __init__(self, path: Path, exc: CorruptDataError) -> None:
        super().__init__(f"{path}: {exc}")
        self.path = path


class _Build:
    """A partition built a batch of series at a time (resumable across maintenance calls).

    Subclasses open their sources first (a damaged one raises :class:`_Damaged`), then call
    :meth:`_begin`, which creates the tmp file.
    """

    owner: Maintenance
    writer: PartitionWriter

    def __init__(self, owner: Maintenance, gid: int) -> None:
        self.owner = owner
        self.gid = gid
        self.ids: IntArray = np.zeros(0, dtype=np.int64)
        self.points = 0  # ids[:points] are point series, the rest sketch series
        self.cursor = 0
        self.culprit: Path | None = None
        self._sources: list[PartitionFile] = []

    def _begin(self, path: Path, start: int, end: int, step: int) -> None:
        self.writer = PartitionWriter(
            path, start=start, end=end, step=step, encoding=ENCODING_CODEC, fsync=self.owner.fsync
        )

    def _order(self, ids: IntArray) -> None:
        """Process point series first (in big batches), then sketch series (merging sketches
        costs far more per series, so they go a few at a time)."""
        kinds = self.owner.index.kinds[ids[ids < len(self.owner.index)]]
        known = ids[ids < len(self.owner.index)]
        sketch = kinds == SKETCH_KIND
        self.ids = np.concatenate([known[~sketch], known[sketch]])
        self.points = int((~sketch).sum())

    def step(self, deadline: float) -> bool:
        while self.cursor < len(self.ids):
            size = _BATCH if self.cursor < self.points else _SKETCH_BATCH
            batch = self.ids[self.cursor : self.cursor + size]
            self._process(batch)
            self.cursor += len(batch)
            if self.cursor < len(self.ids) and time.monotonic() > deadline:
                return False
        self.owner.commit(self.gid, self.writer)
        self.close()
        self._finish()
        return True

    def _process(self, ids: IntArray) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        pass

    def abort(self) -> None:
        self.close()
        if hasattr(self, "writer"):
            self.writer.abort()

    def _split(self, ids: IntArray) -> tuple[IntArray, npt.NDArray[np.uint8], IntArray]:
        """Point ids with their rollup codes, and sketch ids (unknown ids are dropped)."""
        index = self.owner.index
        ids = ids[ids < len(index)]
        kinds = index.kinds[ids]
        points = (kinds >= min(Rollup)) & (kinds <= max(Rollup))
        return ids[points], kinds[points], ids[kinds == SKETCH_KIND]

    def _open(self, path: Path) -> PartitionFile:
        """Open a source for the whole build (closed by :meth:`close`)."""
        try:
            opened = PartitionFile.open(path)
        except CorruptDataError as exc:
            self.close()
            raise _Damaged(path, exc) from exc
        self._sources.append(opened)
        return opened

    def close(self) -> None:
        for opened in self._sources:
            opened.close()
        self._sources.clear()


class _Compaction(_Build):
    """Small partitions of one full span merged into one compressed full partition."""

    def __init__(
        self, owner: Maintenance, gid: int, plan: TierPlan, start: int, sources: list[PartRef]
    ) -> None:
        super().__init__(owner, gid)
        end = start + plan.span
        self.plan = plan
        self.sources = [(ref, self._open(ref.path)) for ref in sources]
        self._order(np.unique(np.concatenate([p.ids for _r, p in self.sources])))
        path = _files.tier_dir(owner.data_dir, gid, plan.step) / _files.partition_name(start, end)
        self._begin(path, start, end, plan.step)

    def _process(self, ids: IntArray) -> None:
        points, _codes, sketch_ids = self._split(ids)
        slots = self.writer.slots
        step = self.plan.step
        matrix = np.full((len(points), slots), np.nan)
        for ref, part in self.sources:
            self.culprit = ref.path
            at = (ref.start - self.writer.start) // step
            block = part.read_points(points)
            matrix[:, at : at + part.slots] = np.where(
                np.isnan(block), matrix[:, at : at + part.slots], block
            )
        for sid in sketch_ids.tolist():
            merged: dict[int, bytes] = {}
            for ref, part in self.sources:
                self.culprit = ref.path
                at = (ref.start - self.writer.start) // step
                for slot, blob in part.read_sketches(sid).items():
                    merged[at + slot] = blob
            if merged:
                self.writer.add(sid, encode_sketches(slots, merged), sketch_slots=len(merged))
        self.culprit = None
        _add_rows(self.writer, points, matrix)

    def _finish(self) -> None:
        for ref, _part in self.sources:
            self.owner._delete(ref.path)


class _Rollup(_Build):
    """One full partition of a tier consolidated into a small partition of the next tier."""

    def __init__(
        self, owner: Maintenance, gid: int, fine: TierPlan, coarse: TierPlan, source: PartRef
    ) -> None:
        super().__init__(owner, gid)
        self.factor = coarse.step // fine.step
        self.source_ref = source
        self.source = self._open(source.path)
        self._order(self.source.ids)
        path = _files.tier_dir(owner.data_dir, gid, coarse.step) / _files.partition_name(
            source.start, source.end
        )
        self._begin(path, source.start, source.end, coarse.step)

    def _process(self, ids: IntArray) -> None:
        points, codes, sketch_ids = self._split(ids)
        self.culprit = self.source_ref.path
        fine = self.source.read_points(points)
        weights = None
        mean = np.flatnonzero(codes == Rollup.MEAN)
        if len(mean):
            siblings = self.owner.index.siblings[points[mean]]
            weights = np.full(fine.shape, np.nan)
            has = siblings >= 0
            if has.any():
                weights[mean[has]] = self.source.read_points(siblings[has])
        coarse = rollup(fine, codes, self.factor, xff=self.owner.xff, weights=weights)
        slots = self.writer.slots
        blobs: list[bytes] = []
        groups: list[int] = []
        for i, sid in enumerate(sketch_ids.tolist()):
            for slot, blob in self.source.read_sketches(sid).items():
                blobs.append(blob)
                groups.append(i * slots + slot // self.factor)
        per_series: dict[int, dict[int, bytes]] = {}
        for group, merged in merge_groups(blobs, groups).items():
            per_series.setdefault(group // slots, {})[group % slots] = merged
        for i, found in sorted(per_series.items()):
            self.writer.add(int(sketch_ids[i]), encode_sketches(slots, found), sketch_slots=len(found))
        self.culprit = None
        _add_rows(self.writer, points, coarse)


def _add_rows(writer: PartitionWriter, ids: IntArray, matrix: npt.NDArray[np.float64]) -> None:
    present = ~np.isnan(matrix)
    counts = present.sum(axis=1)
    for row in np.flatnonzero(counts).tolist():
        writer.add(int(ids[row]), encode_points(matrix[row]), points=int(counts[row]))
