"""Compact, lossless column encodings for sealed partitions (numpy in, bytes out, no IO).

Three column kinds, each encoded to a self-describing ``bytes`` whose first byte says how the
rest was made, so that a column handed to the wrong decoder is refused rather than misread:

Timestamps (int64)
    Delta-of-delta (``t0``, ``t1 - t0``, then the change of each delta), zigzag, LEB128
    varints, raw deflate. Regular timestamps become a run of zero bytes: 8640 points of a
    10 s series take 37 bytes. Arithmetic wraps modulo 2**64, so every int64 array
    round-trips, however wild.

Values (float64), bit-exact: NaN payloads, -0.0, infinities and subnormals come back as they
went in. The encoder builds the candidates below and keeps the smallest:

``DEC k``
    Scaled integers (VictoriaMetrics' idea) with an exactness correction. Each value is
    written as an integer ``m = rint(v * 10**k)`` plus the distance in ulps between ``v`` and
    ``m / 10**k`` (the very expression the decoder evaluates, so the result is exact by
    construction). For decimal data (counters, integer gauges, rates, timer samples sent
    with a few decimals) that distance is 0; for sums and medians that float arithmetic
    computed from such data it is a few ulps, a few bits per value instead of a noisy
    float's ~54. ``k`` (0..15 decimals) and whether ``m`` is stored as is or as differences
    are chosen by estimated size on 32 neighbour pairs spread over the column. ``m`` and
    the distances are zigzagged, cut to the narrowest of 1/2/4/8 bytes, split into byte
    planes and deflated. Finite columns only.
``XOR``
    XOR of each value's bits with the previous value's (Gorilla's idea), then deflate;
    either with the 8 byte planes transposed (byte shuffle), which groups the slowly
    changing sign/exponent bytes and suits noisy floats, or unshuffled, which keeps an
    unchanged value as one run of 8 zero bytes and suits repeated floats (a gauge that
    keeps its last value between updates). Both are tried when enough values repeat.
``RAW``
    The little-endian float64 bytes, when nothing else is smaller.

Presence bitmaps (bool): ``ALL`` / ``NONE`` in one byte, else ``numpy.packbits`` + deflate;
the caller keeps the length and passes it back to :func:`decode_bitmap`.

Deflate is used raw (no zlib header or adler32: 6 bytes saved per column; the storage engine
checksums whole partitions), at level 6 (within 0.5 % of level 9 on these streams, in less
than half its time), with each byte plane in a deflate block of its own. Everything is
vectorised: no Python loop runs per value; the loops that exist run at most 10 times
(varint byte positions). ``bench/codec.py`` prints sizes and times per column type.

Decoding bytes that were not produced here raises :class:`CorruptDataError` and nothing
else (no IndexError, zlib.error, numpy warning...). This is not a checksum: a flipped bit
may still decode to different, plausible numbers; integrity is the engine's job. Decoded
sizes are bounded by deflate's maximum ratio (about 1000:1) times the input, so garbage
cannot make a decoder allocate without limit.
"""

from __future__ import annotations

import zlib
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from statsyard_agent._exceptions import CorruptDataError
from statsyard_agent._types import FloatArray

__all__ = [
    "decode_bitmap",
    "decode_timestamps",
    "decode_values",
    "encode_bitmap",
    "encode_timestamps",
    "encode_values",
]

Int64Array = npt.NDArray[np.int64]
UInt64Array = npt.NDArray[np.uint64]
UInt8Array = npt.NDArray[np.uint8]
BoolArray = npt.NDArray[np.bool_]
_T = TypeVar("_T", bound=np.generic)

# The first byte of every column: the high nibble names the method, the low nibble is its
# parameter (decimals for DEC, layout for XOR). Kinds use disjoint values so that a column
# handed to another kind's decoder is refused.
_TS_DOD = 0x10
_V_RAW = 0x20
_V_XOR_SHUFFLED = 0x30
_V_XOR_PLAIN = 0x31
_V_DEC = 0x40  # | k; then a layout byte (see the DEC section below)
_BM_ALL = 0x60
_BM_NONE = 0x61
_BM_PACKED = 0x62

_DEFLATE_LEVEL = 6
_MAX_DECIMALS = 15
_SCALES = np.array([10.0**k for k in range(_MAX_DECIMALS + 1)])
_TWO_63 = float(2**63)
_SAMPLE = 64  # values (32 neighbour pairs) on which DEC's decimals and layout are chosen
# DEC is not even tried when the sample estimates more bits per value than this: noisy
# floats, where XOR does as well for less work (tuned with bench/codec.py).
_DEC_MAX_BITS = 48.0
# XOR is tried unshuffled too when at least this share of values repeats the previous one.
_REPEAT_SHARE = 0.2
# XOR is not tried once an exact DEC (no ulp correction) fits in this many bytes per value:
# it never came close there.
_XOR_SKIP_BYTES = 2.0
# DEC planes are small integers and zero runs: run-length matching compresses them as well
# as the default strategy (slightly better on the bench mix) in about a quarter of the time.
_DEC_STRATEGY = zlib.Z_RLE

_ONE = np.uint64(1)
_LOW7 = np.uint64(0x7F)
_WIDTHS = (1, 2, 4, 8)

# ---------------------------------------------------------------------------------------
# Public API


def encode_timestamps(ts: Int64Array) -> bytes:
    """Encode a 1-D integer array (any values, any order; typically regular and increasing).

    Empty arrays are allowed. Raises ``ValueError`` for an array that is not 1-D or not of an
    integer dtype (unsigned values wrap into int64).
    """
    u = _as_1d(ts, np.int64, "iu", "timestamps").view(np.uint64)
    dod = u.copy()
    if len(u) > 1:
        deltas = u[1:] - u[:-1]
        dod[1] = deltas[0]
        dod[2:] = deltas[1:] - deltas[:-1]
    return bytes([_TS_DOD]) + _deflate(_varint_encode(_zigzag(dod.view(np.int64))).tobytes())


def decode_timestamps(data: bytes) -> Int64Array:
    """Inverse of :func:`encode_timestamps`; raises :class:`CorruptDataError` on bad input."""
    tag, payload = _split(data, "timestamps")
    if tag != _TS_DOD:
        raise CorruptDataError(f"timestamps: unknown encoding 0x{tag:02x}")
    dod = _unzigzag(_varint_decode(_inflate(payload, "timestamps"), "timestamps")).view(np.uint64)
    out = np.empty_like(dod)
    if len(dod):
        out[0] = dod[0]
        np.cumsum(np.cumsum(dod[1:], dtype=np.uint64), dtype=np.uint64, out=out[1:])
        out[1:] += dod[0]
    return out.view(np.int64)


def encode_values(values: FloatArray) -> bytes:
    """Encode a 1-D float64 array losslessly with the smallest method (see the module doc).

    Any float64 bit pattern is preserved, NaN payloads and -0.0 included; empty arrays are
    allowed. Arrays of another float or integer dtype are converted to float64 first (exact
    for float16/32 and for integers up to 2**53); anything that is not a 1-D array of numbers
    raises ``ValueError``.
    """
    v = _as_1d(values, np.float64, "fiu", "values")
    bits = v.view(np.uint64)
    best = bytes([_V_RAW]) + bits.astype("<u8").tobytes()
    decimal = _encode_decimal(v, bits)
    if decimal is not None:
        if decimal[1] >> 3 == 0 and len(decimal) <= _XOR_SKIP_BYTES * len(v):
            return decimal
        best = min(best, decimal, key=len)
    return min(best, *_encode_xor(bits), key=len)


def decode_values(data: bytes) -> FloatArray:
    """Inverse of :func:`encode_values`; raises :class:`CorruptDataError` on bad input."""
    tag, payload = _split(data, "values")
    if tag == _V_RAW:
        if len(payload) % 8:
            raise CorruptDataError(f"values: raw payload of {len(payload)} bytes is not 8*n")
        return np.frombuffer(payload, dtype="<f8").astype(np.float64)
    if tag in (_V_XOR_SHUFFLED, _V_XOR_PLAIN):
        stream = _inflate(payload, "values")
        if len(stream) % 8:
            raise CorruptDataError(f"values: {len(stream)} XOR bytes is not 8*n")
        xored = _unshuffle(stream, 8) if tag == _V_XOR_SHUFFLED else stream.view("<u8")
        return np.bitwise_xor.accumulate(xored).view("<f8").astype(np.float64)
    if tag & 0xF0 == _V_DEC:
        return _decode_decimal(tag & 0x0F, payload)
    raise CorruptDataError(f"values: unknown encoding 0x{tag:02x}")


def encode_bitmap(present: BoolArray) -> bytes:
    """Encode a 1-D boolean array (which slots of a range hold a point).

    The length is not stored: pass it to :func:`decode_bitmap`. All-true and all-false arrays
    (the empty array included) take a single byte. A non-boolean array raises ``ValueError``.
    """
    bits = _as_1d(present, np.bool_, "b", "bitmap")
    if bits.all():
        return bytes([_BM_ALL])
    if not bits.any():
        return bytes([_BM_NONE])
    return bytes([_BM_PACKED]) + _deflate(np.packbits(bits).tobytes())


def decode_bitmap(data: bytes, n: int) -> BoolArray:
    """Inverse of :func:`encode_bitmap` for a bitmap of ``n`` slots.

    Raises :class:`CorruptDataError` when ``data`` is not a bitmap or does not hold exactly
    ``n`` bits (rounded up to whole bytes, padding bits zero; so a wrong ``n`` in the same
    byte count goes unnoticed when the extra bits are zero); ``ValueError`` for ``n < 0``.
    ``n`` comes from the caller and is trusted: an all/none bitmap is expanded to it.
    """
    if n < 0:
        raise ValueError(f"bitmap length must be >= 0, not {n}")
    tag, payload = _split(data, "bitmap")
    if tag in (_BM_ALL, _BM_NONE):
        if payload:
            raise CorruptDataError("bitmap: trailing bytes after an all/none bitmap")
        return np.full(n, tag == _BM_ALL, dtype=np.bool_)
    if tag != _BM_PACKED:
        raise CorruptDataError(f"bitmap: unknown encoding 0x{tag:02x}")
    packed = _inflate(payload, "bitmap")
    if len(packed) != (n + 7) // 8:
        raise CorruptDataError(f"bitmap: {len(packed)} bytes cannot hold exactly {n} slots")
    bits = np.unpackbits(packed).astype(np.bool_)
    if bits[n:].any():
        raise CorruptDataError("bitmap: padding bits are set")
    return bits[:n]


# ---------------------------------------------------------------------------------------
# XOR


def _encode_xor(bits: UInt64Array) -> list[bytes]:
    xored = bits.copy()
    xored[1:] ^= bits[:-1]
    out = [bytes([_V_XOR_SHUFFLED]) + _deflate(*_shuffle(xored, 8))]
    if len(bits) > 1 and np.count_nonzero(xored[1:] == 0) >= _REPEAT_SHARE * (len(bits) - 1):
        out.append(bytes([_V_XOR_PLAIN]) + _deflate(xored.astype("<u8").tobytes()))
    return out


# ---------------------------------------------------------------------------------------
# DEC: m = rint(v * 10**k) plus an ulp correction
#
# Layout byte after the tag: bit 0 = m stored as differences; bits 1-2 = log2 of m's width;
# bits 3-5 = 0 when every correction is zero (no plane stored), else 1 + log2 of its width.


def _encode_decimal(v: FloatArray, bits: UInt64Array) -> bytes | None:
    if len(v) == 0 or not np.isfinite(v).all():
        return None
    # Scales at which every |v| * 10**k stays below 2**63, so that the int64 cast is exact
    # and warning-free. Python floats: numpy would warn where the product overflows to inf.
    largest = float(np.abs(v).max())
    usable = sum(1 for scale in _SCALES.tolist() if largest * scale < _TWO_63)
    if usable == 0:
        return None
    choice = _choose_decimals(v, bits, usable)
    if choice is None:
        return None
    k, delta = choice
    ints = np.rint(v * _SCALES[k]).astype(np.int64)
    correction = bits - _from_decimal(ints, k).view(np.uint64)
    if delta:
        stored = ints.view(np.uint64).copy()
        stored[1:] -= ints.view(np.uint64)[:-1]
        m = _zigzag(stored.view(np.int64))
    else:
        m = _zigzag(ints)
    m_width = _width(m)
    layout = int(delta) | _WIDTHS.index(m_width) << 1
    planes = _shuffle(m, m_width)
    if correction.any():
        r = _zigzag(correction.view(np.int64))
        r_width = _width(r)
        layout |= (1 + _WIDTHS.index(r_width)) << 3
        planes.extend(_shuffle(r, r_width))
    return bytes([_V_DEC | k, layout]) + _deflate(*planes, strategy=_DEC_STRATEGY)


def _choose_decimals(v: FloatArray, bits: UInt64Array, usable: int) -> tuple[int, bool] | None:
    """(decimals, store differences) with the fewest estimated bits per value, or None.

    Estimated on pairs of neighbours spread over the whole column (a column that starts idle
    and only later shows decimals must still get them), for every usable scale at once.
    """
    first = np.unique(np.linspace(0, max(len(v) - 2, 0), _SAMPLE // 2).astype(np.intp))
    picks = np.concatenate([first, first + 1]) if len(v) > 1 else first
    scales = _SCALES[:usable, None]
    ints = np.rint(v[picks] * scales).astype(np.int64)
    back = (ints.astype(np.float64) / scales).view(np.uint64)
    correction = _bit_cost((bits[picks] - back).view(np.int64))
    plain = _bit_cost(ints) + correction
    if len(v) > 1:
        pairs = len(first)
        diffs = (ints[:, pairs:].view(np.uint64) - ints[:, :pairs].view(np.uint64)).view(np.int64)
        delta = _bit_cost(diffs) + correction
    else:
        delta = np.full(usable, np.inf)
    best_plain, best_delta = int(plain.argmin()), int(delta.argmin())
    if delta[best_delta] < plain[best_plain]:
        k, cost, use_delta = best_delta, float(delta[best_delta]), True
    else:
        k, cost, use_delta = best_plain, float(plain[best_plain]), False
    if cost > _DEC_MAX_BITS:
        return None
    return k, use_delta


def _bit_cost(x: Int64Array) -> npt.NDArray[np.float64]:
    # log2(1 + |x|) averaged per row: a rough size in bits of zigzagged integers. Via float64
    # so that |INT64_MIN| needs no special case.
    cost: npt.NDArray[np.float64] = np.log2(1.0 + np.abs(x.astype(np.float64))).mean(axis=-1)
    return cost


def _decode_decimal(k: int, payload: bytes) -> FloatArray:
    if len(payload) < 1 or payload[0] >> 6:
        raise CorruptDataError("values: bad DEC layout byte")
    layout = payload[0]
    m_width = _WIDTHS[(layout >> 1) & 0b11]
    r_code = (layout >> 3) & 0b111
    if r_code > len(_WIDTHS):
        raise CorruptDataError("values: bad DEC correction width")
    r_width = _WIDTHS[r_code - 1] if r_code else 0
    stream = _inflate(payload[1:], "values")
    n, rest = divmod(len(stream), m_width + r_width)
    if rest:
        raise CorruptDataError(f"values: {len(stream)} DEC bytes is not a whole number of rows")
    m = _unzigzag(_unshuffle(stream[: n * m_width], m_width))
    if layout & 1:
        m = np.cumsum(m.view(np.uint64), dtype=np.uint64).view(np.int64)
    out = _from_decimal(m, k).view(np.uint64)
    if r_width:
        out += _unzigzag(_unshuffle(stream[n * m_width :], r_width)).view(np.uint64)
    return out.view(np.float64)


def _from_decimal(ints: Int64Array, k: int) -> FloatArray:
    # The encoder measures its correction against this very expression: keep them identical.
    out = ints.astype(np.float64)
    if k:
        out /= _SCALES[k]
    return out


# ---------------------------------------------------------------------------------------
# Integer and byte helpers


def _zigzag(x: Int64Array) -> UInt64Array:
    return ((x << 1) ^ (x >> 63)).view(np.uint64)


def _unzigzag(u: UInt64Array) -> Int64Array:
    return (u >> _ONE).view(np.int64) ^ -(u & _ONE).view(np.int64)


def _width(u: UInt64Array) -> int:
    """The narrowest of 1, 2, 4, 8 bytes that holds every value."""
    top = int(u.max()) if len(u) else 0
    return next(w for w in _WIDTHS if top < 1 << (8 * w))


def _shuffle(u: UInt64Array, width: int) -> list[bytes]:
    """The low ``width`` bytes of each value as ``width`` planes: all first bytes, then ..."""
    narrow = u.astype(f"<u{width}")
    planes = np.ascontiguousarray(narrow.view(np.uint8).reshape(-1, width).T)
    return [plane.tobytes() for plane in planes]


def _unshuffle(planes: UInt8Array, width: int) -> UInt64Array:
    rows = np.ascontiguousarray(planes.reshape(width, -1).T)
    return rows.view(f"<u{width}").ravel().astype(np.uint64)


def _varint_encode(u: UInt64Array) -> UInt8Array:
    """LEB128: 7 bits per byte, low groups first, high bit set on every byte but the last."""
    if len(u) == 0 or int(u.max()) < 0x80:
        return u.astype(np.uint8)
    sizes = np.ones(len(u), dtype=np.intp)
    for k in range(1, 10):
        sizes += u >= np.uint64(1 << (7 * k))
    ends = np.cumsum(sizes)
    starts = ends - sizes
    out = np.empty(int(ends[-1]), dtype=np.uint8)
    for k in range(int(sizes.max())):
        rows = np.flatnonzero(sizes > k)
        group = ((u[rows] >> np.uint64(7 * k)) & _LOW7).astype(np.uint8)
        group[sizes[rows] > k + 1] |= 0x80
        out[starts[rows] + k] = group
    return out


def _varint_decode(buf: UInt8Array, what: str) -> UInt64Array:
    if len(buf) == 0 or (buf < 0x80).all():
        return buf.astype(np.uint64)
    ends = np.flatnonzero(buf < 0x80)
    if len(ends) == 0 or ends[-1] != len(buf) - 1:
        raise CorruptDataError(f"{what}: truncated varint")
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    sizes = ends - starts + 1
    longest = int(sizes.max())
    if longest > 10 or (longest == 10 and (buf[starts[sizes == 10] + 9] > 1).any()):
        raise CorruptDataError(f"{what}: varint overflows 64 bits")
    out = np.zeros(len(ends), dtype=np.uint64)
    for k in range(longest):
        rows = np.flatnonzero(sizes > k)
        out[rows] |= (buf[starts[rows] + k] & 0x7F).astype(np.uint64) << np.uint64(7 * k)
    return out


def _deflate(*parts: bytes, strategy: int = zlib.Z_DEFAULT_STRATEGY) -> bytes:
    """One raw deflate stream; each part (a byte plane) ends a deflate block of its own.

    Byte planes have very different statistics (a constant exponent byte, a random low
    mantissa byte), so giving each its own Huffman tables (and letting deflate store the
    incompressible ones as they are) saves about 3 % over one stream, while matches may
    still reach back into earlier planes.
    """
    compressor = zlib.compressobj(_DEFLATE_LEVEL, zlib.DEFLATED, -15, 8, strategy)
    out = []
    for part in parts[:-1]:
        out.append(compressor.compress(part))
        out.append(compressor.flush(zlib.Z_BLOCK))
    if parts:
        out.append(compressor.compress(parts[-1]))
    out.append(compressor.flush())
    return b"".join(out)


def _inflate(payload: bytes, what: str) -> UInt8Array:
    inflater = zlib.decompressobj(-15)
    try:
        out = inflater.decompress(payload)
    except zlib.error as exc:
        raise CorruptDataError(f"{what}: bad deflate stream ({exc})") from exc
    if not inflater.eof or inflater.unused_data:
        raise CorruptDataError(f"{what}: truncated deflate stream or trailing bytes")
    return np.frombuffer(out, dtype=np.uint8)


def _split(data: bytes, what: str) -> tuple[int, bytes]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"{what}: expected bytes, not {type(data).__name__}")
    raw = bytes(data)
    if not raw:
        raise CorruptDataError(f"{what}: empty column (no encoding byte)")
    return raw[0], raw[1:]


def _as_1d(array: npt.ArrayLike, dtype: type[_T], kinds: str, what: str) -> npt.NDArray[_T]:
    given = np.asarray(array)
    if given.ndim != 1:
        raise ValueError(f"{what}: expected a 1-D array, got shape {given.shape}")
    if given.dtype.kind not in kinds:
        raise ValueError(f"{what}: unsupported dtype {given.dtype}")
    return np.ascontiguousarray(given, dtype=dtype)
