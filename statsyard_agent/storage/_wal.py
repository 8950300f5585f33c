"""The write-ahead log: one checksummed record per flush, in numbered segment files.

Segment = 8-byte magic + records (framing in :mod:`._records`). A FLUSH record is columnar so
that a million-point flush is a handful of numpy buffers, not a million Python objects::

    u8 type=1, u8 flags, 6 pad, i64 timestamp, f64 interval, u32 n, u32 n_sketches, 8 pad
    u32 ids[n]            absent when flags & SAME_IDS: the previous record's ids, same segment
    f64 values[n]
    u32 sketch_ids[k], u32 sketch_lengths[k], sketch bytes...

Ids repeat from one flush to the next (the aggregator emits its series in a stable order), so
SAME_IDS saves a third of the log in steady state; the chain never crosses a segment, so every
segment decodes on its own.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from statsyard_agent._exceptions import CorruptDataError, StorageError
from statsyard_agent._types import FloatArray

from . import _records
from ._files import fsync_dir, list_wal_segments, storage_error, write_all

MAGIC = b"SYWAL\x00\x00\x01"
FLUSH = 1
SAME_IDS = 1
_HEAD = struct.Struct("<BB6xqdII8x")

IntArray = npt.NDArray[np.int64]


@dataclass(slots=True)
class FlushRecord:
    """One flush as logged: points of series ``ids`` and sketches of sketch series."""

    timestamp: int
    interval: float
    ids: IntArray
    values: FloatArray
    sketch_ids: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    sketches: list[bytes] = field(default_factory=list)


def encode_flush(record: FlushRecord, *, same_ids: bool) -> bytes:
    parts = [
        _HEAD.pack(
            FLUSH,
            SAME_IDS if same_ids else 0,
            record.timestamp,
            record.interval,
            len(record.ids),
            len(record.sketch_ids),
        )
    ]
    if not same_ids:
        parts.append(record.ids.astype("<u4").tobytes())
    parts.append(np.ascontiguousarray(record.values, dtype="<f8").tobytes())
    parts.append(record.sketch_ids.astype("<u4").tobytes())
    parts.append(np.array([len(b) for b in record.sketches], dtype="<u4").tobytes())
    parts.extend(record.sketches)
    return b"".join(parts)


def decode_flush(payload: memoryview | bytes, previous_ids: IntArray | None) -> FlushRecord:
    """Decode a FLUSH payload; raises CorruptDataError when it does not add up."""
    try:
        kind, flags, timestamp, interval, n, k = _HEAD.unpack_from(payload, 0)
        if kind != FLUSH:
            raise CorruptDataError(f"unknown WAL record type {kind}")
        pos = _HEAD.size
        if flags & SAME_IDS:
            if previous_ids is None or len(previous_ids) != n:
                raise CorruptDataError("WAL record reuses ids but no matching record precedes it")
            ids = previous_ids
        else:
            ids = np.frombuffer(payload, dtype="<u4", count=n, offset=pos).astype(np.int64)
            pos += 4 * n
        values = np.frombuffer(payload, dtype="<f8", count=n, offset=pos).astype(np.float64)
        pos += 8 * n
        sketch_ids = np.frombuffer(payload, dtype="<u4", count=k, offset=pos).astype(np.int64)
        pos += 4 * k
        lengths = np.frombuffer(payload, dtype="<u4", count=k, offset=pos)
        pos += 4 * k
        sketches = []
        raw = bytes(payload[pos:])
        at = 0
        for length in lengths.tolist():
            sketches.append(raw[at : at + length])
            at += length
        if at != len(raw):
            raise CorruptDataError("WAL record length does not match its sketches")
    except (struct.error, ValueError) as exc:
        raise CorruptDataError(f"bad WAL record: {exc}") from exc
    return FlushRecord(timestamp, interval, ids, values, sketch_ids, sketches)


@dataclass(slots=True)
class SegmentState:
    """How far one segment has been read, and what the next record may refer back to."""

    seq: int
    path: Path
    offset: int = 0
    previous_ids: IntArray | None = None
    max_timestamp: int | None = None
    size: int = 0


def read_segment(state: SegmentState, records: list[FlushRecord]) -> tuple[bool, int]:
    """Read the complete records of a segment past ``state.offset`` into ``records``.

    Returns ``(torn, file_size)``: ``torn`` when bytes follow the last valid record (a writer
    mid-append, or a crash). Raises FileNotFoundError when the segment vanished (the writer
    deleted it after sealing what it held) and StorageError for anything else.
    """
    try:
        with open(state.path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if state.offset == 0:
                head = fh.read(len(MAGIC))
                if head != MAGIC:
                    if MAGIC.startswith(head):
                        return len(head) > 0, size  # still being created
                    raise StorageError(f"{state.path} is not a StatsYard WAL segment")
                state.offset = len(MAGIC)
            if size == state.offset:
                return False, size
            fh.seek(state.offset)
            buf = fh.read(size - state.offset)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise storage_error("read", state.path, exc) from exc
    payloads: list[memoryview] = []
    _records.scan(buf, 0, payloads)
    consumed = 0
    for payload in payloads:
        try:
            record = decode_flush(payload, state.previous_ids)
        except CorruptDataError:
            # A record that passes its CRC but does not decode was written by something
            # else; stop here as at a torn tail rather than guess.
            return True, size
        consumed += _records.HEADER.size + len(payload)
        state.previous_ids = record.ids
        if state.max_timestamp is None or record.timestamp > state.max_timestamp:
            state.max_timestamp = record.timestamp
        records.append(record)
    state.offset += consumed
    state.size = size
    return consumed < len(buf), size


def segment_states(data_dir: Path) -> list[SegmentState]:
    return [SegmentState(seq, path) for seq, path in list_wal_segments(data_dir)]


class AppendFile:
    """An append-only file with a known-good size: a failed append is cut off again.

    ``append`` either makes the whole record durable (fsync when asked) or raises OSError
    after truncating the file back to its previous size, so a retry never follows garbage.
    If even the truncation fails, ``dirty`` stays set and the next append truncates first.
    """

    def __init__(self, path: Path, fd: int, size: int) -> None:
        self.path = path
        self.fd = fd
        self.size = size
        self.dirty = False
        self.inode = os.fstat(fd).st_ino

    @classmethod
    def open(cls, path: Path, magic: bytes, *, fsync: bool) -> AppendFile:
        """Open (creating with ``magic`` when missing or empty) for appending."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                write_all(fd, magic)
                if fsync:
                    os.fsync(fd)
                    fsync_dir(path.parent)
                size = len(magic)
            return cls(path, fd, size)
        except BaseException:
            os.close(fd)
            raise

    def append(self, data: bytes, *, fsync: bool) -> None:
        if self.dirty:
            os.ftruncate(self.fd, self.size)
            self.dirty = False
        try:
            os.lseek(self.fd, self.size, os.SEEK_SET)
            write_all(self.fd, data)
            if fsync:
                os.fsync(self.fd)
        except BaseException:
            self.dirty = True
            try:
                os.ftruncate(self.fd, self.size)
                self.dirty = False
            except OSError:
                pass
            raise
        self.size += len(data)

    def still_linked(self) -> bool:
        """False when the file was removed or replaced behind our back (e.g. rm -rf)."""
        try:
            return os.stat(self.path).st_ino == self.inode
        except OSError:
            return False

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
