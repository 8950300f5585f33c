"""Vectorised scanning of a batch of StatsD lines with numpy: where each line's parts are, a hash
of its ``(NAME, TAIL)`` key, and its value when the value is a plain decimal.

Pure functions over one contiguous buffer; no Python work per line. Used by the pre-aggregator
(:mod:`statsyard_agent._ingest`) for lines whose key is already bound to a series: for those, a
line's meaning depends on its key and its value only, so a batch of them is applied to the
series' columns with a few numpy operations instead of a Python loop (the loop costs ~1.3 µs per
line here, this path ~0.35 µs: see the README's performance section). Values of up to 8 bytes
(most traffic) are read with SWAR arithmetic on one 64-bit word each.

Every line this module cannot vouch for is left to the caller's exact per-line path: its first
delimiter not a ``:`` or its second not a ``|`` (a ``|`` in the name, a ``:`` in the value, no type),
a value that is not ``[+-]?DIGITS[.DIGITS]`` with at most 15 digits in all (or that is ``-0``).
For the values it accepts, the result is bit-for-bit ``float(text)``: the digits form an integer
below 2**53 and the scale is a power of ten below 10**16, both exact in a double, so one division
rounds once, exactly as a correctly rounded ``float()`` does (Clinger's fast path).

Key hashes are 64-bit (a multiply-xor over 8-byte words, then a finaliser), seeded per process;
:class:`HashTable` keeps 63 of those bits. Two keys with one hash would share a series: with the
bound keys capped at 262,144 the chance that any two of them collide is below 4e-9, and a sender
able to craft such a pair gains nothing it could not do by sending the other key itself.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "HashTable",
    "Lines",
    "Values",
    "WordView",
    "key_hashes",
    "locate_lines",
    "parse_values",
    "word_view",
]

Int64s = npt.NDArray[np.int64]
UInt64s = npt.NDArray[np.uint64]
Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]

#: Bytes a :func:`word_view` buffer needs after its text (two words read past a value's start).
PADDING: Final = 24

_U64 = np.uint64
_M1: Final = _U64(0x9E3779B97F4A7C15)
_M2: Final = _U64(0xBF58476D1CE4E5B9)
_M3: Final = _U64(0x94D049BB133111EB)
_S29, _S30, _S31 = _U64(29), _U64(30), _U64(31)
_SEED: Final = _U64(secrets.randbits(64))
_ALL: Final = _U64(0xFFFFFFFFFFFFFFFF)
_ZEROS: Final = _U64(0x3030303030303030)  # eight ASCII "0"s


def _low_bytes(count: Int64s) -> UInt64s:
    """Masks of the low ``count`` (0..8) bytes of a word (numpy shifts by 64 give 0)."""
    return _ALL >> ((8 - count) * 8).astype(np.uint64)


_POW10_INT: Final = np.array([10**k for k in range(17)], dtype=np.uint64)
_POW10: Final = np.array([10.0**k for k in range(17)])
_COLUMNS: Final = np.arange(16, dtype=np.uint8)
_MAX_DIGITS: Final = 15

WordView = npt.NDArray[np.uint64]


def word_view(padded: bytes) -> WordView:
    """Every unaligned little-endian 8-byte word of ``padded``: ``view[i]`` is bytes i..i+7.
    ``padded`` must end with :data:`PADDING` bytes past the text scanned."""
    return np.ndarray(shape=(len(padded) - 7,), dtype="<u8", buffer=padded, strides=(1,))


@dataclass(frozen=True, slots=True)
class Lines:
    """Where the lines of a buffer are: ``start`` / ``end`` (exclusive, the newline). A line is
    ``keyed`` when its first delimiter (``:`` or ``|``) is a ``:`` and its second a ``|``: then
    NAME, VALUE and TAIL are the spans around ``colon`` and ``pipe`` (the name holds no
    delimiter, the value none, the tail anything). ``colon`` and ``pipe`` mean nothing for
    other lines."""

    start: Int64s
    end: Int64s
    colon: Int64s
    pipe: Int64s
    keyed: Bools


def locate_lines(buf: npt.NDArray[np.uint8]) -> Lines:
    """Lines of ``buf``, which must end with a newline."""
    # One pass finds every delimiter; each line's first two are then picked by position in
    # that short list (no search). Array methods and ufuncs rather than numpy's Python-level
    # wrappers: this runs per batch.
    at = ((buf == 10) | (buf == 58) | (buf == 124)).nonzero()[0]
    found = buf[at]
    newlines = (found == 10).nonzero()[0]
    end = at[newlines]
    start = np.empty_like(end)
    start[:1] = 0
    start[1:] = end[:-1] + 1
    first = np.empty_like(newlines)  # each line's first delimiter (its newline, if none other)
    first[:1] = 0
    first[1:] = newlines[:-1] + 1
    # The buffer ends with a newline, so first + 1 is in range whenever first is a ":".
    second = np.minimum(first + 1, len(at) - 1)
    keyed = (found[first] == 58) & (found[second] == 124)
    return Lines(start, end, at[first], at[second], keyed)


def _span_hashes(words: WordView, first: Int64s, length: Int64s, seed: UInt64s) -> UInt64s:
    # The length is mixed in before the words, so spans split differently never line up
    # ("" + "\0" and "\0" + "": without the mixing step they hashed alike).
    mixed = (seed ^ length.astype(np.uint64)) * _M3
    hashes = mixed ^ (mixed >> _S29)
    word_counts = (length + 7) >> 3
    last = len(words) - 1
    j = 0
    # Whole columns while most spans still have a word left (no index bookkeeping), then only
    # the rows of the longer spans.
    while True:
        active = word_counts > j
        n_active = int(np.count_nonzero(active))
        if not n_active or 2 * n_active < len(active):
            break
        left = np.minimum(np.maximum(length - 8 * j, 0), 8)
        word = words[np.minimum(first + 8 * j, last)] & _low_bytes(left)
        mixed = (hashes ^ word) * _M1
        hashes = np.where(active, mixed ^ (mixed >> _S29), hashes)
        j += 1
    rows = active.nonzero()[0]
    while len(rows):
        left = np.minimum(length[rows] - 8 * j, 8)
        word = words[first[rows] + 8 * j] & _low_bytes(left)
        mixed = (hashes[rows] ^ word) * _M1
        hashes[rows] = mixed ^ (mixed >> _S29)
        j += 1
        rows = rows[word_counts[rows] > j]
    return hashes


def _finish(hashes: UInt64s) -> UInt64s:
    hashes ^= hashes >> _S31
    hashes *= _M2
    hashes ^= hashes >> _S30
    hashes *= _M3
    hashes ^= hashes >> _S31
    return hashes


def key_hashes(words: WordView, lines: Lines) -> UInt64s:
    """The 64-bit hash of ``(NAME, TAIL)`` of every line (TAIL: after the pipe); meaningful for
    keyed lines only (for the others, some hash of bytes of the buffer)."""
    start, colon, pipe, end = lines.start, lines.colon, lines.pipe, lines.end
    with np.errstate(over="ignore"):
        seed = np.full(len(start), _SEED, dtype=np.uint64)
        hashes = _span_hashes(words, start, colon - start, seed)
        return _finish(_span_hashes(words, pipe + 1, end - pipe - 1, hashes))


@dataclass(frozen=True, slots=True)
class Values:
    """Values of a set of lines: ``value`` where ``ok``; ``signed`` when the text starts with
    ``+`` or ``-`` (a gauge delta, when deltas are enabled)."""

    value: Floats
    ok: Bools
    signed: Bools


def _eight_digits(words: UInt64s, digits: Int64s) -> UInt64s:
    """The numbers written by the first ``digits`` (0..8) ASCII digits of each word (SWAR)."""
    shift = ((8 - digits) * 8).astype(np.uint64)
    v = ((words & (_ALL >> shift)) << shift) | (_ZEROS >> (64 - shift))  # left-padded with "0"s
    v = ((v & _U64(0x0F0F0F0F0F0F0F0F)) * _U64(2561)) >> _U64(8)
    v = ((v & _U64(0x00FF00FF00FF00FF)) * _U64(6553601)) >> _U64(16)
    return ((v & _U64(0x0000FFFF0000FFFF)) * _U64(42949672960001)) >> _U64(32)


def _digits(words: WordView, first: Int64s, count: Int64s) -> UInt64s:
    """The numbers written by ``count`` (0..16) ASCII digits from ``first``."""
    long = count > 8
    number = _eight_digits(words[first], np.where(long, count - 8, count))
    if np.count_nonzero(long):
        low = _eight_digits(words[first + np.where(long, count - 8, 0)], np.where(long, 8, 0))
        number = np.where(long, number * _U64(100_000_000) + low, number)
    return number


def parse_values(words: WordView, first: Int64s, last: Int64s) -> Values:
    """Values of the texts from ``first`` to ``last`` (exclusive) of the buffer ``words`` views
    that are plain decimals (see the module doc)."""
    word = words[first]
    length = last - first
    lead = word & _U64(0xFF)
    signed = (lead == _U64(43)) | (lead == _U64(45))
    negative = lead == _U64(45)
    short = length <= 8  # sign and digits in one word: most traffic
    if bool(short.all()):
        value, ok = _parse_short(word, length, signed, negative)
    else:
        value = np.zeros(len(first))
        ok = np.zeros(len(first), dtype=np.bool_)
        rows = short.nonzero()[0]
        value[rows], ok[rows] = _parse_short(word[rows], length[rows], signed[rows], negative[rows])
        rows = (~short).nonzero()[0]
        value[rows], ok[rows] = _parse_long(words, first[rows] + signed[rows], last[rows], negative[rows])
    return Values(value, ok, signed)


_HIGH_BITS: Final = _U64(0x8080808080808080)
_LOW_7_BITS: Final = _U64(0x7F7F7F7F7F7F7F7F)
_DOTS: Final = _U64(0x2E2E2E2E2E2E2E2E)


def _parse_short(word: UInt64s, length: Int64s, signed: Bools, negative: Bools) -> tuple[Floats, Bools]:
    """Values of at most 8 bytes (sign included), held in the low bytes of ``word``: byte
    classes with SWAR arithmetic on the whole word (no byte matrix), the dot taken out by one
    shift, the digits read by :func:`_eight_digits`."""
    with np.errstate(over="ignore"):
        text = np.where(signed, word >> _U64(8), word)
        size = length - signed  # 0..8 bytes of digits and dots
        inside = _HIGH_BITS & _low_bytes(size)
        # A byte's high bit: set in "other" when it is not a digit, clear in "nondot" when it is a dot
        # (adding within 7 bits never carries into the next byte).
        digits = text ^ _ZEROS
        other = (((digits & _LOW_7_BITS) + _U64(0x7676767676767676)) | digits) & inside
        dots = text ^ _DOTS
        dot = ~(((dots & _LOW_7_BITS) + _LOW_7_BITS) | dots) & inside
        has_dot = dot != 0
        lowest = dot & (~dot + _U64(1))
        dot_at = (np.bitwise_count(lowest - _U64(1)) >> 3).astype(np.int64)  # trailing zero bytes
        n_digits = size - has_dot
        ok = (other == dot) & (np.bitwise_count(dot) <= 1) & (n_digits >= 1)
        # Take the dot out: the bytes above it move down one.
        below = _low_bytes(np.where(has_dot, dot_at, 8))
        text = (text & below) | ((text >> _U64(8)) & ~below)
        mantissa = _eight_digits(text, np.where(ok, n_digits, 0))
    fraction = np.where(ok & has_dot, size - dot_at - 1, 0)
    value = mantissa.astype(np.float64) / _POW10[fraction]
    np.negative(value, out=value, where=negative)
    ok &= ~(negative & (mantissa == 0))  # -0: the caller's exact path keeps -0.0 apart
    return value, ok


def _parse_long(words: WordView, start: Int64s, last: Int64s, negative: Bools) -> tuple[Floats, Bools]:
    """Values longer than 8 bytes: a byte matrix of up to 16 columns, digits read in two parts."""
    rows = len(start)
    length = last - start
    chars = np.empty((rows, 2), dtype=np.uint64)
    chars[:, 0] = words[start]
    chars[:, 1] = words[start + 8]
    text = chars.view(np.uint8).reshape(rows, 16)
    inside = np.minimum(np.maximum(length, 0), 16).astype(np.uint8)[:, None] > _COLUMNS
    digit = ((text - np.uint8(48)) < 10) & inside
    dot = (text == 46) & inside
    n_digits = np.count_nonzero(digit, axis=1)
    n_dots = np.count_nonzero(dot, axis=1)
    ok = (n_digits + n_dots == length) & (n_dots <= 1) & (n_digits >= 1) & (n_digits <= _MAX_DIGITS)
    dot_at = np.where(n_dots > 0, dot.argmax(axis=1), length)
    fraction = np.where(ok, length - dot_at - (n_dots > 0), 0)
    whole = np.where(ok, dot_at, 0)
    with np.errstate(over="ignore"):
        mantissa = _digits(words, start, whole) * _POW10_INT[fraction] + _digits(
            words, start + dot_at + 1, fraction
        )
    value = mantissa.astype(np.float64) / _POW10[fraction]
    np.negative(value, out=value, where=negative)
    ok &= ~(negative & (mantissa == 0))
    return value, ok


class HashTable:
    """A map from 64-bit key hashes to non-negative ints, looked up a batch at a time.

    Open addressing with linear probing in two numpy columns: a batch lookup is a few gathers
    and compares per probe round, with no Python object per key (a dict of Python ints costs
    ~4x more here: each lookup chases a pointer to a key object allocated at some other time).
    Inserts come a batch at a time too (the keys a batch's new lines bound); :meth:`drop` makes
    keys read as absent (-1) without removing them. The table doubles when half full;
    :meth:`clear` empties it, :meth:`compact` sheds the dropped keys.
    """

    __slots__ = ("_keys", "_mask", "_values", "size")

    def __init__(self, capacity: int = 1024) -> None:
        self._allocate(max(capacity, 16))

    def _allocate(self, capacity: int) -> None:
        size = 1 << (capacity - 1).bit_length()
        self._keys = np.zeros(size, dtype=np.uint64)  # 0: empty (no stored key is 0)
        self._values = np.zeros(size, dtype=np.int64)
        self._mask = size - 1
        self.size = 0

    def clear(self) -> None:
        """Empty the table, keeping its room (a table refilled each interval stops growing)."""
        self._keys.fill(0)
        self.size = 0

    def lookup(self, hashes: UInt64s) -> Int64s:
        """The value of each hash, -1 where absent."""
        keys = hashes | _U64(1)  # 0 marks an empty place
        place = (keys & _U64(self._mask)).astype(np.int64)
        table = self._keys
        held = table[place]
        match = held == keys
        found = np.where(match, self._values[place], -1)  # the first probe, for every key at once
        pending = (~match & (held != 0)).nonzero()[0]
        place = (place[pending] + 1) & self._mask
        while len(pending):
            held = table[place]
            match = held == keys[pending]
            found[pending[match]] = self._values[place[match]]
            more = ~match & (held != 0)
            pending = pending[more]
            place = (place[more] + 1) & self._mask
        return found

    def drop(self, stale: Callable[[Int64s], Bools]) -> None:
        """Forget the keys whose values ``stale`` picks (they read as absent from then on)."""
        used = self._keys != 0
        self._values[used & stale(self._values)] = -1

    def compact(self) -> None:
        """Rebuild without the dropped keys, in the least room that holds the others."""
        keys, values = self._keys, self._values
        kept = np.flatnonzero((keys != 0) & (values >= 0))
        self._allocate(2 * len(kept))
        self._place(keys[kept], values[kept])

    def insert_many(self, hashes: UInt64s, values: Int64s | int = 0) -> None:
        """Insert distinct ``hashes`` with their ``values`` (one value for all, or one each)."""
        while 2 * (self.size + len(hashes)) > len(self._keys):
            self._grow()
        self._place(hashes | _U64(1), np.broadcast_to(np.asarray(values, dtype=np.int64), hashes.shape))

    def _place(self, keys: UInt64s, values: Int64s) -> None:
        place = (keys & _U64(self._mask)).astype(np.int64)
        table = self._keys
        while len(keys):
            held = table[place]
            empty = held == 0
            # Of the keys wanting one empty place, the first takes it; the others probe on.
            claimed, first = np.unique(place[empty], return_index=True)
            table[claimed] = keys[empty][first]
            self._values[claimed] = values[empty][first]
            self.size += len(claimed)
            left = np.ones(len(keys), dtype=np.bool_)
            left[np.flatnonzero(empty)[first]] = False
            same = held == keys
            self._values[place[same]] = values[same]
            left &= ~same
            keys, values = keys[left], values[left]
            place = np.where(empty[left], place[left], (place[left] + 1) & self._mask)

    def _grow(self) -> None:
        keys, values = self._keys, self._values
        used = np.flatnonzero(keys)
        self._allocate(2 * len(keys))
        self.size = 0
        self._place(keys[used], values[used])
