"""The series index's names column: every name in compressed blocks, not a ``str`` per series.

Why: the index holds a name per *stored* series (a StatsD timer is ~14 of them) for as long as
the process lives, in the writer and in every reader. As ``str`` objects in a list, a name costs
its characters plus a 49-byte object header (rounded up to the allocator's 16-byte classes) plus
an 8-byte list slot: ~100 bytes for a typical 50-character name. Here the names are one UTF-8
byte stream (each followed by a separator), cut into blocks of :data:`BLOCK_BYTES` that are
zlib-compressed once full: metric names repeat most of their text (``stats.timers.app.x.``
times 14 stats, ``...c1.count``, ``...c2.count``), so a block shrinks ~15x and a name costs ~4
bytes of block plus a 4-byte end offset. The first batch's name strings are also freed after
registration instead of staying scattered over the small-object arenas among temporaries.

Names are encoded with ``surrogatepass``, as in the index file, so every Python ``str`` (lone
surrogates from a ``surrogateescape`` decode included) round-trips exactly. Reading builds new
``str`` objects: bulk reads (:meth:`NameColumn.take`, :meth:`NameColumn.matches`) inflate the
blocks of a region once (~2 ns a byte), decode it once and split or slice it in C, so they stay
within a small factor of list access; a single ``[i]`` inflates one or two blocks (~0.1 ms).
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import overload

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]

_ENCODING = "utf-8"
_ERRORS = "surrogatepass"
#: Written after every name. While no stored name contains it (the usual case), a region of
#: the buffer decodes to its names with one ``str.split`` and compares to ``"\n".join`` of a
#: batch's names with one string comparison (the separators fix the boundaries).
#: What joins names in a block (a name holding it makes the column not "plain").
SEPARATOR = "\n"
#: Uncompressed bytes per block: big enough to compress well, small enough that reading one
#: name inflates little.
BLOCK_BYTES = 1 << 16
#: zlib level: 1 compresses names nearly as well as 6 (~15x vs ~17x) in half the time.
_LEVEL = 1
#: The largest stream whose offsets are kept as uint32.
_NARROW_ENDS_LIMIT = int(np.iinfo(np.uint32).max)
#: Read (inflate, decode, split) a whole region when it holds at most this many bytes per
#: name wanted: that costs ~3 ns a byte, reading one name ~1-2 us (its blocks cached).
_REGION_BYTES_PER_NAME = 1000


def _encode(names: Sequence[str]) -> tuple[bytes, IntArray, bool, bool]:
    """``(blob, byte lengths, all ASCII, no name holds the separator)`` of ``names``, each
    followed by the separator (surrogatepass UTF-8)."""
    count = len(names)
    text = SEPARATOR.join(names) + SEPARATOR
    plain = text.count(SEPARATOR) == count
    if text.isascii():
        # One encode for the lot; in ASCII a string's length is its length in bytes.
        return text.encode("ascii"), np.fromiter(map(len, names), np.int64, count), True, plain
    del text
    encoded = [name.encode(_ENCODING, _ERRORS) for name in names]
    blob = SEPARATOR.encode().join(encoded) + SEPARATOR.encode()
    return blob, np.fromiter(map(len, encoded), np.int64, count), False, plain


class NameColumn(Sequence[str]):
    """An append-only sequence of strings stored as compressed blocks plus end offsets.

    Supports what the index needs from a ``list[str]``: ``len``, ``[i]``, ``[a:b]`` (a list),
    iteration, ``==`` with a list, :meth:`extend`; plus bulk :meth:`take` and :meth:`matches`.
    Strings are never removed or changed. Not thread-safe for concurrent writes (the index has
    one writer); reads are safe alongside each other.
    """

    __slots__ = ("_ascii", "_blocks", "_count", "_ends", "_plain", "_recent", "_tail")

    def __init__(self, names: Iterable[str] = ()) -> None:
        #: The stream's full blocks, compressed: block ``b`` holds stream bytes
        #: ``[b * BLOCK_BYTES, (b + 1) * BLOCK_BYTES)`` (names may straddle two blocks).
        self._blocks: list[bytes] = []
        #: The stream after the last full block, uncompressed.
        self._tail = bytearray()
        #: End of each name in the stream (its separator excluded); it starts one byte after
        #: the previous name's end. uint32 (4 bytes a name) until the stream outgrows 4 GiB,
        #: then int64.
        self._ends: npt.NDArray[np.uint32] | IntArray = np.zeros(16, dtype=np.uint32)
        self._count = 0
        self._ascii = True  # every byte of the stream is ASCII (then byte offsets = char offsets)
        self._plain = True  # no stored name contains the separator
        self._recent: tuple[int, Sequence[str]] | None = None  # see recent()
        self.extend(list(names))

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return self.take(range(self._count)[index])
        count = self._count
        if index < 0:
            index += count
        if not 0 <= index < count:
            raise IndexError("NameColumn index out of range")
        lo, hi = self._region(index, index)
        return self._bytes(lo, hi).decode(_ENCODING, _ERRORS)

    def __iter__(self) -> Iterator[str]:
        # In chunks: one region decode each, without materialising every name at once.
        for first in range(0, self._count, 65536):
            yield from self.take(range(first, min(first + 65536, self._count)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, NameColumn):
            return self._count == other._count and self[:] == other[:]
        if isinstance(other, list):
            return self[:] == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"NameColumn({self[:]!r})"

    @property
    def nbytes(self) -> int:
        """Bytes held (compressed blocks, open tail and offsets, capacity included)."""
        return sum(map(len, self._blocks)) + len(self._tail) + self._ends.nbytes

    def extend(self, names: Sequence[str]) -> None:
        """Append ``names`` in order."""
        count = len(names)
        if not count:
            return
        blob, lengths, ascii_only, plain = _encode(names)
        size = self._size()
        total = self._count + count
        dtype = self._ends.dtype
        if size + len(blob) > _NARROW_ENDS_LIMIT:
            dtype = np.dtype(np.int64)
        if total > len(self._ends) or dtype != self._ends.dtype:
            # np.empty: pages beyond the used prefix are only touched when names arrive.
            grown = np.empty(max(total, 2 * len(self._ends)), dtype=dtype)
            grown[: self._count] = self._ends[: self._count]
            self._ends = grown
        self._ends[self._count : total] = np.cumsum(lengths + 1) + (size - 1)
        tail = self._tail
        tail += blob
        del blob
        full = len(tail) // BLOCK_BYTES
        if full:
            with memoryview(tail) as view:
                self._blocks.extend(
                    zlib.compress(view[i * BLOCK_BYTES : (i + 1) * BLOCK_BYTES], _LEVEL) for i in range(full)
                )
            # A new bytearray rather than deleting the front: the old one's memory goes back.
            self._tail = bytearray(tail[full * BLOCK_BYTES :])
        self._count = total
        self._ascii = self._ascii and ascii_only
        self._plain = self._plain and plain

    def _size(self) -> int:
        return len(self._blocks) * BLOCK_BYTES + len(self._tail)

    def _bytes(self, lo: int, hi: int, inflated: dict[int, bytes] | None = None) -> bytes:
        """Stream bytes ``[lo, hi)`` in one piece (see :meth:`_pieces`)."""
        return b"".join(self._pieces(lo, hi, inflated))

    def _pieces(self, lo: int, hi: int, inflated: dict[int, bytes] | None = None) -> Iterator[bytes]:
        """Stream bytes ``[lo, hi)`` in order, a block at a time (never joined: a region can be
        tens of MB); blocks are looked up in and added to ``inflated`` when given."""
        sealed = len(self._blocks) * BLOCK_BYTES
        if lo < sealed and lo < hi:
            for b in range(lo // BLOCK_BYTES, (min(hi, sealed) - 1) // BLOCK_BYTES + 1):
                block = inflated.get(b) if inflated is not None else None
                if block is None:
                    block = zlib.decompress(self._blocks[b])
                    if inflated is not None:
                        inflated[b] = block
                base = b * BLOCK_BYTES
                start, end = max(lo, base) - base, min(hi, base + BLOCK_BYTES) - base
                yield block if (start, end) == (0, len(block)) else block[start:end]
        if hi > sealed:
            yield bytes(self._tail[max(lo - sealed, 0) : hi - sealed])

    def _split_region(self, lo: int, hi: int, inflated: dict[int, bytes] | None = None) -> list[str]:
        """The names of stream range ``[lo, hi)`` (whole names with the separators between
        them); only while the column is ASCII and no name holds the separator."""
        names: list[str] = []
        carry = ""
        for piece in self._pieces(lo, hi, inflated):
            split = piece.decode("ascii").split(SEPARATOR)
            split[0] = carry + split[0]  # the name that straddles the previous block
            carry = split.pop()
            names += split
        names.append(carry)
        return names

    def _region(self, first: int, last: int) -> tuple[int, int]:
        """Stream range of names ``first..last`` (inclusive), separators between them included."""
        return (int(self._ends[first - 1]) + 1 if first else 0), int(self._ends[last])

    @contextlib.contextmanager
    def recent(self, first: int, names: Sequence[str]) -> Iterator[None]:
        """Within the block, names ``first, first + 1, ...`` (just appended: ``names`` must be
        what :meth:`extend` got) are read from ``names`` itself, not decoded. For the lookups
        that follow a registration (MEAN siblings), which mostly hit the new names."""
        self._recent = (first, names)
        try:
            yield
        finally:
            self._recent = None

    def take(
        self, ids: Sequence[int] | range | IntArray, inflated: dict[int, bytes] | None = None
    ) -> list[str]:
        """The names at positions ``ids`` (each ``0 <= id < len``), in that order.

        ``inflated``: a cache of inflated blocks to share between the calls of one operation
        (say, the probe rounds of a lookup), so that no block is inflated twice; by default
        each call inflates what it needs once.
        """
        if self._recent is not None:
            first, names = self._recent
            if isinstance(ids, range) and ids.step == 1 and first < ids.stop <= self._count:
                # A slice (say, every name): the old part decoded, the new part as it is.
                head = self._take(range(ids.start, first), inflated) if ids.start < first else []
                return head + list(names[max(ids.start - first, 0) : ids.stop - first])
            positions = (
                np.arange(ids.start, ids.stop, ids.step) if isinstance(ids, range) else np.asarray(ids)
            )
            fresh = positions >= first
            if fresh.any():
                if int(positions.max()) >= self._count:
                    raise IndexError("NameColumn index out of range")
                new = map(names.__getitem__, (positions[fresh] - first).tolist())
                if fresh.all():
                    return list(new)
                old = iter(self._take(positions[~fresh], inflated))
                return [next(new) if f else next(old) for f in fresh.tolist()]
        return self._take(ids, inflated)

    def _take(self, ids: Sequence[int] | range | IntArray, inflated: dict[int, bytes] | None) -> list[str]:
        if isinstance(ids, range):
            if (
                ids.step == 1
                and len(ids)
                and self._ascii
                and self._plain
                and 0 <= ids.start < ids.stop <= self._count
            ):
                # Consecutive names: the region's split is the answer.
                return self._split_region(*self._region(ids.start, ids.stop - 1))
            positions = np.arange(ids.start, ids.stop, ids.step, dtype=np.int64)
        else:
            positions = np.asarray(ids, dtype=np.int64)
        if not len(positions):
            return []
        low, high = int(positions.min()), int(positions.max())
        if low < 0 or high >= self._count:
            raise IndexError("NameColumn index out of range")
        ends = self._ends[positions].astype(np.int64)
        starts = np.zeros(len(positions), dtype=np.int64)
        nonzero = positions > 0
        starts[nonzero] = self._ends[positions[nonzero] - 1] + 1
        lo, hi = self._region(low, high)
        if hi - lo <= _REGION_BYTES_PER_NAME * len(positions):
            if self._ascii and self._plain:
                # One split gives every name of the region (all in C).
                parts = self._split_region(lo, hi, inflated)
                return list(map(parts.__getitem__, (positions - low).tolist()))
            stream = self._bytes(lo, hi, inflated)
            starts -= lo
            ends -= lo
            if self._ascii:
                text = stream.decode("ascii")
                del stream
                return list(map(text.__getitem__, map(slice, starts.tolist(), ends.tolist())))
            pairs = zip(starts.tolist(), ends.tolist(), strict=True)
            return [stream[s:e].decode(_ENCODING, _ERRORS) for s, e in pairs]
        # Few names far apart: inflate only the blocks they touch, each once.
        if inflated is None:
            inflated = {}
        out: list[str] = []
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            out.append(self._bytes(s, e, inflated).decode(_ENCODING, _ERRORS))
        return out

    @property
    def joined_compares(self) -> bool:
        """Whether :meth:`matches_joined` can answer (every stored name is ASCII and holds no
        separator)."""
        return self._ascii and self._plain

    def matches_joined(self, first: int, count: int, joined: str) -> bool:
        """:meth:`matches` for names given joined by :data:`SEPARATOR` (only if :attr:`joined_compares`).

        The region holds exactly ``count - 1`` separators, so an equal join has them at the
        same places: the boundaries match too. One encode, then each block compared as it is
        inflated.
        """
        if first < 0 or first + count > self._count:
            return False
        if not count:
            return not joined
        lo, hi = self._region(first, first + count - 1)
        try:
            wanted = joined.encode("ascii")
        except UnicodeEncodeError:
            return False  # every stored name is ASCII
        if len(wanted) != hi - lo:
            return False
        pos = 0
        for piece in self._pieces(lo, hi):
            # A bytes slice (a 64 KB copy) compares with memcmp; a memoryview would
            # compare byte by byte.
            if wanted[pos : pos + len(piece)] != piece:
                return False
            pos += len(piece)
        return True

    def matches(self, first: int, names: Sequence[str]) -> bool:
        """Whether ``names`` are exactly the names at ``first, first + 1, ...``, compared
        without building a ``str`` per stored name."""
        count = len(names)
        if first < 0 or first + count > self._count:
            return False
        if not count:
            return True
        if self.joined_compares:
            return self.matches_joined(first, count, SEPARATOR.join(names))
        lo, hi = self._region(first, first + count - 1)
        blob, lengths, _, _ = _encode(names)
        if len(blob) != hi - lo + 1 or self._bytes(lo, hi + 1) != blob:
            return False
        return bool(np.array_equal(np.cumsum(lengths + 1) + (lo - 1), self._ends[first : first + count]))
