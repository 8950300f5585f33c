"""Forwarding's own metrics, and the agent's metrics as a batch to forward upstream.

:class:`ForwardCollector` yields the per-sink families at scrape time from the sinks' plain
counters (no metrics-library call on the send path). :func:`registry_batch` turns a scrape of
the agent's registry into a :class:`FlushBatch`, so the fleet's agents are visible upstream
(``self_metrics = true`` on a sink).
"""

from __future__ import annotations

import math
import socket
from collections.abc import Iterator

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from statsyard_agent._types import FlushBatch, Rollup, Tags

from ._hub import ForwardHub


class ForwardCollector(Collector):
    """``statsyard_forward_*{sink}`` from the hub's sinks and relays."""

    def __init__(self, hub: ForwardHub) -> None:
        self._hub = hub

    def collect(self) -> Iterator[Metric]:
        hub = self._hub
        label = ["sink"]
        sent = CounterMetricFamily(
            "statsyard_forward_points_sent",
            "Points the upstream confirmed (relay: lines sent).",
            labels=label,
        )
        retried = CounterMetricFamily(
            "statsyard_forward_points_retried",
            "Points in failed sends that stay spooled and are retried.",
            labels=label,
        )
        dropped = CounterMetricFamily(
            "statsyard_forward_points_dropped",
            "Points given up: spool_full (drop-oldest), queue_full (spooling stalled), rejected "
            "(HTTP 4xx), unencodable (e.g. Inf in Graphite), send_error (relay).",
            labels=["sink", "reason"],
        )
        failures = CounterMetricFamily(
            "statsyard_forward_send_failures", "Failed send attempts.", labels=label
        )
        spool_bytes = GaugeMetricFamily(
            "statsyard_forward_spool_bytes",
            "Bytes on disk in the sink's spool (relay: buffered).",
            labels=label,
        )
        spool_points = GaugeMetricFamily(
            "statsyard_forward_spool_points", "Points spooled and not yet confirmed.", labels=label
        )
        oldest = GaugeMetricFamily(
            "statsyard_forward_oldest_unsent_seconds",
            "Age of the oldest point not yet confirmed (0: none).",
            labels=label,
        )
        corrupt = CounterMetricFamily(
            "statsyard_forward_spool_corrupt_bytes",
            "Spool bytes cut off because they failed their checksum.",
            labels=label,
        )
        for sink in hub.sinks:
            name = [sink.name]
            counters = sink.counters
            sent.add_metric(name, counters.sent_points)
            retried.add_metric(name, counters.retried_points)
            for reason in sink.DROP_REASONS:
                dropped.add_metric([sink.name, reason], counters.dropped_points[reason])
            failures.add_metric(name, counters.send_failures)
            spool_bytes.add_metric(name, sink.spool.disk_bytes)
            spool_points.add_metric(name, sink.spool.pending_points)
            oldest.add_metric(name, sink.lag_seconds())
            corrupt.add_metric(name, sink.spool.corrupt_bytes)
        for relay in hub.relays:
            name = [relay.name]
            counters = relay.counters
            sent.add_metric(name, counters.sent_points)
            retried.add_metric(name, 0)
            for reason in relay.DROP_REASONS:
                dropped.add_metric([relay.name, reason], counters.dropped_points[reason])
            failures.add_metric(name, counters.send_failures)
            spool_bytes.add_metric(name, relay.buffered_bytes)
            oldest.add_metric(name, relay.lag_seconds())
        yield from (sent, retried, dropped, failures, spool_bytes, spool_points, oldest, corrupt)
        yield GaugeMetricFamily(
            "statsyard_forward_inbox_batches",
            "Flushed batches waiting to be spooled for forwarding.",
            value=hub.inbox_batches,
        )


def registry_batch(registry: CollectorRegistry, timestamp: int, instance: str | None = None) -> FlushBatch:
    """One point per sample of ``registry`` (``_created`` samples skipped), tagged with the
    sample's labels plus ``instance`` (default: the host name)."""
    instance = instance or socket.gethostname()
    names: list[str] = []
    tags: list[Tags] = []
    values: list[float] = []
    for family in registry.collect():
        for sample in family.samples:
            if sample.name.endswith("_created") or not math.isfinite(sample.value):
                continue
            labels = dict(sample.labels)
            labels.setdefault("instance", instance)
            names.append(sample.name)
            tags.append(tuple(sorted(labels.items())))
            values.append(float(sample.value))
    return FlushBatch(
        timestamp,
        0.0,
        tuple(names),
        tuple(tags),
        (Rollup.LAST,) * len(names),
        np.array(values, dtype=np.float64),
    )
