"""graphite-web's HTTP read API over the local data directory, enough for Grafana's Graphite
datasource to work unchanged.

Routes (GET, HEAD or form-encoded POST; Grafana posts ``/render`` and ``/metrics/find``):

``/render``                     ``target`` (repeatable), ``from``/``until``, ``format=json|csv|svg``,
                                ``maxDataPoints``, ``noNullPoints``
``/metrics/find``               ``query`` (a glob): tree nodes with ``text``, ``id``, ``leaf``,
                                ``expandable``, ``allowChildren``; ``format=treejson|completer``
``/metrics/expand``             ``query`` (repeatable): ``{"results": [paths]}``
``/metrics/index.json``         every series name
``/tags``, ``/tags/<tag>``      tag names; one tag's values with counts (``filter``, ``limit``)
``/tags/autoComplete/tags``     ``expr`` (repeatable), ``tagPrefix``, ``limit``
``/tags/autoComplete/values``   ``expr``, ``tag``, ``valuePrefix``, ``limit``
``/functions``, ``/version``    what Grafana's feature detection asks for (version 1.1.10)
``/events/get_data``            always ``[]`` (no events store)

Every read runs in a worker thread (:class:`ReaderPool`), so neither the event loop nor UDP
ingest ever waits for the disk. A bad request (syntax, unknown function, bad time) answers 400
with the reason; more series or points than ``[graphite] max_series`` / ``max_points`` answers
413 saying which limit and how to stay under it.
"""

from __future__ import annotations

import bisect
import csv
import datetime
import io
import json
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import trio

from ._exceptions import ConfigError, QueryError, StorageError
from ._graphite_funcs import (
    Context,
    Series,
    TagExpression,
    consolidate,
    evaluate,
    functions_json,
    parse_tag_expression,
)
from ._http import Request, Response
from ._svgchart import render_svg
from .storage import Glob, Reader, SeriesData, SeriesKey, parse_time

log = logging.getLogger(__name__)

GRAPHITE_VERSION = "1.1.10"
#: Answer every route of this module, or None to let the next router try.
Route = Callable[[Request], Awaitable[Response | None]]

_JSON = "application/json"
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class GraphiteConfig:
    """``[graphite]``: per-request limits of the read API (413 beyond them)."""

    max_series: int = 10_000
    max_points: int = 5_000_000
    max_find_results: int = 100_000


def parse_graphite_config(section: Mapping[str, object]) -> GraphiteConfig:
    """Validate the ``[graphite]`` table; raises ConfigError naming the key."""
    defaults = GraphiteConfig()
    values: dict[str, int] = {}
    for key in ("max_series", "max_points", "max_find_results"):
        raw = section.get(key, getattr(defaults, key))
        if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
            raise ConfigError(f"graphite.{key}", f"expected a whole number >= 1, got {raw!r}")
        values[key] = raw
    return GraphiteConfig(**values)


class LimitExceeded(QueryError):
    """A request selects more series or points than the configured limits allow (HTTP 413)."""


# -- reading ---------------------------------------------------------------------------------


class ReaderPool:
    """A few long-lived :class:`Reader` objects of one data directory, each used by at most
    one worker thread at a time (a reader keeps caches and catches up incrementally, so
    reusing one is much cheaper than opening a new one per request)."""

    def __init__(self, data_dir: Path, size: int = 2) -> None:
        self.data_dir = Path(data_dir)
        self._size = size
        self._idle: list[Reader] = []
        self._limiter: trio.CapacityLimiter | None = None

    async def run(self, work: Callable[[Reader], _T]) -> _T:
        """Run ``work(reader)`` in a worker thread; it is never abandoned half-way, so a
        reader is never shared between two threads."""
        if self._limiter is None:
            self._limiter = trio.CapacityLimiter(self._size)
        async with self._limiter:
            reader = self._idle.pop() if self._idle else None
            box: list[Reader] = []

            def call() -> _T:
                nonlocal reader
                if reader is None:
                    reader = Reader(self.data_dir)
                box.append(reader)
                return work(reader)

            try:
                return await trio.to_thread.run_sync(call)
            finally:
                if box:
                    self._idle.append(box[0])

    def close(self) -> None:
        """Release every idle reader's open partitions."""
        while self._idle:
            self._idle.pop().close()


def all_series(reader: Reader) -> tuple[list[str], list[SeriesKey]]:
    """Every series of the directory, sorted by name then tags (a sketch's virtual percentile
    series included): ``(names, keys)`` where ``names[i] == keys[i].name``.

    The public :meth:`Reader.find` needs a glob with a fixed number of nodes; browsing a tree
    and matching tags need every name at every depth, which the reader keeps sorted already.
    """
    reader.refresh()
    reader._sort_names()
    names: list[str] = reader._sorted_names
    keys = [SeriesKey(t.name, t.tags) for t in reader._sorted_targets]
    return names, keys


def _target_name(name: str, tags: dict[str, str]) -> str:
    """graphite's spelling of a tagged series: ``name;k=v;k2=v2`` (tags sorted)."""
    return name + "".join(f";{k}={v}" for k, v in sorted(tags.items()))


def _to_series(data: SeriesData, path_expression: str) -> Series:
    return Series(
        name=_target_name(data.name, data.tags),
        tags={**data.tags, "name": data.name},
        start=data.start,
        step=data.step,
        values=data.values,
        path_expression=path_expression,
    )


def _split_path(path: str) -> tuple[str, dict[str, str]]:
    pattern, *tag_parts = path.split(";")
    tags = {}
    for part in tag_parts:
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise QueryError(f"bad tag filter {part!r} in {path!r} (expected ;key=value)")
        tags[key] = value
    return pattern, tags


_GLOB_SPECIAL = re.compile(r"[*?\[\]{}]")


class _Budget:
    def __init__(self, max_series: int, max_points: int) -> None:
        self.max_series = max_series
        self.max_points = max_points
        self.series = 0
        self.points = 0

    @property
    def series_left(self) -> int:
        return max(0, self.max_series - self.series)

    @property
    def points_left(self) -> int:
        return max(0, self.max_points - self.points)

    def take(self, found: Sequence[SeriesData]) -> None:
        self.series += len(found)
        self.points += sum(len(s.values) for s in found)
        self.check()

    def check(self) -> None:
        if self.series > self.max_series:
            raise LimitExceeded(
                f"the request selects {self.series} series, more than the {self.max_series} "
                "allowed per request ([graphite] max_series); use a narrower pattern"
            )
        if self.points > self.max_points:
            raise LimitExceeded(
                f"the request needs {self.points} points, more than the {self.max_points} allowed "
                "per request ([graphite] max_points); shorten the range or lower maxDataPoints"
            )


class ReaderFetcher:
    """The :class:`~statsyard_agent._graphite_funcs.Fetcher` over one reader, counting every
    series and point against the request's limits."""

    def __init__(self, reader: Reader, now: int, config: GraphiteConfig) -> None:
        self._reader = reader
        self._now = now
        self._budget = _Budget(config.max_series, config.max_points)

    def _query(
        self,
        pattern: str,
        start: int,
        end: int,
        tags: dict[str, str] | None,
        max_points: int | None,
        *,
        superset: float = 1.0,
    ) -> list[SeriesData]:
        """Read through the reader within what is left of the budget; with ``superset`` > 1 the
        caller will keep only part of what matches, so the reader may return that many times
        more and the caller charges the budget itself."""
        try:
            found = self._reader.query(
                pattern,
                start,
                end,
                tags=tags or None,
                max_points=max_points,
                max_series=math.ceil(self._budget.series_left * superset),
                max_total_points=math.ceil(self._budget.points_left * superset),
                now=self._now,
            )
        except QueryError as exc:
            if "(limit " in str(exc):
                raise LimitExceeded(
                    f"{exc}: narrow the pattern, shorten the range or lower "
                    "maxDataPoints ([graphite] max_series / max_points)"
                ) from None
            raise
        if superset == 1.0:
            self._budget.take(found)
        return found

    def fetch_path(self, path: str, start: int, end: int, max_points: int | None) -> list[Series]:
        pattern, tags = _split_path(path)
        found = self._query(pattern, start, end, tags, max_points)
        return [_to_series(s, path) for s in found]

    def fetch_tagged(
        self, expressions: Sequence[TagExpression], start: int, end: int, max_points: int | None
    ) -> list[Series]:
        """Series matching tag expressions. Matching runs over the series list; the values are
        then read with as few reader queries as possible: per name depth, one glob that keeps
        the nodes every matched name shares (``bench.*.*.count``), filtered by the exact-value
        tags, when that selects at most about twice the matched series; one query per name
        otherwise."""
        _, keys = all_series(self._reader)
        matched = [k for k in keys if all(e.matches({**dict(k.tags), "name": k.name}) for e in expressions)]
        if len(matched) > self._budget.series_left:
            self._budget.series += len(matched)
            self._budget.check()
        exact = {e.tag: e.value for e in expressions if e.operator == "=" and e.tag != "name" and e.value}
        wanted = {(k.name, k.tags) for k in matched}
        by_depth: dict[int, list[SeriesKey]] = {}
        for key in matched:
            by_depth.setdefault(key.name.count(".") + 1, []).append(key)
        found: list[SeriesData] = []
        for group in by_depth.values():
            pattern = _common_glob([k.name for k in group])
            glob = Glob(pattern)
            exact_pairs = set(exact.items())
            covered = sum(1 for k in keys if glob.match(k.name) and exact_pairs <= set(k.tags))
            if covered <= 2 * len(group) + 100:
                ratio = max(1.0, covered / max(len(group), 1))
                found.extend(self._query(pattern, start, end, exact, max_points, superset=ratio + 0.01))
            else:
                for name in sorted({k.name for k in group}):
                    # A name is its own glob, but for glob characters (possible with sanitize_names
                    # off): '?' matches any one of them within the node; the exact name is kept.
                    found.extend(
                        self._query(_GLOB_SPECIAL.sub("?", name), start, end, None, max_points, superset=1.01)
                    )
        kept = [d for d in found if (d.name, tuple(sorted(d.tags.items()))) in wanted]
        self._budget.take(kept)
        out = [_to_series(d, "seriesByTag()") for d in kept]
        out.sort(key=lambda s: s.name)
        return out


def _common_glob(names: Sequence[str]) -> str:
    """A glob matching every name of ``names`` (all with the same number of nodes): the nodes
    they all share, ``*`` where they differ."""
    columns = zip(*(name.split(".") for name in names), strict=True)
    nodes = []
    for column in columns:
        first = column[0]
        nodes.append(_GLOB_SPECIAL.sub("?", first) if all(c == first for c in column) else "*")
    return ".".join(nodes)


# -- rendering -------------------------------------------------------------------------------


def _finish(series: Series, max_data_points: int | None) -> Series:
    """Consolidate what is still longer than ``maxDataPoints`` (by its consolidateBy function)."""
    if max_data_points is None or len(series.values) <= max_data_points:
        return series
    factor = math.ceil(len(series.values) / max_data_points)
    while True:
        out = consolidate(series, factor)
        if len(out.values) <= max_data_points:
            return out
        factor += 1


def _json_number(value: float) -> str:
    if math.isnan(value):
        return "null"
    if math.isinf(value):
        return "1e9999" if value > 0 else "-1e9999"
    return repr(value)


def render_json(series_list: Iterable[Series], *, no_null_points: bool = False) -> bytes:
    """graphite-web's JSON: ``[{"target", "tags", "datapoints": [[value|null, ts], ...]}]``."""
    parts = []
    for s in series_list:
        stamps = range(s.start, s.end, s.step)
        points = [
            f"[{_json_number(v)},{t}]"
            for v, t in zip(s.values.tolist(), stamps, strict=False)
            if not (no_null_points and math.isnan(v))
        ]
        if no_null_points and not points:
            continue
        parts.append(
            '{"target":'
            + json.dumps(s.name)
            + ',"tags":'
            + json.dumps(s.tags, sort_keys=True)
            + ',"datapoints":['
            + ",".join(points)
            + "]}"
        )
    return ("[" + ",".join(parts) + "]").encode()


def _csv_number(value: float) -> str:
    if math.isnan(value):
        return ""
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def render_csv(series_list: Iterable[Series]) -> bytes:
    """graphite-web's CSV: ``target,YYYY-MM-DD HH:MM:SS,value`` per point (UTC, empty = null)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for s in series_list:
        for i, value in enumerate(s.values.tolist()):
            stamp = datetime.datetime.fromtimestamp(s.start + i * s.step, datetime.UTC)
            writer.writerow([s.name, stamp.strftime("%Y-%m-%d %H:%M:%S"), _csv_number(value)])
    return buf.getvalue().encode()


@dataclass(frozen=True)
class RenderRequest:
    targets: tuple[str, ...]
    start: int
    end: int
    now: int
    format: str
    max_data_points: int | None
    no_null_points: bool
    width: int
    height: int
    title: str


def _positive_int(request: Request, name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.param(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(float(raw))
    except ValueError:
        raise QueryError(f"{name} must be a number, got {raw!r}") from None
    if not low <= value <= high:
        raise QueryError(f"{name} must be between {low} and {high}, got {value}")
    return value


def parse_render_request(request: Request, now: int) -> RenderRequest:
    """Validate ``/render``'s parameters; raises QueryError with the reason."""
    targets = tuple(t for t in request.query.get("target", []) if t.strip())
    fmt = (request.param("format") or "json").lower()
    if fmt not in ("json", "csv", "svg"):
        raise QueryError(f"format {fmt!r} is not supported here (json, csv or svg)")
    start = parse_time(request.param("from") or "-24h", now)
    end = parse_time(request.param("until") or "now", now)
    if end <= start:
        raise QueryError(f"until ({request.param('until')}) must be after from ({request.param('from')})")
    width = _positive_int(request, "width", 800, 50, 8000) or 800
    height = _positive_int(request, "height", 300, 50, 8000) or 300
    max_points = _positive_int(request, "maxDataPoints", None, 1, 10_000_000)
    if fmt == "svg" and max_points is None:
        max_points = width
    no_nulls = (request.param("noNullPoints") or "").lower() in ("1", "true")
    return RenderRequest(
        targets, start, end, now, fmt, max_points, no_nulls, width, height, request.param("title") or ""
    )


def run_render(reader: Reader, req: RenderRequest, config: GraphiteConfig) -> list[Series]:
    """Evaluate every target (blocking: run it in a worker thread)."""
    fetcher = ReaderFetcher(reader, req.now, config)
    ctx = Context(fetcher, req.start, req.end, req.now, req.max_data_points)
    out: list[Series] = []
    for target in req.targets:
        out.extend(_finish(s, req.max_data_points) for s in evaluate(target, ctx))
    return out


def _encode(series_list: list[Series], req: RenderRequest) -> Response:
    if req.format == "csv":
        return Response(200, render_csv(series_list), "text/csv; charset=utf-8")
    if req.format == "svg":
        svg = render_svg(
            series_list, width=req.width, height=req.height, start=req.start, end=req.end, title=req.title
        )
        return Response(
            200,
            svg.encode(),
            "image/svg+xml; charset=utf-8",
            headers=(("X-Content-Type-Options", "nosniff"),),
        )
    return Response(200, render_json(series_list, no_null_points=req.no_null_points), _JSON)


# -- finding ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Node:
    """One node of the series tree: a series (leaf), a prefix of longer names (branch), or both."""

    path: str
    leaf: bool
    branch: bool

    @property
    def name(self) -> str:
        return self.path.rsplit(".", 1)[-1]


def find_nodes(names: Sequence[str], query: str, *, limit: int) -> list[Node]:
    """The tree nodes matching a Graphite glob: a name with as many nodes as the pattern is a
    leaf, a longer one makes its prefix a branch. ``names`` must be sorted. Raises
    QueryError for a bad glob and LimitExceeded beyond ``limit`` nodes."""
    glob = Glob(query)
    depth = glob.node_count
    prefix = glob.literal_prefix
    lo = bisect.bisect_left(names, prefix)
    hi = bisect.bisect_left(names, prefix + "\U0010ffff", lo) if prefix else len(names)
    found: dict[str, list[bool]] = {}
    i = lo
    while i < hi:
        parts = names[i].split(".", depth)
        if len(parts) < depth:
            i += 1
            continue
        path = ".".join(parts[:depth])
        is_leaf = len(parts) == depth
        if glob.match(path):
            flags = found.setdefault(path, [False, False])
            flags[0 if is_leaf else 1] = True
            if len(found) > limit:
                raise LimitExceeded(
                    f"{query!r} matches more than {limit} nodes "
                    "([graphite] max_find_results); use a narrower pattern"
                )
        # Every longer name under the same branch sorts right after it: skip them at once.
        i = i + 1 if is_leaf else bisect.bisect_left(names, path + "/", i + 1)
    return [Node(path, leaf, branch) for path, (leaf, branch) in sorted(found.items())]


def tree_json(nodes: Sequence[Node], query: str, *, wildcards: bool) -> list[dict[str, object]]:
    """graphite-web's ``treejson``: branches first, then leaves; a node that is both a series
    and a prefix of longer names is listed once, as an expandable branch."""
    base = query.rsplit(".", 1)[0] + "." if "." in query else ""
    branch = {"allowChildren": 1, "expandable": 1, "leaf": 0}
    leaf = {"allowChildren": 0, "expandable": 0, "leaf": 1}
    results: list[dict[str, object]] = []
    if len(nodes) > 1 and wildcards:
        results.append({"text": "*", "id": base + "*", **(branch if any(n.branch for n in nodes) else leaf)})
    branches = [{"text": n.name, "id": base + n.name, "context": {}, **branch} for n in nodes if n.branch]
    leaves = [
        {"text": n.name, "id": base + n.name, "context": {}, **leaf} for n in nodes if n.leaf and not n.branch
    ]
    return results + branches + leaves


def completer_json(nodes: Sequence[Node]) -> dict[str, object]:
    metrics = []
    for n in nodes:
        metrics.append(
            {"path": n.path + ("." if n.branch else ""), "name": n.name, "is_leaf": "0" if n.branch else "1"}
        )
    return {"metrics": metrics}


# -- tags ------------------------------------------------------------------------------------


def _limit(request: Request, default: int) -> int:
    return _positive_int(request, "limit", default, 1, 1_000_000) or default


def _regex(request: Request, name: str) -> re.Pattern[str] | None:
    raw = request.param(name)
    if not raw:
        return None
    try:
        return re.compile(raw)
    except re.error as exc:
        raise QueryError(f"{name}: bad regular expression {raw!r}: {exc}") from None


def _tag_dicts(keys: Iterable[SeriesKey]) -> list[dict[str, str]]:
    return [{**dict(k.tags), "name": k.name} for k in keys]


def _filtered(keys: Sequence[SeriesKey], exprs: Sequence[str]) -> list[dict[str, str]]:
    parsed = [parse_tag_expression(e) for e in exprs]
    return [t for t in _tag_dicts(keys) if all(p.matches(t) for p in parsed)]


def tags_list(keys: Sequence[SeriesKey], pattern: re.Pattern[str] | None, limit: int) -> list[dict[str, str]]:
    names = sorted({tag for tags in _tag_dicts(keys) for tag in tags})
    return [{"tag": t} for t in names if pattern is None or pattern.search(t)][:limit]


def tag_values(
    keys: Sequence[SeriesKey], tag: str, pattern: re.Pattern[str] | None, limit: int
) -> dict[str, object]:
    counts = Counter(tags[tag] for tags in _tag_dicts(keys) if tag in tags)
    values = [
        {"count": counts[v], "value": v} for v in sorted(counts) if pattern is None or pattern.search(v)
    ][:limit]
    return {"tag": tag, "values": values}


def autocomplete_tags(keys: Sequence[SeriesKey], exprs: Sequence[str], prefix: str, limit: int) -> list[str]:
    used = {parse_tag_expression(e).tag for e in exprs}
    candidates = _filtered(keys, exprs) if exprs else _tag_dicts(keys)
    names = sorted({t for tags in candidates for t in tags if t not in used and t.startswith(prefix)})
    return names[:limit]


def autocomplete_values(
    keys: Sequence[SeriesKey], exprs: Sequence[str], tag: str, prefix: str, limit: int
) -> list[str]:
    candidates = _filtered(keys, exprs) if exprs else _tag_dicts(keys)
    values = sorted({t[tag] for t in candidates if tag in t and t[tag].startswith(prefix)})
    return values[:limit]


# -- the routes ------------------------------------------------------------------------------


def _json_response(value: object, status: int = 200) -> Response:
    return Response(status, json.dumps(value).encode(), _JSON, headers=(("Cache-Control", "no-cache"),))


def _error(exc: Exception) -> Response:
    if isinstance(exc, LimitExceeded):
        return Response.text(413, f"{exc}\n")
    if isinstance(exc, QueryError):
        return Response.text(400, f"{exc}\n")
    log.error("read failed: %s", exc)
    return Response.text(500, f"storage error: {exc}\n")


_PATHS = (
    "/render",
    "/metrics/find",
    "/metrics/expand",
    "/metrics/index.json",
    "/tags",
    "/functions",
    "/version",
    "/events/get_data",
)


def make_graphite_routes(pool: ReaderPool, config: GraphiteConfig) -> Route:
    """The router for every graphite-web path; None for any other path."""

    async def route(request: Request) -> Response | None:
        path = request.path.rstrip("/") or "/"
        if not any(path == p or path.startswith(p + "/") for p in _PATHS):
            return None
        if request.method not in ("GET", "HEAD", "POST"):
            return Response.text(405, f"{request.method} is not supported on {path}\n")
        try:
            return await _dispatch(path, request)
        except (QueryError, StorageError) as exc:
            return _error(exc)

    async def _dispatch(path: str, request: Request) -> Response | None:
        if path == "/render":
            now = int(time.time())
            req = parse_render_request(request, now)
            if not req.targets and req.format == "json":
                return Response(200, b"[]", _JSON)
            return await pool.run(lambda reader: _encode(run_render(reader, req, config), req))
        if path == "/metrics/find":
            return await _find(request)
        if path == "/metrics/expand":
            return await _expand(request)
        if path == "/metrics/index.json":
            names = await pool.run(lambda reader: sorted(set(all_series(reader)[0])))
            return _json_response(names)
        if path == "/version":
            return Response(200, GRAPHITE_VERSION.encode(), "text/plain; charset=utf-8")
        if path == "/functions":
            return _json_response(functions_json())
        if path.startswith("/functions/"):
            spec = functions_json().get(path.removeprefix("/functions/"))
            if spec is None:
                return Response.text(404, f"no such function: {path.removeprefix('/functions/')}\n")
            return _json_response(spec)
        if path == "/events/get_data":
            return _json_response([])
        return await _tags(path, request)

    async def _find(request: Request) -> Response:
        query = request.param("query")
        if not query:
            raise QueryError("missing required parameter 'query'")
        fmt = request.param("format") or "treejson"
        if fmt not in ("treejson", "completer", "json"):
            raise QueryError(f"format {fmt!r} is not supported (treejson or completer)")
        wildcards = (request.param("wildcards") or "0") not in ("0", "false", "")
        nodes = await pool.run(
            lambda reader: find_nodes(all_series(reader)[0], query, limit=config.max_find_results)
        )
        if fmt == "completer":
            return _json_response(completer_json(nodes))
        return _json_response(tree_json(nodes, query, wildcards=wildcards))

    async def _expand(request: Request) -> Response:
        queries = [q for q in request.query.get("query", []) if q]
        if not queries:
            raise QueryError("missing required parameter 'query'")
        leaves_only = (request.param("leavesOnly") or "0") not in ("0", "false")
        group = (request.param("groupByExpr") or "0") not in ("0", "false")

        def work(reader: Reader) -> dict[str, list[str]]:
            names = all_series(reader)[0]
            return {
                q: sorted(
                    n.path
                    for n in find_nodes(names, q, limit=config.max_find_results)
                    if n.leaf or not leaves_only
                )
                for q in queries
            }

        found = await pool.run(work)
        if group:
            return _json_response({"results": found})
        return _json_response({"results": sorted({p for paths in found.values() for p in paths})})

    async def _tags(path: str, request: Request) -> Response | None:
        exprs = [e for e in request.query.get("expr", []) if e]
        for e in exprs:
            parse_tag_expression(e)  # 400 before reading anything
        limit = _limit(request, 100)
        keys = (await pool.run(all_series))[1]
        if path == "/tags":
            return _json_response(tags_list(keys, _regex(request, "filter"), _limit(request, 10_000)))
        if path == "/tags/autoComplete/tags":
            return _json_response(autocomplete_tags(keys, exprs, request.param("tagPrefix") or "", limit))
        if path == "/tags/autoComplete/values":
            tag = request.param("tag")
            if not tag:
                raise QueryError("missing required parameter 'tag'")
            return _json_response(
                autocomplete_values(keys, exprs, tag, request.param("valuePrefix") or "", limit)
            )
        tag = path.removeprefix("/tags/")
        if "/" in tag or tag in ("tagSeries", "tagMultiSeries", "delSeries", "findSeries"):
            return Response.text(404, f"{path} is not supported (tags come from the StatsD lines)\n")
        return _json_response(tag_values(keys, tag, _regex(request, "filter"), _limit(request, 10_000)))

    return route
