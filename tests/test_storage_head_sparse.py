"""A head window slot kept sparse (one flush covering few rows, ``HeadWindow.sparse``) answers
exactly as the dense column would: ``read``, ``export`` and ``points`` agree bit for bit with a
window that never goes sparse, across new rows arriving later, second flushes into the slot
(accumulation, MEAN weights by sibling) and every rollup."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statsyard_agent._types import Rollup
from statsyard_agent.storage import _head
from statsyard_agent.storage._head import HeadWindow

SLOTS = 6
STEP = 10
N_IDS = 12
# id 2k+1 is the count sibling of id 2k when id 2k is a MEAN series.
_CODES = st.sampled_from([int(r) for r in Rollup])

_flush = st.tuples(
    st.integers(0, SLOTS - 1),
    st.sampled_from([5.0, 10.0, 20.0]),
    st.sets(st.integers(0, N_IDS - 1), min_size=1, max_size=N_IDS),
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=N_IDS, max_size=N_IDS),
)


def _run(
    monkeypatch: pytest.MonkeyPatch,
    sparse_bytes: int,
    codes: list[int],
    flushes: list[tuple[int, float, set[int], list[float]]],
) -> HeadWindow:
    monkeypatch.setattr(_head, "_SPARSE_POINT_BYTES", sparse_bytes)
    window = HeadWindow(0, STEP, SLOTS)
    code_array = np.array(codes, dtype=np.uint8)
    siblings = np.array([i + 1 if i % 2 == 0 and codes[i] == Rollup.MEAN else -1 for i in range(N_IDS)])
    for slot, interval, chosen, values in flushes:
        ids = np.array(sorted(chosen), dtype=np.int64)
        vals = np.array(values)[ids]
        weights = np.full(len(ids), np.nan)
        for j, sid in enumerate(ids.tolist()):
            if siblings[sid] >= 0 and siblings[sid] in chosen:
                weights[j] = abs(values[siblings[sid]])
        window.apply(slot, interval, ids, vals, code_array[ids], weights, siblings)
    return window


@settings(max_examples=60, deadline=None)
@given(st.lists(_CODES, min_size=N_IDS, max_size=N_IDS), st.lists(_flush, max_size=8))
def test_sparse_slots_answer_like_dense_ones(codes: list[int], flushes: list) -> None:  # type: ignore[type-arg]
    with pytest.MonkeyPatch.context() as mp:
        dense = _run(mp, 10**9, codes, flushes)  # pairs never smaller than a column: dense
        sparse = _run(mp, 0, codes, flushes)  # pairs always smaller: sparse whenever possible
    assert dense.sparse == {}
    ids = np.arange(N_IDS + 3, dtype=np.int64)  # some ids never seen
    np.testing.assert_array_equal(sparse.read(ids, 0, SLOTS), dense.read(ids, 0, SLOTS))
    np.testing.assert_array_equal(
        sparse.read(ids[::-1].copy(), 1, SLOTS - 1), dense.read(ids[::-1].copy(), 1, SLOTS - 1)
    )
    got, want = sparse.export(), dense.export()
    np.testing.assert_array_equal(got[0], want[0])
    assert got[1].tobytes() == want[1].tobytes()
    assert sparse.points == dense.points


def test_an_idle_flush_stays_sparse_until_a_second_flush() -> None:
    window = HeadWindow(0, STEP, SLOTS)
    all_ids = np.arange(30, dtype=np.int64)
    sums = np.full(30, int(Rollup.SUM), dtype=np.uint8)
    nan = np.full(30, np.nan)
    window.apply(0, 10.0, all_ids, np.ones(30), sums, nan, np.full(30, -1))
    window.apply(1, 10.0, all_ids[:5], np.zeros(5), sums[:5], nan[:5], np.full(30, -1))
    assert list(window.sparse) == [1]
    assert window.points == 35
    window.apply(1, 10.0, all_ids[3:8], np.ones(5), sums[3:8], nan[3:8], np.full(30, -1))
    assert window.sparse == {}
    np.testing.assert_array_equal(window.read(all_ids[:9], 1, 2)[:, 0], [0, 0, 0, 1, 1, 1, 1, 1, np.nan])


def test_idle_flushes_share_the_previous_slots_arrays_and_read_back_exactly() -> None:
    """Idle series write the same points every flush: a sparse slot equal to the one before it
    holds the same arrays (no new memory), and every slot still answers its own values, also
    after a second flush into one of them (densified, the neighbours untouched)."""
    window = HeadWindow(0, STEP, SLOTS)
    n = 40
    all_ids = np.arange(n, dtype=np.int64)
    sums = np.full(n, int(Rollup.SUM), dtype=np.uint8)
    nan = np.full(n, np.nan)
    none = np.full(n, -1)
    window.apply(0, 10.0, all_ids, np.ones(n), sums, nan, none)  # every row: dense
    idle = all_ids[::4]
    for slot in (1, 2, 3):
        window.apply(slot, 10.0, idle, np.zeros(len(idle)), sums[idle], nan[idle], none)
    changed = np.zeros(len(idle))
    changed[2] = 5.0
    window.apply(4, 10.0, idle, changed, sums[idle], nan[idle], none)
    s1, s2, s3, s4 = (window.sparse[slot] for slot in (1, 2, 3, 4))
    for later in (s2, s3, s4):
        assert later[0] is s1[0]  # same rows: one array
    for later in (s2, s3):
        assert later[1] is s1[1]  # same values: one array
    assert s4[1] is not s1[1]
    window.apply(2, 10.0, idle[:3], np.full(3, 7.0), sums[:3], nan[:3], none)  # a second flush
    assert 2 not in window.sparse
    got = window.read(idle[:4], 1, 5)
    np.testing.assert_array_equal(got[:, 0], [0, 0, 0, 0])  # slot 1 untouched by slot 2's change
    np.testing.assert_array_equal(got[:, 1], [7, 7, 7, 0])
    np.testing.assert_array_equal(got[:, 2], [0, 0, 0, 0])
    np.testing.assert_array_equal(got[:, 3], [0, 0, 5, 0])
