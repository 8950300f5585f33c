"""The flusher and the writer tasks, and the final flush at shutdown.

Flow: the flusher swaps the aggregator's buckets for fresh ones (cheap, on the event loop), builds the
columnar batch in a worker thread (numpy, off the receive path), and queues it; the writer takes the
queue's head, writes it durably in a worker thread, and only then removes it. Snapshots and batches live
in the supervisor-owned state until they are safely queued and written, so a crash of either task loses
nothing.
"""

from __future__ import annotations

import gc
import logging
import math
import time

import trio

from ._exceptions import StorageError
from ._faults import InjectedFault
from ._metrics import Telemetry
from ._reopen import reopen_if_replaced
from ._state import AgentState
from ._types import FlushBatch

log = logging.getLogger(__name__)


async def flush_once(state: AgentState, telemetry: Telemetry, now: float | None = None) -> None:
    """Close the open interval at ``now`` (default: the wall clock) and queue its batch.

    The batch is stamped with ``ceil(now)`` and the real elapsed time since the previous flush, so
    rates are per second of what was actually covered (a shutdown flush covers a partial interval).
    """
    async with state.flush_lock:
        now = time.time() if now is None else now
        started = time.perf_counter()
        for collect in state.collectors:  # partial aggregates of the ingest workers
            await collect()
        state.merge_preaggregated()
        interval = max(now - state.last_flush_unix, 1e-3)
        snapshot = state.aggregator.take_snapshot(math.ceil(now), interval)
        _log_refused_series(state)
        state.pending_snapshots.append(snapshot)
        state.last_flush_unix = now
        await queue_pending_snapshots(state)
        state.flushes += 1
        telemetry.flush_seconds.observe(time.perf_counter() - started)


def _log_refused_series(state: AgentState) -> None:
    """Once per interval: say that the cardinality cap refused new series, and how many."""
    aggregator = state.aggregator
    refused = aggregator.rejected_series - state.rejected_series_logged
    if refused > 0:
        state.rejected_series_logged = aggregator.rejected_series
        log.warning(
            "max_series=%d reached: %d new series refused in the interval just flushed (existing "
            "series keep working; see statsyard_series_rejected_total{reason=\"cardinality\"})",
            aggregator.config.max_series, refused,
        )


async def queue_pending_snapshots(state: AgentState) -> None:
    """Turn every pending snapshot into a queued batch, oldest first.

    A snapshot leaves ``pending_snapshots`` only once its batch is in the queue; if this is
    cancelled or crashes midway, the next call (restart or shutdown) picks it up again.
    """
    while state.pending_snapshots:
        snapshot = state.pending_snapshots[0]
        batch = await trio.to_thread.run_sync(state.batch_tagger.build, snapshot)
        state.faults.check("flusher")
        state.queue.push(batch)
        if state.forward is not None:
            state.forward.offer(batch)
        del state.pending_snapshots[0]
        state.wake_writer()
        for observe in state.batch_observers:
            observe(batch)


async def run_flusher(state: AgentState, telemetry: Telemetry) -> None:
    """Flush at every multiple of the flush interval (aligned to the wall clock)."""
    interval = state.config.flush_interval
    await queue_pending_snapshots(state)  # left by a crashed predecessor
    while True:
        boundary = (math.floor(time.time() / interval) + 1) * interval
        await trio.sleep(max(0.0, boundary - time.time()))
        await flush_once(state, telemetry, now=max(float(boundary), time.time()))


def _record_written(state: AgentState, written: int) -> None:
    health = state.writer
    health.points_written += written
    health.batches_written += 1
    health.consecutive_failures = 0
    health.last_error = ""
    health.last_write_unix = time.time()


def _timed_write(state: AgentState, telemetry: Telemetry, batch: FlushBatch) -> int:
    """Blocking (worker thread): write one batch durably and time it."""
    started = time.perf_counter()
    try:
        state.faults.check("disk")
    except InjectedFault as exc:
        raise StorageError("injected disk failure") from exc
    state.faults.stall("slow_disk")
    # TSDB.write gives the heap's free pages back itself (statsyard_agent._heap): no trim here.
    written = state.tsdb.write(batch)
    telemetry.write_seconds.observe(time.perf_counter() - started)
    return written


async def run_writer(state: AgentState, telemetry: Telemetry) -> None:
    """Write queued batches durably; on a storage error keep them queued and retry with backoff."""
    backoff = 0.1
    health = state.writer
    while True:
        if not len(state.queue):
            state.writer_wakeup = trio.Event()
            with trio.move_on_after(state.config.flush_interval):
                await state.writer_wakeup.wait()
            await _maintain(state)
            continue
        state.faults.check("writer")
        batch = state.queue.begin()
        assert batch is not None
        try:
            # Shielded: once a write has started it completes and the batch leaves the queue with
            # no checkpoint in between, so a batch is never both written and still queued (which
            # would write it twice after a restart or at shutdown).
            with trio.CancelScope(shield=True):
                written = await trio.to_thread.run_sync(_timed_write, state, telemetry, batch)
                state.queue.done(batch)
        except StorageError as exc:
            state.queue.abort()
            health.write_errors += 1
            health.consecutive_failures += 1
            health.last_error = str(exc)
            log.error("write failed (%d batches queued, retrying in %.1f s): %s",
                      len(state.queue), backoff, exc)
            if await reopen_if_replaced(state):  # the directory was removed or replaced
                continue
            await trio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
            continue
        _record_written(state, written)
        # The batch (~100 B per point: 800k names for 100k series) must not outlive its write:
        # the loop may wait a whole interval before the next one.
        del batch
        freeze_long_lived()
        backoff = 0.1
        if not len(state.queue):
            state.queue_drained.set()
            await _maintain(state)


def freeze_long_lived() -> None:
    """Move every object alive now out of the garbage collector's reach (``gc.freeze``).

    Why: the storage index and the aggregator hold hundreds of thousands of long-lived container
    objects. CPython runs a full collection once the objects that survived young collections
    exceed a quarter of the long-lived ones, and each interval's partial aggregates and batches
    make that happen every few seconds under load: measured here with 800k stored series, a full
    collection took 0.4-0.5 s, in the middle of unpickling a worker's partial (50 ms without it).
    Frozen objects are still freed by reference counting when they die; only a reference cycle
    that dies after being frozen is never reclaimed, and the agent's long-lived structures
    (dicts, tuples, arrays) hold none. So the young generations are collected first (a few ms:
    they hold only what was allocated since the last write), so that no young garbage cycle is
    frozen; young garbage created later is collected as usual.
    """
    gc.collect(1)
    gc.freeze()


async def _maintain(state: AgentState) -> None:
    try:
        await trio.to_thread.run_sync(state.tsdb.maintain, time.time())
    except StorageError as exc:
        state.writer.last_error = f"maintenance: {exc}"
        state.writer.maintenance_failures += 1
        state.writer.maintenance_error = str(exc)
        log.error("storage maintenance failed: %s", exc)
    else:
        state.writer.maintenance_failures = 0
        state.writer.maintenance_error = ""


def drain_queue_blocking(state: AgentState, telemetry: Telemetry) -> int:
    """At shutdown: write everything queued; return the points that could not be written."""
    while (batch := state.queue.begin()) is not None:
        try:
            written = _timed_write(state, telemetry, batch)
        except StorageError as exc:
            state.queue.abort()
            lost = state.queue.points
            log.error("final write failed, %d points in %d batches not written: %s",
                      lost, len(state.queue), exc)
            return lost
        state.queue.done(batch)
        _record_written(state, written)
    return 0
