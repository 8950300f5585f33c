"""The built-in dashboard: ``GET /`` serves a plain HTML page (no build step, no CDN; the page,
its script and style are package data under ``statsyard_agent/web/``).

The page browses the series tree (``/metrics/find``), searches it (``/dashboard/search``),
charts the chosen series over a chosen range as server-rendered SVG (``/render?format=svg``),
and shows the agent's own health at a glance (``/dashboard/health``: ingest rate, drops, parse
errors, flush time, restarts). Every response carries a strict Content-Security-Policy: series
names come from the network, and the page only ever inserts them as text, or as SVG whose text
the server escaped.
"""

from __future__ import annotations

import collections
import importlib.resources
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from . import __version__
from ._api import health_report
from ._exceptions import QueryError, StorageError
from ._graphite import ReaderPool, all_series
from ._http import Request, Response
from ._state import AgentState
from ._supervisor import Supervisor
from .storage import Glob

Route = Callable[[Request], Awaitable[Response | None]]

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_SECURITY_HEADERS = (
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
)
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
#: Seconds of ingest counters kept to compute rates.
_RATE_WINDOW = 60.0


def load_web_files() -> dict[str, tuple[bytes, str]]:
    """Every file of the ``web`` package-data directory: ``name -> (bytes, content type)``."""
    files: dict[str, tuple[bytes, str]] = {}
    folder = importlib.resources.files("statsyard_agent") / "web"
    for entry in folder.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
        if entry.is_file() and suffix in _TYPES:
            files[entry.name] = (entry.read_bytes(), _TYPES[suffix])
    return files


@dataclass
class _Rates:
    """Recent ``(time, lines, packets, metrics)`` samples, at most one a second."""

    samples: collections.deque[tuple[float, int, int, int]] = field(default_factory=collections.deque)

    def rates(self, now: float, lines: int, packets: int, metrics: int, started: float) -> dict[str, float]:
        samples = self.samples
        if not samples or now - samples[-1][0] >= 1.0:
            samples.append((now, lines, packets, metrics))
        while len(samples) > 1 and now - samples[0][0] > _RATE_WINDOW:
            samples.popleft()
        then, l0, p0, m0 = samples[0]
        if now - then < 1.0:  # too recent to be a rate: the average since the agent started
            then, l0, p0, m0 = started, 0, 0, 0
        span = max(now - then, 1e-3)
        return {
            "lines_per_second": (lines - l0) / span,
            "packets_per_second": (packets - p0) / span,
            "metrics_per_second": (metrics - m0) / span,
            "window_seconds": span,
        }


def _samples(registry: CollectorRegistry) -> dict[str, float]:
    """Every sample of the agent's registry by name (labelled samples summed)."""
    out: dict[str, float] = collections.defaultdict(float)
    for family in registry.collect():
        for sample in family.samples:
            out[sample.name] += sample.value
    return out


def dashboard_health(
    state: AgentState, supervisor: Supervisor, registry: CollectorRegistry, rates: _Rates, started: float
) -> dict[str, object]:
    """What the health panel shows (JSON-ready)."""
    healthy, report = health_report(state, supervisor)
    samples = _samples(registry)
    ingest = state.ingest
    now = time.time()
    flushes = samples.get("statsyard_flush_duration_seconds_count", 0.0)
    writes = samples.get("statsyard_write_duration_seconds_count", 0.0)
    tasks = {
        name: {"state": child.state, "restarts": child.restarts}
        for name, child in sorted(supervisor.children.items())
    }
    return {
        "version": __version__,
        "status": report["status"],
        "problems": report["problems"],
        "now": now,
        "uptime_seconds": now - started,
        "ingest": {
            "packets": ingest.packets,
            "lines": ingest.lines,
            "metrics": ingest.metrics,
            "bytes": ingest.bytes,
            **rates.rates(now, ingest.lines, ingest.packets, ingest.metrics, started),
        },
        "errors": {
            "parse_errors": sum(ingest.parse_errors.values()),
            "parse_errors_by_reason": dict(sorted(ingest.parse_errors.items())),
            "kernel_drops": samples.get("statsyard_udp_kernel_drops_total"),
            "dropped_batches": state.queue.dropped_batches,
            "rejected_series": state.aggregator.rejected_series,
            "write_errors": state.writer.write_errors,
        },
        "flush": {
            "flushes": state.flushes,
            "average_seconds": samples.get("statsyard_flush_duration_seconds_sum", 0.0) / flushes
            if flushes
            else None,
            "write_average_seconds": samples.get("statsyard_write_duration_seconds_sum", 0.0) / writes
            if writes
            else None,
            "last_unix": state.last_flush_unix,
            "interval_seconds": state.config.flush_interval,
        },
        "series_active": state.aggregator.active_series,
        "queue_batches": len(state.queue),
        "points_written": state.writer.points_written,
        "tasks": tasks,
        "restarts": sum(child.restarts for child in supervisor.children.values()),
        "healthy": healthy,
    }


def search_names(names: list[str], query: str, limit: int) -> tuple[list[str], int]:
    """Series names containing ``query`` (case-insensitive), or matching it when it is a
    Graphite glob; ``(first limit names, total matches)``."""
    unique = list(dict.fromkeys(names))
    if any(c in query for c in "*?[{"):
        glob = Glob(query)
        found = [n for n in unique if glob.match(n)]
    else:
        needle = query.lower()
        found = [n for n in unique if needle in n.lower()]
    return found[:limit], len(found)


def make_dashboard_routes(
    state: AgentState, supervisor: Supervisor, registry: CollectorRegistry, pool: ReaderPool
) -> Route:
    """``/``, ``/static/<file>``, ``/dashboard/health`` and ``/dashboard/search``."""
    files = load_web_files()
    started = time.time()
    rates = _Rates()

    def page(name: str) -> Response:
        body, content_type = files[name]
        return Response(200, body, content_type, headers=(*_SECURITY_HEADERS, ("Cache-Control", "no-cache")))

    async def route(request: Request) -> Response | None:
        path = request.path
        mine = path in ("/", "/index.html", "/dashboard/health", "/dashboard/search")
        if not (mine or path.startswith("/static/")):
            return None
        if request.method not in ("GET", "HEAD"):
            return Response.text(405, f"only GET is supported on {path}\n")
        if path in ("/", "/index.html"):
            return page("index.html")
        if path.startswith("/static/"):
            name = path.removeprefix("/static/")
            return page(name) if name in files else Response.text(404, f"no such file: {name}\n")
        if path == "/dashboard/health":
            body = dashboard_health(state, supervisor, registry, rates, started)
            return Response(
                200, json.dumps(body).encode(), "application/json", headers=(("Cache-Control", "no-cache"),)
            )
        return await _search(request)

    async def _search(request: Request) -> Response:
        query = (request.param("q") or "").strip()
        try:
            limit = max(1, min(int(request.param("limit") or "100"), 1000))
        except ValueError:
            return Response.text(400, "limit must be a whole number\n")
        if not query:
            return Response(200, b'{"results": [], "total": 0}', "application/json")
        try:
            found, total = await pool.run(lambda reader: search_names(all_series(reader)[0], query, limit))
        except QueryError as exc:
            return Response.text(400, f"{exc}\n")
        except StorageError as exc:
            return Response.text(500, f"storage error: {exc}\n")
        return Response(
            200,
            json.dumps({"results": found, "total": total}).encode(),
            "application/json",
            headers=(("Cache-Control", "no-cache"),),
        )

    return route
