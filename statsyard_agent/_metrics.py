"""The agent's own health as Prometheus metrics, on a registry the app builds and passes in.

Hot-path counters are plain ints in :class:`AgentState`; :class:`StateCollector` turns a snapshot of
them into fresh metric families at scrape time (prometheus/client_python's custom-collector design), so
no metrics-library call sits on the per-packet path. Only the two latency histograms are library objects.
"""

from __future__ import annotations

import platform
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import __version__
from ._state import AgentState
from ._supervisor import Supervisor
from ._udp import kernel_drops

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class Telemetry:
    """The library-backed metrics that tasks observe directly."""

    registry: CollectorRegistry
    flush_seconds: Histogram
    write_seconds: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry) -> Telemetry:
        return cls(
            registry=registry,
            flush_seconds=Histogram(
                "statsyard_flush_duration_seconds",
                "Time to snapshot the aggregator and build one flush batch.",
                buckets=_LATENCY_BUCKETS, registry=registry,
            ),
            write_seconds=Histogram(
                "statsyard_write_duration_seconds",
                "Time to write one flush batch durably to the data directory.",
                buckets=_LATENCY_BUCKETS, registry=registry,
            ),
        )


@dataclass
class UdpSocketInfo:
    sock: socket.socket
    requested_rcvbuf: int
    granted_rcvbuf: int
    # The ingest workers' other SO_REUSEPORT sockets on the same port (drops are summed).
    more_socks: tuple[socket.socket, ...] = ()


class StateCollector(Collector):
    """Yields the agent's counters and gauges from the live state at each scrape."""

    def __init__(self, state: AgentState, supervisor: Supervisor,
                 udp: Callable[[], UdpSocketInfo | None]) -> None:
        self._state = state
        self._supervisor = supervisor
        self._udp = udp

    def collect(self) -> Iterator[Metric]:
        state = self._state
        ingest = state.ingest

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=value)

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        info = GaugeMetricFamily("statsyard_build_info", "Build information (always 1).",
                                 labels=["version", "python"])
        info.add_metric([__version__, platform.python_version()], 1)
        yield info
        yield counter("statsyard_udp_packets_received", "Datagrams received.", ingest.packets)
        yield counter("statsyard_udp_bytes_received", "Datagram bytes received.", ingest.bytes)
        yield counter("statsyard_udp_receive_errors", "Socket errors while receiving.",
                      ingest.receive_errors)
        yield counter("statsyard_lines_received", "Non-empty lines received (valid or not).",
                      ingest.lines)
        yield counter("statsyard_metrics_received", "Metric lines parsed (packed values count once "
                      "per value for gauges).", ingest.metrics)
        yield counter("statsyard_events_received", "DogStatsD events parsed.", ingest.events)
        yield counter("statsyard_service_checks_received", "DogStatsD service checks parsed.",
                      ingest.service_checks)
        errors = CounterMetricFamily("statsyard_parse_errors", "Lines refused by the parser.",
                                     labels=["reason"])
        for reason, count in sorted(ingest.parse_errors.items()):
            errors.add_metric([reason], count)
        yield errors

        udp = self._udp()
        if udp is not None:
            counts = [kernel_drops(sock) for sock in (udp.sock, *udp.more_socks)]
            if all(count is not None for count in counts):
                yield counter("statsyard_udp_kernel_drops",
                              "Datagrams the kernel dropped on our socket(s) (receive buffer "
                              "full).", sum(count or 0 for count in counts))
            rcvbuf = GaugeMetricFamily("statsyard_udp_rcvbuf_bytes",
                                       "SO_RCVBUF asked for and granted by the kernel.",
                                       labels=["kind"])
            rcvbuf.add_metric(["requested"], udp.requested_rcvbuf)
            rcvbuf.add_metric(["granted"], udp.granted_rcvbuf)
            yield rcvbuf

        yield counter("statsyard_ingest_worker_lost_datagrams",
                      "Datagrams an ingest worker received but had not shipped when it ended "
                      "(killed or crashed).", ingest.worker_lost_datagrams)
        yield counter("statsyard_ingest_worker_lost_lines",
                      "Lines in those datagrams.", ingest.worker_lost_lines)
        yield counter("statsyard_ingest_worker_recycles",
                      "Quiet ingest workers replaced by fresh processes to give back the memory "
                      "of the series they had forgotten (nothing is lost).", ingest.worker_recycles)

        aggregator = state.aggregator
        yield gauge("statsyard_series_active",
                    "Distinct name+type+tags keys held now (including idle within the TTL).",
                    aggregator.active_series)
        rejected = CounterMetricFamily("statsyard_series_rejected",
                                       "New series refused.", labels=["reason"])
        rejected.add_metric(["cardinality"], aggregator.rejected_series)
        yield rejected
        # Series are counted once per interval (a bounded set); this counts every lost metric.
        lost = CounterMetricFamily("statsyard_metrics_rejected",
                                   "Metrics dropped because their series was refused.",
                                   labels=["reason"])
        lost.add_metric(["cardinality"], aggregator.rejected_metrics)
        yield lost
        yield counter("statsyard_series_expired", "Series forgotten after the idle TTL.",
                      aggregator.expired_series)

        yield counter("statsyard_flushes", "Flushes completed.", state.flushes)
        yield gauge("statsyard_last_flush_timestamp_seconds", "Unix time of the last flush.",
                    state.last_flush_unix)
        yield gauge("statsyard_pending_snapshots", "Snapshots taken but not yet queued.",
                    len(state.pending_snapshots))
        writer = state.writer
        yield counter("statsyard_points_written", "Points written durably.", writer.points_written)
        yield counter("statsyard_batches_written", "Flush batches written durably.",
                      writer.batches_written)
        yield counter("statsyard_write_errors", "Failed write attempts (batches stay queued).",
                      writer.write_errors)
        yield gauge("statsyard_writer_queue_batches", "Flushed batches waiting to be written.",
                    len(state.queue))
        yield gauge("statsyard_writer_queue_points", "Points waiting to be written.",
                    state.queue.points)
        yield counter("statsyard_writer_dropped_batches",
                      "Batches dropped (oldest first) because the writer queue was full.",
                      state.queue.dropped_batches)
        yield counter("statsyard_writer_dropped_points", "Points in dropped batches.",
                      state.queue.dropped_points)
        stats = state.tsdb.stats
        yield counter("statsyard_storage_quarantined_partitions",
                      "Partitions that failed their checksum and were moved to quarantine/.",
                      stats.quarantined_partitions)
        yield gauge("statsyard_storage_series", "Series known to the storage index.", stats.series)

        restarts = CounterMetricFamily("statsyard_task_restarts", "Supervised task restarts.",
                                       labels=["task"])
        up = GaugeMetricFamily("statsyard_task_up", "1 while the supervised task is running.",
                               labels=["task"])
        for name, child in sorted(self._supervisor.children.items()):
            restarts.add_metric([name], child.restarts)
            up.add_metric([name], 1 if child.state == "running" else 0)
        yield restarts
        yield up
