"""The single writer of a data directory: WAL, head, sealing, rollups and retention.

Write path (:meth:`TSDB.write`), all under one lock:

1. map each point's ``(name, tags)`` to its series id; new series are appended to the series
   index and made durable *before* the WAL record that uses them;
2. drop NaN values, duplicate series within the batch (the last one wins) and points for
   windows that are already sealed (counted in ``stats.late_points_dropped``);
3. append one checksummed FLUSH record to the WAL and fsync it (``config.fsync``);
4. apply the record to the in-memory head, exactly as a reader replaying the WAL would.

A failed append is truncated away again, so the disk never holds half a record after an
error, and a retried batch is recognised by its fingerprint, so it is never stored twice.

Everything after the WAL (sealing, compaction, rollups, retention, scrubbing, quarantine) is
:meth:`TSDB.maintain`'s, implemented in :mod:`._maintain`; recovery at :meth:`TSDB.open` only
truncates torn tails, removes tmp files and replays the WAL into the head.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import logging
import math
import os
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from statsyard_agent._exceptions import CorruptDataError, StorageError
from statsyard_agent._heap import release_free_heap
from statsyard_agent._types import FlushBatch, Rollup, SketchColumns, SketchPoint, Tags

from . import _files, _index, _records, _wal
from ._config import SchemaResolver, StorageConfig
from ._head import HeadSet
from ._index import SeriesIndex
from ._keytable import distinct, hash_keys
from ._maintain import DiskUsage, Maintenance
from ._retention import Tier
from ._wal import AppendFile, FlushRecord

log = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]

#: A segment is closed (and a new one started) once it grows past this size.
SEGMENT_BYTES = 64 << 20
#: Seconds of compression work per maintain() call before it yields (resumes next call).
DEFAULT_BUDGET = 2.0
_FINGERPRINTS = 256


@dataclass(frozen=True, slots=True)
class WriterStats:
    """Counters the agent exports (cheap: no disk access to read them).

    ``points_written`` counts points stored since open; ``late_points_dropped`` points that
    arrived for an already sealed window; ``bytes_on_disk`` the index, WAL and partitions.
    """

    quarantined_partitions: int
    points_written: int
    bytes_on_disk: int
    series: int
    late_points_dropped: int
    wal_bytes: int
    partitions: int


@dataclass(frozen=True, slots=True)
class _KeptIds:
    """An id column kept from one write to the next, in as few bytes as it allows.

    Why: the writer keeps two (the last batch's ids, the last WAL record's ids), each one per
    stored series for the life of the process. ``arange(start, stop)`` (the usual case: a batch
    whose series were registered together) is kept as its bounds; anything else as int32, which
    holds every id (the key tables store ids as int32 too).
    """

    start: int
    stop: int
    packed: npt.NDArray[np.int32] | None

    @classmethod
    def of(cls, ids: IntArray) -> _KeptIds:
        n = len(ids)
        if n:
            first = int(ids[0])
            if int(ids[-1]) == first + n - 1 and np.array_equal(ids, np.arange(first, first + n)):
                return cls(first, first + n, None)
        return cls(0, 0, ids.astype(np.int32))

    def __len__(self) -> int:
        return self.stop - self.start if self.packed is None else len(self.packed)

    def ids(self) -> IntArray:
        """The column as int64 (a new array)."""
        if self.packed is None:
            return np.arange(self.start, self.stop, dtype=np.int64)
        return self.packed.astype(np.int64)

    def equals(self, ids: IntArray) -> bool:
        if len(ids) != len(self):
            return False
        if self.packed is None:
            return bool(np.array_equal(ids, np.arange(self.start, self.stop)))
        return bool(np.array_equal(ids, self.packed))


@dataclass(slots=True)
class _Segment:
    seq: int
    path: Path
    size: int
    #: group id -> latest flush timestamp logged in this segment for that group
    max_timestamp: dict[int, int]


class TSDB:
    """The single writer of a data directory (see the module docstring for the write path).

    Blocking: the agent calls it from a worker thread. Methods are serialised by an internal
    lock, so :meth:`write` and :meth:`maintain` may come from different threads. Use
    :meth:`open`, not the constructor.
    """

    def __init__(
        self,
        data_dir: Path,
        config: StorageConfig,
        lock_fd: int,
        index: SeriesIndex,
        index_file: AppendFile,
    ) -> None:
        self.data_dir = data_dir
        self.config = config
        self._lock_fd = lock_fd
        self._lock_inode = os.fstat(lock_fd).st_ino
        self._mutex = threading.RLock()
        self._closed = False
        self._index = index
        self._index_file = index_file
        self._resolver = SchemaResolver(config)
        self._heads = HeadSet(index)
        self._segments: list[_Segment] = []
        self._wal: AppendFile | None = None
        self._next_seq = 1
        self._max_wal_id = -1
        self._previous_ids: _KeptIds | None = None
        self._fingerprints: collections.deque[tuple[int, int, int, int]] = collections.deque(
            maxlen=_FINGERPRINTS
        )
        self._last_ids: _KeptIds | None = None
        self._last_sketch_ids: _KeptIds | None = None
        self._points_written = 0
        self._late_dropped = 0
        self._usage = DiskUsage()
        self._maintenance = Maintenance(
            data_dir,
            index,
            self._heads,
            self._usage,
            fsync=config.fsync,
            xff=config.xfiles_factor,
        )

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, data_dir: Path, config: StorageConfig) -> TSDB:
        """Open (creating if needed) ``data_dir`` as its only writer, and recover it.

        Takes an exclusive ``flock`` on ``LOCK`` (a second writer gets a StorageError naming
        the holder's pid and the lock file), removes leftover tmp files, truncates a torn
        tail of the series index and of the WAL, and rebuilds the head from the WAL. Raises
        StorageError, with what to do, when any of that is impossible.
        """
        data_dir = Path(data_dir)
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _files.storage_error("create the data directory", data_dir, exc) from exc
        lock_fd = _take_lock(data_dir)
        try:
            _prepare_directory(data_dir, config)
            index, index_file = _recover_index(data_dir, config.fsync)
            tsdb = cls(data_dir, config, lock_fd, index, index_file)
            try:
                tsdb._recover()
            except BaseException:
                tsdb._release()
                raise
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(lock_fd)
            raise
        return tsdb

    def _recover(self) -> None:
        self._scan_partitions()
        self._replay_wal()
        self._burn_lost_ids()
        self._start_segment()

    def _burn_lost_ids(self) -> None:
        """Reserve ids the WAL uses but the index lost, so no new series ever gets them.

        Only possible when the index tail was lost while a WAL record using it survived (a
        power cut with ``fsync`` off): those points cannot be attributed and are ignored.
        """
        top = self._max_wal_id
        index = self._index
        if top < len(index):
            return
        gid = min(index.groups, default=None)
        payloads = []
        if gid is None:
            gid = 0
            payloads.append(_index.encode_group(gid, self._resolver.tiers_for("")))
        lost = top + 1 - len(index)
        kinds = np.full(lost, _index.LOST_KIND, dtype=np.uint8)
        payloads.append(_index.encode_series(len(index), [""] * lost, [()] * lost, kinds, [gid] * lost))
        log.warning(
            "%s: the WAL refers to %d series whose definition was lost; their points are ignored",
            index.path,
            lost,
        )
        self._append_index(payloads)

    def _scan_partitions(self) -> None:
        """Set each group's sealed frontier from the partitions on disk (and count bytes)."""
        usage = self._usage
        for gid, step, directory in _files.list_tier_dirs(self.data_dir):
            tiers = self._index.groups.get(gid)
            for _start, end, path in _files.list_partitions(directory):
                usage.partitions += 1
                with contextlib.suppress(OSError):
                    usage.partition_bytes += path.stat().st_size
                if tiers is not None and step == tiers[0].step:
                    self._heads.advance(gid, end)
        quarantine = self.data_dir / _files.QUARANTINE_DIR
        with contextlib.suppress(OSError):
            usage.quarantined = sum(1 for _ in quarantine.iterdir())

    def _replay_wal(self) -> None:
        states = _wal.segment_states(self.data_dir)
        # Sequence numbers are never reused (readers track segments by number), even when
        # the newest segment turns out empty and is removed below.
        self._next_seq = states[-1].seq + 1 if states else 1
        for state in states:
            records: list[FlushRecord] = []
            try:
                torn, size = _wal.read_segment(state, records)
            except StorageError as exc:
                raise StorageError(
                    f"{exc}; move the file out of {self.data_dir / _files.WAL_DIR} and restart"
                ) from exc
            if state.offset == 0:
                # Crashed while creating the segment: not even the magic made it to disk.
                _unlink(state.path)
                continue
            if not records:
                # Nothing of value (e.g. the empty segment of a previous run): drop it.
                _unlink(state.path)
                continue
            segment = _Segment(state.seq, state.path, state.offset, {})
            for record in records:
                for ids in (record.ids, record.sketch_ids):
                    if len(ids):
                        self._max_wal_id = max(self._max_wal_id, int(ids.max()))
                self._heads.apply(record)
                self._note_record_groups(segment, record)
                self._fingerprints.append(_fingerprint(record))
            if torn:
                log.warning(
                    "%s: truncating a torn tail of %d bytes (an interrupted write)",
                    state.path,
                    size - state.offset,
                )
                try:
                    os.truncate(state.path, state.offset)
                except OSError as exc:
                    raise _files.storage_error("truncate the torn WAL tail of", state.path, exc) from exc
            self._segments.append(segment)

    def _start_segment(self) -> None:
        seq = self._next_seq
        path = self.data_dir / _files.WAL_DIR / _files.wal_segment_name(seq)
        try:
            wal = AppendFile.open(path, _wal.MAGIC, fsync=self.config.fsync)
        except OSError as exc:
            raise _files.storage_error("create the WAL segment", path, exc) from exc
        if self._wal is not None:
            self._wal.close()
        self._wal = wal
        self._next_seq = seq + 1
        self._previous_ids = None
        self._segments.append(_Segment(seq, path, wal.size, {}))

    # -- writing ---------------------------------------------------------------------------

    def write(self, batch: FlushBatch) -> int:
        """Store one flush durably; returns the number of points stored.

        NaN values are skipped (null); when a series appears twice in the batch the last
        value wins; points stamped before the sealed frontier of their group are dropped and
        counted (``stats.late_points_dropped``). Raises StorageError (ENOSPC, EACCES, the
        directory removed...) with nothing half-written left behind: the same batch may be
        retried and is stored exactly once. Raises ValueError for a malformed batch.
        Afterwards the heap's free pages go back to the kernel (see :mod:`statsyard_agent._heap`).
        """
        n = len(batch.names)
        if not (len(batch.tags) == len(batch.rollups) == len(batch.values) == n):
            raise ValueError("FlushBatch columns differ in length")
        interval = float(batch.interval)
        if not (interval > 0 and np.isfinite(interval)):
            raise ValueError(f"FlushBatch.interval must be positive, got {batch.interval!r}")
        timestamp = int(batch.timestamp)
        try:
            with self._mutex:
                return self._write(batch, interval, timestamp)
        finally:
            # Outside the lock: readers of this process need not wait for it.
            release_free_heap()

    def _write(self, batch: FlushBatch, interval: float, timestamp: int) -> int:
        self._check_usable()
        ids = self._point_ids(batch)
        sketch_ids = self._sketch_ids(batch.sketches)
        values = np.asarray(batch.values, dtype=np.float64)
        present = ~np.isnan(values) & _last_occurrence(ids, len(self._index))
        unsealed = self._unsealed(ids, timestamp)
        keep = present & unsealed
        dropped_late = int((present & ~unsealed).sum())
        sketch_keep = _last_occurrence(sketch_ids, len(self._index))
        sketch_keep &= self._unsealed(sketch_ids, timestamp)
        record = FlushRecord(
            timestamp,
            interval,
            ids[keep],
            values[keep],
            sketch_ids[sketch_keep],
            [blob for blob, k in zip(_blobs(batch.sketches), sketch_keep.tolist(), strict=True) if k],
        )
        fingerprint = _fingerprint(record)
        if fingerprint in self._fingerprints:
            return len(record.ids)  # a retry of a batch already stored
        if len(record.ids) or len(record.sketch_ids):
            self._log(record)
            self._heads.apply(record)
        self._fingerprints.append(fingerprint)
        self._points_written += len(record.ids)
        self._late_dropped += dropped_late
        if dropped_late:
            log.warning(
                "dropped %d points stamped %d: their window is already sealed",
                dropped_late,
                timestamp,
            )
        return len(record.ids)

    def _check_usable(self) -> None:
        if self._closed:
            raise StorageError(f"the TSDB at {self.data_dir} is closed")
        try:
            inode = os.stat(self.data_dir / _files.LOCK).st_ino
        except OSError as exc:
            raise StorageError(
                f"the data directory {self.data_dir} is gone or unreadable "
                f"({_files.describe_os_error(exc)}); restore it or restart the agent"
            ) from exc
        if inode != self._lock_inode or not self._index_file.still_linked():
            raise StorageError(
                f"the data directory {self.data_dir} was removed or replaced while open; "
                "restart the agent to start a fresh one"
            )

    def _unsealed(self, ids: IntArray, timestamp: int) -> npt.NDArray[np.bool_]:
        out = np.ones(len(ids), dtype=bool)
        frontier = self._heads.frontier
        if not frontier or len(ids) == 0:
            return out
        gids = self._index.gids_of(ids)
        for gid, edge in frontier.items():
            if timestamp < edge:
                out &= gids != gid
        return out

    def _point_ids(self, batch: FlushBatch) -> IntArray:
        names, tags = batch.names, batch.tags
        if self._last_ids is not None and len(self._last_ids) == len(names):
            cached = self._last_ids.ids()
            if self._index.same_keys(cached, names, tags):
                return cached  # the usual case: the same series as the previous flush
        point_ids = self._index.point_ids
        hashes = hash_keys(names, tags)
        if point_ids:
            ids = point_ids.find(hashes, names, tags)
            missing = np.flatnonzero(ids < 0)
        else:  # a fresh index: everything is new
            ids = np.full(len(names), -1, dtype=np.int64)
            missing = np.arange(len(names))
        if len(missing):
            if len(missing) == len(names):
                new_names, new_tags = list(names), list(tags)
                new_hashes = hashes
                kinds = _rollup_kinds(batch.rollups)
            else:
                where = missing.tolist()
                new_names = [names[i] for i in where]
                new_tags = [tags[i] for i in where]
                new_hashes = hashes[missing]
                rollups = batch.rollups
                kinds = _rollup_kinds([rollups[i] for i in where])
            first = len(self._index)
            if distinct(new_hashes):  # then the series are distinct too
                self._register(new_names, new_tags, kinds, new_hashes)
                ids[missing] = np.arange(first, first + len(missing))
            else:
                # Duplicates within the batch (or merely equal hashes): the first one's rollup wins.
                keep: dict[tuple[str, Tags], int] = {}
                for i, key in enumerate(zip(new_names, new_tags, strict=True)):
                    keep.setdefault(key, i)
                rows = list(keep.values())
                self._register([new_names[i] for i in rows], [new_tags[i] for i in rows], kinds[rows])
                ids[missing] = point_ids.find(new_hashes, new_names, new_tags)
        # Only the ids: the keys are checked against the index's own columns next time, so the
        # previous batch's names (a string per stored series) need not stay alive.
        self._last_ids = _KeptIds.of(ids)
        return ids

    def _sketch_ids(self, sketches: Sequence[SketchPoint]) -> IntArray:
        if not sketches:
            return np.zeros(0, dtype=np.int64)
        names: Sequence[str]
        tags: Sequence[Tags]
        if isinstance(sketches, SketchColumns):  # from the aggregator: no point object made
            names, tags = sketches.names, sketches.tags
        else:
            names, tags = [p.name for p in sketches], [p.tags for p in sketches]
        last = self._last_sketch_ids
        if last is not None and len(last) == len(names):
            cached = last.ids()
            if self._index.same_keys(cached, names, tags):
                return cached  # the same sketch series as the previous flush
        known = self._index.sketch_ids
        hashes = hash_keys(names, tags)
        ids = known.find(hashes, names, tags)
        missing = np.flatnonzero(ids < 0)
        if len(missing):
            where = missing.tolist()
            new = list(dict.fromkeys(zip([names[i] for i in where], [tags[i] for i in where], strict=True)))
            self._register(
                [name for name, _ in new],
                [tags for _, tags in new],
                np.full(len(new), _index.SKETCH_KIND, dtype=np.uint8),
            )
            ids[missing] = known.find(hashes[missing], [names[i] for i in where], [tags[i] for i in where])
        self._last_sketch_ids = _KeptIds.of(ids)
        return ids

    def _register(
        self,
        names: list[str],
        tags: list[Tags],
        kinds: npt.NDArray[np.uint8],
        point_hashes: IntArray | None = None,
    ) -> None:
        """Append new series (and new retention groups) to the index, durably.

        ``names``/``tags``/``kinds`` are columns of distinct series the index does not hold;
        ``point_hashes``, when given, says they are all point series and are their
        :func:`~._keytable.hash_keys`, already computed.
        """
        index = self._index
        payloads: list[bytes] = []
        gids = self._group_ids(names, payloads)
        first = len(index)
        payloads.append(_index.encode_series(first, names, tags, kinds, gids))
        self._append_index(payloads, applied=len(payloads) - 1)
        index.add_series(names, tags, kinds, gids, new_point_hashes=point_hashes)

    def _group_ids(self, names: list[str], payloads: list[bytes]) -> IntArray:
        """The retention group of each new series; records for new groups go to ``payloads``."""
        index = self._index
        new_groups: dict[tuple[Tier, ...], int] = {}

        def gid_for(tiers: tuple[Tier, ...]) -> int:
            gid = index.group_id(tiers)
            if gid is None:
                gid = new_groups.get(tiers)
                if gid is None:
                    gid = new_groups[tiers] = max([*index.groups, *new_groups.values()], default=-1) + 1
                    payloads.append(_index.encode_group(gid, tiers))
            return gid

        tiers_for = self._resolver.tiers_for
        if not self.config.schemas:  # every series gets the default tiers
            return np.full(len(names), gid_for(tiers_for("")), dtype=np.int64)
        every = [tiers_for(name) for name in names]
        # tiers_for returns one of a few tuple objects: resolve each once, by identity.
        by_object = {id(tiers): gid_for(tiers) for tiers in {id(t): t for t in every}.values()}
        return np.fromiter((by_object[id(t)] for t in every), dtype=np.int64, count=len(every))

    def _append_index(self, payloads: list[bytes], applied: int | None = None) -> None:
        """Append ``payloads`` durably, then apply the first ``applied`` (all when None) to
        the in-memory index (the caller applies the rest itself)."""
        index = self._index
        # _records.frame() for each payload, joined with one copy (a payload may be 50 MB).
        parts: list[bytes] = []
        for payload in payloads:
            parts.append(_records.HEADER.pack(len(payload), zlib.crc32(payload)))
            parts.append(payload)
        data = b"".join(parts)
        del parts
        try:
            self._index_file.append(data, fsync=self.config.fsync)
        except OSError as exc:
            raise _files.storage_error("append to the series index", self._index_file.path, exc) from exc
        for payload in payloads[:applied]:
            index.apply(payload)

    def _log(self, record: FlushRecord) -> None:
        """Append ``record`` to the WAL (rotating first when the segment is full)."""
        if self._wal is None or self._wal.size >= SEGMENT_BYTES:
            self._start_segment()
        wal = self._wal
        assert wal is not None
        if not wal.still_linked():
            raise StorageError(
                f"the WAL segment {wal.path} was removed behind the agent's back; restart the agent"
            )
        previous = self._previous_ids
        same = previous is not None and previous.equals(record.ids)
        payload = _records.frame(_wal.encode_flush(record, same_ids=same))
        try:
            wal.append(payload, fsync=self.config.fsync)
        except OSError as exc:
            raise _files.storage_error("append to the WAL segment", wal.path, exc) from exc
        self._previous_ids = _KeptIds.of(record.ids)
        segment = self._segments[-1]
        segment.size = wal.size
        self._note_record_groups(segment, record)

    def _note_record_groups(self, segment: _Segment, record: FlushRecord) -> None:
        known = len(self._index)
        ids = record.ids[record.ids < known]
        sketch_ids = record.sketch_ids[record.sketch_ids < known]
        present = _distinct(self._index.gids_of(ids))
        present.update(_distinct(self._index.gids_of(sketch_ids)))
        for gid in present:
            if record.timestamp > segment.max_timestamp.get(gid, -(2**62)):
                segment.max_timestamp[gid] = record.timestamp

    # -- maintenance -----------------------------------------------------------------------

    def maintain(self, now: float, *, budget: float | None = DEFAULT_BUDGET) -> bool:
        """Seal due windows, build rollup tiers, apply retention, drop obsolete WAL segments.

        ``now`` is the wall clock (unix seconds; tests pass simulated time). Work on
        compressed partitions stops after about ``budget`` seconds (None: no limit) and
        resumes at the next call, so a call never blocks writes for long; returns True when
        everything due is done. Idempotent: call it as often as wanted (the agent calls it
        after writes and on an idle timer). Raises StorageError when the disk refuses;
        nothing is left half-done (an unfinished partition is only ever a tmp file).
        """
        with self._mutex:
            self._check_usable()
            deadline = math.inf if budget is None else time.monotonic() + budget
            try:
                done = self._maintenance.run(now, deadline)
                if self._maintenance.sealed and self._segments[-1].max_timestamp:
                    self._start_segment()  # so that the sealed data's segments can go
                self._drop_obsolete_segments()
            except OSError as exc:
                raise _files.storage_error("maintain", self.data_dir, exc) from exc
            return done

    def _drop_obsolete_segments(self) -> None:
        """Delete WAL segments whose every record lies in sealed windows."""
        frontier = self._heads.frontier
        keep = []
        dropped = False
        for segment in self._segments[:-1]:
            if all(ts < frontier.get(gid, -(2**62)) for gid, ts in segment.max_timestamp.items()):
                _unlink(segment.path)
                dropped = True
            else:
                keep.append(segment)
        if dropped:
            self._segments = [*keep, self._segments[-1]]
            if self.config.fsync:
                _files.fsync_dir(self.data_dir / _files.WAL_DIR)

    # -- closing and stats -----------------------------------------------------------------

    def close(self) -> None:
        """Release the lock and the files; seals nothing. Idempotent."""
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            self._release()

    def _release(self) -> None:
        self._maintenance.abort()
        if self._wal is not None:
            self._wal.close()
        self._index_file.close()
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)

    def __enter__(self) -> TSDB:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def stats(self) -> WriterStats:
        """A snapshot of the counters. Takes no lock (a metrics scrape on the event loop
        must not wait for a maintenance slice), so the fields may be a write apart."""
        wal_bytes = sum(s.size for s in list(self._segments))
        usage = self._usage
        return WriterStats(
            quarantined_partitions=usage.quarantined,
            points_written=self._points_written,
            bytes_on_disk=self._index_file.size + wal_bytes + usage.partition_bytes,
            series=len(self._index.point_ids),
            late_points_dropped=self._late_dropped,
            wal_bytes=wal_bytes,
            partitions=usage.partitions,
        )


# -- helpers ---------------------------------------------------------------------------------


def _take_lock(data_dir: Path) -> int:
    path = data_dir / _files.LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise _files.storage_error("open the lock file", path, exc) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = ""
        with contextlib.suppress(OSError, ValueError):
            holder = os.pread(fd, 64, 0).decode().strip()
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            who = f"process {holder}" if holder else "another process"
            raise StorageError(
                f"{data_dir} is already being written by {who} (lock file {path}); stop that "
                "agent or give this one another data directory"
            ) from exc
        raise _files.storage_error("lock", path, exc) from exc
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:
        os.close(fd)
        raise _files.storage_error("write the lock file", path, exc) from exc
    return fd


def _prepare_directory(data_dir: Path, config: StorageConfig) -> None:
    """Check or create the marker, create the sub-directories, remove leftover tmp files."""
    marker = data_dir / _files.MARKER
    if marker.exists():
        meta = _files.read_marker(data_dir)
    else:
        others = [
            p.name
            for p in data_dir.iterdir()
            if p.name not in (_files.LOCK, _files.MARKER + _files.TMP_SUFFIX)
        ]
        if others:
            raise StorageError(
                f"{data_dir} is not empty and is not a StatsYard data directory (found "
                f"{sorted(others)[:3]}); choose an empty or new directory"
            )
        meta = {}
    wanted = {"xfiles_factor": config.xfiles_factor}
    try:
        for sub in (_files.WAL_DIR, _files.DATA_DIR, _files.QUARANTINE_DIR):
            (data_dir / sub).mkdir(exist_ok=True)
        if {k: meta.get(k) for k in wanted} != wanted:
            _files.write_marker(data_dir, {**meta, **wanted}, fsync=config.fsync)
        _remove_tmp_files(data_dir)
    except OSError as exc:
        raise _files.storage_error("prepare the data directory", data_dir, exc) from exc


def _remove_tmp_files(data_dir: Path) -> None:
    for root, _dirs, names in os.walk(data_dir):
        for name in names:
            if name.endswith(_files.TMP_SUFFIX):
                _unlink(Path(root) / name)


def _recover_index(data_dir: Path, fsync: bool) -> tuple[SeriesIndex, AppendFile]:
    path = data_dir / _files.INDEX
    index = SeriesIndex(path)
    try:
        raw = path.read_bytes() if path.exists() else b""
    except OSError as exc:
        raise _files.storage_error("read the series index", path, exc) from exc
    end = 0
    if raw and not raw.startswith(_index.MAGIC):
        if not _index.MAGIC.startswith(raw):
            raise StorageError(
                f"{path} is not a StatsYard series index; the data directory is damaged "
                "(restore it from a backup or start with an empty directory)"
            )
        raw = b""  # crashed while creating it
    if raw:
        payloads: list[memoryview] = []
        _records.scan(raw, len(_index.MAGIC), payloads)
        end = len(_index.MAGIC)
        for payload in payloads:
            try:
                index.apply(payload)
            except CorruptDataError:
                break
            end += _records.HEADER.size + len(payload)
        if end < len(raw):
            log.warning(
                "%s: truncating a torn tail of %d bytes (an interrupted write)",
                path,
                len(raw) - end,
            )
    try:
        if raw and end < len(raw):
            os.truncate(path, end)
        elif not raw and path.exists():
            os.truncate(path, 0)
        index_file = AppendFile.open(path, _index.MAGIC, fsync=fsync)
    except OSError as exc:
        raise _files.storage_error("open the series index", path, exc) from exc
    index.offset = index_file.size
    index.file_size = index_file.size
    return index, index_file


def _last_occurrence(ids: IntArray, size: int) -> npt.NDArray[np.bool_]:
    """True for each element that is the last occurrence of its id."""
    n = len(ids)
    if n < 2:
        return np.ones(n, dtype=bool)
    position = np.full(max(size, int(ids.max()) + 1), -1, dtype=np.int64)
    position[ids] = np.arange(n)  # later positions overwrite earlier ones
    keep: npt.NDArray[np.bool_] = position[ids] == np.arange(n)
    return keep


def _blobs(sketches: Sequence[SketchPoint]) -> Sequence[bytes]:
    """Each sketch point's encoded sketch (a column already, from the aggregator)."""
    return sketches.blobs if isinstance(sketches, SketchColumns) else [p.sketch for p in sketches]


def _rollup_kinds(rollups: Sequence[int]) -> npt.NDArray[np.uint8]:
    """The index kind of each rollup (its value); ValueError for one that is not a Rollup."""
    try:
        kinds = np.fromiter(rollups, dtype=np.int64, count=len(rollups))
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"FlushBatch.rollups holds a value that is not a Rollup: {exc}") from exc
    if len(kinds) and (int(kinds.min()) < min(Rollup) or int(kinds.max()) > max(Rollup)):
        raise ValueError("FlushBatch.rollups holds a value that is not a Rollup")
    return kinds.astype(np.uint8)


def _distinct(values: IntArray) -> set[int]:
    """The distinct values (usually just one group: skip the sort/hash of np.unique)."""
    if len(values) == 0:
        return set()
    low = int(values.min())
    if low == int(values.max()):
        return {low}
    return set(np.unique(values).tolist())


def _fingerprint(record: FlushRecord) -> tuple[int, int, int, int]:
    crc = zlib.crc32(record.ids.tobytes())
    crc = zlib.crc32(record.values.tobytes(), crc)
    crc = zlib.crc32(record.sketch_ids.tobytes(), crc)
    for blob in record.sketches:
        crc = zlib.crc32(blob, crc)
    interval_bits = int(np.float64(record.interval).view(np.int64))
    return (record.timestamp, interval_bits, len(record.ids), crc)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
