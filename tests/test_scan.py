"""The vectorised line scanner: where lines and their parts are, key hashes, exact values, and
the batch hash table. The pre-aggregator's equivalence with the parser is pinned in
``test_ingest.py``; these pin the scanner's own promises."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from statsyard_agent import _scan


def scanned(lines: list[bytes]) -> tuple[bytes, np.ndarray, _scan.WordView, _scan.Lines]:
    joined = b"\n".join(lines) + b"\n"
    padded = joined + bytes(_scan.PADDING)
    buf = np.frombuffer(padded, dtype=np.uint8)
    return joined, buf, _scan.word_view(padded), _scan.locate_lines(buf[: len(joined)])


def value_spans(lines: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Where each ``n:VALUE|TYPE`` line's value is in the joined buffer (found without the
    scanner, so values with any bytes can be handed to ``parse_values``)."""
    first, last, offset = [], [], 0
    for line in lines:
        first.append(offset + 2)
        last.append(offset + line.rindex(b"|"))
        offset += len(line) + 1
    return np.array(first, dtype=np.int64), np.array(last, dtype=np.int64)


_texts = st.one_of(
    st.from_regex(rb"\A[+-]?[0-9]{0,18}(\.[0-9]{0,18})?\Z"),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: repr(f).encode()),
    st.integers(-(10**17), 10**17).map(lambda i: str(i).encode()),
    st.sampled_from([b"", b".", b"-", b"+.", b"1e3", b"1_0", b" 1", b"nan", b"0x1", b"1:2", b"-0", b"-0.0"]),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_texts, min_size=1, max_size=40))
def test_an_accepted_value_is_exactly_what_float_gives(texts: list[bytes]) -> None:
    lines = [b"n:" + text + b"|ms" for text in texts]
    _, _, words, _ = scanned(lines)
    values = _scan.parse_values(words, *value_spans(lines))
    for text, ok, value, signed in zip(
        texts, values.ok.tolist(), values.value.tolist(), values.signed.tolist(), strict=True
    ):
        assert signed == (text[:1] in (b"+", b"-"))
        if not ok:
            continue
        digits = text.lstrip(b"+-").replace(b".", b"")
        assert digits.isdigit()
        assert len(digits) <= 15
        assert text.count(b".") <= 1
        want = float(text)
        assert value == want, text
        assert math.copysign(1.0, value) == math.copysign(1.0, want), text
        assert not (want == 0.0 and text.startswith(b"-"))  # -0 is left to the exact path


def test_plain_decimals_are_accepted_and_others_left_alone() -> None:
    accepted = [b"1", b"+3", b"-2", b"2.5", b".5", b"5.", b"0.000001", b"123456789012345", b"12.345678"]
    accepted += [b"+1234567", b"-1234567", b"12345678", b"+.5", b"-1234.56", b"1234567.", b".1234567"]
    refused = [b"", b".", b"-0", b"1e3", b"1_0", b"nan", b"1:2", b"1234567890123456", b"\xff", b" 1", b"u1"]
    refused += [b"+", b"-", b"-.", b"1..2", b"1.2.3", b"-0.0", b"+-1", b"1/2", b"9\x00", b"\xb9", b"-00000.0"]
    lines = [b"n:" + t + b"|c" for t in accepted + refused]
    _, _, words, _ = scanned(lines)
    ok = _scan.parse_values(words, *value_spans(lines)).ok.tolist()
    assert ok == [True] * len(accepted) + [False] * len(refused)


def test_lines_and_their_parts_are_located() -> None:
    # Keyed: the first delimiter is ":" and the second "|" (the tail may hold any); a ":" in
    # the value (packed values, "k:v:w") leaves the line to the parser.
    lines = [b"a.b:1|c|#x:y", b"no colon", b"a|b:1|c", b"x:1", b"", b"k:v:w|s|@0.5", b"k:v|s|@0.5|#a:b|c"]
    joined, _, _, located = scanned(lines)
    assert located.keyed.tolist() == [True, False, False, False, False, False, True]
    for row in (0, 6):
        start, colon, pipe, end = (
            int(a[row]) for a in (located.start, located.colon, located.pipe, located.end)
        )
        line = joined[start:end]
        name, _, rest = line.partition(b":")
        raw, _, tail = rest.partition(b"|")
        assert (joined[start:colon], joined[colon + 1 : pipe], joined[pipe + 1 : end]) == (name, raw, tail)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.binary(max_size=40).filter(lambda b: not set(b) & set(b"\n:|")), st.binary(max_size=70)),
        min_size=1,
        max_size=30,
    )
)
def test_equal_keys_hash_equal_and_distinct_keys_differ(keys: list[tuple[bytes, bytes]]) -> None:
    keys = [(name, tail.replace(b"\n", b"")) for name, tail in keys]
    values = [b"1", b"22.5", b"-3"]
    lines = [name + b":" + values[i % 3] + b"|" + tail for i, (name, tail) in enumerate(keys * 2)]
    _, _, words, located = scanned(lines)
    hashes = _scan.key_hashes(words, located).tolist()
    by_key: dict[tuple[bytes, bytes], int] = {}
    for key, key_hash in zip(keys * 2, hashes, strict=True):
        assert by_key.setdefault(key, key_hash) == key_hash  # the value does not take part
    assert len(set(by_key.values())) == len(by_key)  # 64 bits: no collision among a few keys


def test_hash_table_maps_batches_and_grows() -> None:
    rng = np.random.default_rng(7)
    table = _scan.HashTable(16)
    expected: dict[int, int] = {}
    for _ in range(8):
        # Keys crowded in the low bits collide in the table and probe on.
        keys = np.unique(rng.integers(0, 1 << 40, 500, dtype=np.int64).astype(np.uint64) << np.uint64(20))
        values = rng.integers(0, 1 << 40, len(keys), dtype=np.int64)
        table.insert_many(keys, values)
        expected.update(zip(keys.tolist(), values.tolist(), strict=True))
    table.insert_many(keys[:1], 5)  # an existing key: its value replaced
    expected[int(keys[0])] = 5
    absent = np.array([1 << 63, 3, 12345 << 21], dtype=np.uint64)
    found = table.lookup(np.concatenate([np.array(list(expected), dtype=np.uint64), absent]))
    assert found.tolist() == [*list(expected.values()), -1, -1, -1]
    assert table.size == len(expected)
    table.clear()
    assert table.size == 0
    assert table.lookup(keys).tolist() == [-1] * len(keys)


def test_hash_table_compact_sheds_dropped_keys() -> None:
    rng = np.random.default_rng(11)
    table = _scan.HashTable(16)
    keys = np.unique(rng.integers(0, 1 << 62, 5000, dtype=np.int64).astype(np.uint64))
    values = np.arange(len(keys), dtype=np.int64)
    table.insert_many(keys, values)
    room = len(table._keys)
    table.drop(lambda held: held % 10 != 0)  # keep every tenth
    table.compact()
    assert len(table._keys) < room
    assert table.size == len(keys[::10])
    expected = np.where(values % 10 == 0, values, -1)
    assert table.lookup(keys).tolist() == expected.tolist()
    table.insert_many(keys[1:2], 7)  # still a working table
    assert table.lookup(keys[1:2]).tolist() == [7]
