"""State that must outlive any one task: it belongs to the supervisor and is handed to the tasks.

A listener that crashes and restarts finds the same aggregator (no counts lost); a writer that crashes
finds the same queue of flushed batches; a flusher finds the snapshots it took but had not yet queued.
Plain integer counters live here too: the per-packet hot path bumps ints, and the Prometheus collector
reads them at scrape time, so no metrics library call sits on the hot path.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from ._aggregate import Aggregator, Snapshot
from ._config import AgentConfig
from ._faults import FaultInjector
from ._ingest import EVICT_AFTER_FLUSHES, PreAggregator
from ._protocol import Parser
from ._queue import BatchQueue
from ._tags import BatchTagger
from ._types import FlushBatch
from .storage import TSDB

if TYPE_CHECKING:
    from .forward import ForwardHub


@dataclass
class IngestCounters:
    packets: int = 0
    bytes: int = 0
    lines: int = 0
    metrics: int = 0
    events: int = 0
    service_checks: int = 0
    parse_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    receive_errors: int = 0
    # Received by an ingest worker process that ended before shipping them (statsyard_agent._workers).
    worker_lost_datagrams: int = 0
    worker_lost_lines: int = 0
    # Idle workers replaced to give back the memory of series they forgot (statsyard_agent._workers).
    worker_recycles: int = 0


@dataclass
class WriterHealth:
    points_written: int = 0
    batches_written: int = 0
    write_errors: int = 0
    consecutive_failures: int = 0
    # Maintenance (sealing, rollups) creates files: a read-only or full disk shows here first.
    maintenance_failures: int = 0  # in a row
    maintenance_error: str = ""
    last_error: str = ""
    last_write_unix: float = 0.0


@dataclass
class AgentState:
    config: AgentConfig
    parser: Parser
    aggregator: Aggregator
    tsdb: TSDB
    faults: FaultInjector
    queue: BatchQueue
    pending_snapshots: list[Snapshot] = field(default_factory=list)
    ingest: IngestCounters = field(default_factory=IngestCounters)
    writer: WriterHealth = field(default_factory=WriterHealth)
    flushes: int = 0
    last_flush_unix: float = field(default_factory=time.time)
    writer_wakeup: trio.Event = field(default_factory=trio.Event)
    flush_lock: trio.Lock = field(default_factory=trio.Lock)
    queue_drained: trio.Event = field(default_factory=trio.Event)
    # Adds the agent-wide tags (config, environment, host) to each batch as it is built.
    batch_tagger: BatchTagger = field(default_factory=BatchTagger)
    # Forwarding (statsyard_agent.forward): gets each queued batch; the relay gets raw datagrams.
    forward: ForwardHub | None = None
    relay: Callable[[bytes], None] | None = None
    # The receive path's fast pre-aggregation (statsyard_agent._ingest); merged at each flush.
    preagg: PreAggregator = field(init=False)
    # Called before each snapshot to gather partial aggregates held elsewhere (ingest workers).
    collectors: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # rejected_series when the cardinality warning was last logged (once per interval).
    rejected_series_logged: int = 0
    # Called with each batch once it is queued (the /metrics/statsd exporter); must be cheap
    # and must not raise: it runs on the event loop inside the flush.
    batch_observers: list[Callable[[FlushBatch], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.preagg = PreAggregator(
            self.parser, self.ingest, self.config.aggregator.max_series, EVICT_AFTER_FLUSHES
        )

    def wake_writer(self) -> None:
        self.writer_wakeup.set()

    def handle_datagrams(self, datagrams: list[bytes]) -> None:
        """Relay, count and pre-aggregate a batch of datagrams, in order (merged into the
        aggregator at the next flush; vectorised by ``PreAggregator.feed_many``)."""
        if self.relay is not None:
            for data in datagrams:
                self.relay(data)
        ingest = self.ingest
        ingest.packets += len(datagrams)
        ingest.bytes += sum(map(len, datagrams))
        self.preagg.feed_many(datagrams)

    def merge_preaggregated(self) -> None:
        """Fold what the receive path pre-aggregated into the aggregator's open interval."""
        partial = self.preagg.take_or_age()
        if partial is not None:
            self.aggregator.merge(partial)
