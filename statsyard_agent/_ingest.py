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
``append`` into the series' slot (about 1.3 µs per line: the per-line path, :meth:`~PreAggregator.feed`).
A batch of datagrams (:meth:`~PreAggregator.feed_many`) is scanned with numpy instead
(:mod:`statsyard_agent._scan`): lines of bound pairs with plain decimal values are applied to the
slot columns without a Python step per line (about 0.6-0.8 µs per line); every other line takes
the per-line path, in order.

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
* Counter slots accumulate ``value * (1 / rate)`` in arrival order, as ``Aggregator.add`` does
  (``np.add.at`` is sequential); gauges keep "set, then deltas" folded into one
  ``(absolute, value)``; samples keep their arrival order within a series.
* The vectorised path takes only what the per-line path would take fast (a bound pair, a value
  that ``_scan`` parses exactly as ``float()``), and lines it leaves split its work, so the order
  of every series' lines is kept.

Counting (into the ``counts`` object given, e.g. the agent's ingest counters): ``lines`` (non-empty
lines), ``metrics`` (one per metric, so per value of a packed gauge line), ``events``,
``service_checks`` and ``parse_errors[reason]``, exactly as ``parse_datagram`` reports them.

Memory: bound pairs (by 64-bit hash: Python's ``hash((NAME, TAIL))`` for the per-line path,
the scanner's for batches; two pairs with one hash would share a series, see
:mod:`statsyard_agent._scan` on why that is accepted), specs, cached values and distinct sample
rates are bounded (cleared when full, or unbound past the limit); the parser's caches are
emptied at each take (bound pairs never reach the parser, so its caches only serve new keys
and would otherwise keep a name per series); slots
are bounded by ``max_series``: a metric of a new series beyond it is refused and counted in the
partial (``refused``), as the aggregator's own guard would. Slots of series gone quiet are evicted
after a few takes, which frees room again.
"""

from __future__ import annotations

import collections
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from math import copysign
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from . import _scan
from ._aggregate import Partial, SampleChunk, SeriesKey
from ._exceptions import ParseError
from ._heap import release_free_heap
from ._protocol import CACHE_MAX_ENTRIES, Parser, _parse_value
from ._types import Event, Metric, MetricKind, ServiceCheck

__all__ = ["ParseCounts", "PreAggregator", "Shipment", "SimpleCounts"]

_COUNTER: Final = 0
_GAUGE: Final = 1
_SAMPLES: Final = 2
_SET: Final = 3

_KIND_COUNTER: Final = MetricKind.COUNTER
_KIND_GAUGE: Final = MetricKind.GAUGE
_KIND_SET: Final = MetricKind.SET

#: Specs (and bound keys) kept at most; beyond, the cache is cleared and refilled by traffic.
#: Larger than the parser's caches because it must cover every active series (``max_series``
#: defaults to 100,000) for the fast path to hold.
SPEC_MAX_ENTRIES: Final = 262_144

#: Takes a slot may stay untouched before it is evicted (its series bound again if it returns).
EVICT_AFTER_TAKES: Final = 8
#: The same for the agent's own receive path (UDP on the event loop, the Unix socket), which
#: takes once per flush: three flush intervals, as a receive worker (``evict_after_ships``).
EVICT_AFTER_FLUSHES: Final = 3
#: Evicting at least this many slots at once rebuilds the pre-aggregator's tables (see
#: ``PreAggregator._evict_idle``).
COMPACT_AFTER_EVICTING: Final = 4096

#: Lines of a batch that must take the per-line path in order (new keys, odd values) beyond
#: which the whole batch takes it: each one splits the vectorised work into another segment.
SEGMENT_LIMIT: Final = 32
#: Bytes below which a batch is not worth the vectorised path's fixed cost (~0.4 ms a batch;
#: measured break-even with the per-line path near 600 lines of ~45 bytes).
VECTOR_MIN_BYTES: Final = 32_768
_PADDING: Final = bytes(_scan.PADDING)  # "\n".join puts the newline ending the last line before it

_PLUS: Final = 43  # b"+"[0]
_MINUS: Final = 45  # b"-"[0]

# A handle (what a bound key maps to) packs the slot, the index of the key's factor and the
# slot's generation: slot | factor << 28 | generation << 40 (a non-negative int64).
_SLOT_BITS: Final = 28
_SLOT_MASK: Final = (1 << _SLOT_BITS) - 1
_FACTOR_SHIFT: Final = 28
_FACTOR_MASK: Final = (1 << 12) - 1
#: The factor index of a handle that must not be bound: the table of distinct factors (sample
#: rates) is full. Its lines take the parser's path, which uses the line's own rate.
_UNBOUND: Final = _FACTOR_MASK
_GEN_SHIFT: Final = 40
_GEN_MASK: Final = (1 << 23) - 1
#: What the batch path's hash table holds for a key: slot | factor << 28 | kind << 40 (no
#: generation: entries of an evicted slot are dropped from the table at eviction).
_ENTRY_KEY_BITS: Final = (1 << 40) - 1
_ENTRY_CODE_SHIFT: Final = 40
#: Series a pre-aggregator can hold at most, whatever ``max_series`` says.
MAX_SLOTS: Final = 1 << _SLOT_BITS

_Spec = tuple[MetricKind, SeriesKey, float]
Int64s = _scan.Int64s
Floats = _scan.Floats
_TRUE: Final = np.array([True])


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


def _no_slots() -> Int64s:
    return np.zeros(0, dtype=np.int64)


def _no_values() -> Floats:
    return np.zeros(0)


def _no_bounds() -> Int64s:
    return np.zeros(1, dtype=np.int64)


@dataclass(eq=False, slots=True)
class Shipment:
    """A :class:`~statsyard_agent._aggregate.Partial` by slot number: numpy columns, so a
    receive worker's take and pickle cost no Python work per series (measured: 70 ms a second
    of a worker at 600k lines/s as dicts of keys, which stalled its socket). Series keys travel
    once per slot, in ``new_keys``; the receiver keeps them (``slot -> key``) and calls
    :meth:`partial`.

    ``sample_values`` holds every sample grouped by slot: slot ``sample_slots[i]``'s are
    ``sample_values[sample_bounds[i]:sample_bounds[i + 1]]``, in arrival order. Set members
    likewise, as one UTF-8 text with a newline after each member (members hold no newline):
    one object to pickle instead of a set of strings per slot, each set built in C at the
    receiver's end.
    """

    counter_slots: Int64s = field(default_factory=_no_slots)
    counter_totals: Floats = field(default_factory=_no_values)
    gauge_slots: Int64s = field(default_factory=_no_slots)
    gauge_absolute: Floats = field(default_factory=_no_values)
    gauge_values: Floats = field(default_factory=_no_values)
    sample_slots: Int64s = field(default_factory=_no_slots)
    sample_bounds: Int64s = field(default_factory=_no_bounds)
    sample_values: Floats = field(default_factory=_no_values)
    set_slots: Int64s = field(default_factory=_no_slots)
    set_bounds: Int64s = field(default_factory=_no_bounds)
    set_members: bytes = b""
    new_keys: dict[int, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    service_checks: list[ServiceCheck] = field(default_factory=list)
    refused: int = 0
    refused_keys: set[tuple[str, SeriesKey]] = field(default_factory=set)

    def partial(self, key_of: Callable[[int], Any]) -> Partial:
        """The partial, given each slot's key (``key_of(slot)``)."""
        partial = Partial(
            events=self.events,
            service_checks=self.service_checks,
            refused=self.refused,
            refused_keys=self.refused_keys,
        )
        partial.counters.update(
            zip(map(key_of, self.counter_slots.tolist()), self.counter_totals.tolist(), strict=True)
        )
        partial.gauges.update(
            zip(
                map(key_of, self.gauge_slots.tolist()),
                zip(self.gauge_absolute.tolist(), self.gauge_values.tolist(), strict=True),
                strict=True,
            )
        )
        if len(self.sample_slots):
            # As columns (the aggregator keeps them so): no array per series.
            keys = list(map(key_of, self.sample_slots.tolist()))
            partial.sample_chunks.append(SampleChunk(keys, self.sample_bounds, self.sample_values))
        members = self.set_members.decode().split("\n")
        bounds = self.set_bounds.tolist()
        partial.sets.update(
            (key_of(slot), set(members[start:end]))
            for slot, start, end in zip(self.set_slots.tolist(), bounds, bounds[1:], strict=False)
        )
        return partial


def _stable_order(slots: Int64s, high: int) -> Int64s:
    """``slots.argsort(kind="stable")`` for slot numbers below ``high``, as one or two 16-bit
    radix sorts (numpy sorts 16-bit keys by radix: ~3x faster than a stable int64 sort here)."""
    order = (slots & 0xFFFF).astype(np.uint16).argsort(kind="stable")
    if high > 0x10000:
        order = order[(slots[order] >> 16).astype(np.uint16).argsort(kind="stable")]
    return order


def _group_by_slot(slots: Int64s, high: int) -> tuple[Int64s, Int64s, Int64s]:
    """How to group items by slot, keeping their order within a slot: the permutation, the
    distinct slots, and each one's bounds in the permuted items (``bounds[i]:bounds[i + 1]``)."""
    order = _stable_order(slots, high)
    grouped = slots[order]
    firsts = np.flatnonzero(np.diff(grouped, prepend=-1))
    return order, grouped[firsts], np.append(firsts, len(grouped))


def _gather_spans(data: npt.NDArray[np.uint8], begin: Int64s, length: Int64s) -> npt.NDArray[np.uint8]:
    """The spans ``data[begin:begin + length]``, one after the other, each followed by a newline
    (one numpy gather; the spans must hold no newline)."""
    width = length + 1
    ends = np.cumsum(width)
    total = int(ends[-1]) if len(ends) else 0
    source = np.arange(total, dtype=np.int64) + np.repeat(begin - (ends - width), width)
    gathered: npt.NDArray[np.uint8] = data[np.minimum(source, len(data) - 1)]
    gathered[ends - 1] = 10
    return gathered


def _is_utf8(data: npt.NDArray[np.uint8]) -> bool:
    try:
        data.tobytes().decode()
    except UnicodeDecodeError:
        return False
    return True


class PreAggregator:
    """Feeds datagrams into per-series slots; :meth:`take` hands the interval's data over.

    Not thread-safe; one per receive loop. ``max_series`` bounds the slots held (one per counter,
    gauge or set series, one per timer-like series and sample rate).

    Slots are columns indexed by a slot number (numpy arrays, also written one item at a time
    through memoryviews by the per-line path): ``_code`` (kind), ``_acc0`` / ``_acc1`` (a counter's
    total; a gauge's "absolute" flag and value), ``_gen`` (bumped at eviction), ``_idle``; sample
    values go to per-interval chunks of (slot, value) in arrival order, set members to a Python
    set per slot. Slots outlive :meth:`take` (which resets them in place), so a series costs the
    slow path once, not once per interval. An untouched slot is told apart without per-line
    bookkeeping: totals and delta sums start each interval at ``-0.0``, which no addition of a
    value other than ``-0.0`` can leave unchanged (values that parse to ``-0.0`` take the parser's
    path, which starts from ``+0.0`` as ``Aggregator.add`` does). A slot untouched for
    ``evict_after`` takes is evicted: its generation changes, so a bound key still pointing at it
    is bound again on use.

    :meth:`feed_many` takes a batch of datagrams through :mod:`statsyard_agent._scan`: lines of
    bound keys with plain decimal values are applied with numpy (in arrival order per series:
    ``np.add.at`` is sequential), every other line through the per-line path, in order.
    """

    __slots__ = (
        "_acc0",
        "_acc0_v",
        "_acc1",
        "_acc1_v",
        "_announced",
        "_bound",
        "_chunks",
        "_code",
        "_code_v",
        "_counts",
        "_delta_gauges",
        "_events",
        "_evict_after",
        "_factor_index",
        "_factors",
        "_factors_v",
        "_fed",
        "_free",
        "_gen",
        "_gen_v",
        "_hashed",
        "_high",
        "_idle",
        "_keys",
        "_live",
        "_max_line",
        "_max_series",
        "_n_slots",
        "_parser",
        "_peak_slots",
        "_refused",
        "_refused_keys",
        "_sample_slots",
        "_sample_values",
        "_service_checks",
        "_set_chunks",
        "_set_slots",
        "_set_texts",
        "_slot_keys",
        "_slots_of",
        "_specs",
        "_values",
    )

    def __init__(
        self, parser: Parser, counts: ParseCounts, max_series: int, evict_after: int = EVICT_AFTER_TAKES
    ) -> None:
        self._parser = parser
        self._evict_after = evict_after
        self._counts = counts
        self._max_series = min(max_series, MAX_SLOTS)
        self._max_line = parser.config.max_line_bytes
        self._delta_gauges = 1.0 if parser.config.gauge_sign == "delta" else 0.0
        # Bound keys and specs by hash((NAME, TAIL)): an int per key instead of two bytes and
        # a tuple (~110 bytes less per series); 64 bits, as the batch table (see _scan's doc).
        self._specs: dict[int, _Spec] = {}
        self._values: dict[bytes, float] = {}
        self._bound: dict[int, int] = {}
        self._hashed = _scan.HashTable(16_384)
        # Columns: np.zeros maps its pages lazily, so capacity for max_series costs RSS only as
        # slots are used (and the arrays never move, so the memoryviews stay valid).
        capacity = max(self._max_series, 1)
        self._code = np.zeros(capacity, dtype=np.int8)
        self._acc0 = np.zeros(capacity)
        self._acc1 = np.zeros(capacity)
        self._gen = np.zeros(capacity, dtype=np.int64)
        self._idle = np.zeros(capacity, dtype=np.int32)
        self._live = np.zeros(capacity, dtype=np.bool_)
        self._announced = np.zeros(capacity, dtype=np.bool_)  # key shipped since the slot was made
        # Item views for the per-line path (typed Any: typeshed's memoryview sets ints only).
        self._code_v: Any = memoryview(self._code)  # type: ignore[arg-type]
        self._acc0_v: Any = memoryview(self._acc0)  # type: ignore[arg-type]
        self._acc1_v: Any = memoryview(self._acc1)  # type: ignore[arg-type]
        self._gen_v: Any = memoryview(self._gen)  # type: ignore[arg-type]
        self._factors = np.zeros(_FACTOR_MASK + 1)
        self._factors_v: Any = memoryview(self._factors)  # type: ignore[arg-type]
        self._factor_index: dict[float, int] = {}
        self._keys: list[Any] = []  # slot -> the partial's key (series, or (kind, series, rate))
        self._slot_keys: list[Any] = []  # slot -> its key in _slots_of
        # Set members of the interval: (slot, member) columns in arrival order, grouped at take.
        self._set_slots: array[int] = array("q")
        self._set_texts: list[str] = []
        self._set_chunks: list[tuple[Int64s, Int64s, npt.NDArray[np.uint8]]] = []  # slots, lengths, bytes
        self._slots_of: dict[Any, int] = {}
        self._free: array[int] = array("q")  # evicted slots to reuse (8 bytes each, not an int object)
        self._high = 0
        self._n_slots = 0
        self._peak_slots = 0
        self._chunks: list[tuple[Int64s, Floats]] = []
        self._sample_slots: array[int] = array("q")
        self._sample_values: array[float] = array("d")
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

    @property
    def peak_slots(self) -> int:
        """The most slots held at any take so far (slots only grow between takes)."""
        return self._peak_slots

    def take(self) -> Partial:
        """Hand over the interval's data (the caller owns it) and start a new interval.

        O(slots held) when anything was fed since the last take, O(1) otherwise.
        """
        return self.take_shipment().partial(self._keys.__getitem__)

    def take_or_age(self) -> Partial | None:
        """:meth:`take` when anything may have come since the last take; otherwise only age
        the slots held, so that quiet series are forgotten even when nothing at all arrives
        (what a receive worker's periodic ship does), and return None."""
        if self.pending:
            return self.take()
        if self._n_slots:
            self.take_shipment()
        return None

    def take_shipment(self) -> Shipment:
        """:meth:`take`, by slot number (what a receive worker ships: see :class:`Shipment`)."""
        self._parser.clear_caches()
        self._peak_slots = max(self._peak_slots, self._n_slots)
        shipment = Shipment(
            events=self._events,
            service_checks=self._service_checks,
            refused=self._refused,
            refused_keys=self._refused_keys,
        )
        if self._fed:
            self._take_slots(shipment)
        elif self._n_slots:
            self._age_quiet()
        self._new_interval()
        return shipment

    def _take_slots(self, shipment: Shipment) -> None:
        slots = np.flatnonzero(self._live[: self._high])
        code = self._code[slots]
        idle = self._idle
        acc0, acc1 = self._acc0, self._acc1

        counters = slots[code == _COUNTER]
        totals = acc0[counters]
        touched = ~((totals == 0.0) & np.signbit(totals))
        shipment.counter_slots = shipped_counters = counters[touched]
        shipment.counter_totals = totals[touched]
        acc0[shipped_counters] = -0.0
        idle[counters] += 1
        idle[shipped_counters] = 0

        gauges = slots[code == _GAUGE]
        absolute, value = acc0[gauges], acc1[gauges]
        touched = (absolute != 0.0) | (value != 0.0) | ~np.signbit(value)
        shipment.gauge_slots = shipped_gauges = gauges[touched]
        shipment.gauge_absolute = absolute[touched]
        shipment.gauge_values = value[touched]
        acc0[shipped_gauges] = 0.0
        acc1[shipped_gauges] = -0.0
        idle[gauges] += 1
        idle[shipped_gauges] = 0

        idle[slots[code == _SAMPLES]] += 1
        self._take_samples(shipment)
        idle[shipment.sample_slots] = 0

        idle[slots[code == _SET]] += 1
        self._take_members(shipment)
        idle[shipment.set_slots] = 0

        # Keys go over the wire once per slot (again only when a slot is reused).
        shipped = np.concatenate(
            [
                shipped_counters,
                shipped_gauges,
                shipment.sample_slots,
                shipment.set_slots,
            ]
        )
        new = shipped[~self._announced[shipped]]
        self._announced[new] = True
        keys = self._keys
        shipment.new_keys = {slot: keys[slot] for slot in new.tolist()}

        self._evict_idle(slots)

    def _age_quiet(self) -> None:
        """A take with nothing fed since the last one: every slot is one take idler."""
        slots = np.flatnonzero(self._live[: self._high])
        self._idle[slots] += 1
        self._evict_idle(slots)

    def _evict_idle(self, slots: Int64s) -> None:
        """Evict the slots (of ``slots``) idle for ``evict_after`` takes. When that is many, the
        tables that do not shrink by themselves are rebuilt and the freed heap pages go back
        to the kernel: a series idle in this worker then costs it no memory at all."""
        evicted = slots[self._idle[slots] >= self._evict_after]
        if not len(evicted):
            return
        for slot in evicted.tolist():
            self._evict(slot)
        self._hashed.drop(lambda entries: np.isin(entries & _SLOT_MASK, evicted))
        if len(evicted) >= COMPACT_AFTER_EVICTING:
            live, gens = self._live, self._gen_v
            self._bound = {
                key: handle
                for key, handle in self._bound.items()
                if live[handle & _SLOT_MASK] and gens[handle & _SLOT_MASK] == handle >> _GEN_SHIFT
            }
            self._slots_of = dict(self._slots_of)  # a dict's table never shrinks on deletion
            self._hashed.compact()
            release_free_heap()

    def _take_samples(self, shipment: Shipment) -> None:
        """The interval's samples grouped by slot, in arrival order within a slot."""
        self._seal_samples()
        chunks, self._chunks = self._chunks, []
        if not chunks:
            return
        slots = np.concatenate([chunk[0] for chunk in chunks])
        values = np.concatenate([chunk[1] for chunk in chunks])
        order, shipment.sample_slots, shipment.sample_bounds = _group_by_slot(slots, self._high)
        shipment.sample_values = values[order]

    def _take_members(self, shipment: Shipment) -> None:
        """The interval's set members grouped by slot, as one text (see :class:`Shipment`): the
        members' bytes reordered by one numpy gather."""
        if self._set_slots:
            encoded = [text.encode() for text in self._set_texts]
            self._set_chunks.append(
                (
                    np.array(self._set_slots, dtype=np.int64),
                    np.fromiter(map(len, encoded), np.int64, len(encoded)),
                    np.frombuffer(b"\n".join([*encoded, b""]), dtype=np.uint8),
                )
            )
            self._set_slots = array("q")
            self._set_texts = []
        chunks, self._set_chunks = self._set_chunks, []
        if not chunks:
            return
        slots = np.concatenate([chunk[0] for chunk in chunks])
        length = np.concatenate([chunk[1] for chunk in chunks])
        data = np.concatenate([chunk[2] for chunk in chunks])
        starts = np.cumsum(length + 1) - (length + 1)
        order, shipment.set_slots, shipment.set_bounds = _group_by_slot(slots, self._high)
        shipment.set_members = _gather_spans(data, starts[order], length[order]).tobytes()

    def _seal_samples(self) -> None:
        """Close the per-line path's sample buffer as a chunk (keeps arrival order)."""
        if self._sample_slots:
            self._chunks.append((np.array(self._sample_slots, dtype=np.int64), np.array(self._sample_values)))
            self._sample_slots = array("q")
            self._sample_values = array("d")

    def _evict(self, slot: int) -> None:
        del self._slots_of[self._slot_keys[slot]]
        self._keys[slot] = self._slot_keys[slot] = None
        self._live[slot] = False
        self._gen[slot] = (self._gen[slot] + 1) & _GEN_MASK
        self._free.append(slot)
        self._n_slots -= 1

    # -- hot path ----------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Parse and pre-aggregate one datagram (never raises for any input bytes)."""
        self._fed += 1
        self._feed_lines(data)

    def feed_many(self, datagrams: Sequence[bytes]) -> None:
        """:meth:`feed` each datagram, in order: the same result, vectorised (see the class doc)."""
        if sum(map(len, datagrams)) < VECTOR_MIN_BYTES:
            for datagram in datagrams:
                self.feed(datagram)
            return
        self._fed += len(datagrams)
        # One copy: the lines, a newline ending the last one, then the scanner's padding.
        padded = b"\n".join([*datagrams, _PADDING])
        self._feed_batch(padded, len(padded) - len(_PADDING))

    def feed_buffer(self, padded: bytes, size: int, datagrams: int) -> int:
        """:meth:`feed` each of ``datagrams`` datagrams whose texts lie one after the other in
        ``padded[:size]``, each ending with a newline (a receive worker reads them so), followed by
        :data:`_scan.PADDING` bytes of any value; return how many newlines there are (the raw
        lines the receive counters count)."""
        self._fed += datagrams
        if size < VECTOR_MIN_BYTES:
            if size:
                self._feed_lines(padded[:size])
            return padded.count(b"\n", 0, size)
        return self._feed_batch(padded, size)

    def _feed_lines(self, data: bytes) -> None:
        """The per-line path over the lines of ``data``."""
        parts = data.split(b"\n")
        if not parts[-1]:
            parts.pop()
        bound = self._bound
        values = self._values
        codes = self._code_v
        gens = self._gen_v
        factors = self._factors_v
        acc0 = self._acc0_v
        acc1 = self._acc1_v
        sample_slots = self._sample_slots
        sample_values = self._sample_values
        long_lines = len(data) > self._max_line
        slow = 0
        for line in parts:
            name, _, rest = line.partition(b":")
            raw, _, tail = rest.partition(b"|")
            key = hash((name, tail))
            handle = bound.get(key)
            if handle is None or (long_lines and len(line) > self._max_line):
                slow += 1
                self._slow(line, key, name, raw)
                continue
            slot = handle & _SLOT_MASK
            if gens[slot] != handle >> _GEN_SHIFT:  # an evicted slot: bind the key again
                slow += 1
                del bound[key]
                self._slow(line, key, name, raw)
                continue
            code = codes[slot]
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
                self._set_slots.append(slot)
                self._set_texts.append(member)
                continue
            value = values.get(raw)
            if value is None:
                value = self._value(raw)
                if value is None:
                    slow += 1
                    self._parse_line(line)
                    continue
            if code == _COUNTER:
                acc0[slot] += value * factors[(handle >> _FACTOR_SHIFT) & _FACTOR_MASK]
            elif code == _SAMPLES:
                sample_slots.append(slot)
                sample_values.append(value)
            elif factors[(handle >> _FACTOR_SHIFT) & _FACTOR_MASK] and (raw[0] == _PLUS or raw[0] == _MINUS):
                acc1[slot] += value
            else:
                acc0[slot] = 1.0
                acc1[slot] = value
        fast = len(parts) - slow
        counts = self._counts
        counts.lines += fast
        counts.metrics += fast

    def _feed_batch(self, joined: bytes, size: int) -> int:
        """The vectorised path over the lines of ``joined[:size]`` (which ends with a newline and
        is followed by :data:`_scan.PADDING` bytes; see the class doc); return how many newlines
        there are."""
        buf = np.frombuffer(joined, dtype=np.uint8)
        words = _scan.word_view(joined)
        lines = _scan.locate_lines(buf[:size])
        starts, ends = lines.start, lines.end
        length = ends - starts
        # Every line is hashed and valued (cheaper than picking the keyed ones first); what is
        # read for the others is ignored. An entry packs slot, factor index and kind (_ENTRY_*).
        hashes = _scan.key_hashes(words, lines)
        entry = self._hashed.lookup(hashes)
        entry[~(lines.keyed & (length <= self._max_line))] = -1
        code = entry >> _ENTRY_CODE_SHIFT  # -1 for lines of unknown keys
        values = _scan.parse_values(words, lines.colon + 1, lines.pipe)
        is_set = code == _SET
        vector = ((code >= 0) & ~is_set & values.ok).nonzero()[0]
        set_rows = is_set.nonzero()[0]
        # Lines left to the per-line path: in order with the vectorised ones, but for lines of
        # bound set keys (a set's members do not depend on order).
        handled = is_set.copy()
        handled[vector] = True
        in_order = (~handled & (length > 0)).nonzero()[0]
        if len(in_order) > SEGMENT_LIMIT:
            self._feed_lines(joined[:size])
        else:
            vector_entry = entry[vector]
            vector_value = values.value[vector]
            vector_signed = values.signed[vector]
            cuts = vector.searchsorted(in_order).tolist()
            begin = 0
            for line, cut in zip(in_order.tolist(), cuts, strict=True):
                self._apply(vector_entry[begin:cut], vector_value[begin:cut], vector_signed[begin:cut])
                begin = cut
                self._feed_lines(joined[starts[line] : ends[line]])
            self._apply(vector_entry[begin:], vector_value[begin:], vector_signed[begin:])
            self._counts.lines += len(vector)
            self._counts.metrics += len(vector)
            self._add_members(joined, lines, set_rows, entry[set_rows] & _SLOT_MASK)
        unknown = ((entry < 0) & lines.keyed & (length <= self._max_line)).nonzero()[0]
        if len(unknown):
            self._learn(joined, lines, unknown, hashes[unknown])
        return len(starts)

    def _add_members(self, joined: bytes, lines: _scan.Lines, rows: Int64s, slots: Int64s) -> None:
        """Lines of bound set keys: each member into the interval's members, by the per-line
        path's rules. A keyed line's member holds no ``:`` and no ``|``; the members are cut
        out with one numpy gather and checked with one ``decode``, with no Python work per
        member (they stay bytes until the receiver builds its sets)."""
        if not len(rows):
            return
        begin = lines.colon[rows] + 1
        length = lines.pipe[rows] - begin
        ok = length > 0  # an empty member: the parser says what
        data = np.frombuffer(joined, dtype=np.uint8)
        members = _gather_spans(data, begin, length)
        if not ok.all() or not _is_utf8(members):  # find which, one by one
            for index, (at, size) in enumerate(zip(begin.tolist(), length.tolist(), strict=True)):
                ok[index] = size > 0 and _is_utf8(data[at : at + size])
            keep = ok.nonzero()[0]
            slots, begin, length = slots[keep], begin[keep], length[keep]
            members = _gather_spans(data, begin, length)
        self._set_chunks.append((slots, length, members))
        refused = rows[~ok]  # empty or not UTF-8: the parser says what
        for start, end in zip(lines.start[refused].tolist(), lines.end[refused].tolist(), strict=True):
            self._feed_lines(joined[start:end])
        added = len(rows) - len(refused)
        self._counts.lines += added
        self._counts.metrics += added

    def _apply(self, entry: Int64s, value: Floats, signed: npt.NDArray[np.bool_]) -> None:
        """Add a run of bound, single-valued numeric lines (in arrival order) to their slots
        (``entry``: what :attr:`_hashed` holds for each line's key)."""
        if not len(entry):
            return
        slot = entry & _SLOT_MASK
        code = entry >> _ENTRY_CODE_SHIFT
        factor_index = (entry >> _FACTOR_SHIFT) & _FACTOR_MASK
        counter = code == _COUNTER
        if np.count_nonzero(counter):
            np.add.at(self._acc0, slot[counter], value[counter] * self._factors[factor_index[counter]])
        samples = code == _SAMPLES
        if np.count_nonzero(samples):
            self._seal_samples()
            self._chunks.append((slot[samples], value[samples]))
        gauge = code == _GAUGE
        if np.count_nonzero(gauge):
            delta = signed[gauge] & (self._factors[factor_index[gauge]] != 0.0)
            self._apply_gauges(slot[gauge], value[gauge], delta)

    def _apply_gauges(self, slot: Int64s, value: Floats, delta: npt.NDArray[np.bool_]) -> None:
        """Gauge lines in order: the last absolute value of a slot wins, then the deltas after it add
        up (in order); deltas of a slot without an absolute value add to what it holds."""
        acc0, acc1 = self._acc0, self._acc1
        absolute = (~delta).nonzero()[0]
        if not len(absolute):
            np.add.at(acc1, slot, value)
            return
        order = slot[absolute].argsort(kind="stable")
        ordered = absolute[order]
        ordered_slots = slot[ordered]
        last = np.concatenate((ordered_slots[1:] != ordered_slots[:-1], _TRUE))
        set_slots = ordered_slots[last]
        set_at = ordered[last]
        acc0[set_slots] = 1.0
        acc1[set_slots] = value[set_at]
        deltas = delta.nonzero()[0]
        if len(deltas):
            delta_slots = slot[deltas]
            k = np.minimum(set_slots.searchsorted(delta_slots), len(set_slots) - 1)
            after = (set_slots[k] != delta_slots) | (deltas > set_at[k])
            np.add.at(acc1, delta_slots[after], value[deltas[after]])

    def _learn(self, joined: bytes, lines: _scan.Lines, rows: Int64s, hashes: npt.NDArray[np.uint64]) -> None:
        """Remember the hashes of keys the per-line path has bound (lines ``rows``), for the
        next batches."""
        unique, first = np.unique(hashes, return_index=True)
        bound = self._bound
        gens = self._gen_v
        codes = self._code_v
        starts, ends = lines.start, lines.end
        learnt: list[int] = []
        entries: list[int] = []
        for index, row in enumerate(rows[first].tolist()):
            name, _, rest = joined[starts[row] : ends[row]].partition(b":")
            handle = bound.get(hash((name, rest.partition(b"|")[2])))
            if handle is not None:
                slot = handle & _SLOT_MASK
                if gens[slot] == handle >> _GEN_SHIFT:
                    learnt.append(index)
                    entries.append(handle & _ENTRY_KEY_BITS | codes[slot] << _ENTRY_CODE_SHIFT)
        if entries:
            hashed = self._hashed
            if hashed.size + len(entries) > SPEC_MAX_ENTRIES:
                hashed.clear()
            hashed.insert_many(unique[learnt], np.array(entries, dtype=np.int64))

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

    def _slow(self, line: bytes, key: int, name: bytes, raw: bytes) -> None:
        """A line without a bound slot (``key``: the hash of its (NAME, TAIL)): bind it through
        its spec, or let the parser decide."""
        spec = self._specs.get(key)
        if spec is None or len(line) > self._max_line:
            # With a "|" before the first ":" the parser always refuses the line: never bound.
            self._parse_line(line, None if b"|" in name else key)
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
            handle = self._bind(key, kind, series, rate)
            if handle is not None and (handle >> _FACTOR_SHIFT) & _FACTOR_MASK == _UNBOUND:
                self._parse_line(line)
                return
            if handle is not None:
                self._set_slots.append(handle & _SLOT_MASK)
                self._set_texts.append(member)
        else:
            value = self._values.get(raw)
            if value is None:
                value = self._value(raw)
                if value is None:
                    self._parse_line(line)
                    return
            handle = self._bind(key, kind, series, rate)
            if handle is not None and (handle >> _FACTOR_SHIFT) & _FACTOR_MASK == _UNBOUND:
                self._parse_line(line)
                return
            if handle is not None:
                self._accumulate(handle, raw, value)
        counts = self._counts
        counts.lines += 1
        counts.metrics += 1

    def _accumulate(self, handle: int, raw: bytes, value: float) -> None:
        """Add one single-valued line (``raw`` its value's text, ``value`` that value)."""
        slot = handle & _SLOT_MASK
        code = self._code_v[slot]
        factor = self._factors_v[(handle >> _FACTOR_SHIFT) & _FACTOR_MASK]
        if code == _COUNTER:
            self._acc0_v[slot] += value * factor
        elif code == _SAMPLES:
            self._sample_slots.append(slot)
            self._sample_values.append(value)
        elif factor and (raw[0] == _PLUS or raw[0] == _MINUS):  # a delta (gauge_sign = "delta")
            self._acc1_v[slot] += value
        else:
            self._acc0_v[slot] = 1.0
            self._acc1_v[slot] = value

    def _parse_line(self, line: bytes, key: int | None = None) -> None:
        """Let the parser handle one line; when ``key`` (the hash of its (NAME, TAIL); never given
        for a NAME holding a ``|``) is given, bind it to the slot the line's
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
        first_handle: int | None = None
        for item in items:
            if isinstance(item, Metric):
                handle = self._add(item)
                if item is first:
                    first_handle = handle
                counts.metrics += 1
            elif isinstance(item, Event):
                self._events.append(item)
                counts.events += 1
            else:
                self._service_checks.append(item)
                counts.service_checks += 1
        if key is not None and isinstance(first, Metric):
            if first_handle is not None:
                if (first_handle >> _FACTOR_SHIFT) & _FACTOR_MASK == _UNBOUND:
                    return
                bound = self._bound
                if len(bound) >= SPEC_MAX_ENTRIES:
                    bound.clear()
                bound[key] = first_handle
            else:
                specs = self._specs
                if len(specs) >= SPEC_MAX_ENTRIES:
                    specs.clear()
                specs[key] = (first.kind, (first.name, first.tags), first.rate)

    def _add(self, metric: Metric) -> int | None:
        """``Aggregator.add`` semantics, into this interval's slots (any value, -0.0 included);
        return the handle, or None if the series cap refused it."""
        handle = self._slot(metric.kind, (metric.name, metric.tags), metric.rate)
        if handle is None:
            return None
        slot = handle & _SLOT_MASK
        code = self._code_v[slot]
        if code == _COUNTER:
            factor = 1.0 / metric.rate  # what a bound key's factor holds, computed alike
            total = self._acc0_v[slot]
            if total == 0.0:
                total = 0.0  # Aggregator.add starts from +0.0, not from the -0.0 marker
            for value in metric.values:
                total += value * factor
            self._acc0_v[slot] = total
        elif code == _SAMPLES:
            for value in metric.values:
                self._sample_slots.append(slot)
                self._sample_values.append(value)
        elif code == _SET:
            self._set_slots.extend([slot] * len(metric.members))
            self._set_texts.extend(metric.members)
        else:
            acc0, acc1 = self._acc0_v, self._acc1_v
            for value in metric.values:
                if metric.delta:
                    if not acc0[slot] and acc1[slot] == 0.0:
                        acc1[slot] = 0.0  # from +0.0 like Aggregator.add, not from the marker
                    acc1[slot] += value
                else:
                    acc0[slot] = 1.0
                    acc1[slot] = value
        return handle

    def _bind(self, key: int, kind: MetricKind, series: SeriesKey, rate: float) -> int | None:
        handle = self._slot(kind, series, rate)
        if handle is not None and (handle >> _FACTOR_SHIFT) & _FACTOR_MASK != _UNBOUND:
            bound = self._bound
            if len(bound) >= SPEC_MAX_ENTRIES:
                bound.clear()
            bound[key] = handle
            self._specs.pop(key, None)  # kept only while the cap refuses the key
        return handle

    def _slot(self, kind: MetricKind, series: SeriesKey, rate: float) -> int | None:
        """The handle of ``series``' slot for a line at ``rate``, the slot created if there is
        room; None if refused."""
        code: int
        factor: float
        slot_key: Any
        if kind is _KIND_COUNTER:
            code, factor, slot_key, key = _COUNTER, 1.0 / rate, (kind, series), series
        elif kind is _KIND_GAUGE:
            code, factor, slot_key, key = _GAUGE, self._delta_gauges, (kind, series), series
        elif kind is _KIND_SET:
            code, factor, slot_key, key = _SET, 1.0, (kind, series), series
        else:
            code, factor, slot_key = _SAMPLES, 1.0, (kind, series, rate)
            key = slot_key
        factor_index = self._factor_index.get(factor)
        if factor_index is None:
            if len(self._factor_index) >= _UNBOUND:
                factor_index = _UNBOUND  # counted as usual, never bound (see _UNBOUND)
            else:
                factor_index = self._factor_index[factor] = len(self._factor_index)
                self._factors[factor_index] = factor
        slot = self._slots_of.get(slot_key)
        if slot is None:
            if self._n_slots >= self._max_series:
                self._refuse(kind, series)
                return None
            slot = self._new_slot(code, slot_key, key)
        generation: int = self._gen_v[slot]
        return slot | factor_index << _FACTOR_SHIFT | generation << _GEN_SHIFT

    def _new_slot(self, code: int, slot_key: Any, key: Any) -> int:
        if self._free:
            slot = self._free.pop()
            self._keys[slot] = key
            self._slot_keys[slot] = slot_key
        else:
            slot = self._high
            self._high += 1
            self._keys.append(key)
            self._slot_keys.append(slot_key)
        self._slots_of[slot_key] = slot
        self._n_slots += 1
        self._live[slot] = True
        self._announced[slot] = False
        self._code[slot] = code
        self._acc0[slot] = -0.0 if code == _COUNTER else 0.0
        self._acc1[slot] = -0.0
        self._idle[slot] = 0
        return slot

    def _refuse(self, kind: MetricKind, series: SeriesKey) -> None:
        self._refused += 1
        if len(self._refused_keys) < self._max_series:
            self._refused_keys.add((kind.value, series))
