"""The index's ``(name, tags) -> id`` table: a dict's answers without a dict's memory.

Pinned: bulk :meth:`KeyTable.find` and the ``Mapping`` face agree with a plain dict built from
the same registrations (first definition wins, ascending id order), across growth and with
keys that share a slot; a key is confirmed by comparison, never by its hash alone.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from statsyard_agent._types import Tags
from statsyard_agent.storage._index import _add_first
from statsyard_agent.storage._keytable import KeyTable, distinct, hash_keys

_TAGS: list[Tags] = [(), (("env", "prod"),), (("env", "dev"), ("host", "h"))]


def _table(keys: list[tuple[str, Tags]], chunk: int) -> tuple[KeyTable, dict[tuple[str, Tags], int]]:
    """Register ``keys`` as consecutive ids ``chunk`` at a time, as the index does; and the
    dict the index used to keep for the same registrations."""
    names: list[str] = []
    tags: list[Tags] = []
    table = KeyTable(names, tags)
    expected: dict[tuple[str, Tags], int] = {}
    for start in range(0, len(keys), chunk):
        part = keys[start : start + chunk]
        names += [name for name, _ in part]
        tags += [t for _, t in part]
        ids = np.arange(start, start + len(part), dtype=np.int64)
        _add_first(table, ids, [name for name, _ in part], [t for _, t in part])
        for key, sid in zip(part, ids.tolist(), strict=True):
            expected.setdefault(key, sid)
    return table, expected


_keys = st.lists(st.tuples(st.text(alphabet="ab.é\x00", max_size=4), st.sampled_from(_TAGS)), max_size=80)


@given(_keys, st.integers(1, 30), _keys)
def test_agrees_with_a_dict(keys: list[tuple[str, Tags]], chunk: int, probes: list[tuple[str, Tags]]) -> None:
    table, expected = _table(keys, chunk)
    assert len(table) == len(expected)
    assert list(table.items()) == list(expected.items())
    assert list(table) == list(expected)
    assert table == expected
    asked = keys + probes
    names = [name for name, _ in asked]
    tags = [t for _, t in asked]
    found = table.find(hash_keys(names, tags), names, tags).tolist()
    assert found == [expected.get(key, -1) for key in asked]
    for key in asked:
        assert table.get(key) == expected.get(key)
        assert (key in table) is (key in expected)


def test_growth_and_crowded_slots_keep_every_key() -> None:
    # 5000 keys through a table that starts with 16 slots: many growths, long probe runs.
    keys = [(f"s{i}.count", _TAGS[i % 3]) for i in range(5000)]
    table, expected = _table(keys, 700)
    assert table == expected
    names = [name for name, _ in keys]
    tags = [t for _, t in keys]
    assert table.find(hash_keys(names, tags), names, tags).tolist() == list(range(5000))
    assert 2 * len(table) <= len(table._slots) <= 4 * len(table) + 16


def test_a_matching_hash_is_not_enough() -> None:
    table, _ = _table([("a", ()), ("b", ())], 2)
    # The hash of a key the table holds, with another key: confirmed by comparison, so absent.
    fake = hash_keys(["a"], [()])
    assert table.find(fake, ["zzz"], [()]).tolist() == [-1]
    assert table.find(fake, ["a"], [(("k", "v"),)]).tolist() == [-1]


def test_odd_keys_are_absent_not_errors() -> None:
    table, _ = _table([("a", ())], 1)
    for key in ("a", ("a",), ("a", (), 1), ("a", [])):
        assert key not in table  # type: ignore[comparison-overlap, operator]
    assert table.get(("nope", ())) is None


def test_distinct() -> None:
    assert distinct(np.array([], dtype=np.int64))
    assert distinct(np.array([3, 1, 2], dtype=np.int64))
    assert not distinct(np.array([3, 1, 3], dtype=np.int64))
