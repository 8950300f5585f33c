"""Column codecs: bit-exact round trips, every method exercised, garbage -> CorruptDataError."""

from __future__ import annotations

import contextlib
import struct
import subprocess
import sys
import zlib

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from statsyard_agent._exceptions import CorruptDataError
from statsyard_agent.storage._codec import (
    decode_bitmap,
    decode_timestamps,
    decode_values,
    encode_bitmap,
    encode_timestamps,
    encode_values,
)

FloatArray = npt.NDArray[np.float64]


def same_bits(a: FloatArray, b: FloatArray) -> bool:
    return a.dtype == np.float64 and np.array_equal(a.view(np.uint64), b.view(np.uint64))


def roundtrip(values: FloatArray) -> bytes:
    data = encode_values(values)
    decoded = decode_values(data)
    assert same_bits(decoded, values)
    assert decoded.flags.writeable
    return data


def nan_with_payload(payload: int) -> float:
    value: float = struct.unpack("<d", struct.pack("<Q", 0x7FF0_0000_0000_0000 | payload))[0]
    return value


SPECIALS = np.array(
    [
        np.nan,
        -np.nan,
        nan_with_payload(1),  # signalling NaN
        nan_with_payload(0x8_0000_0000_0123),
        -0.0,
        0.0,
        np.inf,
        -np.inf,
        5e-324,
        -5e-324,
        2.2250738585072009e-308,  # largest subnormal
        1.7976931348623157e308,
        -1.7976931348623157e308,
    ]
)

# ---------------------------------------------------------------------------------------
# Values

rng = np.random.default_rng(7)
COUNTS = rng.poisson(3, 2000).astype(np.float64)
SAMPLES_3DEC = np.round(rng.lognormal(3, 1, 2000), 3)
NOISY = rng.lognormal(3, 1, 2000)
# sums of 3-decimal samples: decimal up to a few ulps of float rounding
SUMS = np.array([SAMPLES_3DEC[i : i + 7].sum() for i in range(2000)])
REPEATED_NOISY = np.repeat(rng.uniform(0, 100, 200), 10)


@pytest.mark.parametrize(
    ("label", "values", "method"),
    [
        ("empty", np.zeros(0), 0x20),
        ("one value", np.array([1.5]), 0x40),
        ("idle counter", np.zeros(5000), 0x40),
        ("counts", COUNTS, 0x40),
        ("rates, 1 decimal", COUNTS / 10, 0x40),
        ("3 decimals", SAMPLES_3DEC, 0x40),
        ("sums with ulp corrections", SUMS, 0x40),
        ("negative integers", -1 - COUNTS, 0x40),
        ("huge integers", 2.0**62 - COUNTS, 0x40),
        ("beyond int64", np.repeat([2.0**63, -(2.0**64), 1e300], 100), 0x30),
        ("noisy floats", NOISY, 0x30),
        ("rarely changing noisy floats", REPEATED_NOISY, 0x30),
        ("specials", SPECIALS, 0x30),
        ("random bits", rng.integers(0, 2**63, 50, dtype=np.int64).view(np.float64), 0x20),
    ],
)
def test_values_round_trip_with_expected_method(
    label: str, values: FloatArray, method: int
) -> None:
    data = roundtrip(values)
    assert data[0] & 0xF0 == method, f"{label}: encoded as 0x{data[0]:02x}"
    assert len(data) <= 1 + 8 * len(values) + (len(values) == 0)


@pytest.mark.parametrize(
    ("label", "values", "max_bytes_per_point"),
    [
        ("idle counter", np.zeros(8640), 0.01),
        ("counts", COUNTS, 0.6),
        ("3 decimals", SAMPLES_3DEC, 2.5),
        ("sums of 3 decimals", SUMS, 3.5),
        ("rarely changing noisy floats", REPEATED_NOISY, 1.5),
        # decimals are chosen on values spread over the column, not on its idle start
        ("idle, then rates", np.concatenate([np.zeros(1500), COUNTS[:500] / 10]), 0.4),
        ("noisy floats", NOISY, 7.2),
    ],
)
def test_values_are_compact(label: str, values: FloatArray, max_bytes_per_point: float) -> None:
    assert len(roundtrip(values)) / len(values) <= max_bytes_per_point, label


def test_unusual_layouts_round_trip() -> None:
    assert same_bits(decode_values(encode_values(NOISY[::3])), NOISY[::3])  # non-contiguous
    big_endian = NOISY.astype(">f8")
    assert same_bits(decode_values(encode_values(big_endian)), NOISY)
    ints = np.arange(-5, 5)
    assert same_bits(decode_values(encode_values(ints)), ints.astype(np.float64))  # type: ignore[arg-type]
    halves = np.array([0.5, 1.25], dtype=np.float32)
    assert same_bits(decode_values(encode_values(halves)), halves.astype(np.float64))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    [np.zeros((2, 2)), np.array(["1"]), np.array([True, False]), np.array(1.0)],
)
def test_values_reject_arrays_that_are_not_1d_numbers(bad: npt.NDArray[np.generic]) -> None:
    with pytest.raises(ValueError, match="values"):
        encode_values(bad)  # type: ignore[arg-type]


_any_float = st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True)


@given(hnp.arrays(np.float64, st.integers(0, 200), elements=_any_float))
def test_any_floats_round_trip(values: FloatArray) -> None:
    roundtrip(values)


@given(hnp.arrays(np.uint64, st.integers(0, 100)))
def test_any_bit_patterns_round_trip(bits: npt.NDArray[np.uint64]) -> None:
    roundtrip(bits.view(np.float64))  # every NaN payload, signalling or not


@given(
    hnp.arrays(np.int64, st.integers(1, 200), elements=st.integers(-(10**12), 10**12)),
    st.integers(0, 15),
    st.booleans(),
)
def test_decimal_columns_round_trip(
    ints: npt.NDArray[np.int64], decimals: int, summed: bool
) -> None:
    values = ints / 10.0**decimals
    if summed:
        values = np.cumsum(values)  # float rounding: exercises the ulp corrections
    roundtrip(values)


@given(st.lists(st.sampled_from([*SPECIALS.tolist(), 1.0, 2.5, 1e300]), max_size=60))
def test_runs_of_special_values_round_trip(values: list[float]) -> None:
    roundtrip(np.repeat(np.array(values, dtype=np.float64), 3))


# ---------------------------------------------------------------------------------------
# Timestamps

REGULAR = 1_700_000_000 + 10 * np.arange(8640, dtype=np.int64)


@pytest.mark.parametrize(
    "ts",
    [
        np.zeros(0, dtype=np.int64),
        np.array([1_700_000_000]),
        np.array([1_700_000_000, 1_700_000_010]),
        REGULAR,
        REGULAR[::-1].copy(),
        REGULAR + rng.integers(-1, 2, len(REGULAR)),
        np.array([-(2**63), 2**63 - 1, 0, -1, 2**63 - 1, -(2**63)], dtype=np.int64),
        np.array([5, 5, 5, 5]),
    ],
)
def test_timestamps_round_trip(ts: npt.NDArray[np.int64]) -> None:
    decoded = decode_timestamps(encode_timestamps(ts))
    assert decoded.dtype == np.int64
    assert np.array_equal(decoded, ts)


def test_regular_timestamps_are_nearly_free() -> None:
    assert len(encode_timestamps(REGULAR)) <= 64


def test_timestamps_accept_other_integer_dtypes() -> None:
    assert np.array_equal(
        decode_timestamps(encode_timestamps(np.arange(5, dtype=np.uint32))), np.arange(5)
    )


@pytest.mark.parametrize("bad", [np.zeros(3), np.zeros((2, 2), dtype=np.int64), np.array([True])])
def test_timestamps_reject_non_integer_or_non_1d(bad: npt.NDArray[np.generic]) -> None:
    with pytest.raises(ValueError, match="timestamps"):
        encode_timestamps(bad)  # type: ignore[arg-type]


@given(hnp.arrays(np.int64, st.integers(0, 200)))
def test_any_int64_timestamps_round_trip(ts: npt.NDArray[np.int64]) -> None:
    assert np.array_equal(decode_timestamps(encode_timestamps(ts)), ts)


# ---------------------------------------------------------------------------------------
# Bitmaps


@pytest.mark.parametrize(
    ("present", "size"),
    [
        (np.zeros(0, dtype=bool), 1),
        (np.ones(1, dtype=bool), 1),
        (np.zeros(1, dtype=bool), 1),
        (np.ones(100_000, dtype=bool), 1),
        (np.zeros(100_000, dtype=bool), 1),
        (np.arange(8640) % 500 != 0, 40),
    ],
)
def test_bitmaps_round_trip_compactly(present: npt.NDArray[np.bool_], size: int) -> None:
    data = encode_bitmap(present)
    assert len(data) <= size
    decoded = decode_bitmap(data, len(present))
    assert decoded.dtype == np.bool_
    assert np.array_equal(decoded, present)


@given(hnp.arrays(np.bool_, st.integers(0, 300)))
def test_any_bitmap_round_trips(present: npt.NDArray[np.bool_]) -> None:
    assert np.array_equal(decode_bitmap(encode_bitmap(present), len(present)), present)


@pytest.mark.parametrize("n", [0, 8, 10, 17])
def test_bitmap_with_the_wrong_length_is_corrupt(n: int) -> None:
    # 11 slots in 2 bytes: a length of 12..16 is undetectable (the padding bits are zero),
    # a shorter one leaves a set bit in the padding, another byte count cannot match.
    data = encode_bitmap(np.array([True, False] * 5 + [True]))
    with pytest.raises(CorruptDataError):
        decode_bitmap(data, n)


def test_bitmap_rejects_negative_length_and_non_bool_input() -> None:
    with pytest.raises(ValueError, match="length"):
        decode_bitmap(encode_bitmap(np.ones(3, dtype=bool)), -1)
    with pytest.raises(ValueError, match="bitmap"):
        encode_bitmap(np.ones(3))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# Garbage in, CorruptDataError out


def _decoders(data: bytes, n: int) -> None:
    with contextlib.suppress(CorruptDataError):
        decode_values(data)
    with contextlib.suppress(CorruptDataError):
        decode_timestamps(data)
    with contextlib.suppress(CorruptDataError):
        decode_bitmap(data, n)


@given(st.binary(max_size=200), st.integers(0, 2000))
def test_random_bytes_raise_only_corrupt_data_error(data: bytes, n: int) -> None:
    _decoders(data, n)


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


_TAGS = [0x10, 0x20, 0x30, 0x31, *range(0x40, 0x50), 0x60, 0x61, 0x62]


@given(st.sampled_from(_TAGS), st.binary(max_size=3), st.binary(max_size=300), st.integers(0, 3000))
def test_valid_framing_around_random_content_raises_only_corrupt_data_error(
    tag: int, layout: bytes, content: bytes, n: int
) -> None:
    # A well-formed deflate stream after a known tag reaches the layout, varint and width
    # checks, which random bytes alone rarely do.
    _decoders(bytes([tag]) + layout + _raw_deflate(content), n)
    _decoders(bytes([tag]) + _raw_deflate(content), n)


@given(st.data())
def test_damaged_encodings_raise_only_corrupt_data_error(data: st.DataObject) -> None:
    column = data.draw(st.sampled_from([COUNTS[:300], SUMS[:300], NOISY[:300], SPECIALS]))
    encoded = bytearray(encode_values(column))
    if data.draw(st.booleans()):
        del encoded[data.draw(st.integers(0, len(encoded) - 1)) :]
    else:
        index = data.draw(st.integers(0, len(encoded) - 1))
        encoded[index] ^= data.draw(st.integers(1, 255))
    _decoders(bytes(encoded), len(column))


@pytest.mark.parametrize(
    ("encoded", "decode"),
    [
        (encode_values(COUNTS), decode_timestamps),
        (encode_timestamps(REGULAR), decode_values),
        (encode_bitmap(np.arange(10) % 3 == 0), decode_values),
        (encode_values(NOISY), lambda d: decode_bitmap(d, len(NOISY))),
        (b"", decode_values),
        (b"", decode_timestamps),
        (b"", lambda d: decode_bitmap(d, 0)),
        (encode_values(NOISY)[:-1], decode_values),
        (encode_values(NOISY) + b"\x00", decode_values),
        (bytes([0x20]) + b"\x00" * 7, decode_values),
        (bytes([0x61, 0x00]), lambda d: decode_bitmap(d, 3)),
    ],
)
def test_wrong_kind_or_truncated_columns_are_corrupt(encoded: bytes, decode: object) -> None:
    with pytest.raises(CorruptDataError):
        decode(encoded)  # type: ignore[operator]


def test_decoders_accept_bytearray_and_memoryview() -> None:
    data = encode_values(SUMS)
    assert same_bits(decode_values(bytearray(data)), SUMS)  # type: ignore[arg-type]
    assert same_bits(decode_values(memoryview(data)), SUMS)  # type: ignore[arg-type]


def test_storage_building_blocks_import_neither_trio_nor_prometheus() -> None:
    code = (
        "import sys\n"
        "for name in ('_codec', '_glob', '_timespec', '_retention'):\n"
        "    __import__('statsyard_agent.storage.' + name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('trio', 'prometheus_client', 'h11')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
