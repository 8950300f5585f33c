"""State that must outlive any one task: it belongs to the supervisor and is handed to the tasks.

A listener that crashes and restarts finds the same aggregator (no counts lost); a writer that crashes
finds the same queue of flushed batches; a flusher finds the snapshots it took but had not yet queued.
Plain integer counters live here too: the per-packet hot path bumps ints, and the Prometheus collector
reads them at scrape time, so no metrics library call sits on the hot path.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field

import trio

from ._aggregate import Aggregator, Snapshot
from ._config import AgentConfig
from ._faults import FaultInjector
from ._protocol import Parser
from ._queue import BatchQueue
from .storage import TSDB


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


@dataclass
class WriterHealth:
    points_written: int = 0
    batches_written: int = 0
    write_errors: int = 0
    consecutive_failures: int = 0
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

    def wake_writer(self) -> None:
        self.writer_wakeup.set()

    def handle_datagram(self, data: bytes) -> None:
        """Parse one datagram and aggregate what it held. The hot path: ints and dicts only."""
        result = self.parser.parse_datagram(data)
        ingest = self.ingest
        ingest.packets += 1
        ingest.bytes += len(data)
        ingest.lines += result.lines
        aggregator = self.aggregator
        add = aggregator.add
        for metric in result.metrics:
            add(metric)
        ingest.metrics += len(result.metrics)
        if result.events:
            ingest.events += len(result.events)
            for event in result.events:
                aggregator.add_event(event)
        if result.service_checks:
            ingest.service_checks += len(result.service_checks)
            for check in result.service_checks:
                aggregator.add_service_check(check)
        if result.errors:
            for error in result.errors:
                ingest.parse_errors[error.reason] += 1
