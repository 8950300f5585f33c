"""Opt-in Prometheus exposition of the StatsD data itself, in the spirit of statsd_exporter.

Every flushed batch is handed to :meth:`StatsdExporter.observe` (O(1), on the event loop) and
folded into cumulative state in a worker thread; ``GET /metrics/statsd`` renders that state in
the Prometheus text format:

* counters become counters: the running total of every ``.count`` since the agent started
  (sample rates already applied), exposed with the ``_total`` suffix;
* gauges become gauges (their latest value); sets become gauges (distinct members in the last
  interval); DogStatsD events and service checks count in ``statsd_events_total`` and
  ``statsd_service_checks_total``;
* timers (``ms``, converted to seconds as statsd_exporter does), histograms (``h``) and
  distributions (``d``) become summaries (``_count``/``_sum`` running totals, quantiles of the
  samples of the last ``summary_max_age`` seconds, merged from the interval sketches) or, with
  ``observer_type = "histogram"``, cumulative histograms over ``buckets``. A bucket bound is
  exact to the sketch's 1 % relative accuracy (a sample on a bound counts below it).

Names: a mapping rule (first match wins) gives the name and labels; otherwise the StatsD name
with every character outside ``[a-zA-Z0-9_:]`` replaced by ``_`` (``api.requests`` →
``api_requests``), and ``_`` in front of a leading digit. Tags become labels (names sanitised
the same way; a bare tag, whose value is empty, is left out since Prometheus reads an empty
label as an absent one).

Collisions (two sources, i.e. StatsD name + type + tags, landing on the same exposed series,
or on a family of another type or sample name) are resolved deterministically, whatever the
arrival order: sources whose StatsD name already is the exposed name come first, then the rest
in sorted order; the first keeps the name, each later one is renamed
``<name>_<8 hex digits of a hash of its name, type and tags>``. Every distinct colliding source
is counted once in ``statsyard_prometheus_collisions_total`` and logged once.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import math
import re
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString as _float_to_go

from ._exceptions import ConfigError, CorruptDataError
from ._http import Request, Response
from ._sketch import LogSketch
from ._types import FlushBatch, Tags

log = logging.getLogger(__name__)

PATH = "/metrics/statsd"
#: The classic text format (names are sanitised to its rules, so no escaping scheme is needed).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
METRIC_TYPES = ("counter", "gauge", "timer", "histogram", "distribution", "set", "event", "service_check")
_OBSERVED = ("timer", "histogram", "distribution")
_INVALID_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_:]")
_INVALID_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_TEMPLATE_NAME = re.compile(r"[a-zA-Z0-9_:$\{\}]+")
_CAPTURE = re.compile(r"\$(?:\{(\d+)\}|(\d+))")
_AGE_BUCKETS = 5
_INF_BOUND = 'le="+Inf"'
#: Name caches are cleared when they exceed this many times ``max_series`` entries.
_CACHE_FACTOR = 4
#: Batches waiting to be folded before the oldest is dropped (and counted).
MAX_PENDING_BATCHES = 1000
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


# -- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MappingRule:
    """One ``[[prometheus.mappings]]`` entry; ``$1``/``${1}`` in ``name`` and label values are
    replaced by what the glob's ``*`` (or the regex group) captured."""

    match: str
    name: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    match_type: str = "glob"
    match_metric_type: str | None = None
    action: str = "map"
    observer_type: str | None = None
    regex: re.Pattern[str] = field(default=re.compile(""), compare=False)

    def apply(self, statsd_name: str, kind: str) -> tuple[str, dict[str, str]] | None:
        """``(name, labels)`` when this rule matches (an empty name for ``drop``), else None."""
        if self.match_metric_type is not None and self.match_metric_type != kind:
            return None
        found = self.regex.fullmatch(statsd_name)
        if found is None:
            return None
        groups = found.groups()

        def expand(template: str) -> str:
            def group(match: re.Match[str]) -> str:
                index = int(match.group(1) or match.group(2))
                return (groups[index - 1] or "") if 0 < index <= len(groups) else ""

            return _CAPTURE.sub(group, template)

        if self.action == "drop":
            return "", {}
        return expand(self.name), {k: expand(v) for k, v in self.labels}


@dataclass(frozen=True, slots=True)
class PromExportConfig:
    """``[prometheus]``: the opt-in exposition of StatsD data on ``/metrics/statsd``."""

    enabled: bool = False
    observer_type: str = "summary"
    quantiles: tuple[float, ...] = (0.5, 0.9, 0.99)
    buckets: tuple[float, ...] = DEFAULT_BUCKETS
    summary_max_age: float = 600.0
    max_series: int = 100_000
    ttl: float = 0.0
    mappings: tuple[MappingRule, ...] = ()


def _glob_regex(pattern: str) -> re.Pattern[str]:
    return re.compile("".join("([^.]+)" if c == "*" else re.escape(c) for c in pattern))


def _rule(entry: object, where: str) -> MappingRule:
    if not isinstance(entry, Mapping):
        raise ConfigError(where, "expected a table with at least 'match' and 'name'")
    allowed = {"match", "name", "labels", "match_type", "match_metric_type", "action", "observer_type"}
    for key in entry:
        if key not in allowed:
            raise ConfigError(f"{where}.{key}", f"unknown key; known keys: {', '.join(sorted(allowed))}")
    match = entry.get("match")
    if not isinstance(match, str) or not match:
        raise ConfigError(f"{where}.match", "expected a non-empty glob like 'api.*.requests'")
    match_type = entry.get("match_type", "glob")
    if match_type not in ("glob", "regex"):
        raise ConfigError(f"{where}.match_type", f"expected 'glob' or 'regex', got {match_type!r}")
    if match_type == "regex":
        try:
            regex = re.compile(match)
        except re.error as exc:
            raise ConfigError(f"{where}.match", f"invalid regular expression: {exc}") from None
    else:
        regex = _glob_regex(match)
    action = entry.get("action", "map")
    if action not in ("map", "drop"):
        raise ConfigError(f"{where}.action", f"expected 'map' or 'drop', got {action!r}")
    name = entry.get("name", "")
    if not isinstance(name, str) or (action == "map" and not _TEMPLATE_NAME.fullmatch(name)):
        raise ConfigError(
            f"{where}.name",
            f"expected a Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*, $1 for captures), got {name!r}",
        )
    kind = entry.get("match_metric_type")
    if kind is not None and kind not in METRIC_TYPES:
        raise ConfigError(
            f"{where}.match_metric_type", f"expected one of {', '.join(METRIC_TYPES)}, got {kind!r}"
        )
    observer = entry.get("observer_type")
    if observer is not None and observer not in ("summary", "histogram"):
        raise ConfigError(f"{where}.observer_type", f"expected 'summary' or 'histogram', got {observer!r}")
    labels = entry.get("labels", {})
    if not isinstance(labels, Mapping):
        raise ConfigError(f"{where}.labels", 'expected a table like { endpoint = "$1" }')
    for key, value in labels.items():
        if not _LABEL_NAME.fullmatch(key) or key.startswith("__"):
            raise ConfigError(
                f"{where}.labels.{key}", "not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*, no leading __)"
            )
        if not isinstance(value, str):
            raise ConfigError(f"{where}.labels.{key}", f"expected a string, got {value!r}")
    return MappingRule(match, name, tuple(sorted(labels.items())), match_type, kind, action, observer, regex)


def _floats(value: object, where: str, *, low: float, high: float) -> tuple[float, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(where, "expected a non-empty list of numbers")
    out = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int | float) or not low <= item <= high:
            raise ConfigError(where, f"each value must be a number in [{low:g}, {high:g}], got {item!r}")
        out.append(float(item))
    return tuple(sorted(set(out)))


def parse_prometheus_config(section: Mapping[str, Any]) -> PromExportConfig:
    """Validate the ``[prometheus]`` table; raises ConfigError naming the key."""
    defaults = PromExportConfig()
    enabled = section.get("enabled", defaults.enabled)
    if not isinstance(enabled, bool):
        raise ConfigError("prometheus.enabled", f"expected true or false, got {enabled!r}")
    observer = section.get("observer_type", defaults.observer_type)
    if observer not in ("summary", "histogram"):
        raise ConfigError("prometheus.observer_type", f"expected 'summary' or 'histogram', got {observer!r}")
    numbers: dict[str, float] = {}
    for key, low in (("summary_max_age", 1.0), ("max_series", 1.0), ("ttl", 0.0)):
        raw = section.get(key, getattr(defaults, key))
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw) or raw < low:
            raise ConfigError(f"prometheus.{key}", f"expected a number >= {low:g}, got {raw!r}")
        numbers[key] = float(raw)
    if numbers["max_series"] != int(numbers["max_series"]):
        raise ConfigError("prometheus.max_series", "must be a whole number")
    quantiles = (
        _floats(section["quantiles"], "prometheus.quantiles", low=0.0, high=1.0)
        if "quantiles" in section
        else defaults.quantiles
    )
    buckets = (
        _floats(section["buckets"], "prometheus.buckets", low=-math.inf, high=math.inf)
        if "buckets" in section
        else defaults.buckets
    )
    mappings = section.get("mappings", [])
    if not isinstance(mappings, list):
        raise ConfigError("prometheus.mappings", "expected an array of tables [[prometheus.mappings]]")
    return PromExportConfig(
        enabled=enabled,
        observer_type=observer,
        quantiles=quantiles,
        buckets=buckets,
        summary_max_age=numbers["summary_max_age"],
        max_series=int(numbers["max_series"]),
        ttl=numbers["ttl"],
        mappings=tuple(_rule(m, f"prometheus.mappings[{i}]") for i, m in enumerate(mappings)),
    )


# -- names -----------------------------------------------------------------------------------


def sanitize_metric_name(name: str) -> str:
    """A valid Prometheus metric name: invalid characters become ``_``, a leading digit gets a
    ``_`` in front, an empty name becomes ``_``."""
    cleaned = _INVALID_NAME_CHARS.sub("_", name)
    if not cleaned or cleaned[0].isdigit():
        cleaned = "_" + cleaned
    return cleaned


def sanitize_label_name(name: str) -> str:
    cleaned = _INVALID_LABEL_CHARS.sub("_", name)
    if not cleaned or cleaned[0].isdigit():
        cleaned = "_" + cleaned
    if cleaned.startswith("__"):
        cleaned = "_" + cleaned.lstrip("_")  # '__' is reserved for Prometheus itself
    return cleaned


def _classify(name: str, root: str) -> tuple[str, str, str] | None:
    """``(kind, statsd name, field)`` of a point name of a flush batch, or None to ignore it."""
    if not name.startswith(root):
        return None
    rest = name[len(root) :]
    if rest == "events":
        return "event", "statsd.events", "count"
    if rest == "service_checks":
        return "service_check", "statsd.service_checks", "count"
    namespace, _, tail = rest.partition(".")
    if not tail:
        return None
    if namespace == "gauges":
        return "gauge", tail, "value"
    base, _, stat = tail.rpartition(".")
    if not base:
        return None
    if namespace == "counters" and stat == "count":
        return "counter", base, "count"
    if namespace == "sets" and stat == "count":
        return "set", base, "value"
    if namespace in ("timers", "histograms", "distributions") and stat in ("count", "sum", "mean"):
        return namespace[:-1], base, stat
    return None


_SKETCH_KINDS = {"timers": "timer", "histograms": "histogram", "distributions": "distribution"}


def _classify_sketch(name: str, root: str) -> tuple[str, str] | None:
    if not name.startswith(root):
        return None
    namespace, _, base = name[len(root) :].partition(".")
    kind = _SKETCH_KINDS.get(namespace)
    return (kind, base) if kind and base else None


# -- state -----------------------------------------------------------------------------------

SourceKey = tuple[str, str, Tags]  # (statsd name, kind, tags): the sort order of resolution


@dataclass(slots=True)
class _Source:
    kind: str
    value: float = 0.0
    count: float = 0.0
    total: float = 0.0
    buckets: Any = None  # cumulative histogram counts (numpy), created on first sketch
    windows: collections.deque[list[Any]] = field(default_factory=collections.deque)
    last_seen: float = 0.0


@dataclass(frozen=True, slots=True)
class _Exposed:
    family: str
    labels: tuple[tuple[str, str], ...]
    observer: str
    label_clash: bool


class StatsdExporter:
    """Cumulative Prometheus state of the StatsD series; thread-safe (one lock)."""

    def __init__(self, config: PromExportConfig, prefix: str) -> None:
        self.config = config
        self._root = f"{prefix}." if prefix else ""
        self._lock = threading.Lock()
        self._pending: collections.deque[FlushBatch] = collections.deque()
        self._sources: dict[SourceKey, _Source] = {}
        self._names: dict[str, tuple[str, str, str] | None] = {}
        self._exposed: dict[SourceKey, _Exposed | None] = {}
        self._collided: set[SourceKey] = set()
        self._clock = 0.0
        self.rejected_series = 0
        self.dropped_batches = 0
        self.wakeup: trio.Event | None = None
        self._le = np.asarray(config.buckets, dtype=np.float64)
        self._le_text = [f'"{_go_string(le)}"' for le in config.buckets]
        self._quantile_text = [f'"{_go_string(q)}"' for q in config.quantiles]
        self._version = 0  # bumped when series come or go: the layout is resolved again
        self._layout: list[_Family] | None = None
        self._layout_version = -1
        gamma = (1 + LogSketch.RELATIVE_ACCURACY) / (1 - LogSketch.RELATIVE_ACCURACY)
        self._gamma = gamma

    # -- intake ---------------------------------------------------------------------------

    def observe(self, batch: FlushBatch) -> None:
        """A batch was flushed (event loop, must be cheap): queue it for :meth:`fold_pending`."""
        self._pending.append(batch)
        while len(self._pending) > MAX_PENDING_BATCHES:
            self._pending.popleft()
            self.dropped_batches += 1
        if self.wakeup is not None:
            self.wakeup.set()

    def fold_pending(self) -> int:
        """Fold every queued batch into the state (blocking; a worker thread); returns how many."""
        folded = 0
        with self._lock:
            while self._pending:
                self._fold(self._pending.popleft())
                folded += 1
        return folded

    def _source(self, key: SourceKey, kind: str) -> _Source | None:
        """The state of ``key``; None when a mapping drops it or ``max_series`` is reached."""
        source = self._sources.get(key)
        if source is None:
            if self._expose(key) is None:
                return None
            if len(self._sources) >= self.config.max_series:
                self.rejected_series += 1
                return None
            source = self._sources[key] = _Source(kind)
            self._version += 1
        return source

    def _fold(self, batch: FlushBatch) -> None:
        stamp = float(batch.timestamp)
        self._clock = max(self._clock, stamp)
        self._expire()
        names = self._names
        root = self._root
        values = batch.values.tolist()
        observed: dict[SourceKey, list[float]] = {}  # count, sum, mean of this interval
        for name, tags, value in zip(batch.names, batch.tags, values, strict=True):
            if name in names:
                found = names[name]
            else:
                if len(names) > _CACHE_FACTOR * self.config.max_series:
                    names.clear()  # bounded: a flood of one-off names must not grow it forever
                found = names[name] = _classify(name, root)
            if found is None or not math.isfinite(value):
                continue
            kind, base, stat = found
            source = self._source((base, kind, tags), kind)
            if source is None:
                continue
            source.last_seen = stamp
            if kind in ("counter", "event", "service_check"):
                source.total += value
            elif kind in ("gauge", "set"):
                source.value = value
            else:
                fields = observed.setdefault((base, kind, tags), [0.0, 0.0, math.nan])
                fields[("count", "sum", "mean").index(stat)] = value
        for key, (count, total, mean) in observed.items():
            source = self._sources[key]
            source.count += count
            # Etsy's sum ignores sample rates while count honours them; a Prometheus _sum must
            # match _count, so a sampled interval contributes mean * count instead.
            weighted = mean * count if math.isfinite(mean) else total
            exact = not count or abs(weighted - total) <= 1e-9 * max(abs(total), 1.0)
            source.total += total if exact else weighted
        for point in batch.sketches:
            sketch_kind = _classify_sketch(point.name, root)
            if sketch_kind is None:
                continue
            kind, base = sketch_kind
            source = self._source((base, kind, point.tags), kind)
            if source is None:
                continue
            try:
                sketch = LogSketch.from_bytes(point.sketch)
            except CorruptDataError:
                log.warning("skipping a sketch of %s that does not decode", point.name)
                continue
            exposed = self._exposed.get((base, kind, point.tags))
            self._add_sketch(source, kind, exposed.observer if exposed else "summary", sketch, stamp)

    def _add_sketch(self, source: _Source, kind: str, observer: str, sketch: LogSketch, stamp: float) -> None:
        if observer == "histogram":
            counts = self._bucket_counts(sketch, 1000.0 if kind == "timer" else 1.0)
            source.buckets = counts if source.buckets is None else source.buckets + counts
            return
        width = self.config.summary_max_age / _AGE_BUCKETS
        start = stamp - stamp % width
        windows = source.windows
        if windows and windows[-1][0] == start:
            windows[-1][1] = windows[-1][1].merge(sketch)
        elif not windows or windows[-1][0] < start:
            windows.append([start, sketch])
        else:  # a late batch: merge into the bucket it belongs to, if still kept
            for window in windows:
                if window[0] == start:
                    window[1] = window[1].merge(sketch)
                    break

    def _bucket_counts(self, sketch: LogSketch, scale: float) -> Any:
        """Cumulative counts of samples ``<= le`` for every configured bound (raw units are
        ``le * scale``); a sketch bucket counts when its lower end is below the bound."""
        gamma = self._gamma
        keys, counts = sketch.positive
        lowers = np.concatenate(
            (
                -np.power(gamma, sketch.negative[0].astype(np.float64)),  # a negative bucket's lowest value
                [0.0] if sketch.zero_count else [],
                np.power(gamma, keys.astype(np.float64) - 1),
            )
        )
        weights = np.concatenate(
            (sketch.negative[1], [sketch.zero_count] if sketch.zero_count else [], counts)
        )
        limits = self._le * scale
        below = lowers[None, :] < limits[:, None]
        if sketch.zero_count:
            zero_at = len(sketch.negative[0])
            below[:, zero_at] = limits >= 0
        return (below * weights[None, :]).sum(1)

    # -- exposition -----------------------------------------------------------------------

    def _expose(self, key: SourceKey) -> _Exposed | None:
        """How ``key`` is exposed (family, labels, observer), None when a rule drops it; cached."""
        if key in self._exposed:
            return self._exposed[key]
        if len(self._exposed) > _CACHE_FACTOR * self.config.max_series:
            self._exposed.clear()
        base, kind, tags = key
        name, observer = sanitize_metric_name(base), self.config.observer_type
        labels: dict[str, str] = {}
        for rule in self.config.mappings:
            applied = rule.apply(base, kind)
            if applied is None:
                continue
            if rule.action == "drop":
                self._exposed[key] = None
                return None
            mapped, labels = applied
            name = sanitize_metric_name(mapped) if mapped else name
            observer = rule.observer_type or observer
            break
        if kind in ("counter", "event", "service_check") and name.endswith("_total"):
            name = name[: -len("_total")]
        merged: dict[str, str] = {}
        clash = False
        for tag, value in tags:
            label = sanitize_label_name(tag)
            if value == "" or label in labels:
                continue
            if label in merged:
                clash = True
                continue
            merged[label] = value
        merged.update({k: v for k, v in labels.items() if v != ""})
        exposed = _Exposed(name, tuple(sorted(merged.items())), observer, clash)
        self._exposed[key] = exposed
        return exposed

    def render(self) -> bytes:
        """The text exposition of every series (blocking: folds pending batches first).

        Resolving names and collisions is done once per change of the set of series; a scrape
        of an unchanged set only formats the current values.
        """
        self.fold_pending()
        with self._lock:
            self._expire()
            if self._layout is None or self._layout_version != self._version:
                self._layout = self._resolve()
                self._layout_version = self._version
            out: list[str] = []
            for family in self._layout:
                out.append(family.head)
                for key, labels in family.members:
                    self._write_samples(out, family, self._sources[key], labels)
            return "".join(out).encode()

    def _expire(self) -> None:
        """Forget series silent for longer than ``ttl`` (data time), before admitting new ones."""
        ttl = self.config.ttl
        if ttl:
            stale = [k for k, s in self._sources.items() if s.last_seen < self._clock - ttl]
            for key in stale:
                del self._sources[key]
            if stale:
                self._version += 1

    def _resolve(self) -> list[_Family]:
        """Families in exposition order, collisions resolved (see the module docstring)."""
        families: dict[str, _Family] = {}
        occupied: set[str] = set()
        order = []
        for key in self._sources:
            exposed = self._expose(key)
            if exposed is not None:
                # A StatsD name that is already the exposed name wins over one made to fit.
                order.append((exposed.family != key[0], key, exposed))
        order.sort()
        for _, key, exposed in order:
            mtype = _metric_type(self._sources[key].kind, exposed.observer)
            family = self._place(exposed.family, mtype, exposed.labels, families, occupied, key)
            if family is None or exposed.label_clash:
                renamed = f"{exposed.family}_{_short_hash(key)}"
                family = self._place(renamed, mtype, exposed.labels, families, occupied, key)
                self._collision(key, exposed.family)
            if family is not None:
                family.members.append((key, _label_text(exposed.labels)))
                family.labelsets.add(exposed.labels)
        for family in families.values():
            family.members.sort(key=lambda member: member[1])
        return sorted(families.values(), key=lambda f: f.name)

    @staticmethod
    def _place(
        name: str,
        mtype: str,
        labels: tuple[tuple[str, str], ...],
        families: dict[str, _Family],
        occupied: set[str],
        key: SourceKey,
    ) -> _Family | None:
        """The family ``name`` of type ``mtype`` if ``labels`` fit in it (created when free)."""
        existing = families.get(name)
        if existing is not None:
            if existing.mtype != mtype or labels in existing.labelsets:
                return None
            return existing
        names = _sample_names(name, mtype)
        if name in occupied or any(n in occupied for n in names):
            return None
        occupied.update((name, *names))
        family = families[name] = _Family(name, mtype, f"StatsD {key[1]} {key[0]}")
        return family

    def _collision(self, key: SourceKey, family: str) -> None:
        if key in self._collided:
            return
        self._collided.add(key)
        log.warning(
            "Prometheus name collision: StatsD %s %r%s also maps to %r; exposing it as %r",
            key[1],
            key[0],
            "".join(f" {k}:{v}" for k, v in key[2]),
            family,
            f"{family}_{_short_hash(key)}",
        )

    def _write_samples(self, out: list[str], family: _Family, source: _Source, labels: str) -> None:
        name, mtype = family.name, family.mtype
        if mtype == "counter":
            out.append(f"{name}_total{_braces(labels)} {_value(source.total)}\n")
            return
        if mtype == "gauge":
            out.append(f"{name}{_braces(labels)} {_value(source.value)}\n")
            return
        scale = 1000.0 if source.kind == "timer" else 1.0
        if mtype == "histogram":
            counts = source.buckets if source.buckets is not None else np.zeros(len(self._le))
            for le, count in zip(self._le_text, counts.tolist(), strict=True):
                out.append(f"{name}_bucket{_braces(labels, f'le={le}')} {_value(count)}\n")
            out.append(f"{name}_bucket{_braces(labels, _INF_BOUND)} {_value(source.count)}\n")
        else:
            horizon = self._clock - self.config.summary_max_age
            windows = source.windows
            width = self.config.summary_max_age / _AGE_BUCKETS
            while windows and windows[0][0] + width <= horizon:
                windows.popleft()
            sketch = LogSketch.merge_all(w[1] for w in windows)
            quantiles = (
                sketch.quantiles(self.config.quantiles)
                if sketch.count
                else np.full(len(self.config.quantiles), math.nan)
            )
            for q, value in zip(self._quantile_text, quantiles.tolist(), strict=True):
                out.append(f"{name}{_braces(labels, f'quantile={q}')} {_value(value / scale)}\n")
        out.append(f"{name}_count{_braces(labels)} {_value(source.count)}\n")
        out.append(f"{name}_sum{_braces(labels)} {_value(source.total / scale)}\n")

    # -- self metrics ---------------------------------------------------------------------

    @property
    def series(self) -> int:
        return len(self._sources)

    @property
    def collisions(self) -> int:
        return len(self._collided)


def _go_string(value: float) -> str:
    """How Prometheus spells a float in ``le`` / ``quantile`` labels (``0.5``, ``+Inf``)."""
    return str(_float_to_go(value))  # type: ignore[no-untyped-call]


def _value(value: float) -> str:
    if value != value:
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _label_text(labels: tuple[tuple[str, str], ...]) -> str:
    return ",".join(f'{k}="{_escape(v)}"' for k, v in labels)


def _braces(labels: str, extra: str = "") -> str:
    inner = f"{labels},{extra}" if labels and extra else labels or extra
    return "{" + inner + "}" if inner else ""


def _metric_type(kind: str, observer: str) -> str:
    if kind in ("counter", "event", "service_check"):
        return "counter"
    if kind in ("gauge", "set"):
        return "gauge"
    return observer


def _sample_names(family: str, mtype: str) -> tuple[str, ...]:
    if mtype == "counter":
        return (family + "_total",)
    if mtype == "summary":
        return (family, family + "_count", family + "_sum")
    if mtype == "histogram":
        return (family + "_bucket", family + "_count", family + "_sum")
    return (family,)


@dataclass
class _Family:
    """One exposed metric family: its members are ``(source, label text)`` pairs."""

    name: str
    mtype: str
    help: str
    members: list[tuple[SourceKey, str]] = field(default_factory=list)
    labelsets: set[tuple[tuple[str, str], ...]] = field(default_factory=set)

    @property
    def head(self) -> str:
        shown = self.name + "_total" if self.mtype == "counter" else self.name
        text = self.help.replace("\\", "\\\\").replace("\n", "\\n")
        return f"# HELP {shown} {text}\n# TYPE {shown} {self.mtype}\n"


def _short_hash(key: SourceKey) -> str:
    base, kind, tags = key
    text = "\x00".join([base, kind, *(f"{k}={v}" for k, v in tags)])
    return hashlib.blake2b(text.encode(), digest_size=4).hexdigest()


class ExporterCollector(Collector):
    """The exporter's own health on the agent's registry (``/metrics``)."""

    def __init__(self, exporter: StatsdExporter) -> None:
        self._exporter = exporter

    def collect(self) -> Iterator[Metric]:
        e = self._exporter
        yield GaugeMetricFamily(
            "statsyard_prometheus_series",
            "StatsD series held for the /metrics/statsd exposition.",
            value=e.series,
        )
        yield CounterMetricFamily(
            "statsyard_prometheus_collisions",
            "StatsD series renamed because their Prometheus name was taken.",
            value=e.collisions,
        )
        yield CounterMetricFamily(
            "statsyard_prometheus_rejected_series",
            "StatsD series not exposed because [prometheus] max_series was reached.",
            value=e.rejected_series,
        )
        yield CounterMetricFamily(
            "statsyard_prometheus_dropped_batches",
            "Flushed batches dropped before being folded (folding fell behind).",
            value=e.dropped_batches,
        )


async def run_exporter(exporter: StatsdExporter) -> None:
    """Fold flushed batches as they come, in a worker thread (a supervised task)."""
    while True:
        exporter.wakeup = trio.Event()
        await trio.to_thread.run_sync(exporter.fold_pending)
        await exporter.wakeup.wait()


Route = Callable[[Request], Awaitable[Response | None]]


def make_exporter_route(exporter: StatsdExporter | None) -> Route:
    """The ``/metrics/statsd`` route; a 404 that says how to turn it on when it is off."""

    async def route(request: Request) -> Response | None:
        if request.path.rstrip("/") != PATH:
            return None
        if request.method not in ("GET", "HEAD"):
            return Response.text(405, f"{request.method} is not supported on {PATH}\n")
        if exporter is None:
            return Response.text(
                404,
                "the Prometheus exposition of StatsD data is off; set "
                "[prometheus] enabled = true in the config to turn it on\n",
            )
        body = await trio.to_thread.run_sync(exporter.render)
        return Response(200, body, CONTENT_TYPE)

    return route
