"""HTTP routes: the agent's own health (``/metrics``, ``/healthz``) and an index page."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from . import __version__
from ._http import Handler, Request, Response
from ._state import AgentState
from ._supervisor import Supervisor

_INDEX = f"""statsyard-agent {__version__}

GET /metrics   the agent's own health in Prometheus text format
GET /healthz   200 with each task's state as JSON; 503 when a task crash-loops or writes fail
"""


def health_report(state: AgentState, supervisor: Supervisor) -> tuple[bool, dict[str, object]]:
    """(healthy, body) for /healthz. Unhealthy: a task crash-looping or not running, or writes failing."""
    problems: list[str] = []
    tasks = {}
    for name, child in sorted(supervisor.children.items()):
        tasks[name] = {"state": child.state, "restarts": child.restarts,
                       "last_error": child.last_error}
        if child.state in ("restarting", "failed"):
            problems.append(f"task {name} is {child.state}: {child.last_error}")
    if supervisor.crash_looping():
        problems.append("tasks are crash-looping (several restarts within the intensity window)")
    if supervisor.escalation:
        problems.append(f"shutting down: {supervisor.escalation}")
    writer = state.writer
    if writer.consecutive_failures:
        problems.append(f"writes failing ({writer.consecutive_failures} in a row, "
                        f"{len(state.queue)} batches buffered): {writer.last_error}")
    if writer.maintenance_failures:  # e.g. read-only: writes go on in open files, sealing cannot
        problems.append(f"storage maintenance failing ({writer.maintenance_failures} in a row): "
                        f"{writer.maintenance_error}")
    if state.forward is not None:  # a sink further behind than its max_lag, or spooling failing
        problems.extend(state.forward.problems())
    body: dict[str, object] = {
        "status": "degraded" if problems else "ok",
        "problems": problems,
        "tasks": tasks,
        "writer": {
            "queue_batches": len(state.queue),
            "queue_points": state.queue.points,
            "dropped_batches": state.queue.dropped_batches,
            "consecutive_failures": writer.consecutive_failures,
            "maintenance_failures": writer.maintenance_failures,
            "last_error": writer.last_error,
            "last_write_unix": writer.last_write_unix,
        },
        "series_active": state.aggregator.active_series,
        "version": __version__,
    }
    if state.forward is not None:
        body["forward"] = state.forward.health()
    return not problems, body


#: A router for more paths (Graphite API, dashboard, /metrics/statsd): None = not mine.
Route = Callable[[Request], Awaitable[Response | None]]


def make_handler(state: AgentState, supervisor: Supervisor, registry: CollectorRegistry,
                 routes: Sequence[Route] = ()) -> Handler:
    async def handle(request: Request) -> Response:
        for route in routes:  # tried first, in order; each answers its own methods
            answered = await route(request)
            if answered is not None:
                return answered
        if request.method not in ("GET", "HEAD"):
            return Response.text(405, "only GET is supported here\n")
        if request.path == "/metrics":
            return Response(200, generate_latest(registry), CONTENT_TYPE_LATEST)
        if request.path == "/healthz":
            healthy, body = health_report(state, supervisor)
            return Response(200 if healthy else 503, json.dumps(body, indent=1).encode(),
                            "application/json")
        if request.path == "/":
            return Response.text(200, _INDEX)
        return Response.text(404, f"no such path: {request.path}\n")

    return handle
