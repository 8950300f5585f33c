"""The receive path's pre-aggregator: datagrams in, a :class:`~statsyard_agent._aggregate.Partial` out.

Pure (no IO, no trio), so the same code runs on the agent's event loop and in the receive worker
processes (:mod:`statsyard_agent._receiver`).

Why it exists: parsing every line into a ``Metric`` and handing it to ``Aggregator.add`` costs
about 3 µs per line here, which caps one core near 300k lines/s. Real traffic repeats the same
series over and over, and a metric line's meaning depends on its value only through the value:
``NAME:VALUE|TYPE|SECTIONS`` always means the same series, kind and sample rate for a given
``(NAME, TYPE|SECTIONS)``. So the first line of each ``(NAME, TAIL)`` pair goes through the real
:class:`~statsyard_agent._protocol.Parser` (every check, every error reason, sanitising, tag
sorting), and the pair is bound to the slot its metric went into (or, while the series cap
refuses it, kept as a *spec*: kind, series, rate); later lines with the same pair cost two
``bytes.partition`` calls, one dict lookup, a cached value conversion and one ``+=`` or
``append`` into the series' slot (about 0.8 µs per line).

Equivalence with ``Parser.parse_datagram`` + ``Aggregator.add`` (pinned by property tests):

* A pair is only ever bound (or its spec kept) from a line the parser accepted, and only for a name without
  ``|`` (with a ``|`` before the first ``:`` the parser always refuses the line, so such a line
  never reaches the fast path). For such a name, the parser's own split gives exactly ``NAME``,
  ``VALUE`` and ``TAIL``, and the name, type and sections are checked before the value.
* A value not already seen is converted by the parser's own rules; a packed (``1:2:3``),
  invalid or empty value, a bad set member, a line longer than ``max_line_bytes``, an event,
  a service check and every line of an unbound pair go through the parser as they are, and its
  result (metrics, or the one error with its reason) is used.
* Slots are created only for a line that is valid, so a bad line never opens a series.
* Counter slots accumulate ``value * (1 / rate)`` in arrival order, as ``Aggregator.add`` does;
  gauges keep "set, then deltas" folded into one ``(absolute, value)``.

Counting (into the ``counts`` object given, e.g. the agent's ingest counters): ``lines`` (non-empty
lines), ``metrics`` (one per metric, so per value of a packed gauge line), ``events``,
``service_checks`` and ``parse_errors[reason]``, exactly as ``parse_datagram`` reports them.

Memory: bound pairs, specs and cached values are bounded (cleared when full); slots
are bounded by ``max_series``: a metric of a new series beyond it is refused and counted in the
partial (``refused``), as the aggregator's own guard would. Slots of series gone quiet are evicted
after a few takes, which frees room again.
"""

from __future__ import annotations

import collections
from array import array
from collections.abc import Callable
from math import copysign
from typing import Any, Final, Protocol

from ._aggregate import Partial, SeriesKey
from ._exceptions import ParseError
from ._protocol import CACHE_MAX_ENTRIES, Parser, _parse_value
from ._types import Event, Metric, MetricKind, ServiceCheck

__all__ = ["ParseCounts", "PreAggregator", "SimpleCounts"]

_COUNTER: Final = 0
_GAUGE: Final = 1
_SAMPLES: Final = 2
_SET: Final = 3

_KIND_COUNTER: Final = MetricKind.COUNTER
_KIND_GAUGE: Final = MetricKind.GAUGE
_KIND_SET: Final = MetricKind.SET

#: Specs (and bound slots) kept at most; beyond, the cache is cleared and refilled by traffic.
#: Larger than the parser's caches because it must cover every active series (``max_series``
#: defaults to 100,000) for the fast path to hold.
SPEC_MAX_ENTRIES: Final = 262_144

#: Takes a slot may stay untouched before it is evicted (its series bound again if it returns).
EVICT_AFTER_TAKES: Final = 8

_PLUS: Final = 43  # b"+"[0]
_MINUS: Final = 45  # b"-"[0]

# A bound slot: (code, cell, factor). cell is the series' accumulator (see PreAggregator);
# factor is 1/rate for counters, 1.0 for gauges if a signed value is a delta
# (gauge_sign = "delta"), unused otherwise.
_Slot = tuple[int, Any, float]
_Spec = tuple[MetricKind, SeriesKey, float]


class ParseCounts(Protocol):
    """Where the pre-aggregator counts what it saw (the agent's ``IngestCounters`` is one)."""

    lines: int
    metrics: int
    events: int
    service_checks: int
    parse_errors: collections.Counter[str]


class SimpleCounts:
    """A plain :class:`ParseCounts` (for receive workers and tests)."""

    __slots__ = ("events", "lines", "metrics", "parse_errors", "service_checks")

    def __init__(self) -> None:
        self.lines = 0
        self.metrics = 0
        self.events = 0
        self.service_checks = 0
        self.parse_errors: collections.Counter[str] = collections.Counter()


class PreAggregator:
    """Feeds datagrams into per-series slots; :meth:`take` hands the interval's data over.

    Not thread-safe; one per receive loop. ``max_series`` bounds the slots held (one per counter,
    gauge or set series, one per timer-like series and sample rate).

    Slots outlive :meth:`take` (which resets them in place), so a series costs the slow path once,
    not once per interval. An untouched slot is told apart without per-line bookkeeping: totals
    and delta sums start each interval at ``-0.0``, which no addition of a value other than
    ``-0.0`` can leave unchanged (values that parse to ``-0.0`` take the parser's path, which
    starts from ``+0.0`` as ``Aggregator.add`` does); sample arrays and sets are simply empty. A
    slot untouched for ``evict_after`` takes (:data:`EVICT_AFTER_TAKES`) is evicted: its cell is
    emptied, so a bound entry still pointing at it raises ``IndexError`` on use and is bound again.
    """

    __slots__ = (
        "_bound",
        "_counters",
        "_counts",
        "_delta_gauges",
        "_events",
        "_evict_after",
        "_fed",
        "_gauges",
        "_max_line",
        "_max_series",
        "_n_slots",
        "_parser",
        "_refused",
        "_refused_keys",
        "_samples",
        "_service_checks",
        "_sets",
        "_specs",
        "_values",
    )

    def __init__(
        self, parser: Parser, counts: ParseCounts, max_series: int, evict_after: int = EVICT_AFTER_TAKES
    ) -> None:
        self._parser = parser
        self._evict_after = evict_after
        self._counts = counts
        self._max_series = max_series
        self._max_line = parser.config.max_line_bytes
        self._delta_gauges = 1.0 if parser.config.gauge_sign == "delta" else 0.0
        self._specs: dict[tuple[bytes, bytes], _Spec] = {}
        self._values: dict[bytes, float] = {}
        self._bound: dict[tuple[bytes, bytes], _Slot] = {}
        # Cells: counter [total, idle takes]; gauge [absolute, value, idle takes] (absolute is
        # 1.0 once set this interval); samples [array, idle takes]; set [members, idle takes].
        self._counters: dict[SeriesKey, list[float]] = {}
        self._gauges: dict[SeriesKey, list[float]] = {}
        self._samples: dict[tuple[MetricKind, SeriesKey, float], list[Any]] = {}
        self._sets: dict[SeriesKey, list[Any]] = {}
        self._n_slots = 0
        self._new_interval()

    def _new_interval(self) -> None:
        self._events: list[Event] = []
        self._service_checks: list[ServiceCheck] = []
        self._refused = 0
        self._refused_keys: set[tuple[str, SeriesKey]] = set()
        self._fed = 0

    @property
    def pending(self) -> int:
        """Non-zero when :meth:`take` may return something: datagrams fed, events, service
        checks and refusals since the last take."""
        return self._fed + len(self._events) + len(self._service_checks) + self._refused

    @property
    def slots(self) -> int:
        """Slots held (touched this interval, or idle for fewer than ``evict_after`` takes)."""
        return self._n_slots

    def take(self) -> Partial:
        """Hand over the interval's data (the caller owns it) and start a new interval.

        O(slots held) when anything was fed since the last take, O(1) otherwise.
        """
        partial = Partial(
            events=self._events,
            service_checks=self._service_checks,
            refused=self._refused,
            refused_keys=self._refused_keys,
        )
        if self._fed:
            self._take_slots(partial)
        self._new_interval()
        return partial

    def _take_slots(self, partial: Partial) -> None:
        evicted = 0
        counters = partial.counters
        stale: list[Any] = []
        for key, cell in self._counters.items():
            total = cell[0]
            if total == 0.0 and copysign(1.0, total) < 0.0:
                cell[1] += 1.0
                if cell[1] >= self._evict_after:
                    stale.append(key)
            else:
                counters[key] = total
                cell[0] = -0.0
                cell[1] = 0.0
        evicted += _evict(self._counters, stale)
        gauges = partial.gauges
        stale = []
        for key, cell in self._gauges.items():
            value = cell[1]
            if cell[0] or value != 0.0 or copysign(1.0, value) > 0.0:
                gauges[key] = (cell[0], value)
                cell[0] = 0.0
                cell[1] = -0.0
                cell[2] = 0.0
            else:
                cell[2] += 1.0
                if cell[2] >= self._evict_after:
                    stale.append(key)
        evicted += _evict(self._gauges, stale)
        evicted += _take_containers(self._samples, partial.samples, _new_samples, self._evict_after)
        evicted += _take_containers(self._sets, partial.sets, set, self._evict_after)
        self._n_slots -= evicted

    # -- hot path ----------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Parse and pre-aggregate one datagram (never raises for any input bytes)."""
        self._fed += 1
        parts = data.split(b"\n")
        if not parts[-1]:
            parts.pop()
        bound = self._bound
        values = self._values
        long_lines = len(data) > self._max_line
        slow = 0
        for line in parts:
            name, _, rest = line.partition(b":")
            raw, _, tail = rest.partition(b"|")
            slot = bound.get((name, tail))
            if slot is None or (long_lines and len(line) > self._max_line):
                slow += 1
                self._slow(line, name, raw, tail)
                continue
            code, cell, factor = slot
            if code == _SET:
                if not raw or b":" in raw:
                    slow += 1
                    self._parse_line(line)
                    continue
                try:
                    member = raw.decode()
                except UnicodeDecodeError:
                    slow += 1
                    self._parse_line(line)
                    continue
                try:
                    cell[0].add(member)
                except IndexError:  # an evicted cell: bind the line's key again
                    slow += 1
                    del bound[(name, tail)]
                    self._slow(line, name, raw, tail)
                continue
            value = values.get(raw)
            if value is None:
                value = self._value(raw)
                if value is None:
                    slow += 1
                    self._parse_line(line)
                    continue
            try:  # _accumulate(), inlined: a call per line would cost ~5 % here
                if code == _COUNTER:
                    cell[0] += value * factor
                elif code == _SAMPLES:
                    cell[0].append(value)
                elif factor and (raw[0] == _PLUS or raw[0] == _MINUS):
                    cell[1] += value
                else:
                    cell[0] = 1.0
                    cell[1] = value
            except IndexError:  # an evicted cell: bind the line's key again
                slow += 1
                del bound[(name, tail)]
                self._slow(line, name, raw, tail)
        fast = len(parts) - slow
        counts = self._counts
        counts.lines += fast
        counts.metrics += fast

    def _value(self, raw: bytes) -> float | None:
        """A single value by the parser's rules, cached; None if packed, invalid or -0.0."""
        if b":" in raw:
            return None
        try:
            value = _parse_value(raw)
        except ParseError:
            return None
        if value == 0.0 and copysign(1.0, value) < 0.0:
            return None  # would look like an untouched slot; the parser's path handles it
        values = self._values
        if len(values) >= CACHE_MAX_ENTRIES:
            values.clear()
        values[raw] = value
        return value

    # -- slow path ---------------------------------------------------------------------------

    def _slow(self, line: bytes, name: bytes, raw: bytes, tail: bytes) -> None:
        """A line without a bound slot: bind it through its spec, or let the parser decide."""
        key = (name, tail)
        spec = self._specs.get(key)
        if spec is None or len(line) > self._max_line:
            self._parse_line(line, key)
            return
        kind, series, rate = spec
        if kind is _KIND_SET:
            if not raw or b":" in raw:
                self._parse_line(line)
                return
            try:
                member = raw.decode()
            except UnicodeDecodeError:
                self._parse_line(line)
                return
            slot = self._bind(key, kind, series, rate)
            if slot is not None:
                slot[1][0].add(member)
        else:
            value = self._values.get(raw)
            if value is None:
                value = self._value(raw)
                if value is None:
                    self._parse_line(line)
                    return
            slot = self._bind(key, kind, series, rate)
            if slot is not None:
                _accumulate(slot, raw, value)
        counts = self._counts
        counts.lines += 1
        counts.metrics += 1

    def _parse_line(self, line: bytes, key: tuple[bytes, bytes] | None = None) -> None:
        """Let the parser handle one line; when ``key`` is given, bind it to the slot the line's
        (first) metric went into, so the key's next lines take the fast path; if the series cap
        refused that metric, keep its spec instead, so the key's next lines are refused without
        a parse (specs are kept only for such keys: a bound key needs none)."""
        counts = self._counts
        try:
            items = self._parser.parse_line(line)
        except ParseError as exc:
            counts.lines += 1
            counts.parse_errors[exc.reason] += 1
            return
        if not items:
            return  # an empty line (or a lone "\r"): not a line at all
        counts.lines += 1
        first = items[0]
        first_slot: _Slot | None = None
        for item in items:
            if isinstance(item, Metric):
                slot = self._add(item)
                if item is first:
                    first_slot = slot
                counts.metrics += 1
            elif isinstance(item, Event):
                self._events.append(item)
                counts.events += 1
            else:
                self._service_checks.append(item)
                counts.service_checks += 1
        if key is not None and isinstance(first, Metric) and b"|" not in key[0]:
            if first_slot is not None:
                bound = self._bound
                if len(bound) >= SPEC_MAX_ENTRIES:
                    bound.clear()
                bound[key] = first_slot
            else:
                specs = self._specs
                if len(specs) >= SPEC_MAX_ENTRIES:
                    specs.clear()
                specs[key] = (first.kind, (first.name, first.tags), first.rate)

    def _add(self, metric: Metric) -> _Slot | None:
        """``Aggregator.add`` semantics, into this interval's slots (any value, -0.0 included);
        return the slot, or None if the series cap refused it."""
        slot = self._slot(metric.kind, (metric.name, metric.tags), metric.rate)
        if slot is None:
            return None
        code, cell, factor = slot
        if code == _COUNTER:
            total = cell[0]
            if total == 0.0:
                total = 0.0  # Aggregator.add starts from +0.0, not from the -0.0 marker
            for value in metric.values:
                total += value * factor
            cell[0] = total
        elif code == _SAMPLES:
            cell[0].extend(metric.values)
        elif code == _SET:
            cell[0].update(metric.members)
        else:
            for value in metric.values:
                if metric.delta:
                    if not cell[0] and cell[1] == 0.0:
                        cell[1] = 0.0  # from +0.0 like Aggregator.add, not from the marker
                    cell[1] += value
                else:
                    cell[0] = 1.0
                    cell[1] = value
        return slot

    def _bind(
        self, key: tuple[bytes, bytes], kind: MetricKind, series: SeriesKey, rate: float
    ) -> _Slot | None:
        slot = self._slot(kind, series, rate)
        if slot is not None:
            bound = self._bound
            if len(bound) >= SPEC_MAX_ENTRIES:
                bound.clear()
            bound[key] = slot
            self._specs.pop(key, None)  # kept only while the cap refuses the key
        return slot

    def _slot(self, kind: MetricKind, series: SeriesKey, rate: float) -> _Slot | None:
        """The slot of ``series``, created if there is room; None if refused."""
        if kind is _KIND_COUNTER:
            cell = self._counters.get(series)
            if cell is None:
                if not self._room(kind, series):
                    return None
                cell = self._counters[series] = [-0.0, 0.0]
            return (_COUNTER, cell, 1.0 / rate)
        if kind is _KIND_GAUGE:
            cell = self._gauges.get(series)
            if cell is None:
                if not self._room(kind, series):
                    return None
                cell = self._gauges[series] = [0.0, -0.0, 0.0]
            return (_GAUGE, cell, self._delta_gauges)
        if kind is _KIND_SET:
            members = self._sets.get(series)
            if members is None:
                if not self._room(kind, series):
                    return None
                members = self._sets[series] = [set(), 0]
            return (_SET, members, 1.0)
        samples_key = (kind, series, rate)
        samples = self._samples.get(samples_key)
        if samples is None:
            if not self._room(kind, series):
                return None
            samples = self._samples[samples_key] = [array("d"), 0]
        return (_SAMPLES, samples, 1.0)

    def _room(self, kind: MetricKind, series: SeriesKey) -> bool:
        if self._n_slots < self._max_series:
            self._n_slots += 1
            return True
        self._refused += 1
        if len(self._refused_keys) < self._max_series:
            self._refused_keys.add((kind.value, series))
        return False


def _accumulate(slot: _Slot, raw: bytes, value: float) -> None:
    """Add one single-valued line (``raw`` its value's text, ``value`` that value) to a slot."""
    code, cell, factor = slot
    if code == _COUNTER:
        cell[0] += value * factor
    elif code == _SAMPLES:
        cell[0].append(value)
    elif factor and (raw[0] == _PLUS or raw[0] == _MINUS):  # a delta (gauge_sign = "delta")
        cell[1] += value
    else:
        cell[0] = 1.0
        cell[1] = value


def _new_samples() -> array[float]:
    return array("d")


def _take_containers(
    family: dict[Any, list[Any]], shipped: dict[Any, Any], fresh: Callable[[], Any], evict_after: int
) -> int:
    """Ship the non-empty containers (sample arrays, member sets), put empty ones in their
    cells, age and evict the empty ones; return how many were evicted."""
    stale = []
    for key, cell in family.items():
        if cell[0]:
            shipped[key] = cell[0]
            cell[0] = fresh()
            cell[1] = 0
        else:
            cell[1] += 1
            if cell[1] >= evict_after:
                stale.append(key)
    return _evict(family, stale)


def _evict(family: dict[Any, list[Any]], stale: list[Any]) -> int:
    """Drop ``stale`` slots; empty their cells so bound entries still pointing there re-bind."""
    for key in stale:
        family.pop(key).clear()
    return len(stale)
