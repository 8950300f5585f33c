"""Checksummed record framing shared by the WAL and the series index.

A file is an 8-byte magic followed by records::

    u32 length   (little endian, of the payload; at least 1)
    u32 crc32    (of the payload)
    payload      (its first byte is the record type, never 0)

A reader accepts records up to the first one that is incomplete or fails its CRC and reports
the offset where the valid prefix ends. For the writer that offset is where a torn tail gets
truncated; for a concurrent reader it is where the writer is still writing, so a reader never
sees half a record. A zero-filled region (what some filesystems leave after a crash) never
parses as a record, because a length of 0 is refused and crc32(b"\\0") is not 0.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

HEADER = struct.Struct("<II")
#: Larger lengths are taken for garbage: no record we write comes close.
MAX_RECORD = 1 << 31


def frame(payload: bytes | bytearray | memoryview) -> bytes:
    """The bytes of one record carrying ``payload`` (which must not be empty)."""
    assert len(payload) > 0
    return HEADER.pack(len(payload), zlib.crc32(payload)) + bytes(payload)


@dataclass(slots=True)
class Scan:
    """Result of :func:`scan`: where the valid prefix ends and whether anything followed it."""

    end: int
    torn: bool


def scan(buf: bytes | memoryview, offset: int, out: list[memoryview]) -> Scan:
    """Append the payload of every valid record from ``offset`` to ``out``.

    Stops at the end of ``buf`` or at the first record that is incomplete or fails its CRC;
    ``torn`` is true when bytes remain after the valid prefix.
    """
    view = memoryview(buf)
    size = len(view)
    pos = offset
    while pos + HEADER.size <= size:
        length, crc = HEADER.unpack_from(view, pos)
        end = pos + HEADER.size + length
        if length == 0 or length > MAX_RECORD or end > size:
            break
        payload = view[pos + HEADER.size : end]
        if zlib.crc32(payload) != crc or payload[0] == 0:
            break
        out.append(payload)
        pos = end
    return Scan(end=pos, torn=pos < size)


def iter_records(buf: bytes | memoryview, offset: int) -> Iterator[tuple[int, memoryview]]:
    """Yield ``(end_offset, payload)`` for each valid record (see :func:`scan`)."""
    payloads: list[memoryview] = []
    scan(buf, offset, payloads)
    pos = offset
    for payload in payloads:
        pos += HEADER.size + len(payload)
        yield pos, payload
