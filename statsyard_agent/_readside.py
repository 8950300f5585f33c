"""The read side the app wires next to the health routes: the Graphite API, the dashboard and the
opt-in ``/metrics/statsd`` exposition, with the reader pool and the exporter's task they need."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

from prometheus_client import CollectorRegistry

from ._api import Route
from ._config import AgentConfig
from ._dashboard import make_dashboard_routes
from ._graphite import ReaderPool, make_graphite_routes
from ._promexport import ExporterCollector, StatsdExporter, make_exporter_route, run_exporter
from ._state import AgentState
from ._supervisor import Supervisor


@dataclass
class ReadSide:
    routes: tuple[Route, ...]
    pool: ReaderPool
    exporter: StatsdExporter | None

    def tasks(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        """Supervised tasks to start: ``(name, task)``."""
        if self.exporter is None:
            return []
        return [("prometheus_exporter", partial(run_exporter, self.exporter))]

    def close(self) -> None:
        self.pool.close()


def open_read_side(
    config: AgentConfig, state: AgentState, supervisor: Supervisor, registry: CollectorRegistry
) -> ReadSide:
    """Build the routes; with ``[prometheus] enabled``, the exporter starts observing every
    flushed batch from now on (its counters count from the agent's start)."""
    pool = ReaderPool(config.data_dir)
    exporter = None
    if config.prometheus.enabled:
        exporter = StatsdExporter(config.prometheus, config.aggregator.prefix)
        state.batch_observers.append(exporter.observe)
        registry.register(ExporterCollector(exporter))
    routes = (
        make_exporter_route(exporter),
        make_graphite_routes(pool, config.graphite),
        make_dashboard_routes(state, supervisor, registry, pool),
    )
    return ReadSide(routes, pool, exporter)
