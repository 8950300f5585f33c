"""Graphite render functions over numpy series, and the evaluator that applies them.

Pure: no IO. Series come from a :class:`Fetcher` the caller provides (the HTTP layer reads the
data directory through it, in a worker thread), so every function can be tested on hand-made
series. NaN stands for graphite's ``None`` (a null point).

Semantics and series names follow graphite-web 1.1's ``functions.py`` (``sumSeries(a.*)``,
``scale(a.b,2)``, ``summarize(a.b, "1h", "sum")``, ...), with two deliberate differences:

* combining series of different start times aligns them by timestamp (graphite zips values by
  position, which misaligns series that start at different times);
* ``summarize`` buckets cover ``[start, end)`` of its input only (graphite-web adds a trailing
  empty bucket when the end falls on an interval boundary).

Consolidation (``maxDataPoints``): a series fetched for a plain path is consolidated by the
reader with each stat's own rollup (sums stay sums, maxima maxima, percentiles re-computed from
merged sketches), and functions see that. Functions with their own notion of time
(``summarize``, ``movingAverage``, ``consolidateBy``) get their input at full resolution
instead; whatever is still longer than ``maxDataPoints`` at the end is consolidated with the
series' ``consolidateBy`` function (graphite's default: ``average``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from ._exceptions import QueryError
from ._graphite_expr import Bool, Call, Expr, NoneValue, Number, Path, String, format_expr, parse_target
from ._types import FloatArray
from .storage import parse_time

__all__ = [
    "AGGREGATIONS",
    "FUNCTIONS",
    "Context",
    "Fetcher",
    "FunctionSpec",
    "Param",
    "Series",
    "TagExpression",
    "consolidate",
    "evaluate",
    "functions_json",
    "interval_seconds",
    "parse_tag_expression",
]

NAN = float("nan")


@dataclass(slots=True)
class Series:
    """One graphite series: ``values[i]`` is the point at ``start + i * step`` (NaN = null).

    ``tags`` always holds ``name`` (graphite 1.1's convention); ``path_expression`` is what
    combining functions print for it (the path as written, or the function call that made it).
    ``consolidation`` is the ``consolidateBy`` function used when this series has to lose points.
    """

    name: str
    tags: dict[str, str]
    start: int
    step: int
    values: FloatArray
    path_expression: str
    consolidation: str = "average"

    @property
    def end(self) -> int:
        return self.start + len(self.values) * self.step

    def copy(self, **changes: Any) -> Series:
        changes.setdefault("tags", dict(self.tags))
        return replace(self, **changes)


# -- aggregation functions ------------------------------------------------------------------

Aggregation = Callable[[FloatArray, int], FloatArray]


def _count(m: FloatArray, axis: int) -> FloatArray:
    return np.asarray((~np.isnan(m)).sum(axis), dtype=np.float64)


def _empty_to_nan(out: FloatArray, n: FloatArray) -> FloatArray:
    out = np.asarray(out, dtype=np.float64)
    out[n == 0] = NAN
    return out


def _sum(m: FloatArray, axis: int) -> FloatArray:
    return _empty_to_nan(np.where(np.isnan(m), 0.0, m).sum(axis), _count(m, axis))


def _average(m: FloatArray, axis: int) -> FloatArray:
    n = _count(m, axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _empty_to_nan(np.where(np.isnan(m), 0.0, m).sum(axis) / n, n)


def _avg_zero(m: FloatArray, axis: int) -> FloatArray:
    total = m.shape[axis]
    if total == 0:
        return np.full(m.shape[1 - axis], NAN)
    return np.asarray(np.where(np.isnan(m), 0.0, m).sum(axis) / total, dtype=np.float64)


def _min(m: FloatArray, axis: int) -> FloatArray:
    return _empty_to_nan(np.where(np.isnan(m), np.inf, m).min(axis, initial=np.inf), _count(m, axis))


def _max(m: FloatArray, axis: int) -> FloatArray:
    return _empty_to_nan(np.where(np.isnan(m), -np.inf, m).max(axis, initial=-np.inf), _count(m, axis))


def _pick(m: FloatArray, axis: int, which: Callable[[FloatArray], FloatArray]) -> FloatArray:
    """The value at the position ``which(counts)`` among each row's non-null values in
    ascending order (NaN sorts last, so the non-null values come first)."""
    n = _count(m, axis)
    ordered = np.sort(m, axis=axis)
    index = np.clip(which(n), 0, None).astype(np.int64)
    index = np.minimum(index, max(m.shape[axis] - 1, 0))
    if m.shape[axis] == 0:
        return np.full(n.shape, NAN)
    picked = np.take_along_axis(ordered, np.expand_dims(index, axis), axis).squeeze(axis)
    return _empty_to_nan(picked, n)


def _median(m: FloatArray, axis: int) -> FloatArray:
    # graphite's safeMedian: the upper median, always a value that was stored
    return _pick(m, axis, lambda n: n // 2)


def _first(m: FloatArray, axis: int) -> FloatArray:
    valid = ~np.isnan(m)
    if m.shape[axis] == 0:
        return np.full(m.shape[1 - axis], NAN)
    index = valid.argmax(axis)
    picked = np.take_along_axis(m, np.expand_dims(index, axis), axis).squeeze(axis)
    return _empty_to_nan(picked, _count(m, axis))


def _last(m: FloatArray, axis: int) -> FloatArray:
    flipped = np.flip(m, axis)
    return _first(flipped, axis)


def _range(m: FloatArray, axis: int) -> FloatArray:
    return _max(m, axis) - _min(m, axis)


def _multiply(m: FloatArray, axis: int) -> FloatArray:
    return _empty_to_nan(np.where(np.isnan(m), 1.0, m).prod(axis), _count(m, axis))


def _diff(m: FloatArray, axis: int) -> FloatArray:
    # graphite's safeDiff: the first non-null value minus every later one
    return 2 * _first(m, axis) - _sum(m, axis)


def _stddev(m: FloatArray, axis: int) -> FloatArray:
    mean = _average(m, axis)
    deviation = np.where(np.isnan(m), 0.0, m - np.expand_dims(mean, axis))
    n = _count(m, axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _empty_to_nan(np.sqrt((deviation**2).sum(axis) / n), n)


def _count_nonnull(m: FloatArray, axis: int) -> FloatArray:
    n = _count(m, axis)
    return _empty_to_nan(n.copy(), n)


#: graphite's aggregation function names (``aggregate``, ``consolidateBy``, ``summarize``).
AGGREGATIONS: dict[str, Aggregation] = {
    "average": _average,
    "avg": _average,
    "avg_zero": _avg_zero,
    "median": _median,
    "sum": _sum,
    "total": _sum,
    "min": _min,
    "max": _max,
    "diff": _diff,
    "stddev": _stddev,
    "count": _count_nonnull,
    "range": _range,
    "rangeOf": _range,
    "multiply": _multiply,
    "first": _first,
    "last": _last,
    "current": _last,
}


def _aggregation(name: str, where: str) -> Aggregation:
    func = AGGREGATIONS.get(name)
    if func is None:
        raise QueryError(f"{where}: unknown aggregation {name!r}; one of {', '.join(AGGREGATIONS)}")
    return func


# -- consolidation and alignment -------------------------------------------------------------


def consolidate(series: Series, factor: int, func: str | None = None) -> Series:
    """``series`` with every ``factor`` consecutive points reduced to one by ``func`` (default:
    the series' own ``consolidation``). Buckets are aligned to multiples of ``factor * step``
    (shifted by ``start % step``), so a refreshing dashboard does not jitter."""
    if factor <= 1 or len(series.values) == 0:
        return series
    step = series.step
    bucket = step * factor
    offset = series.start % step
    lo = (series.start - offset) // bucket * bucket + offset
    front = (series.start - lo) // step
    total = front + len(series.values)
    buckets = -(-total // factor)
    padded = np.full(buckets * factor, NAN)
    padded[front : front + len(series.values)] = series.values
    reduce = _aggregation(func or series.consolidation, "consolidateBy")
    values = reduce(padded.reshape(buckets, factor), 1)
    return series.copy(start=lo, step=bucket, values=values)


def _lcm(a: int, b: int) -> int:
    return a // math.gcd(a, b) * b


def normalize(series_list: Sequence[Series]) -> tuple[FloatArray, int, int]:
    """Bring series to one step (the LCM of theirs, consolidating each by its own function) and
    one time axis; returns ``(matrix[series, point], start, step)``."""
    step = 1
    for s in series_list:
        step = _lcm(step, s.step)
    consolidated = [consolidate(s, step // s.step) for s in series_list]
    start = min(s.start for s in consolidated)
    end = max(s.end for s in consolidated)
    width = max(0, -(-(end - start) // step))
    matrix = np.full((len(consolidated), width), NAN)
    for row, s in enumerate(consolidated):
        at = (s.start - start) // step
        matrix[row, at : at + len(s.values)] = s.values
    return matrix, start, step


def _path_expressions(series_list: Iterable[Series]) -> str:
    return ",".join(dict.fromkeys(s.path_expression for s in series_list))


# -- time helpers -----------------------------------------------------------------------------


def interval_seconds(text: str, *, where: str, default_sign: str = "+") -> int:
    """A graphite interval like ``1h``, ``5min``, ``-1d`` in seconds (signed)."""
    spec = text.strip()
    if spec[:1] not in ("+", "-"):
        spec = default_sign + spec
    try:
        seconds = parse_time(spec, 0)
    except QueryError as exc:
        raise QueryError(f"{where}: bad interval {text!r} (e.g. '1h', '5min', '30s')") from exc
    return seconds


# -- tag expressions (seriesByTag) -------------------------------------------------------------

_TAG_EXPR = re.compile(r"^([^!=~]+?)(!=~|=~|!=|=)(.*)$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class TagExpression:
    """One ``seriesByTag`` term: ``tag=v``, ``tag!=v``, ``tag=~re``, ``tag!=~re``.

    Regular expressions are anchored at the start of the value (graphite-web's ``re.match``);
    a missing tag reads as ``""``, so ``tag=`` selects series without it.
    """

    tag: str
    operator: str
    value: str
    regex: re.Pattern[str] | None = None

    def matches(self, tags: Mapping[str, str]) -> bool:
        actual = tags.get(self.tag, "")
        if self.operator == "=":
            return actual == self.value
        if self.operator == "!=":
            return actual != self.value
        assert self.regex is not None
        found = self.regex.match(actual) is not None
        return found if self.operator == "=~" else not found

    @property
    def requires_value(self) -> bool:
        """True when no series lacking the tag can match (graphite wants at least one)."""
        if self.operator == "=":
            return self.value != ""
        if self.operator == "=~":
            return self.regex is not None and self.regex.match("") is None
        return False


def parse_tag_expression(text: str) -> TagExpression:
    """Raises QueryError for a malformed term or a bad regular expression."""
    match = _TAG_EXPR.match(text)
    if match is None:
        raise QueryError(
            f"seriesByTag: bad tag expression {text!r} (expected tag=value, tag!=value, "
            "tag=~regex or tag!=~regex)"
        )
    tag, operator, value = match.group(1).strip(), match.group(2), match.group(3).strip()
    regex = None
    if operator in ("=~", "!=~"):
        try:
            regex = re.compile(value)
        except re.error as exc:
            raise QueryError(f"seriesByTag: bad regular expression {value!r}: {exc}") from None
    return TagExpression(tag, operator, value, regex)


# -- the evaluation context --------------------------------------------------------------------


class Fetcher(Protocol):
    """Where series come from (the HTTP layer implements it over ``storage.Reader``)."""

    def fetch_path(self, path: str, start: int, end: int, max_points: int | None) -> list[Series]:
        """Series matching a Graphite glob with optional ``;k=v`` filters, sorted by name."""
        ...

    def fetch_tagged(
        self, expressions: Sequence[TagExpression], start: int, end: int, max_points: int | None
    ) -> list[Series]:
        """Series whose tags (``name`` included) satisfy every expression, sorted by name."""
        ...


@dataclass(frozen=True, slots=True)
class Context:
    """One evaluation: the range ``[start, end)``, ``now`` for relative specs, and the
    consolidation target handed to the reader (None: full resolution)."""

    fetcher: Fetcher
    start: int
    end: int
    now: int
    max_points: int | None = None


def evaluate(target: str | Expr, ctx: Context) -> list[Series]:
    """Evaluate one target. Raises QueryError for syntax errors, unknown functions (naming
    them), bad arguments, and whatever the fetcher raises."""
    expr = parse_target(target) if isinstance(target, str) else target
    return _eval(expr, ctx)


def _eval(expr: Expr, ctx: Context) -> list[Series]:
    if isinstance(expr, Path):
        return ctx.fetcher.fetch_path(expr.text, ctx.start, ctx.end, ctx.max_points)
    if isinstance(expr, Call):
        spec = FUNCTIONS.get(expr.name)
        if spec is None:
            raise QueryError(f"unknown function {expr.name!r}")
        return spec.impl(ctx, *_bind(spec, expr, ctx))
    raise QueryError(f"expected a series (a path or a function call), got {format_expr(expr)}")


# -- parameters and binding --------------------------------------------------------------------

_NO_DEFAULT: Any = object()


@dataclass(frozen=True, slots=True)
class Param:
    """A parameter as graphite-web's ``/functions`` describes it (``type`` is its ParamTypes
    name: seriesList, seriesLists, float, integer, string, boolean, nodeOrTag, intOrInterval,
    interval, aggFunc, tagExpression)."""

    name: str
    type: str
    required: bool = False
    multiple: bool = False
    default: Any = _NO_DEFAULT
    options: tuple[str, ...] = ()

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {"name": self.name, "type": self.type}
        if self.required:
            out["required"] = True
        if self.multiple:
            out["multiple"] = True
        if self.default is not _NO_DEFAULT and self.default is not None:
            out["default"] = self.default
        if self.options:
            out["options"] = list(self.options)
        return out


@dataclass(frozen=True)
class FunctionSpec:
    """A render function: ``impl(ctx, *bound_arguments)``; with ``lazy`` the first argument
    is passed unevaluated (an Expr), for functions that evaluate it over another range; with
    ``raw_input`` its series arguments are read at full resolution (no reader consolidation)."""

    name: str
    impl: Callable[..., list[Series]]
    params: tuple[Param, ...]
    group: str
    description: str
    lazy: bool = False
    signature: str = field(default="")
    raw_input: bool = False


def _bind(spec: FunctionSpec, call: Call, ctx: Context) -> list[Any]:
    """Match positional and keyword arguments to ``spec.params`` and convert each; a
    ``multiple`` parameter takes every remaining positional argument."""
    params = spec.params
    slots: dict[str, list[Expr]] = {}
    positional = list(call.args)
    for param in params:
        if not positional:
            break
        taken = len(positional) if param.multiple else 1
        slots[param.name], positional = positional[:taken], positional[taken:]
    if positional:
        raise QueryError(f"{spec.name}: too many arguments (takes {len(params)})")
    for key, value in call.kwargs:
        if all(p.name != key for p in params):
            raise QueryError(f"{spec.name}: unknown keyword argument {key!r}")
        if key in slots:
            raise QueryError(f"{spec.name}: argument {key!r} given twice")
        slots[key] = [value]
    if spec.raw_input:
        ctx = replace(ctx, max_points=None)
    bound: list[Any] = []
    for index, param in enumerate(params):
        raw = slots.get(param.name)
        if raw is None:
            if param.required:
                raise QueryError(f"{spec.name}: missing required argument {param.name!r}")
            if not param.multiple:
                # Numbers arrive as Number literals, so a numeric default is left to the function.
                numeric = param.type in ("float", "integer")
                bound.append(None if numeric or param.default is _NO_DEFAULT else param.default)
            continue
        lazy = spec.lazy and index == 0
        bound.extend(_convert(spec, param, item, ctx, lazy=lazy) for item in raw)
    return bound


def _convert(spec: FunctionSpec, param: Param, raw: Expr, ctx: Context, *, lazy: bool) -> Any:
    where = f"{spec.name}: argument {param.name!r}"
    kind = param.type
    if kind in ("seriesList", "seriesLists"):
        if lazy:
            return raw
        if isinstance(raw, Path | Call):
            return _eval(raw, ctx)
        raise QueryError(f"{where} must be a series list, got {format_expr(raw)}")
    if isinstance(raw, NoneValue):
        if param.required:
            raise QueryError(f"{where} must not be None")
        return None
    if kind in ("float", "integer"):
        if not isinstance(raw, Number):
            raise QueryError(f"{where} must be a number, got {format_expr(raw)}")
        if kind == "integer":
            if raw.value != int(raw.value):
                raise QueryError(f"{where} must be a whole number, got {raw.text}")
            return int(raw.value)
        return raw
    if kind == "boolean":
        if isinstance(raw, Bool):
            return raw.value
        if isinstance(raw, String) and raw.value.lower() in ("true", "false"):
            return raw.value.lower() == "true"
        if isinstance(raw, Number):
            return raw.value != 0
        raise QueryError(f"{where} must be true or false, got {format_expr(raw)}")
    if kind == "nodeOrTag":
        if isinstance(raw, Number) and raw.value == int(raw.value):
            return int(raw.value)
        if isinstance(raw, String):
            return raw.value
        raise QueryError(f"{where} must be a node index or a tag name, got {format_expr(raw)}")
    if kind == "intOrInterval":
        if isinstance(raw, Number) and raw.value == int(raw.value) and raw.value > 0:
            return int(raw.value)
        if isinstance(raw, String):
            return raw.value
        raise QueryError(
            f"{where} must be a positive number of points or an interval like '5min', got {format_expr(raw)}"
        )
    if not isinstance(raw, String):
        raise QueryError(f"{where} must be a quoted string, got {format_expr(raw)}")
    if kind == "aggFunc":
        _aggregation(raw.value, where)
    elif param.options and raw.value not in param.options:
        raise QueryError(f"{where} must be one of {', '.join(param.options)}, got {raw.value!r}")
    return raw.value


def _number_text(number: Number | float) -> str:
    """graphite's ``%g`` of a numeric argument."""
    value = number.value if isinstance(number, Number) else number
    return f"{value:g}"


def _round6(values: FloatArray) -> FloatArray:
    with np.errstate(invalid="ignore"):
        return np.asarray(np.round(values, 6), dtype=np.float64)


# -- combine ---------------------------------------------------------------------------------------


def _aggregate(series_list: Sequence[Series], func: str, x_files_factor: float | None = None) -> list[Series]:
    if not series_list:
        return []
    short = func[:-6] if func.endswith("Series") else func
    reduce = _aggregation(short, "aggregate")
    matrix, start, step = normalize(series_list)
    values = reduce(matrix, 0)
    if x_files_factor:
        present = (~np.isnan(matrix)).sum(0)
        values[present / max(len(series_list), 1) < x_files_factor] = NAN
    name = f"{short}Series({_path_expressions(series_list)})"
    tags = dict(series_list[0].tags)
    for s in series_list[1:]:
        tags = {k: v for k, v in tags.items() if s.tags.get(k) == v}
    tags.setdefault("name", name)
    tags["aggregatedBy"] = short
    return [Series(name, tags, start, step, values, name)]


def _flatten(lists: Iterable[list[Series]]) -> list[Series]:
    return [s for series_list in lists for s in series_list]


def _combiner(func: str) -> Callable[..., list[Series]]:
    def combine(ctx: Context, *series_lists: list[Series]) -> list[Series]:
        return _aggregate(_flatten(series_lists), func)

    return combine


def f_aggregate(ctx: Context, series_list: list[Series], func: str, xff: Number | None) -> list[Series]:
    return _aggregate(series_list, func, None if xff is None else xff.value)


def f_group(ctx: Context, *series_lists: list[Series]) -> list[Series]:
    return _flatten(series_lists)


def f_percentile_of_series(
    ctx: Context, series_list: list[Series], n: Number, interpolate: bool
) -> list[Series]:
    if n.value <= 0:
        raise QueryError("percentileOfSeries: the requested percent must be greater than 0")
    if not series_list:
        return []
    matrix, start, step = normalize(series_list)
    values = _percentile_columns(matrix, n.value, bool(interpolate))
    name = f"percentileOfSeries({series_list[0].path_expression},{_number_text(n)})"
    return [Series(name, {"name": name}, start, step, values, name)]


def _percentile_columns(matrix: FloatArray, n: float, interpolate: bool) -> FloatArray:
    """graphite's ``_getPercentile`` for every column (nulls ignored; no values gives null)."""
    ordered = np.sort(matrix, axis=0)
    count = (~np.isnan(matrix)).sum(0)
    fractional = (n / 100.0) * (count + 1)
    rank = np.floor(fractional).astype(np.int64)
    fraction = fractional - rank
    if not interpolate:
        rank = rank + np.ceil(fraction).astype(np.int64)
    index = np.clip(np.minimum(rank, count) - 1, 0, None)
    rows = max(matrix.shape[0] - 1, 0)
    out = np.full(matrix.shape[1], NAN)
    if matrix.shape[0] == 0:
        return out
    columns = np.arange(matrix.shape[1])
    value = ordered[np.minimum(index, rows), columns]
    if interpolate:
        following = ordered[np.minimum(index + 1, rows), columns]
        has_next = (rank < count) & (rank > 0)
        value = np.where(has_next, value + fraction * (following - value), value)
    out[count > 0] = value[count > 0]
    return out


# -- alias ------------------------------------------------------------------------------------------


def f_alias(ctx: Context, series_list: list[Series], new_name: str) -> list[Series]:
    return [s.copy(name=new_name) for s in series_list]


def _first_path_expression(name: str) -> str:
    try:
        expr = parse_target(name)
    except QueryError:
        return name
    while isinstance(expr, Call):
        if not expr.args:
            return name
        expr = expr.args[0]
    return expr.text if isinstance(expr, Path) else name


def _node_or_tag(series: Series, node: int | str, path: str) -> str:
    if isinstance(node, int):
        try:
            return path.split(";", 1)[0].split(".")[node]
        except IndexError:
            return series.tags.get(str(node), "")
    return series.tags.get(node, "")


def f_alias_by_node(ctx: Context, series_list: list[Series], *nodes: int | str) -> list[Series]:
    out = []
    for s in series_list:
        path = _first_path_expression(s.name) if s.name.endswith(")") else s.name
        out.append(s.copy(name=".".join(_node_or_tag(s, n, path) for n in nodes)))
    return out


def f_alias_sub(ctx: Context, series_list: list[Series], search: str, replace_with: str) -> list[Series]:
    try:
        pattern = re.compile(search)
        return [s.copy(name=pattern.sub(replace_with, s.name)) for s in series_list]
    except (re.error, IndexError) as exc:
        raise QueryError(f"aliasSub: bad regular expression or replacement: {exc}") from None


# -- transform --------------------------------------------------------------------------------------


def _renamed(s: Series, name: str, values: FloatArray | None = None, **tags: str) -> Series:
    new_tags = {**s.tags, **tags}
    return s.copy(
        name=name, path_expression=name, tags=new_tags, values=s.values if values is None else values
    )


def f_scale(ctx: Context, series_list: list[Series], factor: Number) -> list[Series]:
    return [
        _renamed(s, f"scale({s.name},{_number_text(factor)})", s.values * factor.value, scale=factor.text)
        for s in series_list
    ]


def f_offset(ctx: Context, series_list: list[Series], factor: Number) -> list[Series]:
    return [
        _renamed(s, f"offset({s.name},{_number_text(factor)})", s.values + factor.value, offset=factor.text)
        for s in series_list
    ]


def f_absolute(ctx: Context, series_list: list[Series]) -> list[Series]:
    return [_renamed(s, f"absolute({s.name})", np.abs(s.values), absolute="1") for s in series_list]


def _non_negative_delta(values: FloatArray, max_value: float | None, min_value: float | None) -> FloatArray:
    """graphite's ``_nonNegativeDelta`` over a whole series: differences between consecutive
    points, a counter wrap or reset giving null unless ``max_value``/``min_value`` say how
    it wrapped; points outside ``[min_value, max_value]`` are null and break the chain."""
    v = values.copy()
    if max_value is not None:
        v[v > max_value] = NAN
    if min_value is not None:
        v[v < min_value] = NAN
    prev = np.concatenate(([NAN], v[:-1]))
    out = np.full(len(v), NAN)
    both = ~np.isnan(v) & ~np.isnan(prev)
    up = both & (v >= prev)
    out[up] = v[up] - prev[up]
    down = both & (v < prev)
    if max_value is not None:
        out[down] = max_value + 1 + v[down] - prev[down] - (min_value or 0)
    elif min_value is not None:
        out[down] = v[down] - min_value
    return out


def f_per_second(
    ctx: Context, series_list: list[Series], max_value: Number | None, min_value: Number | None
) -> list[Series]:
    out = []
    for s in series_list:
        delta = _non_negative_delta(
            s.values,
            None if max_value is None else max_value.value,
            None if min_value is None else min_value.value,
        )
        out.append(_renamed(s, f"perSecond({s.name})", _round6(delta / s.step), perSecond="1"))
    return out


def f_non_negative_derivative(
    ctx: Context, series_list: list[Series], max_value: Number | None, min_value: Number | None
) -> list[Series]:
    return [
        _renamed(
            s,
            f"nonNegativeDerivative({s.name})",
            _non_negative_delta(
                s.values,
                None if max_value is None else max_value.value,
                None if min_value is None else min_value.value,
            ),
            nonNegativeDerivative="1",
        )
        for s in series_list
    ]


def f_derivative(ctx: Context, series_list: list[Series]) -> list[Series]:
    out = []
    for s in series_list:
        prev = np.concatenate(([NAN], s.values[:-1]))
        out.append(_renamed(s, f"derivative({s.name})", s.values - prev, derivative="1"))
    return out


def f_integral(ctx: Context, series_list: list[Series]) -> list[Series]:
    out = []
    for s in series_list:
        running = np.cumsum(np.where(np.isnan(s.values), 0.0, s.values))
        running[np.isnan(s.values)] = NAN
        out.append(_renamed(s, f"integral({s.name})", running, integral="1"))
    return out


def f_transform_null(ctx: Context, series_list: list[Series], default: Number | None) -> list[Series]:
    value = 0.0 if default is None else default.value
    text = "0" if default is None else _number_text(default)
    return [
        _renamed(
            s,
            f"transformNull({s.name},{text})",
            np.where(np.isnan(s.values), value, s.values),
            transformNull=text,
        )
        for s in series_list
    ]


def f_keep_last_value(ctx: Context, series_list: list[Series], limit: Number | None) -> list[Series]:
    most = math.inf if limit is None else limit.value
    out = []
    for s in series_list:
        values = s.values.copy()
        gap = 0
        for i in range(1, len(values) + 1):
            if i < len(values) and math.isnan(values[i]):
                gap += 1
                continue
            if 0 < gap <= most:
                values[i - gap : i] = values[i - gap - 1]
            gap = 0
        out.append(
            _renamed(
                s, f"keepLastValue({s.name})", values, keepLastValue="INF" if limit is None else limit.text
            )
        )
    return out


def f_consolidate_by(ctx: Context, series_list: list[Series], func: str) -> list[Series]:
    out = []
    for s in series_list:
        name = f'consolidateBy({s.name},"{func}")'
        renamed = _renamed(s, name, consolidateBy=func)
        renamed.consolidation = func
        out.append(renamed)
    return out


def f_summarize(
    ctx: Context, series_list: list[Series], interval: str, func: str, align_to_from: bool
) -> list[Series]:
    seconds = abs(interval_seconds(interval, where="summarize"))
    if seconds == 0:
        raise QueryError("summarize: the interval must be longer than 0 s")
    reduce = _aggregation(func, "summarize")
    out = []
    for s in series_list:
        n = len(s.values)
        if align_to_from:
            first = s.start
            buckets = max(1, -(-(n * s.step) // seconds)) if n else 0
        else:
            first = s.start - s.start % seconds
            buckets = -(-(s.end - first) // seconds) if n else 0
        times = s.start + np.arange(n, dtype=np.int64) * s.step
        index = (times - first) // seconds
        values = np.full(buckets, NAN)
        bounds = np.searchsorted(index, np.arange(buckets + 1))
        for b in range(buckets):
            chunk = s.values[bounds[b] : bounds[b + 1]]
            if len(chunk):
                values[b] = reduce(chunk.reshape(1, -1), 1)[0]
        suffix = ", true" if align_to_from else ""
        name = f'summarize({s.name}, "{interval}", "{func}"{suffix})'
        out.append(
            _renamed(s, name, values, summarize=interval, summarizeFunction=func).copy(
                start=first, step=seconds
            )
        )
    return out


def f_moving_average(
    ctx: Context, series_expr: Expr, window: int | str, x_files_factor: Number | None
) -> list[Series]:
    full = replace(ctx, max_points=None)
    if isinstance(window, str):
        preview = abs(interval_seconds(window, where="movingAverage"))
        if preview == 0:
            raise QueryError("movingAverage: the window must be longer than 0 s")
    else:
        steps = [s.step for s in _eval(series_expr, full)]
        if not steps:
            return []
        preview = max(steps) * window
    bootstrapped = _eval(series_expr, replace(full, start=ctx.start - preview))
    xff = 0.0 if x_files_factor is None else x_files_factor.value
    out = []
    for s in bootstrapped:
        points = preview // s.step if isinstance(window, str) else window
        if isinstance(window, str):
            name = f'movingAverage({s.name},"{window}")'
        else:
            name = f"movingAverage({s.name},{window})"
        values = _moving_average(s.values, max(points, 1), xff)
        moved = _renamed(s, name, values[points:] if points else values, movingAverage=str(window))
        out.append(moved.copy(start=s.start + points * s.step))
    return out


def _moving_average(values: FloatArray, points: int, xff: float) -> FloatArray:
    """``out[i]`` = mean of the non-null values among ``values[i - points : i]`` (the points
    before ``i``, as graphite-web 1.1 does), null when fewer than ``xff * points`` are present
    (and always when none is)."""
    present = ~np.isnan(values)
    sums = np.concatenate(([0.0], np.cumsum(np.where(present, values, 0.0))))
    counts = np.concatenate(([0], np.cumsum(present)))
    out = np.full(len(values), NAN)
    if len(values) <= points:
        return out
    i = np.arange(points, len(values))
    n = counts[i] - counts[i - points]
    total = sums[i] - sums[i - points]
    ok = (n > 0) & (n / points >= xff)
    with np.errstate(invalid="ignore", divide="ignore"):
        out[points:] = np.where(ok, total / np.maximum(n, 1), NAN)
    return out


def f_time_shift(
    ctx: Context, series_expr: Expr, shift: str, reset_end: bool, align_dst: bool
) -> list[Series]:
    text = shift if shift[:1] in ("+", "-") else "-" + shift
    delta = interval_seconds(text, where="timeShift")
    shifted = _eval(series_expr, replace(ctx, start=ctx.start + delta, end=ctx.end + delta))
    out = []
    for s in shifted:
        name = f'timeShift({s.name}, "{text}")'
        out.append(_renamed(s, name, timeShift=text).copy(start=s.start - delta))
    return out


# -- special ----------------------------------------------------------------------------------------


def f_constant_line(ctx: Context, value: Number) -> list[Series]:
    step = max(1, (ctx.end - ctx.start) // 2)
    text = value.text if value.is_int else repr(value.value)
    values = np.full(3, value.value)
    return [Series(text, {"name": text}, ctx.start, step, values, f"constantLine({value.text})")]


def f_series_by_tag(ctx: Context, *expressions: str) -> list[Series]:
    if not expressions:
        raise QueryError("seriesByTag: at least one tag expression is required")
    parsed = [parse_tag_expression(e) for e in expressions]
    if not any(e.requires_value for e in parsed):
        raise QueryError(
            "seriesByTag: at least one tag expression must require a non-empty "
            "value (e.g. 'name=stats.gauges.x' or 'env=prod')"
        )
    path_expression = "seriesByTag(" + ",".join(f"'{e}'" for e in expressions) + ")"
    found = ctx.fetcher.fetch_tagged(parsed, ctx.start, ctx.end, ctx.max_points)
    return [s.copy(path_expression=path_expression) for s in found]


# -- the registry -----------------------------------------------------------------------------------

_SERIES = Param("seriesList", "seriesList", required=True)
_SERIES_LISTS = Param("seriesLists", "seriesList", required=True, multiple=True)
_AGG_OPTIONS = tuple(AGGREGATIONS)


def _spec(
    name: str,
    impl: Callable[..., list[Series]],
    group: str,
    description: str,
    *params: Param,
    lazy: bool = False,
    raw_input: bool = False,
) -> FunctionSpec:
    signature = f"{name}({', '.join(('*' if p.multiple else '') + p.name for p in params)})"
    return FunctionSpec(name, impl, params, group, description, lazy, signature, raw_input)


def _combine_spec(name: str, func: str, description: str) -> FunctionSpec:
    return _spec(name, _combiner(func), "Combine", description, _SERIES_LISTS)


FUNCTIONS: dict[str, FunctionSpec] = {
    spec.name: spec
    for spec in (
        _combine_spec("sumSeries", "sum", "Adds series together point by point."),
        _combine_spec("sum", "sum", "Short form of sumSeries."),
        _combine_spec("averageSeries", "average", "Averages series point by point (nulls ignored)."),
        _combine_spec("avg", "average", "Short form of averageSeries."),
        _combine_spec("maxSeries", "max", "The largest value of the series at each point."),
        _combine_spec("minSeries", "min", "The smallest value of the series at each point."),
        _spec(
            "aggregate",
            f_aggregate,
            "Combine",
            "Combines series point by point with an aggregation function.",
            _SERIES,
            Param("func", "aggFunc", required=True, options=_AGG_OPTIONS),
            Param("xFilesFactor", "float"),
        ),
        _spec("group", f_group, "Combine", "Concatenates several series lists.", _SERIES_LISTS),
        _spec(
            "percentileOfSeries",
            f_percentile_of_series,
            "Combine",
            "The n-th percentile of the series at each point; an actual value unless interpolate is true.",
            _SERIES,
            Param("n", "float", required=True),
            Param("interpolate", "boolean", default=False),
        ),
        _spec(
            "alias",
            f_alias,
            "Alias",
            "Renames every series.",
            _SERIES,
            Param("newName", "string", required=True),
        ),
        _spec(
            "aliasByNode",
            f_alias_by_node,
            "Alias",
            "Names each series by some of its path nodes (0-indexed) or tags.",
            _SERIES,
            Param("nodes", "nodeOrTag", required=True, multiple=True),
        ),
        _spec(
            "aliasSub",
            f_alias_sub,
            "Alias",
            "Renames by a regular expression substitution.",
            _SERIES,
            Param("search", "string", required=True),
            Param("replace", "string", required=True),
        ),
        _spec(
            "scale",
            f_scale,
            "Transform",
            "Multiplies every point by a constant.",
            _SERIES,
            Param("factor", "float", required=True),
        ),
        _spec(
            "offset",
            f_offset,
            "Transform",
            "Adds a constant to every point.",
            _SERIES,
            Param("factor", "float", required=True),
        ),
        _spec("absolute", f_absolute, "Transform", "The absolute value of every point.", _SERIES),
        _spec(
            "perSecond",
            f_per_second,
            "Transform",
            "Per-second rate of a running total (a drop is a counter reset: null).",
            _SERIES,
            Param("maxValue", "float"),
            Param("minValue", "float"),
        ),
        _spec(
            "nonNegativeDerivative",
            f_non_negative_derivative,
            "Transform",
            "Differences between consecutive points, ignoring drops.",
            _SERIES,
            Param("maxValue", "float"),
            Param("minValue", "float"),
        ),
        _spec("derivative", f_derivative, "Transform", "Differences between consecutive points.", _SERIES),
        _spec("integral", f_integral, "Transform", "Running total of the points.", _SERIES),
        _spec(
            "transformNull",
            f_transform_null,
            "Transform",
            "Replaces nulls by a value (default 0).",
            _SERIES,
            Param("default", "float", default=0),
        ),
        _spec(
            "keepLastValue",
            f_keep_last_value,
            "Transform",
            "Fills gaps of at most limit points with the value before them.",
            _SERIES,
            Param("limit", "float"),
        ),
        _spec(
            "summarize",
            f_summarize,
            "Transform",
            "Buckets the points into intervals and aggregates each (default: sum).",
            _SERIES,
            Param("intervalString", "interval", required=True),
            Param("func", "aggFunc", default="sum", options=_AGG_OPTIONS),
            Param("alignToFrom", "boolean", default=False),
            raw_input=True,
        ),
        _spec(
            "consolidateBy",
            f_consolidate_by,
            "Special",
            "How to consolidate when a series has more points than maxDataPoints.",
            _SERIES,
            Param("consolidationFunc", "aggFunc", required=True, options=_AGG_OPTIONS),
            raw_input=True,
        ),
        _spec(
            "movingAverage",
            f_moving_average,
            "Calculate",
            "Mean of the preceding N points, or of the preceding interval ('5min').",
            _SERIES,
            Param("windowSize", "intOrInterval", required=True),
            Param("xFilesFactor", "float"),
            lazy=True,
        ),
        _spec(
            "timeShift",
            f_time_shift,
            "Transform",
            "The same series from an earlier time ('1d' = a day ago), drawn now.",
            _SERIES,
            Param("timeShift", "interval", required=True),
            Param("resetEnd", "boolean", default=True),
            Param("alignDst", "boolean", default=False),
            lazy=True,
        ),
        _spec(
            "constantLine",
            f_constant_line,
            "Special",
            "A horizontal line at a value.",
            Param("value", "float", required=True),
        ),
        _spec(
            "seriesByTag",
            f_series_by_tag,
            "Special",
            "Series selected by tags: 'tag=v', 'tag!=v', 'tag=~regex', 'tag!=~regex'.",
            Param("tagExpressions", "string", required=True, multiple=True),
        ),
    )
}


def functions_json() -> dict[str, dict[str, object]]:
    """What graphite-web's ``/functions`` returns, for Grafana's function editor."""
    return {
        name: {
            "name": name,
            "function": spec.signature,
            "description": spec.description,
            "module": "statsyard_agent",
            "group": spec.group,
            "params": [p.describe() for p in spec.params],
        }
        for name, spec in sorted(FUNCTIONS.items())
    }
