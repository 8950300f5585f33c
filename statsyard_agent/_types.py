"""The values that cross module boundaries: parser → aggregator → flush batch → writer.

They are plain, immutable and free of IO so that every stage can be tested alone.
"""

from __future__ import annotations

import enum
import itertools
import operator
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar, overload

import numpy as np
import numpy.typing as npt

#: Tags of one series: ``(key, value)`` pairs, sorted and without duplicate pairs.
#: A bare DogStatsD tag ``web`` becomes ``("web", "")``.
Tags = tuple[tuple[str, str], ...]

FloatArray = npt.NDArray[np.float64]


class MetricKind(enum.Enum):
    """The StatsD type letters we accept, with their wire spelling as value."""

    COUNTER = "c"
    GAUGE = "g"
    TIMER = "ms"
    HISTOGRAM = "h"
    DISTRIBUTION = "d"
    SET = "s"


class Metric(NamedTuple):
    """One parsed metric line (after DogStatsD value packing, one line may carry several values).

    ``values`` holds the numeric values (empty for sets); ``members`` holds set members (empty
    for every other kind). ``delta`` is true for a gauge line whose value carried an explicit
    ``+``/``-`` sign while ``gauge_sign = "delta"``; such a Metric carries exactly one value.
    ``rate`` satisfies ``0 < rate <= 1``. ``timestamp`` is the DogStatsD ``|T`` value, parsed
    and validated but not used for bucketing (as statsd_exporter does).
    """

    name: str
    kind: MetricKind
    values: tuple[float, ...]
    members: tuple[str, ...]
    rate: float
    tags: Tags
    delta: bool
    container_id: str | None
    timestamp: int | None


class Event(NamedTuple):
    """A DogStatsD event ``_e{title_len,text_len}:title|text|...``."""

    title: str
    text: str
    alert_type: str
    tags: Tags


class ServiceCheck(NamedTuple):
    """A DogStatsD service check ``_sc|name|status|...``; ``status`` is 0..3."""

    name: str
    status: int
    tags: Tags


class Rollup(enum.IntEnum):
    """How a stored series is consolidated into a coarser step (never a blanket average).

    SUM      counts and sums: the values add up.
    MIN      ``lower``: the smallest value.
    MAX      ``upper`` and set counts: the largest value.
    LAST     gauges: the latest value.
    AVERAGE  stats with no exact combination (median, std): mean of the points present.
    RATE     per-second rates (``rate``, ``count_ps``): sum(value * interval) / step, i.e.
             recomputed from the count over the whole step, missing intervals counting as 0.
    MEAN     means (``mean``, ``mean_P``): weighted by the sibling count series (``count`` for
             ``mean``, ``count_P`` for ``mean_P``), i.e. sum(mean_i * count_i) / sum(count_i).
    """

    SUM = 1
    MIN = 2
    MAX = 3
    LAST = 4
    AVERAGE = 5
    RATE = 6
    MEAN = 7


@dataclass(frozen=True, slots=True)
class SketchPoint:
    """A mergeable quantile sketch of one timer/histogram/distribution series for one interval.

    ``name`` is the series' base name (e.g. ``stats.timers.api.latency``); the sketch's own
    encoding lives in :mod:`statsyard_agent._sketch` (``LogSketch.to_bytes``).
    """

    name: str
    tags: Tags
    sketch: bytes


_T = TypeVar("_T")


class _MadeOnRead(Sequence[_T]):
    """A sequence whose items are all made (by :meth:`made`, once) when the first is read, for
    columns that most readers never read item by item. Pickles as the tuple of items; equal to
    any sequence of equal items; not hashable."""

    __slots__ = ()

    def made(self) -> tuple[_T, ...]:
        raise NotImplementedError

    @overload
    def __getitem__(self, index: int) -> _T: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[_T, ...]: ...

    def __getitem__(self, index: int | slice) -> _T | tuple[_T, ...]:
        return self.made()[index]

    def __iter__(self) -> Iterator[_T]:
        return iter(self.made())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str):
            return NotImplemented
        return len(other) == len(self) and self.made() == tuple(other)

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[type[tuple[_T, ...]], tuple[tuple[_T, ...]]]:
        return (tuple, (self.made(),))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.made()!r})"


class PointNames(_MadeOnRead[str]):
    """Names as blocks of ``prefix + name + suffix`` (one prefix and one suffix per block), made
    when first read.

    Why: a flush of 100k series has ~800k points, each named by its kind's prefix, its metric
    name and a stat (``stats.timers.`` + ``api`` + ``.upper_90``). Making 800k strings was a
    third of the flush's build, and ~70 bytes a point of the batch; in the steady state the
    writer only compares runs of them with its own names column, which :meth:`joined` serves
    straight from the blocks (the metric names are the series keys' own strings). Any other read
    makes the tuple of names once (kept; safe to race: both racers make equal tuples). The
    blocks' names must not change for the life of the object.
    """

    __slots__ = ("_count", "_made", "blocks")

    def __init__(self, blocks: Sequence[tuple[str, Sequence[str], str]]) -> None:
        self.blocks = tuple(blocks)
        self._count = sum(len(names) for _, names, _ in self.blocks)
        self._made: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return self._count

    def made(self) -> tuple[str, ...]:
        """Every name, made once."""
        made = self._made
        if made is None:
            made = self._made = tuple(
                itertools.chain.from_iterable(_affixed(*block) for block in self.blocks)
            )
        return made

    def joined(self, start: int, stop: int, separator: str) -> str:
        """``separator.join(self[start:stop])``, made from the blocks without making the names."""
        if self._made is not None:
            return separator.join(self._made[start:stop])
        pieces: list[str] = []
        first = 0
        for prefix, names, suffix in self.blocks:
            end = first + len(names)
            low, high = max(start, first), min(stop, end)
            if low < high:
                # prefix + name1 + suffix + separator + prefix + name2 ... + suffix: one join.
                glue = suffix + separator + prefix
                pieces.append(prefix + glue.join(names[low - first : high - first]) + suffix)
            first = end
        return separator.join(pieces)

    def suffixed(self, suffix: str) -> list[tuple[str, Sequence[str], str]]:
        """The blocks of these names with ``suffix`` appended to each."""
        return [(prefix, names, own + suffix) for prefix, names, own in self.blocks]


def _affixed(prefix: str, names: Sequence[str], suffix: str) -> Iterable[str]:
    if prefix:
        names = list(map(operator.add, itertools.repeat(prefix), names))
    return map(operator.add, names, itertools.repeat(suffix)) if suffix else names


class SketchColumns(_MadeOnRead[SketchPoint]):
    """A flush batch's sketch points as three columns (``names``, ``tags``, ``blobs``), each
    :class:`SketchPoint` made when first read.

    Why: like :class:`PointNames`, 50k objects per flush of which the writer, in the steady
    state, reads only the columns. The columns must not change for the life of the object.
    """

    __slots__ = ("_made", "blobs", "names", "tags")

    def __init__(self, names: Sequence[str], tags: Sequence[Tags], blobs: Sequence[bytes]) -> None:
        if not len(names) == len(tags) == len(blobs):
            raise ValueError("sketch columns must have the same length")
        self.names = names
        self.tags = tags
        self.blobs = blobs
        self._made: tuple[SketchPoint, ...] | None = None

    def __len__(self) -> int:
        return len(self.names)

    def made(self) -> tuple[SketchPoint, ...]:
        """Every point, made once."""
        made = self._made
        if made is None:
            made = self._made = tuple(map(SketchPoint, self.names, self.tags, self.blobs))
        return made


def join_names(names: Sequence[str], start: int, stop: int, separator: str) -> str:
    """``separator.join(names[start:stop])``; for :class:`PointNames` without making the names."""
    if isinstance(names, PointNames):
        return names.joined(start, stop, separator)
    return separator.join(names[start:stop])


@dataclass(frozen=True, slots=True)
class FlushBatch:
    """Everything one flush produced, columnar: point ``i`` is ``names[i]``, ``tags[i]`` ...

    ``timestamp`` is the end of the flushed interval in whole unix seconds (flushes are aligned
    to multiples of the interval); ``interval`` is its length in seconds. ``names`` is a tuple
    or, from the aggregator, a :class:`PointNames`; ``sketches`` likewise a tuple or a
    :class:`SketchColumns`.
    """

    timestamp: int
    interval: float
    names: Sequence[str]
    tags: tuple[Tags, ...]
    rollups: tuple[Rollup, ...]
    values: FloatArray
    sketches: Sequence[SketchPoint] = field(default=())

    def __len__(self) -> int:
        return len(self.names)
