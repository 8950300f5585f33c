"""The writer queue: bounded, drop-oldest (counted), never dropping the batch being written."""

from __future__ import annotations

import numpy as np
import pytest

from statsyard_agent._queue import BatchQueue
from statsyard_agent._types import FlushBatch, Rollup


def batch(timestamp: int, points: int = 2) -> FlushBatch:
    return FlushBatch(timestamp=timestamp, interval=10.0,
                      names=tuple(f"s{i}" for i in range(points)), tags=((),) * points,
                      rollups=(Rollup.SUM,) * points, values=np.zeros(points))


def test_write_cycle_removes_only_after_done() -> None:
    queue = BatchQueue(3)
    first, second = batch(10), batch(20)
    queue.push(first)
    queue.push(second)
    assert queue.begin() is first
    queue.abort()  # a failed write leaves it at the head
    assert queue.begin() is first
    queue.done(first)
    assert queue.begin() is second
    queue.done(second)
    assert queue.begin() is None
    assert len(queue) == 0


def test_overflow_drops_the_oldest_and_counts_it() -> None:
    queue = BatchQueue(2)
    batches = [batch(t, points=3) for t in (10, 20, 30, 40)]
    for b in batches:
        queue.push(b)
    assert len(queue) == 2
    assert queue.dropped_batches == 2
    assert queue.dropped_points == 6
    assert queue.begin() is batches[2]


def test_overflow_spares_the_batch_being_written() -> None:
    queue = BatchQueue(2)
    in_flight = batch(10)
    queue.push(in_flight)
    assert queue.begin() is in_flight
    newer = [batch(t) for t in (20, 30, 40)]
    for b in newer:
        queue.push(b)
    assert len(queue) == 2
    assert queue.dropped_batches == 2
    queue.done(in_flight)
    assert queue.begin() is newer[-1]


def test_bound_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_batches"):
        BatchQueue(0)
