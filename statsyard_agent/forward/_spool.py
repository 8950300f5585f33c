"""A sink's durable spool: what was flushed but not yet acknowledged by the upstream engine.

Blocking IO only (call it from a worker thread); no trio here. One directory per sink::

    00000000000000000001.seg   segment: 8-byte magic, then records
    00000000000000000002.seg   ... appended to the newest segment only
    cursor                     where the next unacknowledged record starts

A record is a 20-byte header ``<u32 payload length, u32 crc32, u32 points, i64 timestamp>`` and
the payload (already encoded for the sink's wire format, so a send is a concatenation). The CRC
covers points, timestamp and the stored payload. The magic says whether the segment's payloads
are stored as they are (``SYSPOOL1``) or snappy-compressed (``SYSPOOLS``, the default: encoded
series compress about 6x, so the same ``max_bytes`` rides out a 6x longer outage).

Guarantees:

* **Durable append.** :meth:`Spool.append` returns once the record is written (and fsynced when
  ``fsync``); a failed write is truncated away, so a segment never holds half a record after an
  error. A torn tail left by a crash fails its CRC at the next open and is cut off (counted in
  ``corrupt_bytes``).
* **At least once.** The cursor moves only on :meth:`Spool.ack` after the upstream confirmed a
  chunk, and is rewritten atomically (tmp, fsync, rename). A crash between a confirmed send and
  the cursor write sends that chunk again after restart: never lost, rarely twice.
* **Bounded.** Segments are deleted once fully acknowledged. When an append would take the disk
  use over ``max_bytes``, whole segments are dropped oldest first (``dropped_points`` counts the
  unsent points they held): the newest data is kept, as for the writer queue.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import cramjam

from ._errors import SpoolError

log = logging.getLogger(__name__)

MAGIC = b"SYSPOOL1"  # payloads stored as they are
MAGIC_SNAPPY = b"SYSPOOLS"  # payloads stored snappy-compressed (block format)
_HEADER = struct.Struct("<IIIq")  # payload length, crc32, points, timestamp
_CURSOR = struct.Struct("<QQI")  # segment, offset, crc32 of the first 16 bytes
_SEGMENT_RE = re.compile(r"(\d{20})\.seg")
CURSOR_FILE = "cursor"


@dataclass(frozen=True, slots=True)
class Position:
    """A record boundary: ``offset`` bytes into segment ``segment``; ``acked`` is the number of
    points in that segment before ``offset`` (derived, not compared)."""

    segment: int
    offset: int
    acked: int = 0


@dataclass(frozen=True, slots=True)
class Chunk:
    """Consecutive records read from the cursor; :meth:`Spool.ack` it once delivered."""

    payloads: tuple[bytes, ...]
    points: int
    start: Position
    end: Position
    first_timestamp: int
    last_timestamp: int

    @property
    def payload(self) -> bytes:
        return b"".join(self.payloads)


@dataclass(slots=True)
class _Segment:
    number: int
    path: Path
    size: int  # bytes of valid records plus the magic
    points: int
    compressed: bool = False


def _crc(points: int, timestamp: int, payload: bytes | memoryview) -> int:
    return zlib.crc32(payload, zlib.crc32(struct.pack("<Iq", points, timestamp)))


class Spool:
    """A bounded, crash-safe FIFO of encoded records with one consumer. Thread-safe.

    The counters (``pending_points``, ``disk_bytes``, ``oldest_timestamp``, ``dropped_points``,
    ``corrupt_bytes``) are plain attributes updated after each change, so a metrics scrape reads
    them without waiting for a write in progress.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        segment_bytes: int | None = None,
        fsync: bool = True,
        compress: bool = True,
    ) -> None:
        self.directory = directory
        self.compress = compress
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or min(16 << 20, max(4096, max_bytes // 8))
        self.fsync = fsync
        self.pending_points = 0
        self.disk_bytes = 0
        self.oldest_timestamp: int | None = None
        self.dropped_points = 0
        self.corrupt_bytes = 0
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._fd: int | None = None  # the newest segment, open for appending
        self._cursor = Position(0, len(MAGIC))
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._recover()
        except OSError as exc:
            raise SpoolError(f"cannot open the spool {directory}: {exc.strerror or exc}") from exc

    # --- opening -------------------------------------------------------------------------

    def _recover(self) -> None:
        for name in os.listdir(self.directory):
            if name.endswith(".tmp"):
                (self.directory / name).unlink()
        numbers = sorted(
            int(m.group(1)) for name in os.listdir(self.directory) if (m := _SEGMENT_RE.fullmatch(name))
        )
        boundaries: dict[int, dict[int, int]] = {}
        for number in numbers:
            path = self._path(number)
            segment, offsets = self._scan(number, path)
            if segment is not None:
                self._segments.append(segment)
                boundaries[number] = offsets
        self._cursor = self._load_cursor(boundaries)
        for segment in [s for s in self._segments if s.number < self._cursor.segment]:
            self._delete(segment)
        if self._segments:
            self._fd = os.open(self._segments[-1].path, os.O_WRONLY | os.O_APPEND)
        self._refresh()
        if self.pending_points:
            log.info(
                "spool %s: resuming with %d unsent points in %d bytes",
                self.directory,
                self.pending_points,
                self.disk_bytes,
            )

    def _scan(self, number: int, path: Path) -> tuple[_Segment | None, dict[int, int]]:
        """Validate one segment; cut a torn or corrupt tail; map record offsets to points
        before them. A file too short for the magic (a crash while creating it) is removed."""
        data = path.read_bytes()
        magic = data[: len(MAGIC)]
        if magic not in (MAGIC, MAGIC_SNAPPY):
            if MAGIC.startswith(data) or MAGIC_SNAPPY.startswith(data):
                path.unlink()
                return None, {}
            raise SpoolError(f"{path} is not a spool segment (bad magic); move it away")
        offset, points = len(MAGIC), 0
        offsets = {offset: 0}
        view = memoryview(data)
        while offset + _HEADER.size <= len(data):
            length, crc, count, timestamp = _HEADER.unpack_from(data, offset)
            end = offset + _HEADER.size + length
            if end > len(data) or _crc(count, timestamp, view[offset + _HEADER.size : end]) != crc:
                break
            offset, points = end, points + count
            offsets[offset] = points
        if offset < len(data):
            self.corrupt_bytes += len(data) - offset
            log.warning(
                "spool segment %s: cut %d bytes of torn or corrupt tail at offset %d",
                path,
                len(data) - offset,
                offset,
            )
            os.truncate(path, offset)
        return _Segment(number, path, offset, points, magic == MAGIC_SNAPPY), offsets

    def _load_cursor(self, boundaries: dict[int, dict[int, int]]) -> Position:
        first = Position(self._segments[0].number, len(MAGIC)) if self._segments else Position(0, len(MAGIC))
        try:
            raw = (self.directory / CURSOR_FILE).read_bytes()
        except FileNotFoundError:
            return first
        if len(raw) != _CURSOR.size:
            log.warning("spool %s: unreadable cursor; resending from the oldest record", self.directory)
            return first
        segment, offset, crc = _CURSOR.unpack(raw)
        if zlib.crc32(raw[:16]) != crc:
            log.warning(
                "spool %s: cursor fails its checksum; resending from the oldest record", self.directory
            )
            return first
        later = [s for s in self._segments if s.number >= segment]
        if not later:
            # Everything up to the cursor was delivered; older leftovers go, new segments follow.
            return Position(segment + 1, len(MAGIC))
        if later[0].number > segment:
            return Position(later[0].number, len(MAGIC))
        acked = boundaries[segment].get(offset)
        if acked is None:
            log.warning(
                "spool %s: cursor is not at a record boundary; resending segment %d", self.directory, segment
            )
            return Position(segment, len(MAGIC))
        return Position(segment, offset, acked)

    # --- appending -----------------------------------------------------------------------

    def append(self, payload: bytes, points: int, timestamp: int) -> int:
        """Append one record durably; return the unsent points dropped to make room for it.

        A record that could never fit (larger than ``max_bytes`` minus a segment's magic) is
        not stored: its own points are returned as dropped.
        """
        if self.compress:
            payload = bytes(cramjam.snappy.compress_raw(payload))
        size = _HEADER.size + len(payload)
        with self._lock:
            if size + len(MAGIC) > self.max_bytes:
                self.dropped_points += points
                return points
            try:
                dropped = self._make_room(size + (len(MAGIC) if self._must_rotate(size) else 0))
                if self._must_rotate(size):
                    self._start_segment()
                assert self._fd is not None
                segment = self._segments[-1]
                header = _HEADER.pack(len(payload), _crc(points, timestamp, payload), points, timestamp)
                try:
                    _write_all(self._fd, header + payload)
                    if self.fsync:
                        os.fsync(self._fd)
                except OSError:
                    os.ftruncate(self._fd, segment.size)
                    raise
            except OSError as exc:
                self._refresh()
                raise SpoolError(
                    f"cannot append to the spool {self.directory}: {exc.strerror or exc}"
                ) from exc
            segment.size += size
            segment.points += points
            self._refresh(cursor_moved=bool(dropped))
            return dropped

    def _must_rotate(self, size: int) -> bool:
        """A new segment when appending ``size`` bytes would take a non-empty one over
        ``segment_bytes``."""
        if self._fd is None or self._segments[-1].compressed != self.compress:
            return True
        current = self._segments[-1].size
        return current > len(MAGIC) and current + size > self.segment_bytes

    def _start_segment(self) -> None:
        number = self._segments[-1].number + 1 if self._segments else max(1, self._cursor.segment)
        path = self._path(number)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _write_all(fd, MAGIC_SNAPPY if self.compress else MAGIC)
            if self.fsync:
                os.fsync(fd)
                _fsync_dir(self.directory)
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        if self._fd is not None:
            os.close(self._fd)
        self._fd = fd
        self._segments.append(_Segment(number, path, len(MAGIC), 0, self.compress))
        if not self.pending_points and self._cursor.segment < number:
            self._cursor = Position(number, len(MAGIC))

    def _make_room(self, size: int) -> int:
        """Drop whole segments, oldest first, until ``size`` more bytes fit; return the unsent
        points that were dropped."""
        dropped = 0
        while sum(s.size for s in self._segments) + size > self.max_bytes and self._segments:
            oldest = self._segments[0]
            if len(self._segments) == 1:
                if oldest.size <= len(MAGIC):
                    break
                self._start_segment()  # seal it so it can go
            unsent = oldest.points - (self._cursor.acked if self._cursor.segment == oldest.number else 0)
            if self._cursor.segment > oldest.number:
                unsent = 0
            self._delete(oldest)
            if self._cursor.segment <= oldest.number:
                self._cursor = Position(self._segments[0].number, len(MAGIC))
            dropped += unsent
        if dropped:
            self.dropped_points += dropped
            log.warning(
                "spool %s is full (%d bytes): dropped the %d oldest unsent points",
                self.directory,
                self.max_bytes,
                dropped,
            )
        return dropped

    # --- reading and acknowledging -------------------------------------------------------

    def read(self, max_points: int, max_bytes: int = 8 << 20, *, one_timestamp: bool = False) -> Chunk | None:
        """Up to ``max_points`` points (at least one record) from the cursor; None if empty.
        With ``one_timestamp``, only records of the first record's timestamp (one flush).

        The cursor does not move: call :meth:`ack` with the chunk once it was delivered. A
        record that fails its CRC now (the disk changed under us) ends its segment there; the
        points after it are counted in ``corrupt_bytes``'s log line and skipped.
        """
        with self._lock:
            payloads: list[bytes] = []
            points = 0
            size = 0
            first_ts = last_ts = 0
            pos = self._normalized(self._cursor)
            start = pos
            handle: tuple[int, int] | None = None  # (segment number, fd)
            try:
                while True:
                    segment = self._segment(pos.segment)
                    if segment is None or pos.offset >= segment.size:
                        if segment is None or segment is self._segments[-1]:
                            break
                        pos = Position(self._segments[self._segments.index(segment) + 1].number, len(MAGIC))
                        continue
                    if handle is None or handle[0] != segment.number:
                        if handle is not None:
                            os.close(handle[1])
                        handle = (segment.number, os.open(segment.path, os.O_RDONLY))
                    header = os.pread(handle[1], _HEADER.size, pos.offset)
                    length, crc, count, timestamp = _HEADER.unpack(header)
                    if payloads and (
                        points + count > max_points
                        or size + length > max_bytes
                        or (one_timestamp and timestamp != first_ts)
                    ):
                        break
                    payload = os.pread(handle[1], length, pos.offset + _HEADER.size)
                    if len(payload) != length or _crc(count, timestamp, payload) != crc:
                        self._cut(segment, pos)
                        continue
                    if not payloads:
                        first_ts = timestamp
                    if segment.compressed:
                        payload = bytes(cramjam.snappy.decompress_raw(payload))
                    payloads.append(payload)
                    points += count
                    size += length
                    last_ts = timestamp
                    pos = Position(segment.number, pos.offset + _HEADER.size + length, pos.acked + count)
            except (OSError, struct.error, cramjam.DecompressionError) as exc:
                raise SpoolError(f"cannot read the spool {self.directory}: {exc}") from exc
            finally:
                if handle is not None:
                    os.close(handle[1])
            if not payloads:
                return None
            return Chunk(tuple(payloads), points, start, pos, first_ts, last_ts)

    def _cut(self, segment: _Segment, pos: Position) -> None:
        lost_bytes = segment.size - pos.offset
        lost_points = segment.points - pos.acked
        self.corrupt_bytes += lost_bytes
        log.error(
            "spool segment %s: record at offset %d fails its checksum; skipping the %d "
            "bytes (%d points) after it",
            segment.path,
            pos.offset,
            lost_bytes,
            lost_points,
        )
        os.truncate(segment.path, pos.offset)
        segment.size = pos.offset
        segment.points = pos.acked
        self._refresh()

    def ack(self, chunk: Chunk) -> None:
        """The upstream confirmed ``chunk``: move the cursor past it (durably) and delete the
        segments it finished. A chunk overtaken by drop-oldest only moves the cursor forward."""
        with self._lock:
            if (chunk.end.segment, chunk.end.offset) > (self._cursor.segment, self._cursor.offset):
                self._cursor = self._normalized(chunk.end)
            try:
                self._write_cursor()
                for segment in [s for s in self._segments if s.number < self._cursor.segment]:
                    self._delete(segment)
            except OSError as exc:
                raise SpoolError(
                    f"cannot move the spool cursor in {self.directory}: {exc.strerror or exc}"
                ) from exc
            finally:
                self._refresh()

    def _normalized(self, pos: Position) -> Position:
        """Step over the ends of sealed segments (a cursor at the end of a segment that will
        get no more records means the start of the next one)."""
        while True:
            segment = self._segment(pos.segment)
            if segment is None:
                later = [s for s in self._segments if s.number > pos.segment]
                return Position(later[0].number, len(MAGIC)) if later else pos
            if pos.offset < segment.size or segment is self._segments[-1]:
                return pos
            pos = Position(segment.number + 1, len(MAGIC))

    def _write_cursor(self) -> None:
        body = struct.pack("<QQ", self._cursor.segment, self._cursor.offset)
        raw = body + struct.pack("<I", zlib.crc32(body))
        tmp = self.directory / (CURSOR_FILE + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, raw)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.directory / CURSOR_FILE)
        if self.fsync:
            _fsync_dir(self.directory)

    # --- bookkeeping ---------------------------------------------------------------------

    def _segment(self, number: int) -> _Segment | None:
        for segment in self._segments:
            if segment.number == number:
                return segment
        return None

    def _delete(self, segment: _Segment) -> None:
        if segment is self._segments[-1] and self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._segments.remove(segment)
        segment.path.unlink(missing_ok=True)

    def _refresh(self, *, cursor_moved: bool = True) -> None:
        """Recompute the exported counters from the segment list (called under the lock).

        ``cursor_moved=False`` (after an append) keeps the oldest timestamp unless the spool was
        empty, which saves reading a record header per append.
        """
        cursor = self._cursor
        pending = sum(s.points for s in self._segments if s.number >= cursor.segment)
        if self._segment(cursor.segment) is not None:
            pending -= cursor.acked
        self.pending_points = pending
        self.disk_bytes = sum(s.size for s in self._segments)
        if not pending:
            self.oldest_timestamp = None
        elif cursor_moved or self.oldest_timestamp is None:
            self.oldest_timestamp = self._timestamp_at(self._normalized(cursor))

    def _timestamp_at(self, pos: Position) -> int | None:
        segment = self._segment(pos.segment)
        if segment is None or pos.offset + _HEADER.size > segment.size:
            return None
        try:
            with open(segment.path, "rb") as fh:
                fh.seek(pos.offset)
                return int(_HEADER.unpack(fh.read(_HEADER.size))[3])
        except (OSError, struct.error):
            return None

    def _path(self, number: int) -> Path:
        return self.directory / f"{number:020d}.seg"

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
