"""Immutable partition files: one tier, one time range, one checksummed chunk per series.

Layout::

    header (96 bytes)  magic, crc32 of the rest of the header, encoding, [start, end), step,
                       slots, chunk count, table offset/length/crc32, point count, sketch
                       slot count and sketch bytes (so stats need read nothing else)
    chunks             one per series, in any order
    table              zlib(ids u32[n] ascending, offsets u64[n], lengths u32[n], crc32s u32[n])

Reading one series costs a binary search in the table (loaded once per open file) and one
chunk: no other series is decoded. Every chunk carries its own crc32, the table and the
header theirs, so a damaged byte anywhere is detected (:class:`CorruptDataError`).

Chunk kinds (first byte):

* ``RAW`` (1): ``f64[slots]``, NaN = null. Head windows are sealed this way: it is a memcpy,
  and these short-lived partitions are soon compacted.
* ``CODEC`` (2): ``u32 len, presence bitmap, values`` with :mod:`._codec` (only present
  values are stored; no timestamps at all, a slot's time is ``start + i * step``).
* ``SKETCHES`` (3): ``u32 len, presence bitmap, u32 lengths[k], k sketch blobs``.

A partition is written to ``<name>.tmp``, fsynced, renamed and the directory fsynced
(:class:`PartitionWriter`), so it is whole or absent.
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from statsyard_agent._exceptions import CorruptDataError
from statsyard_agent._types import FloatArray

from . import _codec
from ._files import TMP_SUFFIX, fsync_dir, write_all

MAGIC = b"SYPART\x00\x01"
ENCODING_RAW = 0
ENCODING_CODEC = 1
RAW = 1
CODEC = 2
SKETCHES = 3

# magic, header crc, version, encoding, start, end, step, slots, chunks, table offset,
# table length, table crc, points, sketch slots, sketch bytes
_HEADER = struct.Struct("<8sIHHqqIIIQIIQQQ")
HEADER_SIZE = 96
_VERSION = 1
_U32 = struct.Struct("<I")

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Header:
    encoding: int
    start: int
    end: int
    step: int
    slots: int
    chunks: int
    table_offset: int
    table_length: int
    table_crc: int
    points: int
    sketch_slots: int
    sketch_bytes: int


def parse_header(raw: bytes) -> Header:
    """Decode and check a header; raises CorruptDataError."""
    if len(raw) < HEADER_SIZE:
        raise CorruptDataError("partition shorter than its header")
    fields = _HEADER.unpack_from(raw, 0)
    magic, crc, version = fields[0], fields[1], fields[2]
    if magic != MAGIC:
        raise CorruptDataError("not a partition file (bad magic)")
    if zlib.crc32(raw[12:HEADER_SIZE]) != crc:
        raise CorruptDataError("partition header fails its checksum")
    if version != _VERSION:
        raise CorruptDataError(f"partition format version {version} is not supported")
    header = Header(*fields[3:])
    if (
        header.end <= header.start
        or header.step <= 0
        or header.slots * header.step != header.end - header.start
    ):
        raise CorruptDataError("partition header is inconsistent")
    return header


def _pack_header(header: Header) -> bytes:
    body = _HEADER.pack(
        MAGIC,
        0,
        _VERSION,
        header.encoding,
        header.start,
        header.end,
        header.step,
        header.slots,
        header.chunks,
        header.table_offset,
        header.table_length,
        header.table_crc,
        header.points,
        header.sketch_slots,
        header.sketch_bytes,
    ).ljust(HEADER_SIZE, b"\0")
    crc = zlib.crc32(body[12:])
    return body[:8] + _U32.pack(crc) + body[12:]


# -- chunks ------------------------------------------------------------------------------------


def encode_points(values: FloatArray) -> bytes:
    """A CODEC chunk for one series (NaN = null)."""
    present = ~np.isnan(values)
    bitmap = _codec.encode_bitmap(present)
    return b"".join([bytes([CODEC]), _U32.pack(len(bitmap)), bitmap, _codec.encode_values(values[present])])


def encode_sketches(slots: int, sketches: dict[int, bytes]) -> bytes:
    """A SKETCHES chunk: ``sketches`` maps slot index -> sketch bytes."""
    present = np.zeros(slots, dtype=bool)
    order = sorted(sketches)
    present[order] = True
    bitmap = _codec.encode_bitmap(present)
    blobs = [sketches[i] for i in order]
    return b"".join(
        [
            bytes([SKETCHES]),
            _U32.pack(len(bitmap)),
            bitmap,
            np.array([len(b) for b in blobs], dtype="<u4").tobytes(),
            *blobs,
        ]
    )


def decode_points(chunk: bytes | memoryview, slots: int) -> FloatArray:
    """Values of a RAW or CODEC chunk (NaN = null); raises CorruptDataError."""
    kind = chunk[0]
    if kind == RAW:
        if len(chunk) != 1 + 8 * slots:
            raise CorruptDataError("raw chunk has the wrong length")
        return np.frombuffer(chunk, dtype="<f8", count=slots, offset=1).astype(np.float64)
    if kind != CODEC:
        raise CorruptDataError(f"chunk kind {kind} holds no points")
    bitmap, rest = _split_bitmap(chunk)
    present = _codec.decode_bitmap(bitmap, slots)
    values = _codec.decode_values(rest)
    if len(values) != int(present.sum()):
        raise CorruptDataError("chunk values do not match its bitmap")
    out = np.full(slots, np.nan)
    out[present] = values
    return out


def decode_sketches(chunk: bytes | memoryview, slots: int) -> dict[int, bytes]:
    """``slot index -> sketch bytes`` of a SKETCHES chunk; raises CorruptDataError."""
    if chunk[0] != SKETCHES:
        raise CorruptDataError(f"chunk kind {chunk[0]} holds no sketches")
    bitmap, rest = _split_bitmap(chunk)
    where = np.flatnonzero(_codec.decode_bitmap(bitmap, slots)).tolist()
    count = len(where)
    if len(rest) < 4 * count:
        raise CorruptDataError("sketch chunk is truncated")
    lengths = np.frombuffer(rest, dtype="<u4", count=count).tolist()
    blob = bytes(rest[4 * count :])
    if sum(lengths) != len(blob):
        raise CorruptDataError("sketch chunk lengths do not add up")
    out = {}
    at = 0
    for slot, length in zip(where, lengths, strict=True):
        out[slot] = blob[at : at + length]
        at += length
    return out


def _split_bitmap(chunk: bytes | memoryview) -> tuple[bytes, bytes]:
    if len(chunk) < 5:
        raise CorruptDataError("chunk is truncated")
    (length,) = _U32.unpack_from(chunk, 1)
    if 5 + length > len(chunk):
        raise CorruptDataError("chunk bitmap is truncated")
    return bytes(chunk[5 : 5 + length]), bytes(chunk[5 + length :])


def chunk_points(chunk: bytes | memoryview, slots: int) -> int:
    """How many slots of a chunk hold something (points or sketches)."""
    if chunk[0] == RAW:
        return int(np.count_nonzero(~np.isnan(decode_points(chunk, slots))))
    bitmap, _ = _split_bitmap(chunk)
    return int(_codec.decode_bitmap(bitmap, slots).sum())


# -- reading -----------------------------------------------------------------------------------


class PartitionFile:
    """An open partition: header and table in memory, chunks read on demand (``pread`` on one
    file descriptor, so the page cache serves hot partitions without inflating the RSS).

    Raises CorruptDataError from :meth:`open` when the header or table is damaged, and from
    the read methods when a chunk fails its checksum or does not decode. FileNotFoundError
    passes through (the file was compacted, expired or quarantined meanwhile).
    """

    def __init__(self, path: Path, header: Header, table: bytes, fd: int) -> None:
        self.path = path
        self.header = header
        self._fd = fd
        n = header.chunks
        if len(table) != 20 * n:
            raise CorruptDataError("partition table has the wrong size")
        self.ids = np.frombuffer(table, dtype="<u4", count=n).astype(np.int64)
        self.offsets = np.frombuffer(table, dtype="<u8", count=n, offset=4 * n).astype(np.int64)
        self.lengths = np.frombuffer(table, dtype="<u4", count=n, offset=12 * n).astype(np.int64)
        self.crcs = np.frombuffer(table, dtype="<u4", count=n, offset=16 * n)
        ends = self.offsets + self.lengths
        if n and (
            (np.diff(self.ids) <= 0).any()
            or (self.offsets < HEADER_SIZE).any()
            or (ends > header.table_offset).any()
            or (self.lengths < 1).any()
        ):
            raise CorruptDataError("partition table is inconsistent")

    @classmethod
    def open(cls, path: Path) -> PartitionFile:
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            if size < HEADER_SIZE:
                raise CorruptDataError(f"{path} is shorter than a partition header")
            header = parse_header(os.pread(fd, HEADER_SIZE, 0))
            end = header.table_offset + header.table_length
            if header.table_offset < HEADER_SIZE or end != size:
                raise CorruptDataError("partition table is not where the header says")
            packed = os.pread(fd, header.table_length, header.table_offset)
            if zlib.crc32(packed) != header.table_crc:
                raise CorruptDataError("partition table fails its checksum")
            try:
                table = zlib.decompress(packed)
            except zlib.error as exc:
                raise CorruptDataError(f"partition table does not decompress: {exc}") from exc
            return cls(path, header, table, fd)
        except BaseException:
            os.close(fd)
            raise

    @property
    def start(self) -> int:
        return self.header.start

    @property
    def end(self) -> int:
        return self.header.end

    @property
    def slots(self) -> int:
        return self.header.slots

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1

    def positions(self, ids: IntArray) -> IntArray:
        """Table position of each id, -1 when the partition has no chunk for it."""
        pos = np.searchsorted(self.ids, ids)
        pos = np.minimum(pos, max(len(self.ids) - 1, 0))
        found = (self.ids[pos] == ids) if len(self.ids) else np.zeros(len(ids), dtype=bool)
        return np.where(found, pos, -1).astype(np.int64)

    def chunk_at(self, position: int) -> bytes:
        offset = int(self.offsets[position])
        length = int(self.lengths[position])
        chunk = os.pread(self._fd, length, offset)
        if len(chunk) != length or zlib.crc32(chunk) != int(self.crcs[position]):
            raise CorruptDataError(
                f"{self.path}: chunk of series {int(self.ids[position])} fails its checksum"
            )
        return chunk

    def chunk(self, sid: int) -> bytes | None:
        [pos] = self.positions(np.array([sid], dtype=np.int64)).tolist()
        return None if pos < 0 else self.chunk_at(pos)

    def read_points(
        self, ids: IntArray, on_error: Callable[[CorruptDataError], None] | None = None
    ) -> FloatArray:
        """``(len(ids), slots)`` values, NaN where the partition holds nothing.

        A damaged chunk raises CorruptDataError, or, with ``on_error``, is reported to it
        and read as nulls.
        """
        out = np.full((len(ids), self.slots), np.nan)
        positions = self.positions(ids)
        if self.header.encoding == ENCODING_RAW and len(ids) > 8:
            positions = self._read_raw_block(positions, out, on_error)
        for row, pos in enumerate(positions.tolist()):
            if pos < 0:
                continue
            try:
                chunk = self.chunk_at(pos)
                if chunk[0] != SKETCHES:
                    out[row] = decode_points(chunk, self.slots)
            except CorruptDataError as exc:
                if on_error is None:
                    raise
                on_error(exc)
        return out

    def _read_raw_block(
        self,
        positions: IntArray,
        out: FloatArray,
        on_error: Callable[[CorruptDataError], None] | None,
    ) -> IntArray:
        """Read the RAW point chunks among ``positions`` with one pread (sealed windows write
        them contiguously, in id order); returns the positions left for chunk-by-chunk reads."""
        width = 1 + 8 * self.slots
        rows = np.flatnonzero((positions >= 0) & (self.lengths[np.maximum(positions, 0)] == width))
        if len(rows) < 2:
            return positions
        offsets = self.offsets[positions[rows]]
        low, high = int(offsets.min()), int(offsets.max()) + width
        if high - low > 4 * width * len(rows) + (1 << 16):
            return positions  # too scattered: one read each is cheaper
        raw = os.pread(self._fd, high - low, low)
        if len(raw) != high - low:
            return positions
        block = np.frombuffer(raw, dtype=np.uint8)[(offsets - low)[:, None] + np.arange(width)]
        crcs = self.crcs[positions[rows]].tolist()
        good = np.array([zlib.crc32(row.data) == crc for row, crc in zip(block, crcs, strict=True)]) & (
            block[:, 0] == RAW
        )
        out[rows[good]] = np.ascontiguousarray(block[good, 1:]).view("<f8")
        rest = positions.copy()
        rest[rows[good]] = -1  # done; damaged rows fall through to chunk_at, which reports
        return rest

    def read_sketches(self, sid: int) -> dict[int, bytes]:
        """``slot index -> sketch bytes`` of one sketch series; raises CorruptDataError."""
        chunk = self.chunk(sid)
        if chunk is None or chunk[0] != SKETCHES:
            return {}
        return decode_sketches(chunk, self.slots)

    def verify(self) -> None:
        """Check every chunk's checksum and that it decodes; raises CorruptDataError."""
        for pos in range(len(self.ids)):
            chunk = self.chunk_at(pos)
            if chunk[0] == SKETCHES:
                decode_sketches(chunk, self.slots)
            else:
                decode_points(chunk, self.slots)

    def __enter__(self) -> PartitionFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# -- writing -----------------------------------------------------------------------------------


class PartitionWriter:
    """Builds one partition in ``<path>.tmp``; :meth:`commit` makes it appear whole.

    Chunks may be added in any order but each id once. ``abort`` (or an exception in
    ``commit``) removes the tmp file. Raises OSError (callers translate it).
    """

    def __init__(self, path: Path, *, start: int, end: int, step: int, encoding: int, fsync: bool) -> None:
        self.path = path
        self.tmp = path.with_name(path.name + TMP_SUFFIX)
        self.start, self.end, self.step = start, end, step
        self.slots = (end - start) // step
        self.encoding = encoding
        self.fsync = fsync
        self._ids: list[int] = []
        self._offsets: list[int] = []
        self._lengths: list[int] = []
        self._crcs: list[int] = []
        self.points = 0
        self.sketch_slots = 0
        self.sketch_bytes = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._pos = HEADER_SIZE
        self._pending: list[bytes] = []
        self._pending_size = 0
        try:
            write_all(self._fd, bytes(HEADER_SIZE))
        except BaseException:
            self.abort()
            raise

    def add(self, sid: int, chunk: bytes, *, points: int = 0, sketch_slots: int = 0) -> None:
        self._ids.append(sid)
        self._offsets.append(self._pos + self._pending_size)
        self._lengths.append(len(chunk))
        self._crcs.append(zlib.crc32(chunk))
        self._pending.append(chunk)
        self._pending_size += len(chunk)
        self.points += points
        self.sketch_slots += sketch_slots
        if sketch_slots:
            self.sketch_bytes += len(chunk)
        if self._pending_size >= 1 << 20:
            self._flush()

    def add_raw_block(self, ids: IntArray, values: FloatArray) -> None:
        """RAW chunks for many series at once (``values`` is ``(len(ids), slots)``)."""
        n = len(ids)
        if n == 0:
            return
        block = np.empty((n, 1 + 8 * self.slots), dtype=np.uint8)
        block[:, 0] = RAW
        block[:, 1:] = np.ascontiguousarray(values, dtype="<f8").view(np.uint8).reshape(n, -1)
        self._flush()
        length = block.shape[1]
        self._ids.extend(ids.tolist())
        self._offsets.extend(range(self._pos, self._pos + n * length, length))
        self._lengths.extend([length] * n)
        self._crcs.extend(zlib.crc32(row.data) for row in block)
        self.points += int(np.count_nonzero(~np.isnan(values)))
        write_all(self._fd, block.tobytes())
        self._pos += n * length

    def _flush(self) -> None:
        if self._pending:
            write_all(self._fd, b"".join(self._pending))
            self._pos += self._pending_size
            self._pending = []
            self._pending_size = 0

    @property
    def chunks(self) -> int:
        return len(self._ids)

    def commit(self) -> int:
        """Write the table and header, fsync, rename into place; returns the file size."""
        try:
            self._flush()
            order = np.argsort(np.array(self._ids, dtype=np.int64), kind="stable")
            ids = np.array(self._ids, dtype="<u4")[order]
            if len(ids) > 1 and (np.diff(ids.astype(np.int64)) <= 0).any():
                raise ValueError("a series was added twice to one partition")
            table = b"".join(
                [
                    ids.tobytes(),
                    np.array(self._offsets, dtype="<u8")[order].tobytes(),
                    np.array(self._lengths, dtype="<u4")[order].tobytes(),
                    np.array(self._crcs, dtype="<u4")[order].tobytes(),
                ]
            )
            packed = zlib.compress(table, 6)
            header = Header(
                encoding=self.encoding,
                start=self.start,
                end=self.end,
                step=self.step,
                slots=self.slots,
                chunks=len(ids),
                table_offset=self._pos,
                table_length=len(packed),
                table_crc=zlib.crc32(packed),
                points=self.points,
                sketch_slots=self.sketch_slots,
                sketch_bytes=self.sketch_bytes,
            )
            write_all(self._fd, packed)
            os.pwrite(self._fd, _pack_header(header), 0)
            if self.fsync:
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            os.replace(self.tmp, self.path)
            if self.fsync:
                fsync_dir(self.path.parent)
            return self._pos + len(packed)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(OSError):
            self.tmp.unlink()
