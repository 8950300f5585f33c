"""The index's names column (``storage._names.NameColumn``): a ``list[str]``'s answers from
compressed blocks. Pinned: every string (separator, NUL, non-ASCII, lone surrogates, empty)
round-trips through ``[i]``, slices, iteration and bulk ``take``, with names inside one block,
straddling blocks or in the open tail (tiny blocks force every case); ``matches`` is exactly
list equality of a range; the separator fast paths and the fallbacks agree."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from statsyard_agent.storage import _names
from statsyard_agent.storage._names import NameColumn

_NAMES = st.lists(st.text(alphabet="ab.\n\x00é\ud800", max_size=5), max_size=12)
#: Tiny blocks put most names across block boundaries; the real size keeps small columns in
#: the open tail.
_BLOCKS = st.sampled_from([1, 3, 8, 1 << 16])


@pytest.fixture(autouse=True)
def _restore_block_size() -> Iterator[None]:
    # Hypothesis tests set the block size per example (a function-scoped monkeypatch would
    # span all examples); put the real one back after every test.
    yield
    _names.BLOCK_BYTES = 1 << 16


@pytest.fixture(params=[3, 1 << 16])
def block(request: pytest.FixtureRequest) -> int:
    _names.BLOCK_BYTES = request.param
    return int(request.param)


def _column(chunks: list[list[str]], block: int) -> tuple[NameColumn, list[str]]:
    """A column with blocks of ``block`` bytes (for the rest of the test), fed ``chunks`` one
    ``extend`` each."""
    _names.BLOCK_BYTES = block
    column = NameColumn()
    expected: list[str] = []
    for chunk in chunks:
        column.extend(chunk)
        expected += chunk
    return column, expected


@given(st.lists(_NAMES, max_size=4), _BLOCKS, st.data())
def test_agrees_with_a_list(chunks: list[list[str]], block: int, data: st.DataObject) -> None:
    column, expected = _column(chunks, block)
    assert len(column) == len(expected)
    assert column[:] == expected
    assert list(column) == expected
    assert column == expected
    for i, name in enumerate(expected):
        assert column[i] == name
        assert column[i - len(expected)] == name
    if expected:
        ids = data.draw(st.lists(st.integers(0, len(expected) - 1), max_size=20))
        assert column.take(ids) == [expected[i] for i in ids]
        assert column.take(np.array(ids, dtype=np.int64)) == [expected[i] for i in ids]
        first = data.draw(st.integers(0, len(expected)))
        last = data.draw(st.integers(first, len(expected)))
        assert column.matches(first, expected[first:last])
        assert column[first:last] == expected[first:last]


@given(_NAMES, _NAMES, _BLOCKS, st.data())
def test_matches_only_equal_names(
    names: list[str], other: list[str], block: int, data: st.DataObject
) -> None:
    column, _ = _column([names], block)
    first = data.draw(st.integers(0, len(names)))
    assert column.matches(first, other) == (names[first : first + len(other)] == other)


@pytest.mark.parametrize(
    ("stored", "asked", "same"),
    [
        (["ab", "c"], ["a", "bc"], False),  # same text, other boundaries
        (["a\nb", "c"], ["a", "b\nc"], False),  # the separator inside names (fallback path)
        (["a", "b"], ["a\nb"], False),
        (["é", "x"], ["é", "x"], True),  # non-ASCII (fallback path)
        (["\ud800", ""], ["\ud800", ""], True),  # a lone surrogate, an empty name
        ([], [], True),
        (["a"], ["a", "b"], False),  # beyond the end
    ],
)
def test_matches_table(stored: list[str], asked: list[str], same: bool, block: int) -> None:
    assert NameColumn(stored).matches(0, asked) is same


def test_out_of_range(block: int) -> None:
    column = NameColumn(["a", "b"])
    with pytest.raises(IndexError):
        column[2]
    with pytest.raises(IndexError):
        column.take([0, 5])
    assert not column.matches(-1, ["a"])
    assert column.take([]) == []
    assert column[5:] == []


def test_metric_names_compress() -> None:
    stats = ["count", "count_ps", "sum", "sum_squares", "mean", "median", "upper", "lower"]
    names = [f"stats.timers.app.request.t{i}.{s}" for s in stats for i in range(20_000)]
    column = NameColumn(names)
    # Well under the names' own bytes: ~15x compression, plus a 4-byte offset per name.
    assert column.nbytes < sum(map(len, names)) / 4
    assert column.take(range(len(names))) == names
    picked = [0, 70_000, 159_999, 12_345]
    assert column.take(picked) == [names[i] for i in picked]  # few names, far apart
    assert column[81_234] == names[81_234]
    assert column.matches(40_000, names[40_000:90_000])


def test_offsets_widen_past_the_uint32_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_names, "_NARROW_ENDS_LIMIT", 12)
    column = NameColumn(["abc", "de"])
    assert column._ends.dtype == np.uint32
    column.extend(["fghij", "", "k"])  # 16 bytes with separators: past the (patched) limit
    assert column._ends.dtype == np.int64
    assert column[:] == ["abc", "de", "fghij", "", "k"]
    assert column.matches(1, ["de", "fghij"])


@given(_NAMES, _NAMES, _BLOCKS, st.data())
def test_recent_names_read_from_the_list_agree(
    old: list[str], new: list[str], block: int, data: st.DataObject
) -> None:
    column, expected = _column([old, new], block)
    if not expected:
        return
    ids = data.draw(st.lists(st.integers(0, len(expected) - 1), max_size=20))
    start = data.draw(st.integers(0, len(expected)))
    with column.recent(len(old), new):
        assert column.take(ids) == [expected[i] for i in ids]
        assert column[start:] == expected[start:]
        assert column.take(range(start, len(expected))) == expected[start:]
        with pytest.raises(IndexError):
            column.take([len(expected)])
    assert column._recent is None
