"""The pure aggregator: parsed samples in, one columnar :class:`FlushBatch` per interval out.

Three steps, split so that only the cheap ones run on the event loop:

1. :meth:`Aggregator.add` (per line, hot): a dict lookup and a ``+=`` / append into the open
   interval's buckets. No numpy and no per-line objects beyond the series key.
2. :meth:`Aggregator.take_snapshot` (per flush, on the loop): swaps the open buckets for fresh
   ones, applies the idle TTL and returns a :class:`Snapshot` that owns everything it refers to,
   so ``add`` can go on while the snapshot is processed elsewhere. O(series) dict work at most.
3. :func:`build_flush_batch` (per flush, in a worker thread): pure and vectorised; computes
   every statistic of every series with a fixed number of numpy passes and may be called again
   on the same snapshot (e.g. after a crash) with the same result.

Semantics are Etsy statsd's ``lib/process_metrics.js`` with its graphite backend's names
(``legacyNamespace = false``); tags stay per point and never enter the name. For a counter,
``{prefix}.counters.NAME.count`` and ``.rate``; for a gauge, ``{prefix}.gauges.NAME``; for
timers (``ms``), histograms (``h``) and distributions (``d``), ``{prefix}.timers|histograms|
distributions.NAME.<stat>`` (see :mod:`statsyard_agent._timerstats`) plus a mergeable
:class:`~statsyard_agent._sketch.LogSketch` per series; for a set, ``{prefix}.sets.NAME.count``;
DogStatsD events and service checks are counted as ``{prefix}.events`` and
``{prefix}.service_checks``. A series is ``(kind, name, tags)``: the same name under two kinds
gives two independent series.
"""

from __future__ import annotations

import itertools
import math
import operator
from array import array
from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from ._exceptions import ConfigError
from ._sketch import IntArray, group_argsort, sketch_bytes_from_segments
from ._timerstats import percentile_label, timer_stats_sorted
from ._types import (
    Event,
    FloatArray,
    FlushBatch,
    Metric,
    MetricKind,
    PointNames,
    Rollup,
    ServiceCheck,
    SketchColumns,
    SketchPoint,
    Tags,
)

__all__ = ["Aggregator", "AggregatorConfig", "Partial", "Snapshot", "build_flush_batch"]

#: A series within one kind: ``(name, tags)``.
SeriesKey = tuple[str, Tags]

_COUNTER = MetricKind.COUNTER
_GAUGE = MetricKind.GAUGE
_TIMER = MetricKind.TIMER
_HISTOGRAM = MetricKind.HISTOGRAM
_DISTRIBUTION = MetricKind.DISTRIBUTION
_SET = MetricKind.SET

_SUM, _MIN, _MAX = Rollup.SUM, Rollup.MIN, Rollup.MAX
_LAST, _AVERAGE, _RATE, _MEAN = Rollup.LAST, Rollup.AVERAGE, Rollup.RATE, Rollup.MEAN


@dataclass(frozen=True, slots=True)
class AggregatorConfig:
    """The aggregator's slice of the agent configuration; validated on construction.

    ``percentiles`` are Etsy's ``percentThreshold``: each ``pct`` with ``0 < |pct| <= 100``;
    a negative one summarises the top ``|pct|`` percent (``..._topX`` stats). They are stored as
    floats and their stat labels (``90``, ``99_9``, ``top10``) must be distinct. ``idle_ttl``
    (seconds, ``>= 0``) is how long a series without data is still emitted (zeros, or the last
    gauge value) before it is forgotten. ``max_series`` (``>= 0``) caps the distinct
    ``(kind, name, tags)`` keys held at once; new keys beyond it are refused, never silently.
    Raises :class:`ConfigError` naming the offending field.
    """

    prefix: str = "stats"
    percentiles: tuple[float, ...] = (90.0,)
    idle_ttl: float = 300.0
    max_series: int = 100_000

    def __post_init__(self) -> None:
        if not isinstance(self.prefix, str):
            raise ConfigError("prefix", "must be a string")
        try:
            pcts = tuple(float(p) for p in self.percentiles)
        except (TypeError, ValueError) as exc:
            raise ConfigError("percentiles", "must be a list of numbers") from exc
        for pct in pcts:
            if not (math.isfinite(pct) and 0.0 < abs(pct) <= 100.0):
                raise ConfigError("percentiles", f"{pct!r} is not in [-100, 0) or (0, 100] (Etsy thresholds)")
        labels = [percentile_label(p) for p in pcts]
        if len(set(labels)) != len(labels):
            raise ConfigError("percentiles", f"duplicate thresholds in {list(pcts)!r}")
        object.__setattr__(self, "percentiles", pcts)
        if not (isinstance(self.idle_ttl, int | float) and 0.0 <= self.idle_ttl < math.inf):
            raise ConfigError("idle_ttl", f"must be a finite number of seconds >= 0, got {self.idle_ttl!r}")
        if isinstance(self.max_series, bool) or not isinstance(self.max_series, int):
            raise ConfigError("max_series", f"must be an integer, got {self.max_series!r}")
        if self.max_series < 0:
            raise ConfigError("max_series", f"must be >= 0, got {self.max_series}")


_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class _Family(Generic[_K, _V]):
    """The open buckets (``data``) and the flush history (``seen``) of one kind of series.

    ``seen`` maps every key that had data in a flushed interval to the timestamp of the last
    such flush; ``data`` holds the open interval. A key is *held* if it is in either.
    ``new`` counts the keys of ``data`` not in ``seen`` (opened this interval).
    """

    __slots__ = ("data", "new", "seen", "tag")

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.data: dict[_K, _V] = {}
        self.seen: dict[_K, int] = {}
        self.new = 0


class _TimerFamily(_Family[SeriesKey, "array[float]"]):
    """A timer-like kind. A series whose samples all came at rate 1 keeps them in ``data`` (one
    8-byte append each); from its first sample at another rate on, it moves to ``weighted``,
    which holds interleaved ``(value, 1 / rate)`` pairs. A key is in at most one of the two.

    Samples merged from a :class:`Partial`'s :class:`SampleChunk` (rate 1) stay in that chunk's
    columns (``chunks``: series numbers, their sample counts, the samples grouped by series);
    ``chunk_keys`` numbers their series for the interval (unique, not dense: taken from
    ``chunk_numbers`` by ``setdefault``, in C); a key may be there and in ``data`` or
    ``weighted`` as well.
    Why: a receive worker ships ~50k timer series a second under load; an array per series
    per shipment, extended into the series' own, was most of the event loop's work.
    """

    __slots__ = ("chunk_keys", "chunk_numbers", "chunks", "weighted")

    def __init__(self, tag: str) -> None:
        super().__init__(tag)
        self.weighted: dict[SeriesKey, array[float]] = {}
        self.chunks: list[tuple[IntArray, IntArray, FloatArray]] = []
        self.chunk_keys: dict[SeriesKey, int] = {}
        self.chunk_numbers = itertools.count()

    def holds(self, key: SeriesKey) -> bool:
        """Whether ``key`` has samples in the open interval (it was admitted already)."""
        return key in self.data or key in self.weighted or key in self.chunk_keys


@dataclass(frozen=True, slots=True, eq=False)
class Taken(Generic[_K, _V]):
    """One kind's share of a snapshot: the interval's ``data`` and the ``idle`` keys.

    ``idle`` are the keys that had no data this interval but are still within the idle TTL.
    The mapping is owned by the snapshot alone (the aggregator started a fresh one).
    """

    data: Mapping[_K, _V]
    idle: tuple[_K, ...]
    #: Every key, with data or idle, in first-seen order: the order points are emitted in, so
    #: that a flush's points come in the previous flush's order whenever the series are the
    #: same, whatever order their lines arrived in (the storage then recognises a batch of known
    #: series by comparing names run by run, ``SeriesIndex.same_keys``, instead of hashing and
    #: looking up ~800k fresh name strings).
    order: tuple[_K, ...] = ()


@dataclass(frozen=True, slots=True, eq=False)
class TakenSamples:
    """A timer-like kind's share of a snapshot (see :class:`Taken`).

    ``data`` maps a series whose samples all had rate 1 to them, ``weighted`` maps every other
    series with data to interleaved ``(value, 1 / rate)`` pairs; no key is in both.
    """

    data: Mapping[SeriesKey, array[float]]
    weighted: Mapping[SeriesKey, array[float]]
    idle: tuple[SeriesKey, ...]
    #: Samples merged as columns (see ``_TimerFamily``): series numbers, sample counts, samples.
    chunks: tuple[tuple[IntArray, IntArray, FloatArray], ...] = ()
    #: The series of ``chunks`` by their numbers there.
    chunk_keys: Mapping[SeriesKey, int] = field(default_factory=dict)
    #: Every series with samples (in ``data``, ``weighted`` or a chunk), in first-seen order.
    order: tuple[SeriesKey, ...] = ()


@dataclass(frozen=True, slots=True, eq=False)
class Snapshot:
    """Everything one interval collected, detached from the :class:`Aggregator`.

    Produced by :meth:`Aggregator.take_snapshot` and consumed by :func:`build_flush_batch`;
    it shares no mutable state with the aggregator, so it can be processed in another thread
    while ``add`` goes on, and it is never modified (building twice gives the same batch).
    """

    timestamp: int
    interval: float
    config: AggregatorConfig
    counters: Taken[SeriesKey, float]
    #: Every live gauge's current value (gauges persist across intervals).
    gauges: Mapping[SeriesKey, float]
    timers: TakenSamples
    histograms: TakenSamples
    distributions: TakenSamples
    sets: Taken[SeriesKey, set[str]]
    #: Keyed by the point's tags (the event's tags plus ``alert_type``).
    events: Taken[Tags, float]
    #: Keyed by the point's tags (the check's tags plus ``check`` and ``status``).
    service_checks: Taken[Tags, float]


@dataclass(slots=True, eq=False)
class SampleChunk:
    """Timer-like samples of many series as columns: the series ``keys[i]`` (a
    ``(kind, series, rate)`` key, as in :attr:`Partial.samples`) has the samples
    ``values[bounds[i]:bounds[i + 1]]``, in arrival order; ``bounds`` starts at 0 and does not
    decrease. A key appears once."""

    keys: list[tuple[MetricKind, SeriesKey, float]]
    bounds: IntArray
    values: FloatArray


@dataclass(slots=True, eq=False)
class Partial:
    """Samples pre-aggregated outside the :class:`Aggregator` (by the receive path's
    :class:`~statsyard_agent._ingest.PreAggregator`, possibly in a receive worker process) for
    the open interval; folded in by :meth:`Aggregator.merge`. Picklable.

    ``counters`` maps a series to ``sum(value * (1 / rate))`` accumulated in arrival order;
    ``gauges`` to ``(absolute, value)``: ``absolute`` (1.0) sets the gauge to ``value``,
    otherwise (0.0) ``value`` is a sum of deltas; ``samples`` maps ``(kind, series, rate)`` of a
    timer-like kind to its values at that rate, and ``sample_chunks`` hold more of them as
    columns (a key is in at most one of the two); ``sets`` maps a series to the members seen. Events and
    service checks are kept as they came. ``refused`` counts metrics the producer refused at its
    own series cap, ``refused_keys`` the distinct ``(kind tag, series)`` it refused (bounded).
    """

    counters: dict[SeriesKey, float] = field(default_factory=dict)
    gauges: dict[SeriesKey, tuple[float, float]] = field(default_factory=dict)
    samples: dict[tuple[MetricKind, SeriesKey, float], array[float]] = field(default_factory=dict)
    sample_chunks: list[SampleChunk] = field(default_factory=list)
    sets: dict[SeriesKey, set[str]] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    service_checks: list[ServiceCheck] = field(default_factory=list)
    refused: int = 0
    refused_keys: set[tuple[str, SeriesKey]] = field(default_factory=set)

    def sample_lists(self) -> dict[tuple[MetricKind, SeriesKey, float], list[float]]:
        """Every timer-like key's samples as a list, from ``samples`` and the chunks alike."""
        out = {key: values.tolist() for key, values in self.samples.items()}
        for chunk in self.sample_chunks:
            bounds = chunk.bounds.tolist()
            for key, start, end in zip(chunk.keys, bounds, bounds[1:], strict=False):
                out[key] = chunk.values[start:end].tolist()
        return out

    def __len__(self) -> int:
        """Entries held (series of every kind, events and service checks)."""
        return (
            len(self.counters)
            + len(self.gauges)
            + len(self.samples)
            + sum(len(chunk.keys) for chunk in self.sample_chunks)
            + len(self.sets)
            + len(self.events)
            + len(self.service_checks)
        )


class Aggregator:
    """Accumulates one interval of samples per series; see the module docstring.

    Not thread-safe: ``add*`` and ``take_snapshot`` must be called from one thread (the event
    loop); only :func:`build_flush_batch` runs elsewhere, on a snapshot.

    Counters read by the self-metrics: ``active_series`` (held keys, including idle ones within
    the TTL), ``rejected_series`` (running total of keys refused by the ``max_series`` guard,
    each counted once per interval in which it was refused), ``rejected_metrics`` (running
    total of refused ``add*`` calls, i.e. lost lines) and ``expired_series`` (running total of
    keys forgotten after ``idle_ttl``).
    """

    def __init__(self, config: AggregatorConfig) -> None:
        self._config = config
        self._max_series = config.max_series
        self._n_series = 0
        self.rejected_series = 0
        self.rejected_metrics = 0
        self.expired_series = 0
        # Keys refused this interval, so a refused series counts once per interval; bounded
        # like the series themselves (beyond that, each refusal counts).
        self._refused: set[tuple[str, Hashable]] = set()
        self._counters: _Family[SeriesKey, float] = _Family("c")
        self._gauges: _Family[SeriesKey, float] = _Family("g")
        self._gauge_values: dict[SeriesKey, float] = {}
        self._timers = _TimerFamily("ms")
        self._histograms = _TimerFamily("h")
        self._distributions = _TimerFamily("d")
        self._sets: _Family[SeriesKey, set[str]] = _Family("s")
        self._events: _Family[Tags, float] = _Family("_e")
        self._checks: _Family[Tags, float] = _Family("_sc")

    @property
    def config(self) -> AggregatorConfig:
        return self._config

    @property
    def active_series(self) -> int:
        """Distinct keys held now: with data this interval, or idle within the TTL."""
        return self._n_series

    # -- hot path ---------------------------------------------------------------------------

    def add(self, metric: Metric) -> bool:
        """Fold one parsed metric into the open interval; False if refused by ``max_series``.

        Counter: ``total += value * (1 / rate)`` per value (Etsy's arithmetic, floats kept).
        Gauge: a ``delta`` metric adds to the current value (0 if none), others set it (the
        last of packed values wins). Timer/histogram/distribution: every value is a sample of
        weight ``1 / rate``. Set: every member is collected. ``rate`` must satisfy
        ``0 < rate <= 1`` (the parser guarantees it). A metric without values changes nothing.
        """
        kind = metric.kind
        key = (metric.name, metric.tags)
        if kind is _TIMER or kind is _HISTOGRAM or kind is _DISTRIBUTION:
            if kind is _TIMER:
                family = self._timers
            elif kind is _HISTOGRAM:
                family = self._histograms
            else:
                family = self._distributions
            samples = family.data.get(key)
            if samples is None or metric.rate != 1.0:
                return self._add_samples(family, key, metric)
            samples.extend(metric.values)
            return True
        if kind is _COUNTER:
            counters = self._counters
            total = counters.data.get(key)
            if total is None:
                if not self._admit(counters, key):
                    return False
                total = 0.0
            # Etsy multiplies by the inverse rate (stats.js), which can differ from v / rate
            # in the last bit; match it exactly.
            inverse = 1.0 / metric.rate
            for value in metric.values:
                total += value * inverse
            counters.data[key] = total
            return True
        if kind is _GAUGE:
            values = metric.values
            if not values:
                return True
            data = self._gauges.data
            current = data.get(key)
            if current is None and not self._admit(self._gauges, key):
                return False
            if metric.delta:
                if current is None:
                    current = self._gauge_values.get(key, 0.0)
                for value in values:
                    current += value
                data[key] = current
            else:
                data[key] = values[-1]
            return True
        if kind is _SET:
            sets = self._sets
            members = sets.data.get(key)
            if members is None:
                if not self._admit(sets, key):
                    return False
                members = sets.data[key] = set()
            members.update(metric.members)
            return True
        raise ValueError(f"unknown metric kind {kind!r}")

    def _add_samples(self, family: _TimerFamily, key: SeriesKey, metric: Metric) -> bool:
        """The slow path of a timer-like ``add``: a new series, or a rate other than 1."""
        rate = metric.rate
        pairs = family.weighted.get(key)
        if pairs is None:
            plain = family.data.pop(key, None)
            if plain is None:
                if key not in family.chunk_keys and not self._admit(family, key):
                    return False
                if rate == 1.0:
                    family.data[key] = array("d", metric.values)
                    return True
                pairs = array("d")
            else:
                pairs = array("d", [1.0]) * (2 * len(plain))
                pairs[0::2] = plain
            family.weighted[key] = pairs
        weight = 1.0 / rate
        for value in metric.values:
            pairs.append(value)
            pairs.append(weight)
        return True

    def add_event(self, event: Event) -> bool:
        """Count one event in ``{prefix}.events`` with its tags plus ``alert_type``."""
        tags = _with_tags(event.tags, ("alert_type", event.alert_type))
        return self._count(self._events, tags)

    def add_service_check(self, check: ServiceCheck) -> bool:
        """Count one service check in ``{prefix}.service_checks`` with its tags plus ``check``
        (the check's name) and ``status`` (``"0"`` .. ``"3"``)."""
        tags = _with_tags(check.tags, ("check", check.name), ("status", str(check.status)))
        return self._count(self._checks, tags)

    def _count(self, family: _Family[Tags, float], tags: Tags) -> bool:
        total = family.data.get(tags)
        if total is None:
            if not self._admit(family, tags):
                return False
            total = 0.0
        family.data[tags] = total + 1.0
        return True

    def merge(self, partial: Partial) -> None:
        """Fold a :class:`Partial` into the open interval, taking ownership of its containers.

        The result is what ``add`` would give for: one counter value ``total`` at rate 1 per
        counter entry (so a series pre-aggregated in one place gets Etsy's exact sum); one gauge
        value per gauge entry, absolute or delta; every sample of a ``samples`` entry at its
        rate; every member of a set entry; each event and service check. New series pass the
        ``max_series`` guard as in ``add`` (a refused entry counts once in
        ``rejected_metrics``); the producer's own refusals are added to ``rejected_metrics`` and,
        once per key and interval, to ``rejected_series``. Deltas merged into a gauge that
        already has a value add as one sum, which can differ from adding them one by one in the
        last bit.
        """
        counters = self._counters
        data = counters.data
        # 0.0 + total is total except for -0.0 (== 0.0), which the loop below turns into 0.0.
        if data or 0.0 in partial.counters.values() or not self._admit_all(counters, partial.counters):
            for key, total in partial.counters.items():
                current = data.get(key)
                if current is None:
                    if not self._admit(counters, key):
                        continue
                    current = 0.0
                data[key] = current + total
        else:
            data.update(partial.counters)
        gauges = self._gauges
        gauge_data = gauges.data
        for key, (absolute, value) in partial.gauges.items():
            current = gauge_data.get(key)
            if current is None and not self._admit(gauges, key):
                continue
            if absolute:
                gauge_data[key] = value
            else:
                if current is None:
                    current = self._gauge_values.get(key, 0.0)
                gauge_data[key] = current + value
        families = {_TIMER: self._timers, _HISTOGRAM: self._histograms, _DISTRIBUTION: self._distributions}
        if not self._adopt_samples(families, partial.samples):
            for (kind, key, rate), values in partial.samples.items():
                self._merge_samples(families[kind], key, rate, values)
        for chunk in partial.sample_chunks:
            self._merge_chunk(families, chunk)
        sets = self._sets
        for key, members in partial.sets.items():
            held = sets.data.get(key)
            if held is None:
                if self._admit(sets, key):
                    sets.data[key] = members
            else:
                held.update(members)
        for event in partial.events:
            self.add_event(event)
        for check in partial.service_checks:
            self.add_service_check(check)
        self.rejected_metrics += partial.refused
        refused = self._refused
        for marker in partial.refused_keys:
            if marker not in refused:
                self.rejected_series += 1
                if len(refused) < self._max_series:
                    refused.add(marker)

    def _admit_all(self, family: _Family[_K, _V], keys: Mapping[_K, object]) -> bool:
        """``_admit`` of every key of ``keys`` at once if all of them fit under ``max_series``
        (none is in ``family.data``); False, changing nothing, if some would be refused."""
        new = _count_new(keys, family.seen)
        if self._n_series + new > self._max_series:
            return False
        self._n_series += new
        family.new += new
        return True

    def _adopt_samples(
        self,
        families: dict[MetricKind, _TimerFamily],
        samples: Mapping[tuple[MetricKind, SeriesKey, float], array[float]],
    ) -> bool:
        """The common merge of a partial's samples, without a call per series: every timer-like
        family is still empty this interval and every entry is non-empty at rate 1, so each
        array becomes its series' samples as it is (what ``_merge_samples`` would do one by one).
        False, changing nothing, when that does not hold or some new series would be refused.
        """
        if not samples or any(f.data or f.weighted or f.chunk_keys for f in families.values()):
            return False
        timers: dict[SeriesKey, array[float]] = {}
        histograms: dict[SeriesKey, array[float]] = {}
        distributions: dict[SeriesKey, array[float]] = {}
        for (kind, key, rate), values in samples.items():
            if rate != 1.0 or not values:
                return False
            # Identity tests: hashing the enum member would call Enum.__hash__ per entry.
            if kind is _TIMER:
                timers[key] = values
            elif kind is _HISTOGRAM:
                histograms[key] = values
            else:
                distributions[key] = values
        adopted = (
            (families[_TIMER], timers),
            (families[_HISTOGRAM], histograms),
            (families[_DISTRIBUTION], distributions),
        )
        fresh = [_count_new(data, family.seen) for family, data in adopted]
        if self._n_series + sum(fresh) > self._max_series:
            return False
        for (family, data), new in zip(adopted, fresh, strict=True):
            family.data = data
            family.new += new
            self._n_series += new
        return True

    def _merge_samples(self, family: _TimerFamily, key: SeriesKey, rate: float, values: array[float]) -> None:
        """``add`` of every value in ``values`` at ``rate``, without one Metric per value."""
        if not values:
            return
        plain = family.data.get(key)
        if rate == 1.0 and plain is not None:
            plain.extend(values)
            return
        pairs = family.weighted.get(key)
        if pairs is None:
            if plain is None:
                if key not in family.chunk_keys and not self._admit(family, key):
                    return
                if rate == 1.0:
                    family.data[key] = values
                    return
                pairs = array("d")
            else:
                del family.data[key]
                pairs = array("d", [1.0]) * (2 * len(plain))
                pairs[0::2] = plain
            family.weighted[key] = pairs
        block = array("d", [1.0 / rate]) * (2 * len(values))
        block[0::2] = values
        pairs.extend(block)

    def _merge_chunk(self, families: dict[MetricKind, _TimerFamily], chunk: SampleChunk) -> None:
        """Fold a :class:`SampleChunk` in: kept as columns, one per kind, when every sample is at
        rate 1 and every new series fits under ``max_series``; otherwise series by series
        (``_merge_samples``), which refuses exactly the series ``add`` would."""
        keys = chunk.keys
        if not keys:
            return
        if any(key[2] != 1.0 for key in keys) or not self._adopt_chunk(families, chunk):
            values, bounds = chunk.values, chunk.bounds.tolist()
            for (kind, key, rate), start, end in zip(keys, bounds, bounds[1:], strict=False):
                self._merge_samples(families[kind], key, rate, array("d", values[start:end].tobytes()))

    def _adopt_chunk(self, families: dict[MetricKind, _TimerFamily], chunk: SampleChunk) -> bool:
        """Keep ``chunk`` (all at rate 1) as columns, split by kind; False, changing nothing, if
        a new series would be refused."""
        keys, values = chunk.keys, chunk.values
        lengths = np.diff(chunk.bounds)
        kinds = [key[0] for key in keys]
        parts: list[tuple[_TimerFamily, list[SeriesKey], IntArray, FloatArray]] = []
        if kinds.count(kinds[0]) == len(kinds):  # the usual case: one kind
            parts.append((families[kinds[0]], [key[1] for key in keys], lengths, values))
        else:
            for kind, family in families.items():
                picked = np.array([k is kind for k in kinds], dtype=np.bool_)
                if picked.any():
                    rows = np.flatnonzero(picked).tolist()
                    series = [keys[i][1] for i in rows]
                    parts.append((family, series, lengths[picked], values[np.repeat(picked, lengths)]))
        fresh = [
            0 if all(map(family.seen.__contains__, series))  # the steady state: all flushed before
            else sum(1 for key in series if key not in family.seen and not family.holds(key))
            for family, series, _, _ in parts
        ]
        if self._n_series + sum(fresh) > self._max_series:
            return False
        for (family, series, part_lengths, part_values), new in zip(parts, fresh, strict=True):
            self._n_series += new
            family.new += new
            numbers = map(family.chunk_keys.setdefault, series, family.chunk_numbers)
            family.chunks.append((np.fromiter(numbers, np.int64, len(series)), part_lengths, part_values))
        return True

    def _admit(self, family: _Family[_K, _V], key: _K) -> bool:
        """Account for ``key`` about to be opened in ``family.data`` (it is not there yet)."""
        if key in family.seen:
            return True
        if self._n_series >= self._max_series:
            self.rejected_metrics += 1
            marker = (family.tag, key)
            refused = self._refused
            if marker not in refused:
                self.rejected_series += 1
                if len(refused) < self._max_series:
                    refused.add(marker)
            return False
        self._n_series += 1
        family.new += 1
        return True

    # -- flush ------------------------------------------------------------------------------

    def take_snapshot(self, timestamp: int, interval: float) -> Snapshot:
        """Close the open interval (ending at ``timestamp``, lasting ``interval`` seconds).

        Every series with data gets ``timestamp`` as its last-seen time. A series without data
        whose last-seen time is more than ``idle_ttl`` seconds before ``timestamp`` is
        forgotten (``expired_series`` grows, ``active_series`` shrinks) and no longer emitted;
        the others are passed on as idle. Cheap: swaps dicts and does O(series) dict work,
        never statistics. Raises ``ValueError`` unless ``interval`` is positive and finite.
        """
        if not (interval > 0 and math.isfinite(interval)):
            raise ValueError(f"interval must be a positive number of seconds, got {interval!r}")
        cutoff = timestamp - self._config.idle_ttl
        self._refused = set()
        counters = self._roll(self._counters, timestamp, cutoff)
        gauges = self._roll(self._gauges, timestamp, cutoff)
        values = self._gauge_values
        values.update(gauges.data)
        if len(values) != len(self._gauges.seen):
            for key in values.keys() - self._gauges.seen:
                del values[key]
        return Snapshot(
            timestamp=timestamp,
            interval=float(interval),
            config=self._config,
            counters=counters,
            gauges=dict(values),
            timers=self._roll_samples(self._timers, timestamp, cutoff),
            histograms=self._roll_samples(self._histograms, timestamp, cutoff),
            distributions=self._roll_samples(self._distributions, timestamp, cutoff),
            sets=self._roll(self._sets, timestamp, cutoff),
            events=self._roll(self._events, timestamp, cutoff),
            service_checks=self._roll(self._checks, timestamp, cutoff),
        )

    def _roll(self, family: _Family[_K, _V], timestamp: int, cutoff: float) -> Taken[_K, _V]:
        data = family.data
        family.data = {}
        idle = self._age(family, data, timestamp, cutoff)
        return Taken(data, idle, tuple(family.seen))

    def _roll_samples(self, family: _TimerFamily, timestamp: int, cutoff: float) -> TakenSamples:
        data, weighted, chunks, chunk_keys = family.data, family.weighted, family.chunks, family.chunk_keys
        family.data, family.weighted, family.chunks, family.chunk_keys = {}, {}, [], {}
        family.chunk_numbers = itertools.count()
        active: Mapping[SeriesKey, object] = (
            {**data, **weighted, **chunk_keys} if weighted or chunk_keys else data
        )
        idle = self._age(family, active, timestamp, cutoff)
        seen = family.seen
        order = tuple(seen) if len(seen) == len(active) else tuple(key for key in seen if key in active)
        return TakenSamples(data, weighted, idle, tuple(chunks), chunk_keys, order)

    def _age(
        self, family: _Family[_K, _V], active: Mapping[_K, object], timestamp: int, cutoff: float
    ) -> tuple[_K, ...]:
        """Stamp the ``active`` keys, expire idle ones past the TTL, return the other idle."""
        seen = family.seen
        idle: tuple[_K, ...] = ()
        # Every seen key had data this interval unless seen outnumbers the re-seen keys.
        if len(seen) > len(active) - family.new:
            # In first-seen order (see Taken.order).
            quiet = [key for key in seen if key not in active]
            if min(seen.values()) >= cutoff:  # nothing can expire: skip the per-key loop
                idle = tuple(quiet)
            else:
                kept: list[_K] = []
                expired: list[_K] = []
                for key in quiet:
                    (expired if seen[key] < cutoff else kept).append(key)
                for key in expired:
                    del seen[key]
                self._n_series -= len(expired)
                self.expired_series += len(expired)
                idle = tuple(kept)
        family.new = 0
        seen.update(dict.fromkeys(active, timestamp))
        return idle


# -- build ---------------------------------------------------------------------------------------


class _Columns:
    """The columns of a flush batch, one block of points at a time.

    A block's names are only recorded as ``(prefix, names, suffix)``: the batch's
    :class:`~statsyard_agent._types.PointNames` makes the ~800k name strings of a large flush
    only if something reads them one by one (the writer, in the steady state, does not).
    """

    __slots__ = ("names", "rollups", "tags", "values")

    def __init__(self) -> None:
        self.names: list[tuple[str, Sequence[str], str]] = []
        self.tags: list[Sequence[Tags]] = []
        self.rollups: list[tuple[Rollup, ...]] = []
        self.values: list[FloatArray] = []

    def add(
        self, bases: Sequence[str], suffix: str, tags: Sequence[Tags], rollup: Rollup, values: FloatArray
    ) -> None:
        """Points ``bases[i] + suffix`` with ``tags[i]`` and ``values[i]``; ``bases`` and
        ``tags`` must not change afterwards (the batch's names read them)."""
        if bases:
            if isinstance(bases, PointNames):
                self.names += bases.suffixed(suffix)
            else:
                self.names.append(("", bases, suffix))
            self.tags.append(tags)
            self.rollups.append((rollup,) * len(bases))
            self.values.append(np.asarray(values, dtype=np.float64))

    def batch(self, timestamp: int, interval: float, sketches: Sequence[SketchPoint]) -> FlushBatch:
        values = np.concatenate(self.values) if self.values else np.zeros(0)
        return FlushBatch(
            timestamp=timestamp,
            interval=interval,
            names=PointNames(self.names),
            tags=_flatten(self.tags),
            rollups=_flatten(self.rollups),
            values=values,
            sketches=sketches,
        )


def _flatten(blocks: Iterable[Sequence[_V]]) -> tuple[_V, ...]:
    # list += is a memcpy per block, much cheaper than iterating a chain element by element
    # (tags and rollups are few distinct objects, so the increfs stay in cache).
    flat: list[_V] = []
    for block in blocks:
        flat += block
    return tuple(flat)


def build_flush_batch(snapshot: Snapshot) -> FlushBatch:
    """Compute every point of one interval; pure, vectorised, safe in a worker thread.

    Points come grouped by kind and by stat (their order carries no meaning). Timer-like series
    are processed all at once: one concatenation of their samples, one segmented sort, and a
    fixed number of numpy passes for the Etsy statistics and for the sketches; there is no
    Python-level numpy call per series. Idle series within the TTL emit Etsy's idle values:
    counters, sets, events and service checks 0; timers only ``count`` and ``count_ps`` = 0;
    gauges their last value.
    """
    config = snapshot.config
    root = f"{config.prefix}." if config.prefix else ""
    interval = snapshot.interval
    out = _Columns()

    # Idle counters, sets, events and service checks emit the same points as the others (zeros),
    # among them in first-seen order, so that a series going idle leaves the order unchanged.
    counters = snapshot.counters
    keys = counters.order
    bases, tags = _bases(f"{root}counters.", keys)
    totals = _values_or_zero(counters.data, keys)
    out.add(bases, ".count", tags, _SUM, totals)
    out.add(bases, ".rate", tags, _RATE, totals / interval)

    gauges = snapshot.gauges
    bases, tags = _bases(f"{root}gauges.", gauges.keys())
    out.add(bases, "", tags, _LAST, np.fromiter(gauges.values(), np.float64, len(gauges)))

    sketches = _build_timers(
        out,
        root,
        interval,
        config.percentiles,
        (
            ("timers", snapshot.timers),
            ("histograms", snapshot.histograms),
            ("distributions", snapshot.distributions),
        ),
    )

    sets = snapshot.sets
    keys = sets.order
    bases, tags = _bases(f"{root}sets.", keys)
    sizes = np.fromiter(map(len, map(sets.data.get, keys, itertools.repeat(()))), np.float64, len(keys))
    out.add(bases, ".count", tags, _MAX, sizes)

    for name, taken in (("events", snapshot.events), ("service_checks", snapshot.service_checks)):
        tag_keys = taken.order
        out.add([root + name] * len(tag_keys), "", tag_keys, _SUM, _values_or_zero(taken.data, tag_keys))

    return out.batch(snapshot.timestamp, interval, sketches)


def _build_timers(
    out: _Columns,
    root: str,
    interval: float,
    percentiles: tuple[float, ...],
    groups: Iterable[tuple[str, TakenSamples]],
) -> Sequence[SketchPoint]:
    gathered = _gather_samples(root, groups)
    bases, tags = gathered.bases, gathered.tags
    sketch_points: Sequence[SketchPoint] = ()
    if bases:
        order = group_argsort(gathered.values, gathered.series)
        ordered = gathered.values[order]
        n = gathered.lengths
        offsets = np.zeros(len(bases) + 1, dtype=np.int64)
        np.cumsum(n, out=offsets[1:])
        if gathered.weights is None:
            counts = n.astype(np.float64)
            ordered_weights = None
        else:
            counts = np.bincount(gathered.series, gathered.weights, minlength=len(bases)).astype(np.float64)
            ordered_weights = gathered.weights[order]
        encoded = sketch_bytes_from_segments(ordered, ordered_weights, offsets, presorted=True)
        sketch_points = SketchColumns(bases, tags, encoded)
        del encoded
        stats = timer_stats_sorted(ordered, offsets, counts, interval=interval, percentiles=percentiles)
        blocks: tuple[tuple[str, Rollup, FloatArray], ...] = (
            ("count", _SUM, stats.count),
            ("count_ps", _RATE, stats.count_ps),
            ("sum", _SUM, stats.sum),
            ("sum_squares", _SUM, stats.sum_squares),
            ("mean", _MEAN, stats.mean),
            ("median", _AVERAGE, stats.median),
            ("lower", _MIN, stats.lower),
            ("upper", _MAX, stats.upper),
            ("std", _AVERAGE, stats.std),
        )
        for stat, rollup, column in blocks:
            out.add(bases, "." + stat, tags, rollup, column)
        for pct in stats.percentiles:
            pick = np.flatnonzero(pct.present)
            if pick.size == len(bases):
                pct_bases, pct_tags = bases, tags
            else:
                pct_bases = [bases[i] for i in pick.tolist()]
                pct_tags = [tags[i] for i in pick.tolist()]
            label = pct.label
            bound = "upper_" if pct.pct > 0 else "lower_"
            for stat, rollup, column in (
                ("count_", _SUM, pct.count),
                ("mean_", _MEAN, pct.mean),
                ("sum_", _SUM, pct.sum),
                ("sum_squares_", _SUM, pct.sum_squares),
                (bound, _MIN if pct.pct < 0 else _MAX, pct.bound),
            ):
                out.add(pct_bases, "." + stat + label, pct_tags, rollup, column[pick])

    idle_bases, idle_tags = gathered.idle_bases, gathered.idle_tags
    zeros = np.zeros(len(idle_bases))
    out.add(idle_bases, ".count", idle_tags, _SUM, zeros)
    out.add(idle_bases, ".count_ps", idle_tags, _RATE, zeros)
    return sketch_points


@dataclass(slots=True)
class _Gathered:
    """All timer-like samples of a snapshot, flat: sample ``j`` belongs to series
    ``series[j]`` (``bases[series[j]]`` with ``tags[series[j]]``), which has ``lengths[i] > 0``
    samples; ``weights`` is None when every sample had rate 1."""

    bases: Sequence[str]
    tags: list[Tags]
    values: FloatArray
    weights: FloatArray | None
    series: IntArray
    lengths: IntArray
    idle_bases: list[str]
    idle_tags: list[Tags]


def _gather_samples(root: str, groups: Iterable[tuple[str, TakenSamples]]) -> _Gathered:
    """Every timer-like sample of the snapshot, flat, with its series number: series are numbered
    in first-seen order (``TakenSamples.order``) and their samples may come in several pieces
    (an array in ``data``, chunks), which the build's grouping sort brings together."""
    keys: list[SeriesKey] = []
    segments: list[tuple[str, Sequence[str]]] = []
    plain_parts: list[FloatArray] = []
    plain_series: list[IntArray] = []
    pair_parts: list[array[float]] = []
    pair_series: list[IntArray] = []
    idle_bases: list[str] = []
    idle_tags: list[Tags] = []
    for namespace, taken in groups:
        prefix = f"{root}{namespace}."
        first = len(keys)
        keys += taken.order
        # Series numbers by key, for the samples kept by series (chunks are renumbered below).
        number = dict(zip(taken.order, itertools.count(first))) if taken.data or taken.weighted else {}
        if taken.data:
            arrays = list(taken.data.values())
            plain_parts.append(np.frombuffer(b"".join(arrays), dtype=np.float64))
            ids = np.fromiter(map(number.__getitem__, taken.data), np.int64, len(arrays))
            plain_series.append(np.repeat(ids, np.fromiter(map(len, arrays), np.int64, len(arrays))))
        if taken.chunks:
            # One lookup per series (not per series and chunk): chunk numbers -> series numbers.
            chunk_keys = taken.chunk_keys
            chunk_number = np.fromiter(
                map(chunk_keys.get, taken.order, itertools.repeat(-1)), np.int64, len(taken.order)
            )
            chunked = np.flatnonzero(chunk_number >= 0)
            renumber = np.zeros(max(chunk_keys.values()) + 1, dtype=np.int64)
            renumber[chunk_number[chunked]] = chunked + first
            for ids, lengths, chunk_values in taken.chunks:
                plain_parts.append(chunk_values)
                plain_series.append(np.repeat(renumber[ids], lengths))
        if taken.weighted:
            pair_parts += taken.weighted.values()
            ids = np.fromiter(map(number.__getitem__, taken.weighted), np.int64, len(taken.weighted))
            pair_series.append(
                np.repeat(ids, np.fromiter(map(len, taken.weighted.values()), np.int64, len(ids)) // 2)
            )
        segments.append((prefix, _names_of(taken.order)))
        idle_bases += [prefix + name for name, _ in taken.idle]
        idle_tags += _tags_of(taken.idle)
    bases: Sequence[str] = PointNames([(prefix, names, "") for prefix, names in segments])
    tags = _tags_of(keys)

    plain = np.concatenate(plain_parts) if plain_parts else np.zeros(0)
    series = np.concatenate(plain_series) if plain_series else np.zeros(0, dtype=np.int64)
    values: FloatArray = plain
    weights: FloatArray | None = None
    if pair_parts:
        interleaved = np.frombuffer(b"".join(pair_parts), dtype=np.float64).reshape(-1, 2)
        values = np.concatenate((plain, interleaved[:, 0]))
        weights = np.concatenate((np.ones(plain.size), interleaved[:, 1]))
        series = np.concatenate((series, *pair_series))
    n = np.bincount(series, minlength=len(keys)).astype(np.int64)

    if not n.all():
        # Opened by a metric without values: nothing to summarise, report it like an idle one.
        empty = np.flatnonzero(n == 0).tolist()
        idle_bases += [bases[i] for i in empty]
        idle_tags += [tags[i] for i in empty]
        kept = np.flatnonzero(n > 0).tolist()
        bases = [bases[i] for i in kept]
        tags = [tags[i] for i in kept]
        series = (np.cumsum(n > 0) - 1)[series]
        n = n[n > 0]
    return _Gathered(bases, tags, values, weights, series, n, idle_bases, idle_tags)


def _bases(prefix: str, keys: Iterable[SeriesKey]) -> tuple[Sequence[str], list[Tags]]:
    """The base names (``prefix + name``, made only if read) and the tags of ``keys``."""
    return PointNames([(prefix, _names_of(keys), "")]), _tags_of(keys)


# One C-level pass each over keys that are usually out of the CPU's caches by flush time.
def _names_of(keys: Iterable[SeriesKey]) -> list[str]:
    return list(map(_FIRST, keys))


def _tags_of(keys: Iterable[SeriesKey]) -> list[Tags]:
    return list(map(_SECOND, keys))


_FIRST = operator.itemgetter(0)
_SECOND = operator.itemgetter(1)


def _values_or_zero(data: Mapping[_K, float], keys: Sequence[_K]) -> FloatArray:
    """``data[key]`` for each key, 0 for keys without data (idle), in one C-level pass."""
    return np.fromiter(map(data.get, keys, itertools.repeat(0.0)), np.float64, len(keys))


def _count_new(keys: Collection[_K], seen: Mapping[_K, object]) -> int:
    """How many of ``keys`` are not in ``seen``: one C-level lookup per key, no set built."""
    return len(keys) - sum(map(seen.__contains__, keys)) if seen else len(keys)


def _with_tags(tags: Tags, *extra: tuple[str, str]) -> Tags:
    return tuple(sorted(set(tags).union(extra)))
