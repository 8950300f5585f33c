"""The receive path's pre-aggregator: datagrams in, a :class:`~statsyard_agent._aggregate.Partial` out.

Pure (no IO, no trio), so the same code runs on the agent's event loop and in the receive worker
processes (:mod:`statsyard_agent._receiver`).

Why it exists: parsing every line into a ``Metric`` and handing it to ``Aggregator.add`` costs
about 3 µs per line here, which caps one core near 300k lines/s. Real traffic repeats the same
series over and over, and a metric line's meaning depends on its value only through the value:
``NAME:VALUE|TYPE|SECTIONS`` always means the same series, kind and sample rate for a given
``(NAME, TYPE|SECTIONS)``. So the first line of each ``(NAME, TAIL)`` pair goes through the real
:class:`~statsyard_agent._protocol.Parser` (every check, every error reason, sanitising, tag
sorting), and the result is cached as a *spec*; later lines with the same pair cost two
``bytes.partition`` calls, one dict lookup, a cached value conversion and one ``+=`` or
``append`` into the series' slot (about 0.8 µs per line).

Equivalence with ``Parser.parse_datagram`` + ``Aggregator.add`` (pinned by property tests):

* The spec is only ever taken from a line the parser accepted, and only for a name without
  ``|`` (with a ``|`` before the first ``:`` the parser always refuses the line, so such a line
  never reaches the fast path). For such a name, the parser's own split gives exactly ``NAME``,
  ``VALUE`` and ``TAIL``, and the name, type and sections are checked before the value.
* A value not already seen is converted by the parser's own rules; a packed (``1:2:3``),
  invalid or empty value, a bad set member, a line longer than ``max_line_bytes``, an event,
  a service check and every line without a spec go through the parser as they are, and its
  result (metrics, or the one error with its reason) is used.
* Slots are created only for a line that is valid, so a bad line never opens a series.
* Counter slots accumulate ``value * (1 / rate)`` in arrival order, as ``Aggregator.add`` does;
  gauges keep "set, then deltas" folded into one ``(absolute, value)``.

Counting (into the ``counts`` object given, e.g. the agent's ingest counters): ``lines`` (non-empty
lines), ``metrics`` (one per metric, so per value of a packed gauge line), ``events``,
``service_checks`` and ``parse_errors[reason]``, exactly as ``parse_datagram`` reports them.

Memory: specs and cached values are bounded like the parser's caches (cleared when full); slots
are bounded by ``max_series`` per interval: a metric of a new series beyond it is refused and
counted in the partial (``refused``), as the aggregator's own guard would.
"""

from __future__ import annotations

import collections
from array import array
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

_PLUS: Final = 43  # b"+"[0]
_MINUS: Final = 45  # b"-"[0]

# A bound slot: (code, target, factor). target is the series' accumulator for this interval:
# a one-element list (counter total), a two-element list (gauge absolute flag, value), an
# array of samples, or a set of members; factor is 1/rate for counters, 1.0 for gauges if a
# signed value is a delta (gauge_sign = "delta"), unused otherwise.
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
    """Feeds datagrams into per-series slots of the open interval; :meth:`take` hands them over.

    Not thread-safe; one per receive loop. ``max_series`` bounds the slots held per interval
    (one per counter, gauge or set series, one per timer-like series and sample rate).
    """

    __slots__ = (
        "_bound",
        "_counters",
        "_counts",
        "_delta_gauges",
        "_events",
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

    def __init__(self, parser: Parser, counts: ParseCounts, max_series: int) -> None:
        self._parser = parser
        self._counts = counts
        self._max_series = max_series
        self._max_line = parser.config.max_line_bytes
        self._delta_gauges = 1.0 if parser.config.gauge_sign == "delta" else 0.0
        self._specs: dict[tuple[bytes, bytes], _Spec] = {}
        self._values: dict[bytes, float] = {}
        self._reset()

    def _reset(self) -> None:
        self._bound: dict[tuple[bytes, bytes], _Slot] = {}
        self._counters: dict[SeriesKey, list[float]] = {}
        self._gauges: dict[SeriesKey, list[float]] = {}
        self._samples: dict[tuple[MetricKind, SeriesKey, float], array[float]] = {}
        self._sets: dict[SeriesKey, set[str]] = {}
        self._events: list[Event] = []
        self._service_checks: list[ServiceCheck] = []
        self._n_slots = 0
        self._refused = 0
        self._refused_keys: set[tuple[str, SeriesKey]] = set()

    @property
    def pending(self) -> int:
        """Slots, events and service checks held for the open interval."""
        return self._n_slots + len(self._events) + len(self._service_checks) + self._refused

    def take(self) -> Partial:
        """Hand over everything held (the caller owns it) and start an empty interval."""
        partial = Partial(
            counters={key: cell[0] for key, cell in self._counters.items()},
            gauges={key: (cell[0], cell[1]) for key, cell in self._gauges.items()},
            samples=self._samples,
            sets=self._sets,
            events=self._events,
            service_checks=self._service_checks,
            refused=self._refused,
            refused_keys=self._refused_keys,
        )
        self._reset()
        return partial

    # -- hot path ----------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Parse and pre-aggregate one datagram (never raises for any input bytes)."""
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
            code, target, factor = slot
            if code == _SET:
                if not raw or b":" in raw:
                    slow += 1
                    self._parse_line(line)
                    continue
                try:
                    target.add(raw.decode())
                except UnicodeDecodeError:
                    slow += 1
                    self._parse_line(line)
                continue
            value = values.get(raw)
            if value is None:
                value = self._value(raw)
                if value is None:
                    slow += 1
                    self._parse_line(line)
                    continue
            if code == _COUNTER:
                target[0] += value * factor
            elif code == _SAMPLES:
                target.append(value)
            elif factor and (raw[0] == _PLUS or raw[0] == _MINUS):
                target[1] += value
            else:
                target[0] = 1.0
                target[1] = value
        fast = len(parts) - slow
        counts = self._counts
        counts.lines += fast
        counts.metrics += fast

    def _value(self, raw: bytes) -> float | None:
        """A single value by the parser's rules, cached; None if packed or invalid."""
        if b":" in raw:
            return None
        try:
            value = _parse_value(raw)
        except ParseError:
            return None
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
                slot[1].add(member)
        else:
            value = self._values.get(raw)
            if value is None:
                value = self._value(raw)
                if value is None:
                    self._parse_line(line)
                    return
            slot = self._bind(key, kind, series, rate)
            if slot is not None:
                code, target, factor = slot
                if code == _COUNTER:
                    target[0] += value * factor
                elif code == _SAMPLES:
                    target.append(value)
                elif factor and (raw[0] == _PLUS or raw[0] == _MINUS):
                    target[1] += value
                else:
                    target[0] = 1.0
                    target[1] = value
        counts = self._counts
        counts.lines += 1
        counts.metrics += 1

    def _parse_line(self, line: bytes, key: tuple[bytes, bytes] | None = None) -> None:
        """Let the parser handle one line; learn its spec when ``key`` is given."""
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
        for item in items:
            if isinstance(item, Metric):
                self._add(item)
                counts.metrics += 1
            elif isinstance(item, Event):
                self._events.append(item)
                counts.events += 1
            else:
                self._service_checks.append(item)
                counts.service_checks += 1
        if key is not None and isinstance(first, Metric) and b"|" not in key[0]:
            specs = self._specs
            if len(specs) >= SPEC_MAX_ENTRIES:
                specs.clear()
            specs[key] = (first.kind, (first.name, first.tags), first.rate)

    def _add(self, metric: Metric) -> None:
        """``Aggregator.add`` semantics, into this interval's slots."""
        slot = self._slot(metric.kind, (metric.name, metric.tags), metric.rate)
        if slot is None:
            return
        code, target, factor = slot
        if code == _COUNTER:
            total = target[0]
            for value in metric.values:
                total += value * factor
            target[0] = total
        elif code == _SAMPLES:
            target.extend(metric.values)
        elif code == _SET:
            target.update(metric.members)
        else:
            for value in metric.values:
                if metric.delta:
                    target[1] += value
                else:
                    target[0] = 1.0
                    target[1] = value

    def _bind(
        self, key: tuple[bytes, bytes], kind: MetricKind, series: SeriesKey, rate: float
    ) -> _Slot | None:
        slot = self._slot(kind, series, rate)
        if slot is not None:
            bound = self._bound
            if len(bound) >= SPEC_MAX_ENTRIES:
                bound.clear()
            bound[key] = slot
        return slot

    def _slot(self, kind: MetricKind, series: SeriesKey, rate: float) -> _Slot | None:
        """The slot of ``series`` for this interval, created if there is room; None if refused."""
        if kind is _KIND_COUNTER:
            cell = self._counters.get(series)
            if cell is None:
                if not self._room(kind, series):
                    return None
                cell = self._counters[series] = [0.0]
            return (_COUNTER, cell, 1.0 / rate)
        if kind is _KIND_GAUGE:
            cell = self._gauges.get(series)
            if cell is None:
                if not self._room(kind, series):
                    return None
                cell = self._gauges[series] = [0.0, 0.0]
            return (_GAUGE, cell, self._delta_gauges)
        if kind is _KIND_SET:
            members = self._sets.get(series)
            if members is None:
                if not self._room(kind, series):
                    return None
                members = self._sets[series] = set()
            return (_SET, members, 1.0)
        samples_key = (kind, series, rate)
        samples = self._samples.get(samples_key)
        if samples is None:
            if not self._room(kind, series):
                return None
            samples = self._samples[samples_key] = array("d")
        return (_SAMPLES, samples, 1.0)

    def _room(self, kind: MetricKind, series: SeriesKey) -> bool:
        if self._n_slots < self._max_series:
            self._n_slots += 1
            return True
        self._refused += 1
        if len(self._refused_keys) < self._max_series:
            self._refused_keys.add((kind.value, series))
        return False
